"""Fixtures for the observability tests: Prometheus and promtool from Debian's package (installed when missing)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
REPO = Path(__file__).resolve().parents[2]


def _install_prometheus() -> str | None:
    """apt-get install prometheus when we are root and apt exists; returns why not, or None on success."""
    if shutil.which("apt-get") is None:
        return "apt-get is not available (install Prometheus 2.x so that `prometheus` and `promtool` are on PATH)"
    if os.geteuid() != 0:
        return "not root: run `sudo apt-get install -y prometheus` to get `prometheus` and `promtool`"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "prometheus"]):
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
        if proc.returncode != 0:
            return f"`{' '.join(cmd)}` failed: {(proc.stdout + proc.stderr)[-800:]}"
    return None


@pytest.fixture(scope="session")
def prometheus_bins() -> tuple[str, str]:
    """Paths of ``prometheus`` and ``promtool``; installs Debian's ``prometheus`` package if they are missing."""
    if not (shutil.which("prometheus") and shutil.which("promtool")):
        why = _install_prometheus()
        if why is not None or not (shutil.which("prometheus") and shutil.which("promtool")):
            msg = f"Prometheus is not installed and could not be installed: {why or 'binaries still missing'}"
            if IN_CI:
                pytest.fail(msg)
            pytest.skip(msg)
    prom, tool = shutil.which("prometheus"), shutil.which("promtool")
    assert prom and tool
    return prom, tool


@pytest.fixture(scope="session")
def promtool(prometheus_bins: tuple[str, str]) -> str:
    return prometheus_bins[1]
