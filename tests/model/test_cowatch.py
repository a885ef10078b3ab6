"""The co-watch readout (model/cowatch.py): causal visibility, exact pair counting, serving parity,
snapshots, and the trainer's observe-after-scoring order."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from kernels.attention import TokenGroup
from model import Ranker, RankerConfig
from model.batch import Batch, collate
from model.cowatch import CoLike, CoWatch, RecentReads, per_owner_grid, size_bucket, visible_context
from model.features import FeatureSpec
from model.heads import token_item_rows
from streaming.sample import Behavior, Sample, Target
from tests.model.helpers import make_sample, seeded, small_config, small_spec
from trainer.loop import Trainer, TrainerConfig


def _ranker(spec: FeatureSpec, seed: int = 3) -> Ranker:
    model = seeded(Ranker(spec, small_config(cowatch=True, cowatch_rows=64, cowatch_dim=16)), seed=seed).eval()
    assert isinstance(model, Ranker) and model.cowatch is not None
    with torch.no_grad():
        model.cowatch.context.normal_(generator=torch.Generator().manual_seed(seed))  # a "trained" sketch
    return model


def _reference(cw: CoWatch, c_rows: list[int], c_act: torch.Tensor, c_ts: list[float], c_group: list[int],
               c_user: list[int], t_rows: list[int], t_ts: list[float], t_user: list[int]) -> torch.Tensor:
    """Brute force in float64, one target at a time."""
    ctx = cw.context.double()
    out = []
    for tr, tt, tu in zip(t_rows, t_ts, t_user, strict=True):
        vis = [j for j in range(len(c_rows)) if c_user[j] == tu and (
            c_group[j] == TokenGroup.H or (c_group[j] == TokenGroup.R and c_ts[j] < tt))]
        feats = []
        for tau in cw.temperatures:
            if not vis:
                feats.append(torch.zeros(c_act.shape[1], dtype=torch.float64))
                continue
            sims = torch.stack([torch.nn.functional.cosine_similarity(ctx[tr], ctx[c_rows[j]], dim=0) for j in vis])
            w = torch.softmax(sims * tau, dim=0)
            feats.append((w.unsqueeze(1) * c_act[vis].double()).sum(0))
        feats.append(torch.tensor([math.log1p(len(vis))], dtype=torch.float64))
        x = torch.cat(feats)
        z = x @ cw.proj.weight.double().T + cw.proj.bias.double()
        if cw.size_proj is not None:  # the weights of this context size's log2 bucket
            z = z + x @ cw.size_proj[min(int(math.log2(1 + len(vis))), cw.size_buckets - 1)].double()
        out.append(z)
    return torch.stack(out)


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_readout_matches_a_per_target_brute_force(data: st.DataObject) -> None:
    """Only the target's own user's H tokens and strictly earlier R tokens are read; U/T tokens never; with size
    buckets, each target also gets the read weights of its context size's bucket."""
    spec = small_spec()
    cw = CoWatch(spec, action_dim=3, rows=8, dim=4, temperatures=(0.0, 5.0), size_buckets=data.draw(st.integers(0, 4)))
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16)))
    with torch.no_grad():
        cw.context.normal_(generator=g)
        cw.proj.weight.normal_(generator=g)
        cw.proj.bias.normal_(generator=g)
        if cw.size_proj is not None:
            cw.size_proj.normal_(generator=g)
    nc = data.draw(st.integers(0, 12))
    c_rows = data.draw(st.lists(st.integers(0, 7), min_size=nc, max_size=nc))
    c_ts = data.draw(st.lists(st.sampled_from([-5.0, 0.0, 1.0, 2.0, 3.0]), min_size=nc, max_size=nc))
    c_group = data.draw(st.lists(st.sampled_from(list(TokenGroup)), min_size=nc, max_size=nc))
    c_user = data.draw(st.lists(st.integers(0, 2), min_size=nc, max_size=nc))
    nt = data.draw(st.integers(1, 6))
    t_rows = data.draw(st.lists(st.integers(0, 7), min_size=nt, max_size=nt))
    t_ts = data.draw(st.lists(st.sampled_from([0.0, 1.0, 2.0, 3.0]), min_size=nt, max_size=nt))
    t_user = data.draw(st.lists(st.integers(0, 2), min_size=nt, max_size=nt))
    c_act = torch.randn(nc, 3, generator=g)

    def i64(x: list[int]) -> torch.Tensor:
        return torch.tensor(x, dtype=torch.int64)

    got = cw(i64(c_rows), c_act, torch.tensor(c_ts), i64([int(x) for x in c_group]), i64(c_user), i64(t_rows),
             torch.tensor(t_ts), i64(t_user))
    want = _reference(cw, c_rows, c_act, c_ts, [int(x) for x in c_group], c_user, t_rows, t_ts, t_user)
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)


@given(st.lists(st.integers(0, 4), max_size=30), st.integers(0, 3))
def test_per_owner_grid_lists_each_row_once_under_its_owner_in_order(owner: list[int], extra: int) -> None:
    """The per-user blocks the readout runs on: row i sits in its owner's line, owners' rows in their original
    order, padding only after an owner's last row, one line per owner id (owners without rows: empty lines)."""
    n_owners = (max(owner) + 1 if owner else 0) + extra
    grid, valid = per_owner_grid(torch.tensor(owner, dtype=torch.int64), n_owners)
    assert grid.shape == valid.shape and grid.shape[0] == n_owners
    for o in range(n_owners):
        mine = [i for i, x in enumerate(owner) if x == o]
        assert grid[o][valid[o]].tolist() == mine
        assert valid[o].tolist() == [True] * len(mine) + [False] * (grid.shape[1] - len(mine))


def test_observe_counts_each_new_co_occurrence_once() -> None:
    """With an identity basis the sketch is the co-occurrence count matrix itself."""
    spec = small_spec()
    cw = CoWatch(spec, action_dim=4, rows=997, dim=997)  # rows = the item table: no folding
    cw.basis = torch.eye(997)
    items = ["a", "b", "c", "d"]
    row = {i: spec.bucket("item_id", i) % 997 for i in items}
    assert len(set(row.values())) == 4
    hist = [Behavior("a", "home", "click", 1.0), Behavior("a", "home", "like", 2.0), Behavior("b", "home", "skip", 3.0)]
    tgts = [Target(f"e{i}", "r", i, "home", 10.0 + k) for k, i in enumerate(("c", "d"))]
    batch = collate([Sample("s", "u", tgts, history=hist)], spec)
    assert sorted(token_item_rows(batch, 997)[batch.token_group != TokenGroup.U].tolist()) == sorted(
        [row["a"], row["a"], row["b"], row["c"], row["d"]])
    cw.observe(batch)
    c = cw.context

    def n(i: str, j: str) -> float:
        return float(c[row[i], row[j]])

    assert (n("c", "a"), n("c", "b"), n("c", "d"), n("d", "a"), n("d", "b"), n("d", "c")) == (1, 1, 1, 1, 1, 1)
    assert (n("a", "c"), n("a", "d"), n("b", "c"), n("b", "d")) == (1, 1, 1, 1)
    assert (n("a", "b"), n("b", "a"), n("c", "c"), n("a", "a")) == (0, 0, 0, 0)  # old history pairs: counted before
    assert float(c.sum()) == 10


def test_cached_scores_equal_forward_and_the_term_is_live() -> None:
    spec = small_spec()
    model = _ranker(spec)
    batch = collate([make_sample(80, n_tgt=5), make_sample(81, n_hist=0, n_rt=0, n_tgt=2),
                     make_sample(82, n_hist=3, n_rt=6, n_tgt=4)], spec)
    with torch.no_grad():
        full = model(batch)
        cached = model.score_candidates(model.encode_user(batch), batch)
        for task in spec.tasks:
            torch.testing.assert_close(cached[task], full[task], atol=1e-5, rtol=1e-5)
        model.cowatch.context.zero_()  # an empty sketch: every similarity 0, every softmax uniform
        assert not torch.allclose(model(batch)["click"], full["click"])


def test_forward_leaves_the_sketch_and_train_step_observes_after_scoring(tmp_path: Path) -> None:
    spec = small_spec()
    model = Ranker(spec, small_config(cowatch=True, cowatch_rows=64, cowatch_dim=16))
    assert model.cowatch is not None
    batch = collate([make_sample(90, n_tgt=4), make_sample(91, n_tgt=3)], spec)
    model.train()
    model(batch)
    assert not model.cowatch.context.any()  # scoring (even in train mode) never updates the sketch
    trainer = Trainer(TrainerConfig(run_dir=tmp_path, device="cpu"), model, spec, CollectorRegistry())
    trainer.train_step(batch, weight=0.0)  # a lockstep stand-in batch teaches nothing
    assert not model.cowatch.context.any()
    trainer.train_step(batch)
    assert model.cowatch.context.any()


def test_snapshot_round_trip_keeps_the_sketch(tmp_path: Path) -> None:
    from model.snapshot import SnapshotMeta, load_snapshot, save_snapshot

    spec = small_spec()
    model = _ranker(spec, seed=4)
    batch = collate([make_sample(95, n_tgt=3), make_sample(96, n_tgt=2)], spec)
    loaded = load_snapshot(save_snapshot(tmp_path, model, SnapshotMeta(1, 0.0, 0.0, 0))).model
    assert isinstance(loaded, Ranker) and loaded.cowatch is not None
    assert loaded.config == model.config
    assert torch.equal(loaded.cowatch.context, model.cowatch.context)
    assert torch.equal(loaded.cowatch.basis, model.cowatch.basis)  # regenerated from its seed, not stored
    with torch.no_grad():
        for task, z in model(batch).items():
            assert torch.equal(loaded(batch)[task], z)


@given(st.lists(st.integers(0, 10**6), min_size=1, max_size=20), st.integers(1, 24))
def test_size_bucket_is_the_capped_integer_log2(ns: list[int], buckets: int) -> None:
    got = size_bucket(torch.tensor(ns), buckets).tolist()
    assert got == [min((1 + n).bit_length() - 1, buckets - 1) for n in ns]


def test_size_buckets_learn_and_survive_a_snapshot(tmp_path: Path) -> None:
    from model.snapshot import SnapshotMeta, load_snapshot, save_snapshot

    spec = small_spec()
    batch = collate([make_sample(70, n_tgt=5), make_sample(71, n_hist=0, n_rt=2, n_tgt=3),
                     make_sample(72, n_hist=3, n_rt=6, n_tgt=4)], spec)
    models = []
    for buckets in (0, 5):
        torch.manual_seed(11)
        models.append(Ranker(spec, small_config(cowatch=True, cowatch_rows=64, cowatch_dim=16,
                                                cowatch_size_buckets=buckets)))
    plain, bucketed = models
    assert plain.cowatch is not None and plain.cowatch.size_proj is None
    assert bucketed.cowatch is not None and bucketed.cowatch.size_proj is not None
    trainers = [Trainer(TrainerConfig(run_dir=tmp_path / str(i), device="cpu"), m, spec, CollectorRegistry())
                for i, m in enumerate(models)]
    for _ in range(3):  # the first step sees an empty sketch; the later ones read the observed co-occurrences
        for t in trainers:
            t.train_step(batch)
    assert bucketed.cowatch.size_proj.abs().sum() > 0  # reads of different context sizes get their own weights
    plain.eval()
    bucketed.eval()
    with torch.no_grad():
        full = bucketed(batch)
        assert not torch.allclose(full["click"], plain(batch)["click"], atol=1e-6)  # same start, trained apart
        cached = bucketed.score_candidates(bucketed.encode_user(batch), batch)
        for task in spec.tasks:
            torch.testing.assert_close(cached[task], full[task], atol=1e-5, rtol=1e-5)
    loaded = load_snapshot(save_snapshot(tmp_path / "snap", bucketed, SnapshotMeta(1, 0.0, 0.0, 0))).model
    assert isinstance(loaded, Ranker) and loaded.cowatch is not None and loaded.cowatch.size_proj is not None
    assert torch.equal(loaded.cowatch.size_proj, bucketed.cowatch.size_proj)
    with torch.no_grad():
        assert torch.equal(loaded(batch)["click"], full["click"])


def test_size_buckets_at_zero_init_change_nothing() -> None:
    spec = small_spec()
    batch = collate([make_sample(73, n_tgt=4), make_sample(74, n_hist=0, n_rt=0, n_tgt=2)], spec)
    out = []
    for buckets in (0, 9):
        torch.manual_seed(5)
        model = Ranker(spec, small_config(cowatch=True, cowatch_rows=64, cowatch_dim=16,
                                          cowatch_size_buckets=buckets)).eval()
        assert model.cowatch is not None
        with torch.no_grad():
            model.cowatch.context.normal_(generator=torch.Generator().manual_seed(5))
            model.cowatch.proj.weight.normal_(generator=torch.Generator().manual_seed(6))
            out.append(model(batch))
    for task in spec.tasks:
        assert torch.equal(out[0][task], out[1][task])
    with pytest.raises(ValueError, match="cowatch_size_buckets"):
        RankerConfig(cowatch=True, cowatch_size_buckets=-1)


SIGNS = (("click", 1.0), ("like", 1.0), ("skip", -1.0))


def _same_start_pair(spec: FeatureSpec, batch: Batch, seed: int, base: dict[str, object],
                     option: dict[str, object]) -> tuple[Ranker, Ranker]:
    """A co-watch Ranker with ``base`` and one with ``base`` plus ``option``, from the same seed; asserts that the
    option (created last, zero-initialised) changes no initial score."""
    models = []
    for extra in ({}, option):
        torch.manual_seed(seed)
        models.append(Ranker(spec, small_config(cowatch=True, cowatch_rows=64, cowatch_dim=16, **base, **extra)))
    with torch.no_grad():
        for task, z in models[0].eval()(batch).items():
            assert torch.equal(models[1].eval()(batch)[task], z)
    return models[0], models[1]


def _trained_serves_like_forward(model: Ranker, spec: FeatureSpec, batch: Batch,
                                 run_dir: Path) -> dict[str, torch.Tensor]:
    """Three trainer steps on ``batch`` (the first reads an empty sketch, the later ones the observed
    co-occurrences), then asserts that cached scoring equals ``forward``; returns ``forward``'s scores (eval mode)."""
    trainer = Trainer(TrainerConfig(run_dir=run_dir, device="cpu"), model.train(), spec, CollectorRegistry())
    for _ in range(3):
        trainer.train_step(batch)
    model.eval()
    with torch.no_grad():
        full = model(batch)
        cached = model.score_candidates(model.encode_user(batch), batch)
    for task in spec.tasks:
        torch.testing.assert_close(cached[task], full[task], atol=1e-5, rtol=1e-5)
    return full


def test_colike_counts_each_pair_with_the_product_of_its_signs() -> None:
    """With an identity basis the signed sketch is the agreement matrix: +1 for a pair liked or passed over
    together, -1 for a split pair; actions without a sign are not counted."""
    spec = small_spec()
    cl = CoLike(spec, action_dim=4, rows=997, dim=997, signs=SIGNS)
    cl.basis = torch.eye(997)
    items = ["a", "b", "c", "d", "e"]
    row = {i: spec.bucket("item_id", i) % 997 for i in items}
    assert len(set(row.values())) == 5
    hist = [Behavior("a", "home", "click", 1.0), Behavior("a", "home", "like", 2.0), Behavior("b", "home", "skip", 3.0),
            Behavior("e", "home", "view", 4.0)]  # "view" has no sign
    tgts = [Target("e1", "r", "c", "home", 10.0, labels={"click": 1}),
            Target("e2", "r", "d", "home", 11.0, labels={"click": 0})]
    cl.observe(collate([Sample("s", "u", tgts, history=hist)], spec))
    c = cl.context

    def n(i: str, j: str) -> float:
        return float(c[row[i], row[j]])

    assert (n("c", "a"), n("c", "b"), n("c", "d"), n("d", "a"), n("d", "b"), n("d", "c")) == (1, -1, -1, -1, 1, -1)
    assert (n("a", "c"), n("a", "d"), n("b", "c"), n("b", "d")) == (1, -1, -1, 1)
    assert not c[row["e"]].any() and not c[:, row["e"]].any()
    assert (n("a", "b"), n("c", "c")) == (0, 0)
    assert float(c.abs().sum()) == 10
    cl.context.zero_()  # an item the context holds both liked and skipped counts both ways: they cancel
    both = [Behavior("a", "home", "click", 1.0), Behavior("a", "home", "skip", 2.0)]
    cl.observe(collate([Sample("s2", "u", tgts[:1], history=both)], spec))
    assert (n("c", "a"), n("a", "c")) == (0, 0)


def test_colike_starts_at_zero_then_learns_and_serves_like_forward(tmp_path: Path) -> None:
    from model.snapshot import SnapshotMeta, load_snapshot, save_snapshot

    spec = small_spec()
    batch = collate([make_sample(60, n_tgt=5), make_sample(61, n_hist=0, n_rt=2, n_tgt=3),
                     make_sample(62, n_hist=3, n_rt=6, n_tgt=4)], spec)
    plain, signed = _same_start_pair(spec, batch, 13, {}, {"colike_signs": SIGNS})
    assert plain.colike is None and signed.colike is not None
    full = _trained_serves_like_forward(signed, spec, batch, tmp_path)
    assert signed.colike.context.any() and signed.colike.proj.weight.any()
    with torch.no_grad():
        signed.colike.context.zero_()
        assert not torch.allclose(signed(batch)["click"], full["click"])  # the signed readout is live
    loaded = load_snapshot(save_snapshot(tmp_path / "snap", signed, SnapshotMeta(1, 0.0, 0.0, 0))).model
    assert isinstance(loaded, Ranker) and loaded.colike is not None and loaded.config == signed.config
    assert torch.equal(loaded.colike.context, signed.colike.context)
    assert RankerConfig.from_json(signed.config.to_json()).colike_signs == SIGNS
    with pytest.raises(ValueError, match="colike_signs"):
        RankerConfig(cowatch=True, colike_signs=(("click", 2.0),))


def test_item_baseline_reads_each_context_action_minus_its_items_learned_baseline() -> None:
    spec = small_spec()
    batch = collate([make_sample(80, n_tgt=3), make_sample(81, n_hist=0, n_rt=3, n_tgt=2)], spec)
    torch.manual_seed(7)
    model = Ranker(spec, small_config(cowatch=True, cowatch_rows=64, cowatch_dim=16, cowatch_item_baseline=True))
    assert model.cw_baseline is not None
    with torch.no_grad():
        model.cw_baseline.weight.normal_(generator=torch.Generator().manual_seed(8))
    raw: dict[TokenGroup, torch.Tensor] = {}
    model.embedder(batch, inputs=raw)
    got = model._actions(batch, raw, batch.num_tokens)
    (a0, a1), n_item = model._action_cols, model._item_cols
    w = model.cw_baseline.weight.double()  # (a, item columns)
    expected = torch.zeros(batch.num_tokens, a1 - a0, dtype=torch.float64)
    for g in (TokenGroup.H, TokenGroup.R):  # token by token: its action minus W x its item embeddings
        for row, feats in zip(batch.group_rows[g].tolist(), raw[g].double(), strict=True):
            expected[row] = feats[a0:a1] - w @ feats[:n_item]
    torch.testing.assert_close(got.double(), expected, atol=1e-6, rtol=1e-6)
    ctx = (batch.token_group == TokenGroup.H) | (batch.token_group == TokenGroup.R)
    assert not got[~ctx].any() and got[ctx].any()  # U and T tokens read nothing
    assert Ranker(spec, small_config(cowatch_item_baseline=True)).cw_baseline is None  # needs the readout


def test_item_baseline_starts_at_zero_then_learns_and_serves_like_forward(tmp_path: Path) -> None:
    from model.snapshot import SnapshotMeta, load_snapshot, save_snapshot

    spec = small_spec()
    batch = collate([make_sample(82, n_tgt=5), make_sample(83, n_hist=0, n_rt=2, n_tgt=3),
                     make_sample(84, n_hist=3, n_rt=6, n_tgt=4)], spec)
    plain, adjusted = _same_start_pair(spec, batch, 17, {"colike_signs": SIGNS}, {"cowatch_item_baseline": True})
    assert plain.cw_baseline is None and adjusted.cw_baseline is not None
    full = _trained_serves_like_forward(adjusted, spec, batch, tmp_path)
    assert adjusted.cw_baseline.weight.any()  # trained through the reads
    with torch.no_grad():
        saved = adjusted.cw_baseline.weight.clone()
        adjusted.cw_baseline.weight.zero_()
        assert not torch.allclose(adjusted(batch)["click"], full["click"])  # the baseline is live
        adjusted.cw_baseline.weight.copy_(saved)
    loaded = load_snapshot(save_snapshot(tmp_path / "snap", adjusted, SnapshotMeta(1, 0.0, 0.0, 0))).model
    assert isinstance(loaded, Ranker) and loaded.config.cowatch_item_baseline and loaded.cw_baseline is not None
    assert torch.equal(loaded.cw_baseline.weight, adjusted.cw_baseline.weight)
    with torch.no_grad():
        assert torch.equal(loaded(batch)["click"], full["click"])


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_recent_reads_average_each_targets_last_k_visible_actions(data: st.DataObject) -> None:
    """Brute force in float64: per target, its own user's H tokens and strictly earlier R tokens in sequence order,
    the mean action over the last k of them (zeros with none)."""
    ks = tuple(data.draw(st.lists(st.integers(1, 5), min_size=1, max_size=3)))
    rr = RecentReads(action_dim=2, tasks=1, ks=ks)
    nc = data.draw(st.integers(0, 12))
    c_ts = data.draw(st.lists(st.sampled_from([-5.0, 0.0, 1.0, 2.0, 3.0]), min_size=nc, max_size=nc))
    c_group = data.draw(st.lists(st.sampled_from([int(g) for g in TokenGroup]), min_size=nc, max_size=nc))
    c_user = data.draw(st.lists(st.integers(0, 2), min_size=nc, max_size=nc))
    nt = data.draw(st.integers(1, 6))
    t_ts = data.draw(st.lists(st.sampled_from([0.0, 1.0, 2.0, 3.0]), min_size=nt, max_size=nt))
    t_user = data.draw(st.lists(st.integers(0, 2), min_size=nt, max_size=nt))
    c_act = torch.randn(nc, 2, generator=torch.Generator().manual_seed(data.draw(st.integers(0, 2**16))))
    got = rr.reads(c_act, torch.tensor(c_ts), torch.tensor(c_group, dtype=torch.int64),
                   torch.tensor(c_user, dtype=torch.int64), torch.tensor(t_ts), torch.tensor(t_user, dtype=torch.int64))
    want = []
    for tt, tu in zip(t_ts, t_user, strict=True):
        vis = [j for j in range(nc) if c_user[j] == tu and (
            c_group[j] == TokenGroup.H or (c_group[j] == TokenGroup.R and c_ts[j] < tt))]
        want.append(torch.cat([c_act[vis[-k:]].double().mean(0) if vis else torch.zeros(2, dtype=torch.float64)
                               for k in ks]))
    torch.testing.assert_close(got.double(), torch.stack(want), atol=1e-6, rtol=1e-6)


def test_recent_reads_start_at_zero_then_learn_and_serve_like_forward(tmp_path: Path) -> None:
    from model.snapshot import SnapshotMeta, load_snapshot, save_snapshot

    spec = small_spec()
    batch = collate([make_sample(85, n_tgt=5), make_sample(86, n_hist=0, n_rt=2, n_tgt=3),
                     make_sample(87, n_hist=3, n_rt=6, n_tgt=4)], spec)
    base = {"colike_signs": SIGNS, "cowatch_item_baseline": True}
    plain, recent = _same_start_pair(spec, batch, 19, base, {"cowatch_recent": (2, 8), "cowatch_recent_similar": 3})
    assert plain.recent is None and recent.recent is not None and recent.recent.sim_proj is not None
    full = _trained_serves_like_forward(recent, spec, batch, tmp_path)
    for proj in (recent.recent.proj, recent.recent.sim_proj):  # both terms trained and live
        assert proj.weight.any()
        with torch.no_grad():
            saved = proj.weight.clone()
            proj.weight.zero_()
            assert not torch.allclose(recent(batch)["click"], full["click"])
            proj.weight.copy_(saved)
    loaded = load_snapshot(save_snapshot(tmp_path / "snap", recent, SnapshotMeta(1, 0.0, 0.0, 0))).model
    assert isinstance(loaded, Ranker) and loaded.config.cowatch_recent == (2, 8) and loaded.recent is not None
    with torch.no_grad():
        assert torch.equal(loaded(batch)["click"], full["click"])
    assert Ranker(spec, small_config(cowatch_recent=(4,))).recent is None  # needs the readout
    with pytest.raises(ValueError, match="cowatch_recent"):
        RankerConfig(cowatch=True, cowatch_recent=(0,))


def test_recent_similar_reads_softmax_over_the_last_window_visible_tokens_only() -> None:
    """Brute force: the similarity reads weigh only the target's last ``window`` visible tokens, softmax(tau cos)."""
    rr = RecentReads(action_dim=2, tasks=1, ks=(1,), similar_window=2, temperatures=(3.0,))
    H, R = int(TokenGroup.H), int(TokenGroup.R)
    g = torch.Generator().manual_seed(5)
    c_act, emb = torch.randn(5, 2, generator=g), torch.nn.functional.normalize(torch.randn(6, 4, generator=g), dim=-1)
    c_ts, c_group = torch.tensor([0.0, 0.0, 0.0, 1.0, 4.0]), torch.tensor([H, H, H, R, R])
    user = torch.zeros(5, dtype=torch.int64)
    v = visible_context(c_ts, c_group, user, torch.tensor([2.0]), torch.zeros(1, dtype=torch.int64))
    sim = emb[5:][v.t_grid] @ emb[:5][v.c_grid].transpose(1, 2)  # (U, Lt, Lc) cosines on the blocks
    got = RecentReads._read(c_act, v, rr._similar(v, sim))
    last = [2, 3]  # visible: tokens 0-3 (the R token at ts 4 is later); the last two of them
    w = torch.softmax(3.0 * (emb[last] @ emb[5]), dim=0)
    torch.testing.assert_close(got[0], (w.unsqueeze(1) * c_act[last]).sum(0))
