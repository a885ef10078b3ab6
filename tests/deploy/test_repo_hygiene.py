"""The checkout stays clean: generated outputs are git-ignored, ``make clean`` removes only them, and no test installs
software (installing belongs to ``make setup``)."""

from __future__ import annotations

import ast
import itertools
import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}

# What the code writes inside the checkout: benchmarks (reports/bench/*.json), trainer.evaluate's default --out
# (reports/eval), the demo (runs/demo), trainer/serving defaults, tool caches and the local broker's data.
GENERATED = [
    "reports/bench/serving.json", "reports/eval/summary.md", "runs/demo/logs/worker.log", "snapshots/v1/model.st",
    "checkpoints/c.pt", ".pytest_cache/v/cache/lastfailed", ".mypy_cache/3.11/x.json", ".ruff_cache/x",
    ".hypothesis/examples/x", ".cache/kafka-broker/data/meta.properties",
]
KEPT = [".venv/.stamps/project", ".cache/kafka-3.9.1/libs/kafka.jar"]  # ignored too, but clean keeps them
# The files that decide what `make clean` removes and what git ignores: the working tree's versions are tested.
RULES = ["Makefile", ".gitignore"]


def _git(cwd: Path, *args: str) -> str:
    proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"git {' '.join(args)}: {proc.stderr}"
    return proc.stdout


def test_make_clean_leaves_git_status_clean(tmp_path: Path) -> None:
    missing = [t for t in ("git", "make") if shutil.which(t) is None]
    if missing or not (REPO / ".git").exists():
        msg = f"needs a git checkout and {' and '.join(missing) or 'git'}"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)
    clone = tmp_path / "clone"
    _git(tmp_path, "clone", "-q", str(REPO), str(clone))
    for name in RULES:
        shutil.copyfile(REPO / name, clone / name)
    _git(clone, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "rules", "--",
         *RULES)
    for rel in GENERATED + KEPT:
        path = clone / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            path.write_text("x")
    assert _git(clone, "status", "--porcelain") == "", "generated outputs must be git-ignored"

    proc = subprocess.run(["make", "clean"], cwd=clone, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    assert _git(clone, "status", "--porcelain") == "", "make clean deleted or changed tracked files"
    assert [rel for rel in GENERATED if (clone / rel).exists()] == []
    assert [rel for rel in KEPT if not (clone / rel).exists()] == []


INSTALLERS = {"apt-get", "apt", "dnf", "yum", "apk", "brew", "conda", "mamba", "micromamba"}


def _install_command(words: list[str]) -> bool:
    """``words`` (a command line's literal parts) install software: a package manager, or ``pip install``."""
    words = [w for w in words if w != "sudo"]
    if len(words) < 2:  # a bare program name is not a command line
        return False
    if Path(words[0]).name in INSTALLERS:
        return True
    pip = Path(words[0]).name in {"pip", "pip3"} or any(p == ("-m", "pip") for p in itertools.pairwise(words))
    return pip and "install" in words


def install_commands(source: str) -> list[str]:
    """Command lines in Python ``source`` that install software, as list/tuple literals or strings."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.List | ast.Tuple):
            words = [e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            words = node.value.split()
        else:
            continue
        if _install_command(words):
            found.append(f"line {node.lineno}: {' '.join(words)[:80]}")
    return found


def test_install_commands_are_recognised() -> None:
    assert install_commands('subprocess.run(["apt-get", "install", "-y", "prometheus"])')
    assert install_commands('for cmd in (["apt-get", "update"],): subprocess.run(cmd)')
    assert install_commands('subprocess.run([sys.executable, "-m", "pip", "install", "x"])')
    assert install_commands('os.system("sudo apt-get install -y maven")')
    assert not install_commands('msg = "install Java 17+ and Maven (apt-get install openjdk-17-jre-headless)"')
    assert not install_commands('subprocess.run([sys.executable, "-m", "pip", "list"])')


def test_no_test_installs_anything() -> None:
    found = {str(p.relative_to(REPO)): hits for p in sorted((REPO / "tests").rglob("*.py"))
             if (hits := install_commands(p.read_text()))}
    assert found == {}, f"tests must not install software (make setup does): {found}"
