"""Every entry point's ``--help`` is plain text: no reST markup leaks from module docstrings."""

from __future__ import annotations

import subprocess
import sys

import pytest

ENTRY_POINTS = [
    ["streaming"], ["streaming", "worker"], ["streaming.replay"], ["trainer"], ["trainer.evaluate"], ["trainer.quality"], ["serving"],
    ["kernels"], ["deploy"], ["deploy", "demo"], ["deploy", "kafka"], ["deploy", "bench"], ["deploy", "dashboards"], ["deploy", "results"],
]


@pytest.mark.slow
@pytest.mark.parametrize("argv", ENTRY_POINTS, ids=" ".join)
def test_help_is_plain_text(argv: list[str]) -> None:
    out = subprocess.run([sys.executable, "-m", *argv, "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("usage: python -m ")
    markup = [ln for ln in out.stdout.splitlines() if "``" in ln or ln.rstrip().endswith("::")]
    assert not markup, markup
