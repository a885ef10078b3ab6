"""Kernels on vs off in the real model: the Ranker's scores and every parameter gradient agree (float32)."""

from __future__ import annotations

import pytest
import torch

from kernels import AttentionKind, Kernel, set_kernel
from model import Ranker
from model.batch import collate
from tests.kernels.conftest import rel_err
from tests.model.helpers import make_sample, seeded, small_config, small_spec


def _scores_and_grads(model: Ranker, batch, tasks) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:  # type: ignore[no-untyped-def]
    model.zero_grad(set_to_none=True)
    out = model(batch)
    loss = torch.stack(
        [torch.nn.functional.binary_cross_entropy_with_logits(out[t], batch.labels[t]) for t in tasks]
    ).sum()
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return torch.cat([out[t].detach().flatten() for t in tasks]), grads


@pytest.mark.parametrize("kind", list(AttentionKind), ids=lambda k: k.value)
def test_ranker_with_triton_kernels_matches_reference(triton_device: str, kind: AttentionKind) -> None:
    spec = small_spec()
    model = seeded(Ranker(spec, small_config(attention=kind, num_blocks=1)), seed=3).train()
    assert isinstance(model, Ranker)
    samples = [make_sample(50, n_tgt=6), make_sample(51, n_hist=0, n_rt=0, n_tgt=1), make_sample(52, n_rt=7)]
    batch = collate(samples, spec)
    if triton_device != "cpu":
        model, batch = model.to(triton_device), batch.to(triton_device)
    set_kernel(Kernel.REFERENCE)
    want, want_grads = _scores_and_grads(model, batch, spec.tasks)
    set_kernel(Kernel.TRITON)
    got, got_grads = _scores_and_grads(model, batch, spec.tasks)
    assert rel_err(got, want) < 1e-5
    assert got_grads.keys() == want_grads.keys()
    for name, g in want_grads.items():
        assert rel_err(got_grads[name], g) < 1e-4, name
