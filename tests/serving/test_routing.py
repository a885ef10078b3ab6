"""Several named models in one serving process: the ``--serve``/``--route`` flags, the config checks, the routes,
and (in process, no broker) the API over two model holders: routing, readiness, ``/v1/model``, per-model metrics."""

from __future__ import annotations

import doctest
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

import serving.__main__ as serving_main
from model import PRESETS
from model.snapshot import SnapshotMeta, save_snapshot
from serving.__main__ import parse_config, parse_route, parse_serve
from serving.api import ModelInfo, ServedModels, create_app
from serving.config import ModelSource, Routes, ServingConfig
from tests.serving.conftest import REPO
from tests.serving.models import small_model
from tests.serving.test_api import req

names = st.from_regex(r"[a-z0-9_-]{1,12}", fullmatch=True)
dirs = st.lists(st.from_regex(r"[A-Za-z0-9_.-]{1,8}", fullmatch=True), min_size=1, max_size=3).map("/".join)
topics = st.none() | st.from_regex(r"[A-Za-z0-9_.-]{1,20}", fullmatch=True)
presets = st.none() | st.sampled_from(sorted(PRESETS))


def test_the_flag_parsers_doctests_hold() -> None:
    # pytest's --doctest-modules skips __main__.py: run them here
    assert doctest.testmod(serving_main).failed == 0


@given(name=names, directory=dirs, topic=topics, preset=presets, topic_first=st.booleans())
def test_serve_flag_round_trips(name: str, directory: str, topic: str | None, preset: str | None,
                                topic_first: bool) -> None:
    opts = [f"topic={topic}"] * (topic is not None) + [f"preset={preset}"] * (preset is not None)
    text = ",".join([f"{name}={directory}", *(opts if topic_first else opts[::-1])])
    assert parse_serve(text) == ModelSource(name, Path(directory), topic, preset)


@pytest.mark.parametrize(("text", "message"), [
    ("student", "expected NAME=SNAPSHOT_DIR"),
    ("student=", "expected NAME=SNAPSHOT_DIR"),
    ("student=,topic=t", "expected NAME=SNAPSHOT_DIR"),
    ("Student=dir", "must match"),
    ("=dir", "must match"),
    ("a.b=dir", "must match"),
    ("student=dir,colour=red", "unknown option 'colour'"),
    ("student=dir,topic", "topic needs a value"),
    ("student=dir,topic=", "topic needs a value"),
    ("student=dir,topic=a,topic=b", "topic given twice"),
    ("student=dir,preset=huge", "unknown preset 'huge'"),
])
def test_bad_serve_values_are_argparse_errors(text: str, message: str) -> None:
    with pytest.raises(Exception, match=message) as e:
        parse_serve(text)
    assert type(e.value).__name__ == "ArgumentTypeError"


@given(scenario=st.text(min_size=1, max_size=20).filter(lambda s: not s.endswith("=")), name=names)
def test_route_flag_round_trips(scenario: str, name: str) -> None:
    assert parse_route(f"{scenario}={name}") == (scenario, name)


@pytest.mark.parametrize("text", ["home", "=student", "home=", "="])
def test_bad_route_values_are_argparse_errors(text: str) -> None:
    with pytest.raises(Exception, match="expected SCENARIO=NAME"):
        parse_route(text)


@given(table=st.dictionaries(st.text(min_size=1, max_size=6).filter(lambda s: s != "*"), names, max_size=5),
       default=names, scenario=st.text(min_size=1, max_size=6))
def test_routes_send_every_scenario_to_its_model_or_the_default(table: dict[str, str], default: str,
                                                                 scenario: str) -> None:
    routes = Routes(table, default)
    assert routes.model_for(scenario) == table.get(scenario, default)
    assert routes.names() == {*table.values(), default}
    assert routes.as_dict() == {"*": default, **table}


def test_without_serve_one_default_model_from_the_single_model_flags() -> None:
    cfg = parse_config(["--snapshot-dir", "runs/x", "--snapshots-topic", "snaps", "--preset", "laptop"])
    assert cfg.models == () and cfg.routes == ()
    assert cfg.sources() == (ModelSource("default", Path("runs/x"), "snaps", "laptop"),)
    assert cfg.routing() == Routes({}, "default")
    assert parse_config(["--route", "home=default"]).routing().model_for("home") == "default"


def test_serve_and_route_flags_build_the_config() -> None:
    cfg = parse_config(["--no-kafka", "--serve", "student=runs/s,topic=s-snaps,preset=laptop",
                        "--serve", "teacher=runs/t,preset=medium", "--route", "search=teacher"])
    assert cfg.models == (ModelSource("student", Path("runs/s"), "s-snaps", "laptop"),
                          ModelSource("teacher", Path("runs/t"), None, "medium"))
    assert cfg.sources() == cfg.models
    assert cfg.routing() == Routes({"search": "teacher"}, "student")  # no '*': the first --serve
    star = parse_config(["--serve", "a=x", "--serve", "b=y", "--route", "*=b", "--route", "home=a"])
    assert star.routing() == Routes({"home": "a"}, "b")


@pytest.mark.parametrize(("argv", "message"), [
    (["--serve", "a=x", "--route", "home=b"], "no model named 'b'"),
    (["--route", "home=student"], "no model named 'student'"),
    (["--serve", "a=x", "--serve", "a=y"], "a served twice"),
    (["--serve", "a=x", "--route", "home=a", "--route", "home=a"], "'home' is routed twice"),
    (["--serve", "a=x", "--preset", "laptop"], "give each its own preset"),
])
def test_inconsistent_models_and_routes_are_config_errors(argv: list[str], message: str,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        parse_config(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_a_route_to_an_unknown_model_exits_2_with_a_message() -> None:
    out = subprocess.run([sys.executable, "-m", "serving", "--no-kafka", "--serve", "student=runs/s",
                          "--route", "search=teacher"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out
    assert "route search=teacher: no model named 'teacher' is served (served: student)" in out.stderr
    assert "Traceback" not in out.stderr


# -- the API over two holders, in process (the holders are driven by hand: no threads, no broker) ----------------
def _snapshot(root: Path, preset: str | None, version: int, seed: int) -> Path:
    torch.manual_seed(seed)
    model = small_model()[0] if preset is None else PRESETS[preset].build().eval()
    meta = SnapshotMeta(version=version, created_at=time.time(), max_event_ts=time.time(), samples_trained=version)
    return Path(save_snapshot(root, model, meta))


async def test_api_routes_scores_and_waits_for_every_routed_model(tmp_path: Path) -> None:
    cfg = ServingConfig(kafka_bootstrap=None, models=(
        ModelSource("student", tmp_path / "s", preset="laptop"), ModelSource("teacher", tmp_path / "t"),
        ModelSource("shadow", tmp_path / "x")), routes=(("search", "teacher"),))
    reg = CollectorRegistry()
    app = create_app(cfg, reg, start_background=False)
    holders = app.state.holders
    assert list(holders) == ["student", "teacher", "shadow"] and app.state.holder is holders["student"]
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        ready = await client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json() == {"ready": False, "model_version": None,
                                "models": {"student": None, "teacher": None, "shadow": None}}
        assert (await client.get("/v1/model")).status_code == 503
        assert (await client.post("/v1/score", json=req(2))).json()["error"]["code"] == "no_model"

        assert holders["student"].load_one(str(_snapshot(tmp_path / "s", "laptop", 1, seed=0)))
        assert (await client.get("/readyz")).status_code == 503  # the teacher (routed) has no snapshot yet
        home = await client.post("/v1/score", json=req(3))
        assert home.status_code == 200 and home.json()["model_name"] == "student"
        search = await client.post("/v1/score", json=req(3) | {"scenario": "search"})
        assert search.status_code == 503 and "model teacher" in search.json()["error"]["message"]
        info = (await client.get("/v1/model")).json()
        assert info["version"] == 1 and info["models"]["teacher"] is None and info["models"]["shadow"] is None
        assert info["routes"] == {"*": "student", "search": "teacher"}

        # A snapshot rejected for the student (wrong preset) does not touch the teacher, and vice versa.
        assert not holders["student"].load_one(str(_snapshot(tmp_path / "s", None, 2, seed=1)))
        assert holders["teacher"].load_one(str(_snapshot(tmp_path / "t", None, 7, seed=2)))
        ready = await client.get("/readyz")  # every routed model loaded; the unrouted shadow does not hold it back
        assert ready.status_code == 200
        assert ready.json() == {"ready": True, "model_version": 1,
                                "models": {"student": 1, "teacher": 7, "shadow": None}}
        search = (await client.post("/v1/score", json=req(3) | {"scenario": "search"})).json()
        assert (search["model_name"], search["model_version"]) == ("teacher", 7)
        assert search["candidates"] != home.json()["candidates"]
        info = (await client.get("/v1/model")).json()
        ServedModels.model_validate(info)
        assert {n: m and m["version"] for n, m in info["models"].items()} == {"student": 1, "teacher": 7,
                                                                             "shadow": None}
        assert {k: info[k] for k in ModelInfo.model_fields} == info["models"]["student"] | {
            k: info[k] for k in ("seconds_since_update", "model_age_seconds")}  # top level = the default route's

    def sample(name: str, **labels: str) -> float | None:
        return reg.get_sample_value(f"streamrec_serving_{name}", labels)

    assert sample("model_version", model="student") == 1.0 and sample("model_version", model="teacher") == 7.0
    assert sample("model_version", model="shadow") == 0.0 and sample("model_loaded", model="shadow") == 0.0
    assert sample("swaps_total", model="student") == 1.0 and sample("swaps_total", model="teacher") == 1.0
    assert sample("swap_failures_total", model="student", reason="wrong_preset") == 1.0
    assert sample("swap_failures_total", model="teacher", reason="wrong_preset") is None
    assert 0.0 <= (sample("model_age_seconds", model="teacher") or -1.0) < 60.0
