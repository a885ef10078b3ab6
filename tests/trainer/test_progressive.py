"""Progressive-validation metrics against brute-force definitions (hypothesis) and checkpoint round-trips."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from trainer.progressive import ProgressiveConfig, ProgressiveValidator, exact_auc, grouped_auc


def brute_auc(p: list[float], y: list[int]) -> float:
    pos = [a for a, b in zip(p, y, strict=True) if b == 1]
    neg = [a for a, b in zip(p, y, strict=True) if b == 0]
    if not pos or not neg:
        return math.nan
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a in pos for b in neg)
    return wins / (len(pos) * len(neg))


def brute_gauc(p: list[float], y: list[int], g: list[int]) -> float:
    num = den = 0.0
    for user in set(g):
        idx = [i for i, u in enumerate(g) if u == user]
        a = brute_auc([p[i] for i in idx], [y[i] for i in idx])
        if not math.isnan(a):
            num += a * len(idx)
            den += len(idx)
    return num / den if den else math.nan


# Coarse scores so ties are frequent (ties must count one half).
scores = st.lists(st.tuples(st.sampled_from([0.1, 0.2, 0.25, 0.5, 0.9]), st.integers(0, 1), st.integers(0, 4)),
                  min_size=1, max_size=60)


@settings(max_examples=60, deadline=None)
@given(scores)
def test_exact_auc_matches_pairwise_count(rows: list[tuple[float, int, int]]) -> None:
    p, y, _ = map(list, zip(*rows, strict=True))
    got = exact_auc(torch.tensor(p), torch.tensor(y, dtype=torch.float32))
    want = brute_auc(p, y)
    assert (math.isnan(got) and math.isnan(want)) or abs(got - want) < 1e-6


@settings(max_examples=60, deadline=None)
@given(scores)
def test_grouped_auc_matches_per_user_pairwise_count(rows: list[tuple[float, int, int]]) -> None:
    p, y, g = map(list, zip(*rows, strict=True))
    num, den = grouped_auc(torch.tensor(p), torch.tensor(y, dtype=torch.float32), torch.tensor(g))
    want = brute_gauc(p, y, g)
    got = num / den if den else math.nan
    assert (math.isnan(got) and math.isnan(want)) or abs(got - want) < 1e-9


def _feed(pv: ProgressiveValidator, rows: list[tuple[float, int, int]], scenario: str = "home") -> None:
    p, y, g = map(list, zip(*rows, strict=True))
    pv.update({"click": torch.tensor(p)}, {"click": torch.tensor(y, dtype=torch.float32)},
              scenarios=[scenario] * len(p), user_ids=[f"u{u}" for u in g])


@settings(max_examples=30, deadline=None)
@given(scores, st.integers(1, 7))
def test_window_holds_exactly_the_last_targets_and_lifetime_all(rows: list[tuple[float, int, int]], chunk: int) -> None:
    window = 16
    pv = ProgressiveValidator(ProgressiveConfig(window=window, auc_thresholds=10_001))
    for i in range(0, len(rows), chunk):  # arbitrary batch boundaries must not matter
        _feed(pv, rows[i : i + chunk])
    p, y, g = map(list, zip(*rows, strict=True))
    out = pv.compute()["overall"]["click"]
    last = slice(max(0, len(p) - window), len(p))
    w = out["window"]
    assert w["count"] == min(window, len(p))
    want_auc = brute_auc(p[last], y[last])
    assert (math.isnan(w["auc"]) and math.isnan(want_auc)) or abs(w["auc"] - want_auc) < 1e-6
    want_gauc = brute_gauc(p[last], y[last], g[last])
    assert (math.isnan(w["gauc"]) and math.isnan(want_gauc)) or abs(w["gauc"] - want_gauc) < 1e-9
    life = out["lifetime"]
    assert life["count"] == len(p)
    want_life = brute_auc(p, y)  # scores are on the 1e-4 grid, so 10_001 thresholds are exact
    assert (math.isnan(life["auc"]) and math.isnan(want_life)) or abs(life["auc"] - want_life) < 1e-6
    ll = -sum(math.log(a) if b else math.log(1 - a) for a, b in zip(p, y, strict=True)) / len(p)
    assert abs(life["logloss"] - ll) < 1e-6
    if sum(y):
        assert abs(life["calibration"] - sum(p) / sum(y)) < 1e-6
    # Lifetime GAUC = impression-weighted over consecutive blocks of `window` targets (+ the partial block).
    num = den = 0.0
    for s in range(0, len(p), window):
        blk = slice(s, min(len(p), s + window))
        n, d = grouped_auc(torch.tensor(p[blk]), torch.tensor(y[blk], dtype=torch.float32), torch.tensor(g[blk]))
        num, den = num + n, den + d
    want_lg = num / den if den else math.nan
    assert (math.isnan(life["gauc"]) and math.isnan(want_lg)) or abs(life["gauc"] - want_lg) < 1e-9


def test_per_scenario_split_and_known_values() -> None:
    pv = ProgressiveValidator(ProgressiveConfig(window=100, auc_thresholds=101))
    pv.update({"click": torch.tensor([0.9, 0.2, 0.7, 0.4]), "conversion": torch.tensor([0.5, 0.5, 0.5, 0.5])},
              {"click": torch.tensor([1.0, 0.0, 0.0, 1.0]), "conversion": torch.tensor([0.0, 0.0, 0.0, 1.0])},
              scenarios=["home", "home", "search", "search"], user_ids=["a", "a", "b", "b"])
    out = pv.compute()
    assert set(out["scenarios"]) == {"home", "search"}
    assert out["scenarios"]["home"]["click"]["window"]["auc"] == 1.0
    assert out["scenarios"]["search"]["click"]["window"]["auc"] == 0.0
    assert out["overall"]["click"]["window"]["auc"] == 0.75
    assert out["overall"]["conversion"]["window"]["auc"] == 0.5  # all tied
    assert abs(out["overall"]["conversion"]["lifetime"]["calibration"] - 2.0) < 1e-9
    assert math.isnan(out["scenarios"]["home"]["conversion"]["window"]["auc"])  # one class only


def test_state_round_trip_continues_identically() -> None:
    cfg = ProgressiveConfig(window=8, auc_thresholds=101)
    g = torch.Generator().manual_seed(0)
    rows = [(round(float(torch.rand(1, generator=g)), 2), int(torch.rand(1, generator=g) > 0.5), i % 3)
            for i in range(50)]
    a = ProgressiveValidator(cfg)
    _feed(a, rows[:21])
    b = ProgressiveValidator(cfg)
    b.load_state_dict(a.state_dict())
    _feed(a, rows[21:])
    _feed(b, rows[21:])
    assert a.compute() == b.compute() or repr(a.compute()) == repr(b.compute())  # NaN-safe equality


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from([0.0, 0.25, 0.5, 1.0]) | st.floats(0.0, 1.0, width=32), st.integers(0, 1)),
             max_size=300),
    st.sampled_from([2, 3, 11, 1000]),
    st.booleans(),
)
def test_binned_confmat_equals_torchmetrics_update(rows: list[tuple[float, int]], thresholds: int,
                                                   logits: bool) -> None:
    """The vectorised lifetime-AUC update adds exactly what torchmetrics' binned BinaryAUROC.update adds (ties on
    thresholds included; inputs outside [0, 1] get torchmetrics' sigmoid)."""
    from torchmetrics.classification import BinaryAUROC

    from trainer.progressive import binned_confmat

    p = torch.tensor([r[0] for r in rows], dtype=torch.float32)
    if logits:
        p = (p - 0.5) * 20
    y = torch.tensor([float(r[1]) for r in rows])
    metric = BinaryAUROC(thresholds=thresholds, validate_args=False)
    metric.update(p, y.long())
    assert torch.equal(binned_confmat(p, y, metric.thresholds), metric.confmat)


def test_a_scenario_named_all_is_its_own_row_and_overall_counts_each_target_once() -> None:
    """Scenario names are open strings: ``all`` (or ``*``, or the empty string) is a scenario like any other and
    never merges into the overall aggregate, in ``compute()``, in the checkpoint state and in Prometheus."""
    from prometheus_client import CollectorRegistry

    from trainer.metrics import TrainerMetrics

    pv = ProgressiveValidator(ProgressiveConfig(window=100, auc_thresholds=101))
    scen = ["all", "all", "*", "search", "overall", ""]
    pv.update({"click": torch.tensor([0.9, 0.2, 0.7, 0.4, 0.6, 0.3])},
              {"click": torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 0.0])},
              scenarios=scen, user_ids=["a", "a", "b", "b", "c", "c"])
    out = pv.compute()
    assert out["overall"]["click"]["lifetime"]["count"] == 6  # every target once (not 8: "all" counted twice)
    assert out["overall"]["click"]["window"]["auc"] == pytest.approx(brute_auc([0.9, 0.2, 0.7, 0.4, 0.6, 0.3],
                                                                               [1, 0, 0, 1, 1, 0]))
    assert set(out["scenarios"]) == set(scen)
    assert out["scenarios"]["all"]["click"]["lifetime"]["count"] == 2
    assert out["scenarios"]["all"]["click"]["window"]["auc"] == 1.0
    assert out["scenarios"]["overall"]["click"]["lifetime"]["count"] == 1

    b = ProgressiveValidator(pv.config)  # the checkpoint state keeps them apart too
    b.load_state_dict(pv.state_dict())
    assert repr(b.compute()) == repr(out)

    reg = CollectorRegistry()
    TrainerMetrics(reg).set_quality(out)
    count = "streamrec_trainer_progressive_targets"
    assert reg.get_sample_value(count, {"scope": "overall", "scenario": "", "task": "click",
                                        "window": "lifetime"}) == 6.0
    for s, n in (("all", 2.0), ("*", 1.0), ("overall", 1.0), ("", 1.0)):
        assert reg.get_sample_value(count, {"scope": "scenario", "scenario": s, "task": "click",
                                            "window": "lifetime"}) == n


def test_a_state_saved_with_the_old_all_key_loads_all_as_the_overall() -> None:
    """Checkpoints written before the overall aggregate had its own key (``"all\x1f<task>"``) still resume."""
    pv = ProgressiveValidator(ProgressiveConfig(window=8, auc_thresholds=101))
    _feed(pv, [(0.9, 1, 0), (0.2, 0, 0), (0.6, 1, 1)])
    new = pv.state_dict()
    old = {"window": 8, "auc_thresholds": 101,
           "streams": {"all\x1fclick": new["overall"]["click"], "home\x1fclick": new["scenarios"]["home"]["click"]}}
    b = ProgressiveValidator(pv.config)
    b.load_state_dict(old)
    assert repr(b.compute()) == repr(pv.compute())
