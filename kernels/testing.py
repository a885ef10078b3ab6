"""Synthetic jagged inputs for the kernels' tests and benchmarks (no test framework imports).

Example:
    >>> x = make_hta_inputs([3, 0, 5], [1, 0, 2], q_heads=2, kv_heads=1, head_dim=16, target_only=True)
    >>> x.q.shape, x.q_offsets.tolist()
    (torch.Size([3, 2, 16]), [0, 1, 1, 3])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from kernels.attention import AttentionKind, JaggedHTA, TokenGroup


@dataclass(frozen=True, kw_only=True)
class HTAInputs(JaggedHTA):
    """Arguments of ``hta_attention`` for one jagged batch: q, k, v and their layout (``kind``/``scale`` default)."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor

    def meta(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int, int]:
        """The arguments after q, k, v (up to ``kind``)."""
        return (
            self.q_offsets,
            self.kv_offsets,
            self.q_pos,
            self.kv_ts,
            self.kv_group,
            self.max_q_len,
            self.max_kv_len,
        )

    def layout(self, kind: AttentionKind = AttentionKind.SOFTMAX, scale: float | None = None) -> JaggedHTA:
        """The arguments after q, k, v as a plain :class:`~kernels.attention.JaggedHTA` (no q, k, v inside)."""
        return JaggedHTA(*self.meta(), kind, scale)


def make_hta_inputs(
    lengths: Sequence[int],
    n_targets: Sequence[int],
    *,
    q_heads: int,
    kv_heads: int,
    head_dim: int,
    target_only: bool,
    dtype: torch.dtype = torch.float64,
    device: str | torch.device = "cpu",
    seed: int = 0,
    shuffle: bool = False,
    uh_ts_neg_inf: bool = False,
) -> HTAInputs:
    """A batch of users with ``lengths[b]`` tokens each, the last ``n_targets[b]`` of them T tokens.

    Non-target tokens: the first is U, the rest H or R at random. Timestamps are small integers (ties on purpose:
    the mask needs ts_j < ts_i strictly); T tokens get the user's latest time. ``shuffle`` permutes each user's tokens
    (the mask depends on groups and times, not on order). ``target_only`` makes the queries the T tokens only
    (``q_pos`` their positions), else every token (``q_pos = arange``).
    """
    if len(lengths) != len(n_targets):
        raise ValueError("lengths and n_targets differ in length")
    g = torch.Generator().manual_seed(seed)
    groups: list[int] = []
    times: list[float] = []
    q_pos: list[int] = []
    q_offsets = [0]
    for length, targets in zip(lengths, n_targets, strict=True):
        targets = min(targets, length)
        rest = length - targets
        grp = [int(TokenGroup.U)] * min(rest, 1)
        grp += [
            int(TokenGroup.H) if h else int(TokenGroup.R)
            for h in (torch.rand(max(rest - 1, 0), generator=g) < 0.5)
        ]
        grp += [int(TokenGroup.T)] * targets
        ts = torch.randint(0, 8, (length,), generator=g).double()
        order = torch.randperm(length, generator=g) if shuffle else torch.arange(length)
        grp_t = torch.tensor(grp, dtype=torch.int64)[order]
        ts = ts[order]
        ts[grp_t == TokenGroup.T] = 8.0  # targets are scored at the latest time
        if uh_ts_neg_inf:
            ts[(grp_t == TokenGroup.U) | (grp_t == TokenGroup.H)] = float("-inf")
        groups += grp_t.tolist()
        times += ts.tolist()
        q_pos += (grp_t == TokenGroup.T).nonzero().flatten().tolist() if target_only else list(range(length))
        q_offsets.append(len(q_pos))
    kv_offsets = torch.tensor([0, *torch.tensor(list(lengths), dtype=torch.int64).cumsum(0).tolist()])
    n_q, n_k = len(q_pos), int(kv_offsets[-1])
    q = torch.randn(n_q, q_heads, head_dim, generator=g, dtype=torch.float64)
    k = torch.randn(n_k, kv_heads, head_dim, generator=g, dtype=torch.float64)
    v = torch.randn(n_k, kv_heads, head_dim, generator=g, dtype=torch.float64)
    q_lens = [q_offsets[i + 1] - q_offsets[i] for i in range(len(lengths))]
    return HTAInputs(
        q=q.to(device=device, dtype=dtype),
        k=k.to(device=device, dtype=dtype),
        v=v.to(device=device, dtype=dtype),
        q_offsets=torch.tensor(q_offsets, dtype=torch.int64, device=device),
        kv_offsets=kv_offsets.to(device),
        q_pos=torch.tensor(q_pos, dtype=torch.int64, device=device),
        kv_ts=torch.tensor(times, dtype=torch.float32, device=device),
        kv_group=torch.tensor(groups, dtype=torch.int64, device=device),
        max_q_len=max(q_lens, default=0),
        max_kv_len=max(lengths, default=0),
    )
