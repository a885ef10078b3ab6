"""MDL-style scenario and task prompt tokens (``RankerConfig.prompt_tokens``).

MDL (Kuaishou's multi-distribution learner) tokenises *which distribution a sample comes from* — its scenario and
the task being predicted — into learned tokens the feature tokens attend to, instead of only gating the output
heads on them. Here every user-level sample gets ``P = 1 + tasks`` prompt tokens prepended to its sequence::

    [U.., H.., R.., T..]  ->  [S, K_0 .. K_{k-1}, U.., H.., R.., T..]      (N -> N + B * P tokens)

    S    (d,)  the sample's scenario mix: the mean over its targets of a learned per-scenario vector
               (``scenario`` (rows, d), rows = the ``scenario`` table's, indexed by the hashed scenario id)
    K_i  (d,)  a learned vector per task (``task`` (tasks, d)), the same in every sample

They are U tokens to the mask and to Group LayerNorm (token group U, time -inf): every token sees them, they see
U/H and each other, and in a full layer they are queries like U tokens (updated); target layers leave them as they
are. Each target therefore reads its sample's scenario mix and the task tokens in every layer. Because ``S``
depends on the sample's targets, a target's score depends on its user's other targets' scenarios (never on their
features or labels): :meth:`model.ranker.Ranker.score_candidates` runs ``forward`` for such a model.

Example:
    >>> from model.batch import collate
    >>> from streaming.sample import Sample, Target
    >>> spec = FeatureSpec()
    >>> batch = collate([Sample("s", "u", [Target("e", "r", "i", "home", 1.0)])], spec)
    >>> p = PromptTokens(spec, d_model=8)
    >>> p.count, p.tokens(batch).shape
    (3, torch.Size([1, 3, 8]))
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from kernels.attention import TokenGroup
from model.batch import Batch
from model.features import FeatureSpec


@dataclass
class TokenSequence:
    """The token sequence the attention layers run on (jagged per user).

    ``x`` (N, d) tokens; ``group`` (N,) token groups; ``ts`` (N,) float32 times; ``offsets`` (B+1,) user b owns
    rows ``offsets[b]:offsets[b+1]``; ``max_len`` the longest user; ``t_rows`` (T,) the target rows;
    ``t_pos`` (T,) each target's position inside its user's sequence.
    """

    x: torch.Tensor
    group: torch.Tensor
    ts: torch.Tensor
    offsets: torch.Tensor
    max_len: int
    t_rows: torch.Tensor
    t_pos: torch.Tensor


class PromptTokens(nn.Module):
    """Learned scenario and task prompt tokens, prepended to every user's sequence (module docstring).

    ``tokens(batch)`` -> (B, P, d); ``prepend(batch, seq)`` -> the :class:`TokenSequence` with them in front.
    """

    def __init__(self, spec: FeatureSpec, d_model: int) -> None:
        super().__init__()
        self.scenario_rows = spec.tables["scenario"].num_embeddings
        self.scenario = nn.Parameter(torch.randn(self.scenario_rows, d_model) * 0.02)  # (rows, d)
        self.task = nn.Parameter(torch.randn(len(spec.tasks), d_model) * 0.02)  # (tasks, d)

    @property
    def count(self) -> int:
        """P: prompt tokens per user (one scenario token, one per task)."""
        return 1 + int(self.task.shape[0])

    def tokens(self, batch: Batch) -> torch.Tensor:
        """(B, P, d): per user, its scenario-mix token then the task tokens."""
        B, T = batch.num_samples, batch.num_targets
        rows = batch.target_scenario_ids % self.scenario_rows  # raw managed-collision hashes folded
        owner = torch.repeat_interleave(torch.arange(B, device=rows.device), batch.target_offsets.diff(),
                                        output_size=T)
        e = self.scenario.index_select(0, rows)  # (T, d)
        n = batch.target_offsets.diff().clamp(min=1).unsqueeze(1).to(e.dtype)  # (B, 1); a user without targets: 0
        s = e.new_zeros(B, e.shape[1]).index_add(0, owner, e) / n  # (B, d)
        return torch.cat([s.unsqueeze(1), self.task.unsqueeze(0).expand(B, -1, -1)], dim=1)

    def prepend(self, batch: Batch, seq: TokenSequence) -> TokenSequence:
        """``seq`` (in ``batch``'s layout) with each user's P prompt tokens in front of its U tokens."""
        P, B, (N, d) = self.count, batch.num_samples, seq.x.shape
        dev = seq.x.device
        user = torch.repeat_interleave(torch.arange(B, device=dev), seq.offsets.diff(), output_size=N)
        dst = torch.arange(N, device=dev) + P * (user + 1)  # (N,) old row -> new row
        p_dst = (seq.offsets[:-1] + P * torch.arange(B, device=dev)).unsqueeze(1) \
            + torch.arange(P, device=dev)  # (B, P) rows of the prompts
        n = N + B * P
        x = seq.x.new_zeros(n, d).index_copy(0, dst, seq.x).index_copy(0, p_dst.reshape(-1),
                                                                        self.tokens(batch).reshape(-1, d))
        group = seq.group.new_full((n,), int(TokenGroup.U)).index_copy(0, dst, seq.group)
        ts = seq.ts.new_full((n,), float("-inf")).index_copy(0, dst, seq.ts)
        offsets = seq.offsets + P * torch.arange(B + 1, device=dev)
        return TokenSequence(x, group, ts, offsets, seq.max_len + P, dst[seq.t_rows], seq.t_pos + P)
