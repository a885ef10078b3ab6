"""Hot swap on the real broker through real HTTP: announced snapshots go live, bad ones are rejected, and a swap
under hundreds of in-flight requests fails none of them."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import httpx
import pytest

from tests.serving.conftest import Stack, wait_for
from tests.serving.test_api import req

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def scores(stack: Stack, body: dict[str, object]) -> tuple[object, list[dict[str, float]]]:
    r = httpx.post(stack.server.url + "/v1/score", json=body, timeout=30)
    assert r.status_code == 200, r.text
    out = r.json()
    return out["model_version"], [c["scores"] for c in out["candidates"]]


def test_announced_snapshot_is_served_and_scores_change(stack: Stack) -> None:
    body = req(4, user="swap-user")
    v_old, s_old = scores(stack, body)
    path, meta = stack.snaps.write(perturb=0.05)
    stack.snaps.announce(path, meta)
    wait_for(lambda: stack.server.version() == meta.version, 30, f"version {meta.version} on /v1/model")
    info = httpx.get(stack.server.url + "/v1/model", timeout=10).json()
    assert info["path"] == str(path) and info["max_event_ts"] == pytest.approx(meta.max_event_ts)
    assert info["samples_trained"] == meta.samples_trained
    v_new, s_new = scores(stack, body)
    assert (v_old, v_new) == (meta.version - 1, meta.version)
    assert s_new != s_old
    assert stack.server.metric("streamrec_serving_model_version") == float(meta.version)


def corrupt_copy(src: Path, dst: Path) -> Path:
    """A copy of snapshot ``src`` whose every file is truncated to half (a torn/corrupt write)."""
    if src.is_dir():
        shutil.copytree(src, dst)
        files = [p for p in dst.rglob("*") if p.is_file()]
    else:
        shutil.copy(src, dst)
        files = [dst]
    for f in files:
        data = f.read_bytes()
        f.write_bytes(data[: len(data) // 2])
    return dst


def test_corrupt_and_stale_snapshots_are_rejected_old_model_keeps_serving(stack: Stack) -> None:
    body = req(3, user="corrupt-user")
    v_before, s_before = scores(stack, body)
    before = stack.server.metric("streamrec_serving_swap_failures_total", {"reason": "load_error"}) or 0.0
    # A newer version number whose files are torn.
    path, meta = stack.snaps.write(perturb=0.05)
    bad = corrupt_copy(path, path.with_name(path.name + "-corrupt"))
    shutil.rmtree(path) if path.is_dir() else path.unlink()
    stack.snaps.announce(bad, meta)
    # A path that does not exist.
    stack.snaps.announce(bad.with_name("does-not-exist"), meta)
    wait_for(lambda: (stack.server.metric("streamrec_serving_swap_failures_total", {"reason": "load_error"}) or 0)
             >= before + 1, 30, "the corrupt snapshot to be rejected")
    wait_for(lambda: (stack.server.metric("streamrec_serving_swap_failures_total", {"reason": "missing"}) or 0) >= 1
             or (stack.server.metric("streamrec_serving_swap_failures_total", {"reason": "load_error"}) or 0)
             >= before + 2, 30, "the missing snapshot to be rejected")
    assert "rejected" in stack.server.log()
    v_after, s_after = scores(stack, body)
    assert (v_after, s_after) == (v_before, s_before)
    # An invalid announcement is counted and ignored.
    assert stack.snaps._producer is not None
    stack.snaps._producer.send(stack.snapshots_topic, b"{nope")
    stack.snaps._producer.flush(10)
    wait_for(lambda: (stack.server.metric("streamrec_serving_snapshot_announcements_total",
                                          {"outcome": "invalid"}) or 0) >= 1, 30, "the invalid announcement count")
    assert stack.server.version() == v_before


async def test_swap_under_concurrent_load_fails_no_request(stack: Stack) -> None:
    """Waves of 200 concurrent requests while two new versions are announced and swapped in: all 200 OK."""
    url = stack.server.url
    v0 = stack.server.version()
    assert isinstance(v0, int)
    # Pool expiry (5 s) below the server's keep-alive (15 s): no reuse of a connection the server is closing.
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200, keepalive_expiry=5.0)
    results: list[tuple[int, object]] = []
    stop = asyncio.Event()
    written: list[int] = []

    async def one(client: httpx.AsyncClient, i: int) -> None:
        r = await client.post(url + "/v1/score", json=req(8, user=f"load-{i % 17}"))
        results.append((r.status_code, r.json().get("model_version") if r.status_code == 200 else r.text))

    wave_done = asyncio.Event()  # set after each wave: every swap starts after a wave answered by the old version

    async def announce() -> None:
        for _ in range(2):
            await wave_done.wait()
            wave_done.clear()
            path, meta = await asyncio.to_thread(stack.snaps.write, 0.05)
            written.append(meta.version)
            await asyncio.to_thread(stack.snaps.announce, path, meta)
            async with httpx.AsyncClient(timeout=30) as c:
                for _ in range(600):
                    if (await c.get(url + "/v1/model")).json()["version"] == meta.version:
                        break
                    await asyncio.sleep(0.05)
        stop.set()

    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        announcer = asyncio.create_task(announce())
        i = 0
        while not stop.is_set() and i < 6000:
            await asyncio.gather(*(one(client, i + k) for k in range(200)))
            i += 200
            wave_done.set()
        await announcer
        await asyncio.gather(*(one(client, i + k) for k in range(200)))  # all on the newest version
    failed = [r for r in results if r[0] != 200]
    assert not failed, failed[:5]
    versions = {v for _, v in results}
    assert v0 in versions and written[-1] in versions, (versions, written)
    assert versions <= {v0, *written}
    assert stack.server.version() == written[-1]
