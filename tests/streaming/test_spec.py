"""The sample spec (streaming/spec.py): one owner of L, max targets, tasks and the cross layout; its JSON; the one
history trim (keep_last) every producer and consumer of histories uses."""

from __future__ import annotations

import dataclasses
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from model.contract import problems
from model.features import FeatureSpec
from model.heads import CrossRates
from model.presets import PRESETS
from streaming.config import CoreConfig
from streaming.cross import DIMS, CrossSpec, feature_names, lifetime_count_names, squash, unsquash_count
from streaming.spec import DEFAULT_HISTORY_LEN, DEFAULT_MAX_TARGETS, SampleSpec, keep_last, spec_topic
from streaming.user_state import UserState


@given(st.lists(st.integers(), max_size=40), st.integers(min_value=0, max_value=60))
def test_keep_last_is_the_n_most_recent(seq: list[int], n: int) -> None:
    got = keep_last(seq, n)
    assert got == (seq[len(seq) - n:] if n < len(seq) else seq)  # slicing without the -0 trap
    assert len(got) == min(n, len(seq)) and got is not seq
    assert keep_last(seq, 0) == []


def test_keep_last_refuses_a_negative_length() -> None:
    with pytest.raises(ValueError, match="n must be >= 0"):
        keep_last([1, 2, 3], -1)  # [1, 2, 3][1:] would silently drop the oldest instead


def test_json_round_trip_and_fingerprint() -> None:
    spec = SampleSpec(history_len=64, max_targets=8, cross=CrossSpec(category_key="genre", windows_s=(1800.0,)))
    d = spec.to_json()
    assert SampleSpec.from_json(d) == spec
    assert SampleSpec.from_json(spec.encode()) == spec
    assert SampleSpec.from_json(json.dumps(d)) == spec
    assert d["spec_version"] == 1 and d["hash"] == spec.fingerprint()
    assert d["cross"]["dims"] == list(DIMS) and d["cross"]["windows"] == ["30m", "life"]
    assert d["cross"]["features"] == feature_names(spec.cross)
    assert spec.fingerprint() != SampleSpec().fingerprint()
    assert SampleSpec(history_len=64).fingerprint() == SampleSpec(history_len=64).fingerprint()


@pytest.mark.parametrize(("change", "match"), [
    ({"spec_version": 2}, "unsupported spec_version 2"),
    ({"history_len": -1}, "history_len must be >= 0"),
    ({"hash": "0" * 16}, "hash"),
    ({"max_targets": None}, "bad sample spec"),
])
def test_from_json_rejects_bad_records(change: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SampleSpec.from_json({**SampleSpec().to_json(), **change})


def test_from_json_rejects_a_cross_layout_derived_differently() -> None:
    d = SampleSpec().to_json()
    d["cross"]["dims"] = ["scn", "all"]  # a writer whose streaming.cross has other dims
    with pytest.raises(ValueError, match=r"cross\.dims"):
        SampleSpec.from_json(d)


def test_differences_name_both_values() -> None:
    a, b = SampleSpec(history_len=256), SampleSpec(history_len=64, cross=CrossSpec(windows_s=(3600.0,)))
    assert a.differences(b, "here", "in samples.spec") == [
        "history_len 256 here, 64 in samples.spec", "cross.windows ['1h', '1d', 'life'] here, ['1h', 'life'] in "
                                                   "samples.spec"]
    assert a.differences(SampleSpec()) == []


def test_one_default_l_everywhere() -> None:
    assert CoreConfig().history_len == UserState("u").history_len == FeatureSpec().max_history == DEFAULT_HISTORY_LEN
    assert PRESETS["base"].max_history == DEFAULT_HISTORY_LEN
    assert CoreConfig().max_targets == DEFAULT_MAX_TARGETS
    cfg = CoreConfig(history_len=32, max_targets=8, cross=CrossSpec(category_key="genre"))
    assert cfg.sample_spec() == SampleSpec(history_len=32, max_targets=8, cross=CrossSpec(category_key="genre"))
    assert cfg.sample_spec().tasks == cfg.tasks
    assert spec_topic("samples") == "samples.spec"


@given(st.integers(min_value=0, max_value=10**7))
def test_unsquash_count_inverts_squash(n: int) -> None:
    assert unsquash_count(squash(float(n))) == pytest.approx(n, rel=1e-9, abs=1e-9)


def test_unsquash_count_on_tensors_is_elementwise() -> None:
    import torch

    x = torch.tensor([squash(3.0), squash(0.0), -1.0])
    assert torch.allclose(unsquash_count(x), torch.tensor([3.0, 0.0, 0.0]))


def test_cross_rates_read_counters_the_worker_computes() -> None:
    spec = FeatureSpec()
    rates = CrossRates(spec)
    assert rates.rate_names == lifetime_count_names(spec.tasks)
    assert set(rates.rate_names) <= set(SampleSpec().cross_features)


def test_model_fit_problems() -> None:
    worker = SampleSpec(history_len=64)
    assert problems(FeatureSpec(max_history=64), worker) == []
    assert problems(FeatureSpec(max_history=65), worker) == ["max_history 65 > the worker history_len 64"]
    other_tasks = dataclasses.replace(FeatureSpec(max_history=8), tasks=("click", "watch"))
    [msg] = problems(other_tasks, worker)
    assert "include ['watch'], not in the worker tasks ['click', 'conversion']" in msg
