"""cross_features (layout plan + count-vector cache) equals :func:`streaming.reference.cross_features_reference`, a
direct count over the counters, for any spec."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from streaming.config import CrossSpec
from streaming.cross import CrossCounters, cross_features, feature_names
from streaming.reference import cross_features_reference

KINDS = ("imp", "click", "conversion", "like")


specs = st.builds(CrossSpec, windows_s=st.lists(st.sampled_from([60.0, 3600.0, 86400.0]), max_size=3, unique=True)
                  .map(tuple), tasks=st.lists(st.sampled_from(KINDS[1:]), max_size=3, unique=True).map(tuple))
adds = st.lists(st.tuples(st.sampled_from(KINDS), st.sampled_from(["a", "b"]), st.sampled_from(["x", "y", ""]),
                          st.integers(0, 20_000).map(float)), max_size=40)


@settings(max_examples=200, deadline=None)
@given(specs, adds, st.integers(0, 20_000).map(float), st.sampled_from([None, 5_000.0]),
       st.sampled_from(["a", "b"]), st.sampled_from(["x", "y", ""]))
def test_cross_features_equal_direct_counts(spec: CrossSpec, evs: list[tuple[str, str, str, float]], t: float,
                                            prune_at: float | None, scenario: str, category: str) -> None:
    c = CrossCounters()
    for kind, scn, cat, ts in evs:
        c.add(kind, scn, cat, ts)
    if prune_at is not None and t >= prune_at:
        c.prune(prune_at, spec)  # queries at t >= floor stay exact
    exp = cross_features_reference(c, spec, scenario, category, t)
    for _ in range(2):  # the second call is answered from the cache
        got = cross_features(c, spec, scenario, category, t)
        assert got == exp
        assert list(got) == feature_names(spec)  # key order is part of the encoded sample
        assert [repr(v) for v in got.values()] == [repr(v) for v in exp.values()]  # same floats, bit for bit
        got["scn_imp_life"] = -1.0  # the caller owns its dict: the cached copy is unaffected
    cold = cross_features_reference(None, spec, scenario, category, t)
    assert cross_features(None, spec, scenario, category, t) == cold


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(adds.map(lambda a: ("add", a)), st.integers(0, 20_000).map(lambda f: ("prune", f))),
                max_size=12), st.integers(0, 30_000).map(float))
def test_prune_interleaved_with_adds_keeps_queries_exact(ops: list[tuple[str, object]], t: float) -> None:
    spec = CrossSpec(windows_s=(60.0, 3600.0))
    pruned, full = CrossCounters(), CrossCounters()
    floor = 0.0
    for op, arg in ops:
        if op == "add":
            for kind, scn, cat, ts in arg:  # type: ignore[attr-defined]
                pruned.add(kind, scn, cat, ts)
                full.add(kind, scn, cat, ts)
        else:
            floor = max(floor, float(arg))  # type: ignore[arg-type]
            pruned.prune(floor, spec)
            assert all(pruned.lo <= x for lst in pruned.ts.values() for x in lst)
    t = max(t, floor)  # queries at t >= the last floor stay exact
    for scn in ("a", "b"):
        for cat in ("x", ""):
            assert cross_features(pruned, spec, scn, cat, t) == cross_features(full, spec, scn, cat, t)
