"""Online/offline parity and the user-state replica, on the real broker through real HTTP.

The served score for a user (state taken from the compacted ``user_state`` topic) equals the trainer-side model's
score computed offline: ``load_snapshot`` of the served snapshot + the same request sample through ``forward``
(the training path, not the cached serving path)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from kafka import KafkaProducer

from model.batch import collate
from model.snapshot import load_snapshot
from streaming.cross import CrossCounters
from streaming.sample import Behavior
from streaming.user_state import Candidate, UserState, build_request_sample
from tests.serving.conftest import Stack, wait_for
from tests.serving.test_api import req

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def make_state(user_id: str, n: int, t_end: float) -> UserState:
    counters = CrossCounters()
    behaviors = []
    for i in range(n):
        ts = t_end - (n - i) * 37.0
        scen = ("home", "search", "cart")[i % 3]
        cat = f"g{i % 3}"
        behaviors.append(Behavior(f"h{i}", scen, ("click", "like")[i % 2], ts, {"genre": cat, "category": cat}))
        counters.add("imp", scen, cat, ts - 1.0)
        counters.add("click", scen, cat, ts)
    return UserState(user_id, user={"age": "25-34", "gender": "f"}, behaviors=behaviors, counters=counters,
                     updated_ts=t_end)


def publish(bootstrap: str, topic: str, user_id: str, value: bytes | None) -> None:
    p = KafkaProducer(bootstrap_servers=bootstrap)
    p.send(topic, key=user_id.encode(), value=value)
    p.flush(30)
    p.close()


def served(stack: Stack, body: dict[str, Any]) -> Any:
    r = httpx.post(stack.server.url + "/v1/score", json=body, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def test_served_scores_equal_offline_trainer_scores(stack: Stack) -> None:
    user = "parity-user"
    body: dict[str, Any] = req(12, user=user)
    cold = served(stack, body)
    assert cold["cold_start"] is True
    state = make_state(user, 80, t_end=float(cold["request_ts"]))
    publish(stack.bootstrap, stack.user_state_topic, user, state.encode())
    wait_for(lambda: served(stack, body)["cold_start"] is False, 30, "the user's state to reach the replica")

    out = served(stack, body)
    info = httpx.get(stack.server.url + "/v1/model", timeout=10).json()
    assert out["model_version"] == info["version"]
    loaded = load_snapshot(Path(info["path"]))
    model = loaded.model.eval()
    cands = [Candidate(c["item_id"], {k: str(v) for k, v in c.get("item", {}).items()},
                       {}, {k: float(v) for k, v in c.get("dense", {}).items()})
             for c in body["candidates"]]
    sample = build_request_sample(state, user, "home", cands, {"hour": "20"}, float(out["request_ts"]))
    assert len(sample.history) == 80
    with torch.no_grad():
        logits = model(collate([sample], loaded.spec))
    for task, lg in logits.items():
        offline = torch.sigmoid(lg.float()).tolist()
        online = [c["scores"][task] for c in out["candidates"]]
        assert online == pytest.approx(offline, rel=1e-5, abs=1e-6), task
    # The state matters: a cold start scores the same candidates differently.
    assert [c["scores"] for c in out["candidates"]] != [c["scores"] for c in cold["candidates"]]

    # A tombstone deletes the user: back to a cold start.
    publish(stack.bootstrap, stack.user_state_topic, user, None)
    wait_for(lambda: served(stack, body)["cold_start"] is True, 30, "the tombstone to reach the replica")


def test_undecodable_user_state_is_counted_and_previous_state_kept(stack: Stack) -> None:
    user = "bad-state-user"
    body: dict[str, Any] = req(2, user=user)
    publish(stack.bootstrap, stack.user_state_topic, user, make_state(user, 5, 1e9).encode())
    wait_for(lambda: served(stack, body)["cold_start"] is False, 30, "the user's state to reach the replica")
    publish(stack.bootstrap, stack.user_state_topic, user, b"{not json")
    wait_for(lambda: (stack.server.metric("streamrec_serving_user_state_errors_total", {"reason": "decode"}) or 0)
             >= 1, 30, "the decode error to be counted")
    assert served(stack, body)["cold_start"] is False
