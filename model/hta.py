"""One Hybrid-Target-Attention layer: Group LayerNorm -> GQA projections -> masked jagged attention -> Group
LayerNorm on the attention output -> HSTU gate -> output projection -> residual.

A *full* layer passes every token as a query; a *target* layer passes only the T tokens (the others are keys and
values only and pass through unchanged). Both call :func:`kernels.hta_attention`, so the Triton kernel drops in.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from kernels.attention import AttentionKind, hta_attention, hta_target_attention_cpu
from kernels.group_norm import group_layer_norm

NUM_GROUPS = 4  # U, H, R, T


@dataclass
class KVLayout:
    """Where the keys/values of one attention call live (jagged per user), with the mask inputs.

    ``offsets`` (B+1,), ``ts`` (Nk,) float32, ``group`` (Nk,) int64, ``max_len`` the longest user.
    """

    offsets: torch.Tensor
    ts: torch.Tensor
    group: torch.Tensor
    max_len: int


class HTALayer(nn.Module):
    """HSTU-style attention layer with grouped-query heads and Group LayerNorm (MTGR/MTFM).

    Shapes: ``x`` (N, d) tokens; queries are a subset of rows (all rows in a full layer, T rows in a target layer).
    ``group_norm=False`` gives both norms one affine shared by every group (plain LayerNorm; weights (1, d)).

    Example:
        >>> layer = HTALayer(d_model=8, q_heads=3, kv_heads=1, head_dim=4)
        >>> layer.kv(torch.zeros(5, 8))[0].shape
        torch.Size([5, 1, 4])
    """

    def __init__(
        self,
        d_model: int,
        q_heads: int,
        kv_heads: int,
        head_dim: int,
        kind: AttentionKind = AttentionKind.SOFTMAX,
        dropout: float = 0.0,
        group_norm: bool = True,
    ) -> None:
        super().__init__()
        if q_heads % kv_heads:
            raise ValueError(f"q_heads ({q_heads}) must be a multiple of kv_heads ({kv_heads})")
        self.q_heads, self.kv_heads, self.head_dim, self.kind = q_heads, kv_heads, head_dim, kind
        a = q_heads * head_dim
        g = NUM_GROUPS if group_norm else 1  # affines per norm: one per token group, or one shared
        self.norm_in_weight = nn.Parameter(torch.ones(g, d_model))
        self.norm_in_bias = nn.Parameter(torch.zeros(g, d_model))
        self.q_proj = nn.Linear(d_model, a)
        self.kv_proj = nn.Linear(d_model, 2 * kv_heads * head_dim)
        self.gate_proj = nn.Linear(d_model, a)  # HSTU's U(X): silu-gated pointwise modulation of the output
        self.norm_out_weight = nn.Parameter(torch.ones(g, a))
        self.norm_out_bias = nn.Parameter(torch.zeros(g, a))
        self.out_proj = nn.Linear(a, d_model)
        self.dropout = nn.Dropout(dropout)

    def _norm_group(self, group: torch.Tensor) -> torch.Tensor:
        """Each row's affine: its token group, or row 0 of the one shared affine (``group_norm=False``)."""
        return group if self.norm_in_weight.shape[0] > 1 else torch.zeros_like(group)

    def norm_in(self, x: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
        return group_layer_norm(x, self._norm_group(group), self.norm_in_weight, self.norm_in_bias)

    def kv(self, xn: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised tokens (N, d) -> keys, values (N, kv_heads, head_dim)."""
        k, v = self.kv_proj(xn).view(-1, 2, self.kv_heads, self.head_dim).unbind(1)
        return k, v

    def query_update(
        self,
        x: torch.Tensor,
        xn: torch.Tensor,
        group: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        kv: KVLayout,
        q_offsets: torch.Tensor,
        q_pos: torch.Tensor,
        max_q_len: int,
    ) -> torch.Tensor:
        """Residual update of the query rows ``x`` (Nq, d) (``xn`` their normalised form, ``group`` their groups)."""
        q = self.q_proj(xn).view(-1, self.q_heads, self.head_dim)  # (Nq, Hq, D)
        a = hta_attention(
            q, k, v, q_offsets, kv.offsets, q_pos, kv.ts, kv.group, max_q_len, kv.max_len, kind=self.kind
        )  # (Nq, Hq, D)
        return self._finish(x, xn, group, a)

    def target_update(
        self,
        x: torch.Tensor,
        xn: torch.Tensor,
        group: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        q_offsets: torch.Tensor,
        q_ts: torch.Tensor,
        max_q_len: int,
        ctx: KVLayout,
        ctx_k: torch.Tensor,
        ctx_v: torch.Tensor,
    ) -> torch.Tensor:
        """:meth:`query_update` of target rows (``k``/``v`` their own keys/values, ``q_ts`` their timestamps) against
        their users' context keys ``ctx_k``/``ctx_v`` laid out by ``ctx``, without materialising the merged
        [context, targets] sequence (same result: a target sees its context and only itself among targets)."""
        q = self.q_proj(xn).view(-1, self.q_heads, self.head_dim)  # (T, Hq, D)
        a = hta_target_attention_cpu(
            q, k, v, q_offsets, q_ts, ctx_k, ctx_v, ctx.offsets, ctx.ts, ctx.group, max_q_len, ctx.max_len,
            kind=self.kind,
        )
        return self._finish(x, xn, group, a)

    def _finish(self, x: torch.Tensor, xn: torch.Tensor, group: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """Attention output (Nq, Hq, D) -> Group LayerNorm -> HSTU gate -> output projection -> residual."""
        a = group_layer_norm(a.reshape(a.shape[0], self.q_heads * self.head_dim), self._norm_group(group),
                             self.norm_out_weight, self.norm_out_bias)
        y = self.out_proj(a * F.silu(self.gate_proj(xn)))
        return x + self.dropout(y)
