"""Fixtures for the observability tests: the ``prometheus`` and ``promtool`` binaries that ``make setup`` installs.

Tests never install anything: without the binaries they skip with how to get them, except under ``CI=true``
where they fail (CI runs ``make setup`` as root, which installs Debian's ``prometheus`` package).
"""

from __future__ import annotations

import os
import shutil

import pytest

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
HOW_TO_INSTALL = ("run `make setup` as root (it runs `apt-get install prometheus`), or install Prometheus 2.x "
                  "so that `prometheus` and `promtool` are on PATH")


@pytest.fixture(scope="session")
def prometheus_bins() -> tuple[str, str]:
    """Paths of ``prometheus`` and ``promtool``; skips (fails under ``CI=true``) when either is missing."""
    prom, tool = shutil.which("prometheus"), shutil.which("promtool")
    if not (prom and tool):
        missing = " and ".join(n for n, p in (("prometheus", prom), ("promtool", tool)) if not p)
        msg = f"{missing} not found on PATH: {HOW_TO_INSTALL}"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)
    return prom, tool


@pytest.fixture(scope="session")
def promtool(prometheus_bins: tuple[str, str]) -> str:
    return prometheus_bins[1]
