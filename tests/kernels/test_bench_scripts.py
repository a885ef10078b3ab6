"""The benchmark scripts' code paths (not their timings): no-GPU reports, and the measuring loop on tiny inputs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from benchmarks import bench_attention, bench_group_norm
from kernels import AttentionKind


def _once(fn: Any) -> float:
    fn()
    return 1.0  # a fixed "time": these tests check the plumbing, never speed


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU host main() runs the real benchmark")
def test_without_gpu_reports_say_so(tmp_path: Path) -> None:
    assert bench_attention.main(["--no-cpu-sanity", "--out", str(tmp_path / "a.json")]) == 0
    assert bench_group_norm.main(["--out", str(tmp_path / "g.json")]) == 0
    for name in ("a.json", "g.json"):
        report = json.loads((tmp_path / name).read_text())
        assert report["gpu"] is False and report["measured_on_gpu"] is False and report["rows"] == []
        assert "no GPU numbers were measured" in report["note"]


def test_attention_suite_runs_triton_eager_and_flex(triton_device: str) -> None:
    cfg = bench_attention.BenchConfig(
        users=2, mean_len=20, targets=3, q_heads=2, kv_heads=1, head_dim=16, dtype="float32"
    )
    rows = bench_attention.run_suite(
        cfg, triton_device, _once, ["full", "target"], list(AttentionKind), compile_flex=False
    )
    impls = {(r["layer"], r["kind"], r["impl"]) for r in rows}
    assert ("full", "softmax", "flex") in impls and ("target", "silu", "triton") in impls
    assert ("full", "silu", "flex") not in impls  # Flex has no pointwise-SiLU normalisation
    for r in rows:
        assert r["rel_err_vs_fp64"] < 1e-5, r  # Flex's block mask implements the same rule
        if r["impl"] == "triton":
            assert r["speedup_vs_eager"] == 1.0
    assert any("speedup_vs_flex" in r for r in rows)


def test_group_norm_suite_runs(triton_device: str) -> None:
    rows = bench_group_norm.run_suite(19, 24, 4, torch.float32, triton_device, _once, compile_ref=False)
    assert {r["impl"] for r in rows} == {"triton", "eager"}
    assert all(r["rel_err_vs_fp64"] < 1e-5 and r["gbps"] >= 0 for r in rows)
