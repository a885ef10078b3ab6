"""Real HTTP against ``python -m serving`` on the real broker: scoring, model info, health, bad input → 4xx."""

from __future__ import annotations

import json
import math
import socket
import time

import httpx
import pytest

from tests.serving.conftest import Stack, wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def req(n: int = 3, user: str = "cold-user") -> dict[str, object]:
    return {"user_id": user, "scenario": "home", "context": {"hour": "20"},
            "candidates": [{"item_id": f"i{i}", "item": {"genre": f"g{i % 3}", "category": f"g{i % 3}", "year": 1990 + i},
                            "dense": {"price": 1.5 * i}} for i in range(n)]}


def test_score_cold_start_user(stack: Stack) -> None:
    r = httpx.post(stack.server.url + "/v1/score", json=req(5), timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["cold_start"] is True
    assert body["model_version"] == stack.server.version()
    assert [c["item_id"] for c in body["candidates"]] == [f"i{i}" for i in range(5)]
    for c in body["candidates"]:
        assert set(c["scores"]) == set(stack.snaps.spec.tasks)
        assert all(0.0 < p < 1.0 and math.isfinite(p) for p in c["scores"].values())


def test_model_health_ready_metrics(stack: Stack) -> None:
    url = stack.server.url
    info = httpx.get(url + "/v1/model", timeout=10).json()
    assert info["version"] >= 1 and info["seconds_since_update"] >= 0 and info["model_age_seconds"] >= 0
    assert info["data_freshness_seconds"] >= 0
    assert set(info["tasks"]) == set(stack.snaps.spec.tasks)
    assert httpx.get(url + "/healthz", timeout=10).json()["status"] == "ok"
    ready = httpx.get(url + "/readyz", timeout=10)
    assert ready.status_code == 200 and ready.json()["ready"] is True
    httpx.post(url + "/v1/score", json=req(7), timeout=30).raise_for_status()
    assert (stack.server.metric("streamrec_serving_requests_total", {"endpoint": "/v1/score", "status": "200"})
            or 0) >= 1
    assert (stack.server.metric("streamrec_serving_candidates_per_request_count") or 0) >= 1
    assert stack.server.metric("streamrec_serving_model_version") == float(info["version"])
    assert (stack.server.metric("streamrec_serving_model_age_seconds") or -1) >= 0
    assert (stack.server.metric("streamrec_serving_data_freshness_seconds") or -1) >= 0
    assert (stack.server.metric("streamrec_serving_since_last_update_seconds") or -1) >= 0


def test_model_of_1998_events_reports_small_model_age_and_data_freshness(stack: Stack) -> None:
    """MovieLens events are from 1998: /v1/model and /metrics report the model's wall-clock age and data freshness
    (seconds), not now − event time (decades)."""
    produced = time.time()
    path, meta = stack.snaps.write(perturb=0.01, max_event_ts=893_286_638.0, max_produce_ts=produced)
    stack.snaps.announce(path, meta)
    wait_for(lambda: stack.server.version() == meta.version, 30, f"version {meta.version} on /v1/model")
    info = httpx.get(stack.server.url + "/v1/model", timeout=10).json()
    assert info["max_event_ts"] == 893_286_638.0 and info["max_produce_ts"] == produced
    assert 0.0 <= info["model_age_seconds"] < 60.0
    assert 0.0 <= info["data_freshness_seconds"] < 60.0
    assert info["data_freshness_seconds"] == pytest.approx(info["loaded_at"] - produced)
    assert "freshness_seconds" not in info
    assert 0.0 <= (stack.server.metric("streamrec_serving_model_age_seconds") or -1) < 60.0
    assert stack.server.metric("streamrec_serving_data_freshness_seconds") == pytest.approx(
        info["data_freshness_seconds"])


def _raw(url: str, body: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(url + "/v1/score", content=body, timeout=30,
                      headers={"content-type": "application/json", **(headers or {})})


@pytest.mark.parametrize(("body", "status", "code"), [
    (b"{not json", 400, "invalid_json"),
    (b"", 422, "invalid_request"),
    (b"[]", 422, "invalid_request"),
    (b'"x"', 422, "invalid_request"),
    (json.dumps({"user_id": 5, "scenario": "home", "candidates": [{"item_id": "i"}]}).encode(), 422,
     "invalid_request"),
    (json.dumps({"user_id": "u", "scenario": "home", "candidates": []}).encode(), 422, "invalid_request"),
    (json.dumps({"user_id": "u", "scenario": "home"}).encode(), 422, "invalid_request"),
    (json.dumps({"user_id": "", "scenario": "home", "candidates": [{"item_id": "i"}]}).encode(), 422,
     "invalid_request"),
    (json.dumps({"user_id": "u", "scenario": "home", "candidates": [{"item_id": "i", "dense": {"x": "1"}}]}).encode(),
     422, "invalid_request"),
    (json.dumps({"user_id": "u", "scenario": "home", "candidates": [{"item_id": "i", "item": {"a": [1]}}]}).encode(),
     422, "invalid_request"),
    (json.dumps({"user_id": "u", "scenario": "home", "candidates": [{"item_id": "i", "item": {"a": True}}]}).encode(),
     422, "invalid_request"),
    (b'{"user_id":"u","scenario":"home","candidates":[{"item_id":"i","dense":{"x":NaN}}]}', 422,
     "invalid_request"),
    (b'{"user_id":"u","scenario":"home","candidates":[{"item_id":"i","dense":{"x":1e999}}]}', 422,
     "invalid_request"),
    (json.dumps({"user_id": "u", "scenario": "home", "candidates": [{"item_id": "i"}] * 301}).encode(), 422,
     "too_many_candidates"),
    (b"[" * 100_000 + b"]" * 100_000, 400, "invalid_body"),  # nested too deep to parse
])
def test_bad_requests_are_4xx_with_a_clear_error(stack: Stack, body: bytes, status: int, code: str) -> None:
    r = _raw(stack.server.url, body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code and err["message"]


def test_oversized_body_is_413(stack: Stack) -> None:
    url = stack.server.url
    big = json.dumps(req(1) | {"context": {f"k{i}": "x" * 1000 for i in range(400)}}).encode()
    assert len(big) > 256 * 1024
    r = _raw(url, big)
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"

    def chunks():  # no Content-Length: the limit holds on the bytes actually read
        for _ in range(300):
            yield b" " * 1024

    r = httpx.post(url + "/v1/score", content=chunks(), headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"
    # A malformed Content-Length (no client library sends one): raw socket.
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: abc\r\nConnection: close\r\n\r\n{}")
        status_line = sock.makefile("rb").readline().decode()
    assert status_line.split()[1].startswith("4"), status_line


def test_unknown_route_and_method_are_json_4xx(stack: Stack) -> None:
    r = httpx.get(stack.server.url + "/v2/nothing", timeout=10)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = httpx.get(stack.server.url + "/v1/score", timeout=10)
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
    r = httpx.post(stack.server.url + "/v1/score", content=b"user_id=u", timeout=10,
                   headers={"content-type": "application/x-www-form-urlencoded"})
    assert 400 <= r.status_code < 500
    assert (stack.server.metric("streamrec_serving_requests_total", {"endpoint": "other", "status": "404"}) or 0) >= 1
