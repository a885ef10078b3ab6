"""Imports point one way: ``kernels`` ← ``model`` ← ``trainer``, and ``model`` ← ``serving``.

Every module of ``model/`` and ``serving/`` is parsed (ast, so imports inside functions and under ``TYPE_CHECKING``
count too): none imports ``trainer`` or ``deploy``; ``model/`` also imports no Kafka, Faust or HTTP library (it is
the pure servable core), and ``kernels/`` imports none of the packages above it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# Kafka clients, the stream processor and HTTP frameworks/clients: service adapters, never the model.
IO_LIBRARIES = frozenset({"kafka", "aiokafka", "confluent_kafka", "faust", "aiohttp", "fastapi", "starlette",
                          "uvicorn", "httpx", "requests"})


def imported_roots(source: str, module: str) -> set[str]:
    """Top-level package names imported by ``source`` (the text of module ``module``, dotted; relative imports are
    resolved against it).

    Example:
        >>> sorted(imported_roots("import a.b\\nfrom c.d import e\\nfrom . import f", "model.x"))
        ['a', 'c', 'model']
    """
    roots: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: the package `level` steps up from this module
                roots.add(module.split(".")[0])
            elif node.module:
                roots.add(node.module.split(".")[0])
    return roots


def _modules(package: str) -> list[tuple[str, Path]]:
    out = []
    for path in sorted((REPO / package).rglob("*.py")):
        rel = path.relative_to(REPO).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        out.append((".".join(parts), path))
    assert out, f"no modules found under {package}/"
    return out


def _imports(package: str) -> dict[str, set[str]]:
    return {name: imported_roots(path.read_text(), name) for name, path in _modules(package)}


def test_imported_roots_sees_every_import_form() -> None:
    src = ("import trainer.loop\nfrom deploy import cluster\nfrom .x import y\n"
           "def f():\n    import fastapi\n"
           "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from faust import App\n")
    assert imported_roots(src, "model.ranker") == {"trainer", "deploy", "model", "fastapi", "typing", "faust"}


@pytest.mark.parametrize("package", ["model", "serving"])
def test_model_and_serving_import_neither_trainer_nor_deploy(package: str) -> None:
    bad = {mod: sorted(roots & {"trainer", "deploy"}) for mod, roots in _imports(package).items()}
    assert {mod: b for mod, b in bad.items() if b} == {}


def test_model_imports_no_kafka_faust_or_http() -> None:
    bad = {mod: sorted(roots & IO_LIBRARIES) for mod, roots in _imports("model").items()}
    assert {mod: b for mod, b in bad.items() if b} == {}


def test_kernels_import_nothing_above_them() -> None:
    above = {"model", "trainer", "serving", "deploy", "streaming"}
    bad = {mod: sorted(roots & above) for mod, roots in _imports("kernels").items()}
    assert {mod: b for mod, b in bad.items() if b} == {}


def test_production_code_never_imports_the_collate_reference() -> None:
    """model.reference is the tests' (and benchmarks') specification of collate, never a production path."""
    users = []
    for package in ("streaming", "model", "trainer", "serving", "kernels", "deploy"):
        for name, path in _modules(package):
            for node in ast.walk(ast.parse(path.read_text())):
                if (isinstance(node, ast.ImportFrom) and (node.module == "model.reference" or (
                        node.module == "model" and any(a.name == "reference" for a in node.names)))) or (
                        isinstance(node, ast.Import) and any(a.name == "model.reference" for a in node.names)):
                    users.append(name)
    assert users == []


def test_serving_uses_the_model_package() -> None:
    # the servable model really is what serving loads (not a copy elsewhere)
    assert any("model" in roots for roots in _imports("serving").values())
