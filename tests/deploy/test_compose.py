"""docker-compose.yml and the Dockerfile, checked statically (no Docker engine here).

The compose-spec schema catches misspelled keys and bad values; it does not resolve references, so the tests
below check that every service, network, volume and config a service names is defined and every bind-mounted or
config file exists.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy.kafka import KAFKA_VERSION

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def test_compose_validates_against_compose_spec() -> None:
    exe = shutil.which("check-jsonschema") or str(REPO / ".venv" / "bin" / "check-jsonschema")
    proc = subprocess.run([exe, "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_schema_check_rejects_a_broken_file(tmp_path: Path) -> None:
    """The validator really validates: a misspelled service key fails."""
    bad = tmp_path / "docker-compose.yml"
    bad.write_text("services:\n  x:\n    image: busybox\n    comand: [true]\n")
    exe = shutil.which("check-jsonschema") or str(REPO / ".venv" / "bin" / "check-jsonschema")
    proc = subprocess.run([exe, "--builtin-schema", "vendor.compose-spec", str(bad)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode != 0


def test_kafka_image_matches_the_local_broker_version(compose: dict[str, Any]) -> None:
    assert compose["services"]["kafka"]["image"] == f"apache/kafka:{KAFKA_VERSION}"
    env = compose["services"]["kafka"]["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft, no ZooKeeper


def test_every_pipeline_service_is_present_and_built_from_the_one_dockerfile(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("kafka", "worker", "trainer", "serving", "replay", "prometheus", "grafana"):
        assert name in services, name
    for name in ("worker", "trainer", "serving", "replay"):
        build = services[name]["build"]
        assert (REPO / build["context"] / build.get("dockerfile", "Dockerfile")).resolve() == DOCKERFILE


def _short_volume(spec: str) -> tuple[str, str]:
    source = spec.split(":", 1)[0]
    return source, "bind" if source.startswith((".", "/", "~")) else "volume"


def test_every_reference_resolves(compose: dict[str, Any]) -> None:
    services: dict[str, Any] = compose["services"]
    networks = set(compose.get("networks") or {})
    volumes = set(compose.get("volumes") or {})
    configs = compose.get("configs") or {}
    secrets = compose.get("secrets") or {}
    problems: list[str] = []
    for name, svc in services.items():
        for net in svc.get("networks") or []:
            if net not in networks:
                problems.append(f"{name}: network {net!r} is not defined")
        deps = svc.get("depends_on") or []
        for dep in deps if isinstance(deps, list) else list(deps):
            if dep not in services:
                problems.append(f"{name}: depends_on {dep!r} is not a service")
        for link in svc.get("links") or []:
            if link.split(":")[0] not in services:
                problems.append(f"{name}: link {link!r} is not a service")
        for vol in svc.get("volumes") or []:
            if isinstance(vol, str):
                source, kind = _short_volume(vol)
            else:
                source, kind = vol.get("source", ""), vol.get("type", "volume")
            if kind == "bind":
                if not (REPO / source).exists():
                    problems.append(f"{name}: bind mount {source!r} does not exist")
            elif source and source not in volumes:
                problems.append(f"{name}: volume {source!r} is not defined")
        for kind, defined in (("configs", configs), ("secrets", secrets)):
            for ref in svc.get(kind) or []:
                src = ref if isinstance(ref, str) else ref["source"]
                if src not in defined:
                    problems.append(f"{name}: {kind[:-1]} {src!r} is not defined")
        for env_file in ([svc["env_file"]] if isinstance(svc.get("env_file"), str) else svc.get("env_file") or []):
            path = env_file if isinstance(env_file, str) else env_file["path"]
            if not (REPO / path).exists():
                problems.append(f"{name}: env_file {path!r} does not exist")
        if "build" in svc and not (REPO / svc["build"]["context"]).is_dir():
            problems.append(f"{name}: build context missing")
        if "image" not in svc and "build" not in svc:
            problems.append(f"{name}: neither image nor build")
    for kind, defined in (("config", configs), ("secret", secrets)):
        for cname, c in defined.items():
            if "file" in c and not (REPO / c["file"]).is_file():
                problems.append(f"{kind} {cname}: file {c['file']!r} does not exist")
    assert not problems, "\n".join(problems)


def test_scrape_config_for_compose_names_real_services(compose: dict[str, Any]) -> None:
    """Every target in prometheus.compose.yml is a compose service exposing that port."""
    cfg = yaml.safe_load((REPO / "deploy" / "prometheus" / "prometheus.compose.yml").read_text())
    services = compose["services"]
    for job in cfg["scrape_configs"]:
        addrs = [t for sc in job.get("static_configs", []) for t in sc["targets"]]
        addrs += [f"{n}:{d['port']}" for d in job.get("dns_sd_configs", []) for n in d["names"]]
        for addr in addrs:
            host, port = addr.rsplit(":", 1)
            if host == "localhost":
                continue
            assert host in services, f"job {job['job_name']}: {host} is not a compose service"
            svc = services[host]
            published = [str(p).split(":")[-1] for p in svc.get("ports", [])] + [str(p) for p in svc.get("expose", [])]
            assert port in published, f"{host} does not expose {port}"


def test_grafana_mounts_the_provisioning_and_dashboards(compose: dict[str, Any]) -> None:
    mounts = [v.split(":")[0] for v in compose["services"]["grafana"]["volumes"] if isinstance(v, str)]
    assert "./deploy/grafana/provisioning" in mounts
    assert "./deploy/grafana/dashboards" in mounts
    assert list((REPO / "deploy" / "grafana" / "dashboards").glob("*.json")), "no dashboards to provision"
    for sub in ("datasources", "dashboards"):
        assert list((REPO / "deploy" / "grafana" / "provisioning" / sub).glob("*.yml")), sub


def test_dockerfile_copies_only_files_that_exist() -> None:
    text = DOCKERFILE.read_text()
    copies = re.findall(r"^COPY\s+(?!--from)(.+)$", text, flags=re.M)
    assert copies
    for line in copies:
        *sources, _dest = line.split()
        for src in sources:
            assert (REPO / src).exists(), f"Dockerfile COPY source {src} missing"
    assert re.search(r"^FROM python:3\.11", text, flags=re.M)
    # the CPU variant, the same pins as deploy/setup.sh
    assert "requirements/torch-cpu.txt" in text and "--no-deps" in text
    ignored = (REPO / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".cache" in ignored and "runs" in ignored


def test_topics_are_created_with_the_workers_partition_count(compose: dict[str, Any]) -> None:
    worker = compose["services"]["worker"]["command"]
    parts = worker[worker.index("--partitions") + 1]
    init = "\n".join(compose["services"]["topics"]["command"])
    for name in ("impressions", "feedback", "samples", "deadletter", "user_state", "snapshots"):
        assert name in init
    assert f"--partitions {parts}" in init
    assert compose["services"]["kafka"]["environment"]["KAFKA_NUM_PARTITIONS"] == int(parts)
