#!/usr/bin/env bash
# Idempotent environment set-up: .venv with pinned Python packages (CPU or GPU variant), the Kafka jars and, as root
# with apt-get, Debian's `prometheus` package (prometheus + promtool, for the observability tests and the demo).
# Re-running is cheap: each Python step is skipped when its inputs' hash matches the stamp it left last time, and
# Prometheus is skipped when both binaries are on PATH. One `setup: <step> ...` line is printed as each step starts.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv
STAMP_DIR=$VENV/.stamps
IN_CI=0; case "${CI:-}" in 1|true|TRUE|True|yes) IN_CI=1 ;; esac

die() { echo "setup: $*" >&2; exit 1; }
command -v "$PY" >/dev/null || die "python3 not found; install Python 3.11"
"$PY" -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null || die "Python >= 3.11 required ($($PY --version 2>&1))"

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: venv ($VENV) ..."
  "$PY" -m venv "$VENV"
fi
mkdir -p "$STAMP_DIR"
PIP="$VENV/bin/python -m pip --disable-pip-version-check"

# GPU host = an NVIDIA driver is present. Override with STREAMREC_TORCH=cpu|gpu.
variant=${STREAMREC_TORCH:-}
if [ -z "$variant" ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then variant=gpu; else variant=cpu; fi
fi
torch_req=requirements/torch-$variant.txt
[ -f "$torch_req" ] || die "unknown STREAMREC_TORCH=$variant (cpu|gpu)"

step() {  # step NAME FILES... -- COMMAND...
  local name=$1; shift; local files=(); while [ "$1" != "--" ]; do files+=("$1"); shift; done; shift
  local want; want=$(cat "${files[@]}" | sha256sum | cut -d' ' -f1)
  if [ "$(cat "$STAMP_DIR/$name" 2>/dev/null)" != "$want" ]; then
    echo "setup: $name ..."
    "$@"
    echo "$want" > "$STAMP_DIR/$name"
  fi
}

# pip's output: a line per download of 1 MB or more and one per install; the full log is .venv/.stamps/pip.log,
# shown on failure.
# With the CPU variant pip's resolver reports "torchrec 1.9.2 requires fbgemm-gpu, which is not installed" as an
# ERROR: expected (fbgemm-gpu-cpu provides the same fbgemm_gpu module), so that one conflict becomes a note; any other
# conflict is printed as pip wrote it.
pip_install() {  # pip_install ARGS...
  local log=$STAMP_DIR/pip.log
  echo "  pip install $*" >"$log"
  if ! $PIP install --progress-bar off "$@" 2>&1 | tee -a "$log" | awk '
      function out(s) { print "  " s; fflush() }
      function pkgs(n) { return n (n == 1 ? " package" : " packages") }
      /^ERROR: pip.s dependency resolver/ { header = $0; next }
      /^torchrec [^ ]+ requires fbgemm-gpu, which is not installed/ {
        out("note: torchrec declares the CUDA fbgemm-gpu; fbgemm-gpu-cpu provides its fbgemm_gpu module"); next }
      header != "" && / requires / { print header; header = ""; print; fflush(); next }
      /^ *Downloading .*\([0-9.]+ [MG]B\)$/ { sub(/^ */, ""); out($0); next }
      /^Installing collected packages:/ { out("installing " pkgs(split(substr($0, 32), a, ", ")) " ..."); next }
      /^Successfully installed/ { out("installed " pkgs(NF - 2)); next }
      /^(ERROR|WARNING|error)/ { print; fflush() }
    '; then
    echo "setup: pip install $* failed; last lines of $log:" >&2
    tail -n 30 "$log" >&2
    exit 1
  fi
}

install_torch() {
  # The other fbgemm variant would shadow ours: remove it first.
  if [ "$variant" = cpu ]; then $PIP uninstall -q -y fbgemm-gpu >/dev/null 2>&1 || true
  else $PIP uninstall -q -y fbgemm-gpu-cpu >/dev/null 2>&1 || true; fi
  pip_install -r "$torch_req"
  # torchrec declares `fbgemm-gpu` (the CUDA wheel) by name: install it without dependencies and pin the rest in base.txt.
  pip_install --no-deps torchrec==1.9.2
}

# Debian's package: prometheus + promtool (2.42 on bookworm). Optional for a user (the demo runs without it, the
# observability tests skip), required under CI=true (those tests fail there without it).
install_prometheus() {
  if command -v prometheus >/dev/null && command -v promtool >/dev/null; then return 0; fi
  local how="sudo apt-get install prometheus (Debian/Ubuntu), or put prometheus and promtool 2.x on PATH"
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    [ "$IN_CI" = 1 ] && die "prometheus is not installed and CI=true needs it: $how"
    echo "setup: prometheus not installed (the observability tests skip, the demo runs without it): $how"
    return 0
  fi
  echo "setup: prometheus (apt-get install prometheus) ..."
  local log=$STAMP_DIR/apt.log
  if ! { DEBIAN_FRONTEND=noninteractive apt-get update -qq \
         && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; } >"$log" 2>&1 \
     || ! command -v promtool >/dev/null; then
    tail -n 20 "$log" >&2
    [ "$IN_CI" = 1 ] && die "apt-get install prometheus failed (log: $log)"
    echo "setup: apt-get install prometheus failed (log: $log); continuing without it: $how"
  fi
}

step "torch-$variant" "$torch_req" deploy/setup.sh -- install_torch
step python-deps requirements/base.txt requirements/dev.txt -- \
  pip_install -r requirements/base.txt -r requirements/dev.txt
step project pyproject.toml -- pip_install --no-deps -e .

echo "setup: kafka jars ..."
"$VENV/bin/python" -m deploy kafka fetch | sed "s/^/  /"
install_prometheus
prom="no prometheus"
command -v prometheus >/dev/null && prom=$(prometheus --version 2>&1 | awk 'NR == 1 { print "prometheus " $3 }')
echo "setup: ok ($variant, $($VENV/bin/python -c 'import torch; print("torch", torch.__version__)'), $prom)"
