"""The CPU inference fast paths equal their references (hypothesis over awkward shapes).

* :func:`model.batch.collate` (memoised hashing, array-built tensors) == :func:`model.reference.collate_reference`, bit for bit;
* :func:`kernels.hta_attention` on CPU without grad (SDPA, no padding for one user) == ``hta_attention_reference``;
* :func:`kernels.attention.hta_target_attention_cpu` (context scores + self term) == the reference on the merged
  ``[context, targets]`` sequence, target rows only;
* ``group_layer_norm`` on one group (fused ``layer_norm``) == the reference;
* ``Ranker.forward`` / ``encode_user`` + ``score_candidates`` with the fast paths == the same under
  ``Kernel.REFERENCE`` (every fast path off).

Empty history, one target, many targets, R events tied with targets' timestamps, several users, GQA and MHA.
"""

from __future__ import annotations

import dataclasses
import math
import random
from typing import cast

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kernels.attention import (
    AttentionKind,
    TokenGroup,
    hta_attention,
    hta_attention_reference,
    hta_target_attention_cpu,
)
from kernels.dispatch import Kernel, get_kernel, set_kernel
from kernels.group_norm import group_layer_norm, group_layer_norm_reference
from model import Ranker
from model.batch import Batch, collate
from model.reference import collate_reference
from streaming.sample import Behavior, Sample, Target
from tests.model.helpers import make_sample, seeded, small_config, small_spec

SPEC = small_spec()
SLOW_OK = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def same(x: torch.Tensor, y: torch.Tensor) -> bool:
    """Bitwise-equal values and dtype (NaN equals NaN)."""
    return x.dtype == y.dtype and x.shape == y.shape and bool(((x == y) | (x.isnan() & y.isnan())).all())


def assert_same_batch(a: Batch, b: Batch) -> None:
    for f in dataclasses.fields(Batch):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if f.name in ("sparse", "float_features"):
            assert x.keys() == y.keys()
            assert same(x.values(), y.values()) and same(x.lengths(), y.lengths()), f.name
            if x.weights_or_none() is not None or y.weights_or_none() is not None:
                assert same(x.weights(), y.weights()), f.name
        elif isinstance(x, torch.Tensor):
            assert same(x, y), f.name
        elif isinstance(x, tuple) and x and isinstance(x[0], torch.Tensor):
            assert all(same(p, q) for p, q in zip(x, y, strict=True)), f.name
        elif isinstance(x, dict):
            assert x.keys() == y.keys() and all(same(x[k], y[k]) for k in x), f.name
        else:
            assert x == y, f.name


# -- collate ---------------------------------------------------------------------------------------------------------
floats = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**6, 10**6), st.just(-0.0))


@st.composite
def samples(draw: st.DrawFn) -> Sample:
    uid = draw(st.sampled_from(["u1", "u2", "ü"]))
    t0 = 1.7e9
    n_h, n_r, n_t = draw(st.integers(0, 5)), draw(st.integers(0, 3)), draw(st.integers(0, 6))
    ts = st.one_of(st.floats(t0 - 1e5, t0 + 100), st.just(float("nan")), st.just(t0))
    keys = st.sampled_from(["a", "b", "cat", "x=y"])
    feat = st.dictionaries(keys, st.sampled_from(["1", "2", "", "é"]), max_size=3)
    beh = st.builds(Behavior, st.sampled_from(["i1", "i2", "i3"]), st.sampled_from(["home", "new"]),
                    st.sampled_from(["click", "order"]), ts, feat)
    tgts = [Target(f"e{j}", "r", draw(st.sampled_from(["i1", "i9"])), draw(st.sampled_from(["home", "x"])),
                   draw(st.floats(t0, t0 + 100)), position=draw(st.sampled_from([None, -1, 0, 3])),
                   item=draw(feat), context=draw(feat), dense=draw(st.dictionaries(keys, floats, max_size=3)),
                   cross=draw(st.dictionaries(keys, floats, max_size=3)),
                   labels=draw(st.dictionaries(st.sampled_from(["click", "conversion"]), st.integers(0, 1))))
            for j in range(n_t)]
    return Sample("s", uid, tgts, user=draw(feat), history=[draw(beh) for _ in range(n_h)],
                  realtime=[draw(beh) for _ in range(n_r)], span_start=draw(st.sampled_from([0.0, t0])))


@SLOW_OK
@given(ss=st.lists(samples(), max_size=3), max_history=st.sampled_from([0, 2, 256]), mc=st.booleans())
def test_collate_equals_reference(ss: list[Sample], max_history: int, mc: bool) -> None:
    spec = dataclasses.replace(SPEC, max_history=max_history, max_realtime=2, managed_collision=mc)
    assert_same_batch(collate(ss, spec), collate_reference(ss, spec))


def test_collate_rejects_non_numeric_float_features_like_reference() -> None:
    s = Sample("s", "u", [Target("e", "r", "i", "home", 1.0, dense={"price": "12"})])  # type: ignore[dict-item]
    with pytest.raises(TypeError):
        collate_reference([s], SPEC)
    with pytest.raises(TypeError):
        collate([s], SPEC)


# -- attention -------------------------------------------------------------------------------------------------------
def layout(rng: random.Random, n_users: int, max_ctx: int, max_t: int, ties: bool
           ) -> tuple[list[int], list[int], torch.Tensor, torch.Tensor]:
    """Per user [U.., H.., R.., T..]: context lengths, target counts, key ts (with R/T ties) and groups."""
    ctx_lens, t_lens, ts, grp = [], [], [], []
    for _ in range(n_users):
        n_u, n_h, n_r = rng.randint(0, 2), rng.randint(0, max_ctx), rng.randint(0, 4)
        n_t = rng.randint(1, max_t)
        t_ts = [float(rng.choice([0, 10, 20]) if ties else rng.uniform(0, 30)) for _ in range(n_t)]
        r_ts = [float(rng.choice([0, 10, 20, 30]) if ties else rng.uniform(-5, 30)) for _ in range(n_r)]
        ts += [-math.inf] * n_u + [rng.uniform(-1e4, -1) for _ in range(n_h)] + r_ts + t_ts
        grp += [TokenGroup.U] * n_u + [TokenGroup.H] * n_h + [TokenGroup.R] * n_r + [TokenGroup.T] * n_t
        ctx_lens.append(n_u + n_h + n_r)
        t_lens.append(n_t)
    return ctx_lens, t_lens, torch.tensor(ts, dtype=torch.float32), torch.tensor(grp, dtype=torch.int64)


def offsets(lens: list[int]) -> torch.Tensor:
    return torch.tensor([0, *torch.tensor(lens, dtype=torch.int64).cumsum(0).tolist()], dtype=torch.int64)


@SLOW_OK
@given(seed=st.integers(0, 10_000), n_users=st.integers(1, 3), max_ctx=st.integers(0, 12), max_t=st.integers(1, 9),
       ties=st.booleans(), hkv=st.sampled_from([1, 3]), kind=st.sampled_from(list(AttentionKind)),
       only_targets=st.booleans())
def test_cpu_attention_equals_reference(seed: int, n_users: int, max_ctx: int, max_t: int, ties: bool, hkv: int,
                                        kind: AttentionKind, only_targets: bool) -> None:
    rng = random.Random(seed)
    g = torch.Generator().manual_seed(seed)
    ctx_lens, t_lens, ts, grp = layout(rng, n_users, max_ctx, max_t, ties)
    seq = [c + t for c, t in zip(ctx_lens, t_lens, strict=True)]
    kv_off = offsets(seq)
    Nk, D = int(kv_off[-1]), 8
    k, v = torch.randn(Nk, hkv, D, generator=g), torch.randn(Nk, hkv, D, generator=g)
    if only_targets:  # a target layer: T rows are the queries
        q_off, q_pos = offsets(t_lens), torch.cat([torch.arange(c, c + t) for c, t in zip(ctx_lens, t_lens, strict=True)])
        max_q = max(t_lens)
    else:  # a full layer
        q_off, q_pos, max_q = kv_off, torch.cat([torch.arange(n) for n in seq]), max(seq)
    q = torch.randn(int(q_off[-1]), 3, D, generator=g)
    args = (q, k, v, q_off, kv_off, q_pos, ts, grp, max_q, max(seq))
    ref = hta_attention_reference(*args, kind=kind)
    with torch.inference_mode():
        fast = hta_attention(*args, kind=kind)
    torch.testing.assert_close(fast, ref, atol=2e-5, rtol=2e-5)
    if not only_targets:
        return
    # the target-only path: the same target rows from context keys + each target's own key
    is_t = grp == TokenGroup.T
    out = hta_target_attention_cpu(q, k[is_t], v[is_t], q_off, ts[is_t], k[~is_t], v[~is_t], offsets(ctx_lens),
                                   ts[~is_t], grp[~is_t], max_q, max(ctx_lens), kind=kind)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=2e-5)


def test_target_attention_without_context_is_the_own_value() -> None:
    q, k, v = torch.randn(4, 3, 8), torch.randn(4, 1, 8), torch.randn(4, 1, 8)
    empty = torch.zeros(0, 1, 8)
    out = hta_target_attention_cpu(q, k, v, torch.tensor([0, 4]), torch.zeros(4), empty, empty, torch.tensor([0, 0]),
                                   torch.zeros(0), torch.zeros(0, dtype=torch.int64), 4, 0)
    torch.testing.assert_close(out, v.expand(4, 3, 8))


@SLOW_OK
@given(seed=st.integers(0, 10_000), n=st.integers(0, 20), grp=st.integers(0, 3))
def test_single_group_layer_norm_equals_reference(seed: int, n: int, grp: int) -> None:
    g = torch.Generator().manual_seed(seed)
    x, w, b = torch.randn(n, 16, generator=g), torch.randn(4, 16, generator=g), torch.randn(4, 16, generator=g)
    group = torch.full((n,), grp, dtype=torch.int64)
    with torch.inference_mode():
        fast = group_layer_norm(x, group, w, b)
    torch.testing.assert_close(fast, group_layer_norm_reference(x, group, w, b), atol=1e-5, rtol=1e-5)


# -- the whole model -------------------------------------------------------------------------------------------------
MODELS: dict[AttentionKind, Ranker] = {
    kind: cast(Ranker, seeded(Ranker(SPEC, small_config(attention=kind)).eval(), seed=3)) for kind in AttentionKind
}


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seeds=st.lists(st.integers(0, 10_000), min_size=1, max_size=3), n_hist=st.integers(0, 8),
       n_rt=st.integers(0, 4), n_tgt=st.integers(1, 12), kind=st.sampled_from(list(AttentionKind)))
def test_ranker_fast_paths_equal_reference(seeds: list[int], n_hist: int, n_rt: int, n_tgt: int,
                                           kind: AttentionKind) -> None:
    model = MODELS[kind]
    batch = collate([make_sample(s, n_hist=n_hist, n_rt=n_rt, n_tgt=n_tgt) for s in seeds], SPEC)
    with torch.inference_mode():
        fast_full = model(batch)
        fast_cached = model.score_candidates(model.encode_user(batch), batch)
        before = get_kernel()
        set_kernel(Kernel.REFERENCE)
        try:
            ref_full = model(batch)
            ref_cached = model.score_candidates(model.encode_user(batch), batch)
        finally:
            set_kernel(before)
    for task in SPEC.tasks:
        torch.testing.assert_close(fast_full[task], ref_full[task], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(fast_cached[task], ref_cached[task], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(fast_cached[task], ref_full[task], atol=1e-5, rtol=1e-5)
