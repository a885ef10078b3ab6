r"""Group LayerNorm (MTGR): a separate LayerNorm affine per token group.

Shapes::

    x       (N, D)   jagged tokens of all users, flattened
    group   (N,)     int64 group id of each token in [0, G)
    weight  (G, D)   per-group scale
    bias    (G, D)   per-group shift
    out     (N, D)

    out_n = (x_n - mean(x_n)) / sqrt(var(x_n) + eps) * weight[group_n] + bias[group_n]

(biased variance over D, as ``torch.nn.functional.layer_norm``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels.dispatch import use_triton


def group_layer_norm_reference(
    x: torch.Tensor, group: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-5
) -> torch.Tensor:
    """Readable PyTorch version: normalise, then gather each token's group affine."""
    y = F.layer_norm(x, (x.shape[-1],), eps=eps)
    return y * weight[group] + bias[group]


def group_layer_norm(
    x: torch.Tensor, group: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-5
) -> torch.Tensor:
    """Group LayerNorm: fused Triton kernel on CUDA (or under ``TRITON_INTERPRET=1``), the reference otherwise."""
    if use_triton(x):
        try:
            from kernels import group_norm_triton  # type: ignore[attr-defined]
        except ImportError:
            group_norm_triton = None
        if group_norm_triton is not None:
            return group_norm_triton.group_layer_norm_triton(x, group, weight, bias, eps)  # type: ignore[no-any-return]
    return group_layer_norm_reference(x, group, weight, bias, eps)
