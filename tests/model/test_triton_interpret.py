"""The Ranker on the Triton kernels (run by Triton's CPU interpreter) equals the Ranker on the PyTorch references."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

_CHILD = r"""
import os
assert os.environ["TRITON_INTERPRET"] == "1"
import torch
from kernels.attention import AttentionKind
from kernels.dispatch import Kernel, set_kernel, use_triton
from tests.model.helpers import make_sample, seeded, small_config, small_spec
from model.batch import collate
from model import Ranker

assert use_triton(torch.zeros(1))
spec = small_spec()
batch = collate([make_sample(1, n_hist=3, n_rt=2, n_tgt=3), make_sample(2, n_hist=0, n_rt=1, n_tgt=2)], spec)
for kind in (AttentionKind.SOFTMAX, AttentionKind.SILU):
    model = seeded(Ranker(spec, small_config(attention=kind, num_blocks=1, target_layers=1)), 3)
    grads = []
    outs = []
    for kernel in (Kernel.REFERENCE, Kernel.AUTO):
        set_kernel(kernel)
        model.zero_grad()
        out = model(batch)
        torch.stack([o.sum() for o in out.values()]).sum().backward()
        outs.append(out)
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    cached = model.score_candidates(model.encode_user(batch), batch)  # still on Triton
    for t in spec.tasks:
        torch.testing.assert_close(outs[1][t], outs[0][t], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(cached[t], outs[0][t], atol=1e-5, rtol=1e-4)
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], atol=1e-5, rtol=1e-3, msg=n)
print("ok")
"""


@pytest.mark.slow  # a fresh interpreter with TRITON_INTERPRET=1 (must be set before triton is imported)
def test_ranker_on_triton_interpreter_matches_reference() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", _CHILD], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("ok")
