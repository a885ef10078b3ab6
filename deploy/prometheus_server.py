"""The Prometheus server of the local cluster: a config scraping the pipeline's services, as a :class:`Service`."""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path

from deploy.kafka import REPO_ROOT, free_port, port_in_use
from deploy.supervisor import Service

PROMETHEUS_DIR = REPO_ROOT / "deploy" / "prometheus"  # the checked-in config: alert rules, scrape jobs


def prometheus_service(
    run_dir: Path,
    targets: Mapping[str, str],
    port: int = 9090,
    binary: str | None = None,
    scrape_interval: str = "2s",
) -> Service | None:
    """A Prometheus that scrapes ``targets`` ({job: "host:port"}: ``stream``, ``trainer``, ``serving``, and
    ``student`` in distillation mode) with the project's alert rules, or None if no ``prometheus`` binary is
    installed. Port 0 (or a taken port) picks a free one.

    The config is written as JSON (valid YAML) to ``run_dir/prometheus.yml``; the jobs and labels match
    deploy/prometheus/prometheus.yml so the dashboards and alerts work unchanged.
    """
    binary = binary or shutil.which("prometheus")
    if binary is None:
        return None
    if port == 0 or port_in_use(port):
        port = free_port()
    # Job -> service label; the distillation student is a trainer too (its own job, service="trainer").
    services = {"stream": "streaming-worker", "trainer": "trainer", "student": "trainer", "serving": "serving"}
    config = {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval,
                   "external_labels": {"project": "streamrec"}},
        "rule_files": [str(PROMETHEUS_DIR / "alerts.yml")],
        "scrape_configs": [
            {"job_name": job, "metrics_path": "/metrics",
             "static_configs": [{"targets": [addr], "labels": {"service": services.get(job, job)}}]}
            for job, addr in targets.items()
        ],
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = run_dir / "prometheus.yml"
    cfg.write_text(json.dumps(config, indent=2))
    data = run_dir / "prometheus-data"
    shutil.rmtree(data, ignore_errors=True)
    return Service(
        "prometheus",
        (binary, f"--config.file={cfg}", f"--storage.tsdb.path={data}", f"--web.listen-address=127.0.0.1:{port}",
         "--storage.tsdb.retention.time=1d", "--web.enable-lifecycle"),
        ready_url=f"http://127.0.0.1:{port}/-/ready",
    )
