"""Serving latency of a distillation student vs its teachers (issue 17, ExFM): one user, 256 history events, 200
candidates, one pinned CPU core, ``torch.set_num_threads(1)``, every model in one process on the same requests.

Models (each a snapshot written with its preset's shape and loaded by :class:`serving.hotswap.ModelHolder`, as
``python -m serving --preset NAME`` serves it; untrained weights: latency does not depend on their values):

- the **student**: ``--student`` (default ``laptop``, the preset the ``distill`` quality suite's students use,
  :data:`trainer.distill_eval.DEFAULT_STUDENT_PRESET`; its history is capped at its own ``max_history``, so it
  reads only the newest events of the 256);
- the **teachers**: ``--teachers`` (default ``eval-ml100k``, the suite's teacher, and ``base``,
  ``python -m trainer``'s default);
- the **DLRM student** (``--no-dlrm`` skips it): :class:`model.dlrm.DLRMBaseline` with the evaluation's DLRM config
  on the student preset's feature spec. Serving loads Ranker snapshots only, so it is timed on the equivalent path
  in this process: the same request sample build + collate, one forward over the 200 targets, sigmoid.

Per request, for every model in a rotating order (so machine load hits all alike), the serving path
:func:`serving.scoring.score_request`: **cold** = ``user_cache=None`` (the user is encoded on every request: a user's
first request or a changed state) and, for the Rankers, **warm** = a repeat request whose user encoding is in the
model's own :class:`serving.scoring.UserCacheLRU` (the serving default). Reported per model and path: p50 / p95 /
p99 / mean / min ms of the whole request and of its two parts (``*_build_collate``: sample build + collate;
``*_model``: encode + score + sigmoid), and per teacher the ratio teacher / student of each (how many times
faster the student serves).

    .venv/bin/python -m benchmarks.bench_distill_serving
    .venv/bin/python -m benchmarks.bench_distill_serving --out docs/results/distill_serving_bench.json

Writes reports/bench/distill_serving.json (``--out``) and prints a table.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.bench_serving import candidates_json, cores, make_state, pct

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "reports" / "bench" / "distill_serving.json"
DEFAULT_TEACHERS = ("eval-ml100k", "base")


def summary(xs: list[float]) -> dict[str, float]:
    """Latency summary in ms of ``xs`` (seconds)."""
    return {"p50_ms": 1e3 * statistics.median(xs), "p95_ms": 1e3 * pct(xs, 0.95), "p99_ms": 1e3 * pct(xs, 0.99),
            "mean_ms": 1e3 * statistics.fmean(xs), "min_ms": 1e3 * min(xs), "n": len(xs)}


def ratios(teacher: dict[str, float], student: dict[str, float]) -> dict[str, float]:
    """Teacher / student of each percentile: how many times faster the student serves."""
    return {k.replace("_ms", ""): teacher[k] / student[k] for k in ("p50_ms", "p95_ms", "p99_ms", "mean_ms")}


def build_models(student: str, teachers: list[str], history: int, snap_dir: Path,
                 dlrm: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """({model label: ServedModel} for the Ranker presets, {"dlrm:<student>": (model, spec)} when ``dlrm``)."""
    import torch
    from prometheus_client import CollectorRegistry

    from model import PRESETS, DLRMBaseline
    from model.snapshot import SnapshotMeta, save_snapshot
    from serving.hotswap import ModelHolder
    from serving.metrics import ServingMetrics
    from trainer.evaluate import EvalConfig

    served: dict[str, Any] = {}
    for version, (role, name) in enumerate([("student", student), *(("teacher", t) for t in teachers)], start=1):
        torch.manual_seed(0)
        model = PRESETS[name].build().eval()
        path = save_snapshot(snap_dir / name, model, SnapshotMeta(version, time.time(), time.time(), 0))
        holder = ModelHolder(ServingMetrics(CollectorRegistry()))
        assert holder.load_one(str(path)), f"snapshot of preset {name} did not verify"
        assert holder.current is not None
        served[f"{role}:{name}"] = holder.current
    forward_only: dict[str, Any] = {}
    if dlrm:
        spec = PRESETS[student].feature_spec()
        torch.manual_seed(0)
        forward_only[f"student-dlrm:{student}"] = (DLRMBaseline(spec, EvalConfig().dlrm).eval(), spec)
    return served, forward_only


def dlrm_request(model: Any, spec: Any, state: Any, cands: Any, ctx: dict[str, str], now: float) -> tuple[float, float]:
    """The serving path's steps for a DLRM: sample build + collate, one forward over every candidate, sigmoid;
    returns (build + collate seconds, model seconds) like :class:`serving.scoring.ScoreResult`."""
    import torch

    from model.batch import collate
    from serving.scoring import build_batch_sample

    t0 = time.perf_counter()
    batch = collate([build_batch_sample(state, "bench-user", "home", cands, ctx, now)], spec)
    t1 = time.perf_counter()
    with torch.inference_mode():
        logits = model(batch)
    scores = {t: torch.sigmoid(v.float()).tolist() for t, v in logits.items()}
    assert all(len(v) == len(cands) for v in scores.values())
    return t1 - t0, time.perf_counter() - t1


def run(student: str, teachers: list[str], history: int, n_cands: int, iters: int, dlrm: bool) -> dict[str, Any]:
    """Time every model on the same request, interleaved; returns the report's measured part."""
    from serving.scoring import UserCacheLRU, score_request
    from streaming.user_state import Candidate

    snap_dir = Path(tempfile.mkdtemp(prefix="bench-distill-serving-"))
    try:
        served, forward_only = build_models(student, teachers, history, snap_dir, dlrm)
    finally:
        shutil.rmtree(snap_dir, ignore_errors=True)
    now = time.time()
    state = make_state("bench-user", history, now)
    cands = [Candidate(c["item_id"], c["item"], c["context"], c["dense"]) for c in candidates_json(n_cands)]
    ctx = {"hour": "20"}

    def ranker_call(sm: Any, cache: UserCacheLRU | None) -> Callable[[], tuple[float, float]]:
        def call() -> tuple[float, float]:
            r = score_request(sm, state, "bench-user", "home", cands, ctx, now, user_cache=cache)
            return r.build_s, r.model_s
        return call

    calls: dict[str, Callable[[], tuple[float, float]]] = {}  # each returns (build + collate s, model s)
    for label, sm in served.items():
        calls[f"{label}|cold"] = ranker_call(sm, None)
        calls[f"{label}|warm"] = ranker_call(sm, UserCacheLRU())
    for label, (model, spec) in forward_only.items():
        calls[f"{label}|cold"] = functools.partial(dlrm_request, model, spec, state, cands, ctx, now)
    for fn in calls.values():  # warm-up: allocator, first-call paths, the LRUs
        for _ in range(10):
            fn()
    times: dict[str, list[float]] = {k: [] for k in calls}
    builds: dict[str, list[float]] = {k: [] for k in calls}
    model_s: dict[str, list[float]] = {k: [] for k in calls}
    keys = list(calls)
    for i in range(iters):
        r = i % len(keys)
        for k in keys[r:] + keys[:r]:  # rotate the order every request
            t0 = time.perf_counter()
            b, m = calls[k]()
            times[k].append(time.perf_counter() - t0)
            builds[k].append(b)
            model_s[k].append(m)
    models: dict[str, Any] = {}
    for k, xs in times.items():
        label, path = k.split("|")
        role, preset = label.split(":")
        entry = models.setdefault(label, {"role": role, "preset": preset,
                                          "kind": "dlrm" if role == "student-dlrm" else "ranker"})
        entry[path] = summary(xs)
        entry[f"{path}_build_collate"] = summary(builds[k])
        entry[f"{path}_model"] = summary(model_s[k])
    for label, sm in served.items():
        cfg = sm.model.config
        models[label]["shape"] = {"d_model": cfg.d_model, "max_history": sm.spec.max_history,
                                  "parameters": sum(p.numel() for p in sm.model.parameters())}
    for label, (model, spec) in forward_only.items():
        models[label]["shape"] = {"embed_dim": model.config.embed_dim, "max_history": spec.max_history,
                                  "parameters": sum(p.numel() for p in model.parameters())}
    s = models[f"student:{student}"]
    vs: dict[str, Any] = {}
    for t in teachers:
        te = models[f"teacher:{t}"]
        vs[t] = {"cold": ratios(te["cold"], s["cold"]), "warm": ratios(te["warm"], s["warm"])}
        if dlrm:
            vs[t]["cold_vs_dlrm_student"] = ratios(te["cold"], models[f"student-dlrm:{student}"]["cold"])
    return {"models": models, "teacher_over_student": vs}


def main(argv: list[str] | None = None) -> int:
    from trainer.distill_eval import DEFAULT_STUDENT_PRESET

    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_distill_serving", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--student", default=DEFAULT_STUDENT_PRESET,
                    help=f"student preset (default {DEFAULT_STUDENT_PRESET}, the distill suite's)")
    ap.add_argument("--teachers", default=",".join(DEFAULT_TEACHERS),
                    help=f"comma-separated teacher presets (default {','.join(DEFAULT_TEACHERS)})")
    ap.add_argument("--history", type=int, default=256, help="behaviors in the user's history (default 256)")
    ap.add_argument("--candidates", type=int, default=200, help="candidates per request (default 200)")
    ap.add_argument("--iters", type=int, default=300, help="timed requests per model and path (default 300)")
    ap.add_argument("--no-dlrm", action="store_true", help="skip the DLRM student")
    ap.add_argument("--out", type=Path, default=OUT, help="JSON report path")
    args = ap.parse_args(argv)
    teachers = [t for t in args.teachers.split(",") if t.strip()]

    import torch

    torch.set_num_threads(1)
    all_cores = cores()
    load_before = os.getloadavg()  # other processes on the machine: the ratios matter, not the absolute times
    os.sched_setaffinity(0, {all_cores[0]})
    try:
        measured = run(args.student, teachers, args.history, args.candidates, args.iters, not args.no_dlrm)
    finally:
        os.sched_setaffinity(0, set(all_cores))
    result: dict[str, Any] = {
        "command": "python -m benchmarks.bench_distill_serving " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"),
        "machine": " ".join(x for x in (platform.machine(), platform.processor(),
                                        f"({os.cpu_count()} cores, shared), no GPU") if x),
        "torch": torch.__version__,
        "load_average_before_after": [round(x, 2) for x in (*load_before, *os.getloadavg())],
        "workload": {"history": args.history, "candidates": args.candidates, "torch_threads": 1, "pinned_cores": 1,
                     "iters": args.iters, "student": args.student, "teachers": teachers,
                     "order": "every model on the same request, order rotated per request"},
        **measured,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"student vs teacher serving latency ({args.history} history, {args.candidates} candidates, "
                        "1 core, torch threads 1)")
    for col in ("model", "path", "p50 ms", "p95 ms", "p99 ms", "min ms", "p50 build / model ms"):
        table.add_column(col, justify="left" if col in ("model", "path") else "right")
    for label, m in result["models"].items():
        for path in ("cold", "warm"):
            if path in m:
                r = m[path]
                split = f"{m[path + '_build_collate']['p50_ms']:.2f} / {m[path + '_model']['p50_ms']:.2f}"
                table.add_row(label, path, *(f"{r[k]:.2f}" for k in ("p50_ms", "p95_ms", "p99_ms", "min_ms")), split)
    Console(width=max(Console().width, 110)).print(table)
    for t, v in result["teacher_over_student"].items():
        print(f"{t} / {args.student}: cold p50 {v['cold']['p50']:.2f}x p99 {v['cold']['p99']:.2f}x; "
              f"warm p50 {v['warm']['p50']:.2f}x p99 {v['warm']['p99']:.2f}x")
    print(f"machine: {result['machine']}\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
