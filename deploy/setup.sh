#!/usr/bin/env bash
# Idempotent environment set-up: .venv with pinned Python packages (CPU or GPU variant) and the Kafka jars.
# Re-running is cheap: each step is skipped when its inputs' hash matches the stamp it left last time.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv
STAMP_DIR=$VENV/.stamps

die() { echo "setup: $*" >&2; exit 1; }
command -v "$PY" >/dev/null || die "python3 not found; install Python 3.11"
"$PY" -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null || die "Python >= 3.11 required ($($PY --version 2>&1))"

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
mkdir -p "$STAMP_DIR"
PIP="$VENV/bin/python -m pip --disable-pip-version-check -q"

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

install_torch() {
  # The other fbgemm variant would shadow ours: remove it first.
  if [ "$variant" = cpu ]; then $PIP uninstall -y fbgemm-gpu >/dev/null 2>&1 || true
  else $PIP uninstall -y fbgemm-gpu-cpu >/dev/null 2>&1 || true; fi
  $PIP install -r "$torch_req"
  # torchrec declares `fbgemm-gpu` (the CUDA wheel) by name: install it without dependencies and pin the rest in base.txt.
  $PIP install --no-deps torchrec==1.9.2
}
step "torch-$variant" "$torch_req" deploy/setup.sh -- install_torch
step python-deps requirements/base.txt requirements/dev.txt -- \
  $PIP install -r requirements/base.txt -r requirements/dev.txt
step project pyproject.toml -- $PIP install --no-deps -e .

"$VENV/bin/python" -m deploy kafka fetch
echo "setup: ok ($variant, $($VENV/bin/python -c 'import torch; print("torch", torch.__version__)'))"
