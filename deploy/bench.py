"""``python -m deploy bench``: run every ``benchmarks/bench_*.py`` in turn and summarise ``reports/bench/*.json``.

Each benchmark is its own process (``python -m benchmarks.bench_<area>``) so one failing does not hide the others.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from deploy.kafka import REPO_ROOT


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy bench", description=(__doc__ or "").replace("``", ""))
    parser.add_argument("names", nargs="*", help="only these areas (e.g. streaming model); default: all")
    args = parser.parse_args(argv)
    bench_dir = REPO_ROOT / "benchmarks"
    scripts = sorted(bench_dir.glob("bench_*.py"))
    if args.names:
        scripts = [s for s in scripts if s.stem.removeprefix("bench_") in args.names]
    if not scripts:
        print("no benchmarks found", file=sys.stderr)
        return 2
    failed: list[str] = []
    for script in scripts:
        print(f"\n=== {script.stem} ===", flush=True)
        t0 = time.monotonic()
        rc = subprocess.call([sys.executable, "-m", f"benchmarks.{script.stem}"], cwd=REPO_ROOT)
        print(f"--- {script.stem}: exit {rc} in {time.monotonic() - t0:.0f}s", flush=True)
        if rc != 0:
            failed.append(script.stem)
    reports = sorted((REPO_ROOT / "reports" / "bench").glob("*.json"))
    print(f"\nreports: {', '.join(str(r.relative_to(REPO_ROOT)) for r in reports) or 'none'}")
    for r in reports:
        try:
            json.loads(r.read_text())
        except ValueError:
            failed.append(r.name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
