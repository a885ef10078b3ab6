"""Parity: the samples the live worker writes for replayed events equal ``run_offline`` on the same events.

A slice of the synthetic dataset goes through ``streaming.replay`` into the real broker, the real worker subprocess
(``python -m streaming worker``) joins and aggregates it, and every sample on the ``samples`` topic must equal its
offline twin (same sample_id, same JSON). The replay's own end-of-stream markers (far-future events on every
partition) advance each partition's watermark past the slice, so the live worker releases everything; the offline
run sees the same markers.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from streaming.config import CoreConfig
from streaming.core import run_offline
from streaming.datasets.synthetic import SyntheticConfig, generate
from streaming.replay import EOS_USER_PREFIX, ReplayConfig, end_of_stream_events, replay
from tests.replay.helpers import create_topics, read_samples, start_worker, stop_worker, topics

pytestmark = [pytest.mark.kafka, pytest.mark.slow]
PARTS = 2
CFG = CoreConfig(attribution_window_s=1800.0, allowed_lateness_s=60.0, history_len=64, max_targets=16, span_s=1800.0,
                 late_horizon_s=3600.0)


def test_replayed_slice_live_samples_equal_offline(bootstrap: str, topic_prefix: str, tmp_path: Path) -> None:
    # Dense traffic (short duration) so users get several requests inside one span and long histories.
    events = generate(SyntheticConfig(num_users=12, num_items=60, requests_per_user=8, seed=11,
                                      duration_s=6 * 3600.0))[:400]
    markers = [e for _, e in end_of_stream_events(max(e.ts for e in events), range(PARTS))]
    expected = {s.sample_id: s for s in run_offline(events + markers, CFG)
                if not s.user_id.startswith(EOS_USER_PREFIX)}
    assert len(expected) >= 20
    assert any(s.history for s in expected.values()) and any(len(s.targets) > 1 for s in expected.values())

    t = topics(topic_prefix)
    create_topics(bootstrap, t, PARTS)
    worker, log = start_worker(bootstrap, t, f"{topic_prefix}app", PARTS, tmp_path, CFG)
    try:
        summary = replay(events, ReplayConfig(bootstrap=bootstrap, impressions_topic=t["impressions"],
                                              feedback_topic=t["feedback"]), progress=False)
        assert (summary.errors, summary.events, summary.markers) == (0, len(events), 2 * PARTS)
        got = read_samples(bootstrap, t["samples"], lambda got: set(expected) <= set(got), 120, worker, log)
        missing = set(expected) - set(got)
        assert not missing, f"{len(missing)} of {len(expected)} samples missing; log:\n{log.read_text()[-3000:]}"
        live = {k: v for k, v in got.items() if not v.user_id.startswith(EOS_USER_PREFIX)}
        assert set(live) == set(expected)
        for sid, s in live.items():
            assert s.to_json() == expected[sid].to_json()
    finally:
        stop_worker(worker)
