"""The CPU training path of HTA attention (context keys + a self slot) against the float64 padded reference."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from kernels import AttentionKind, Kernel, hta_attention, hta_attention_reference, set_kernel
from kernels.attention import hta_attention_split_cpu
from kernels.testing import HTAInputs, make_hta_inputs

Attention = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (q, k, v) -> out

# (tokens per user, targets per user, q heads, kv heads): empty users, a user of targets only, one token, GQA 3:1
CASES = {
    "mixed": ([0, 1, 37, 20, 0], [0, 1, 5, 3, 0], 4, 2),
    "targets_only_user": ([19, 33], [19, 30], 3, 1),
    "no_targets": ([12, 7], [0, 0], 2, 2),
    "single_token": ([1], [1], 2, 1),
}


def _inputs(case: str, target_only: bool, shuffle: bool) -> HTAInputs:
    lengths, targets, hq, hkv = CASES[case]
    return make_hta_inputs(lengths, targets, q_heads=hq, kv_heads=hkv, head_dim=8, target_only=target_only,
                           dtype=torch.float64, seed=len(case), shuffle=shuffle, uh_ts_neg_inf=shuffle)


def _out_and_grads(fn: Attention, x: HTAInputs, grad_out: torch.Tensor) -> list[torch.Tensor]:
    leaves = [t.detach().clone().requires_grad_(True) for t in (x.q, x.k, x.v)]
    out = fn(*leaves)
    out.backward(grad_out)
    return [out.detach(), *(t.grad if t.grad is not None else torch.zeros_like(t) for t in leaves)]


@pytest.mark.parametrize("kind", list(AttentionKind), ids=lambda k: k.value)
@pytest.mark.parametrize("shuffle", [False, True], ids=["ordered", "shuffled"])
@pytest.mark.parametrize("layer", ["full", "target"])
@pytest.mark.parametrize("case", list(CASES))
def test_split_equals_reference_with_grads(case: str, layer: str, shuffle: bool, kind: AttentionKind) -> None:
    x = _inputs(case, layer == "target", shuffle)
    grad_out = torch.randn(x.q.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    want = _out_and_grads(lambda q, k, v: hta_attention_reference(q, k, v, *x.meta(), kind), x, grad_out)
    got = _out_and_grads(lambda q, k, v: hta_attention_split_cpu(q, k, v, x.layout(kind)), x, grad_out)
    for name, g, w in zip(("out", "dq", "dk", "dv"), got, want, strict=True):
        assert g.shape == w.shape, name
        assert torch.isfinite(g).all(), name
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-10, msg=name)


def test_cpu_training_dispatches_to_split_and_reference_mode_bypasses_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # CUDA-less AUTO: the CPU paths
    x = _inputs("mixed", False, False)
    q = x.q.float().requires_grad_(True)
    k, v = x.k.float(), x.v.float()
    calls: list[int] = []
    import kernels.attention as attn

    real = attn.hta_attention_split_cpu
    monkeypatch.setattr(attn, "hta_attention_split_cpu", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    set_kernel(Kernel.AUTO)
    try:
        assert not attn.use_triton(q)  # Kernel.AUTO reads TRITON_INTERPRET per call
        out = hta_attention(q, k, v, *x.meta(), AttentionKind.SOFTMAX)
        assert calls == [1]
        set_kernel(Kernel.REFERENCE)
        ref = hta_attention(q, k, v, *x.meta(), AttentionKind.SOFTMAX)
        assert calls == [1]
    finally:
        set_kernel(Kernel.AUTO)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
