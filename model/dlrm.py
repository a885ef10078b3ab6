"""``DLRMBaseline``: pooled history + cross features + pairwise interaction + MLP towers, same ``Batch`` interface.

Per target it builds feature vectors (width ``embed_dim``): user profile (sum of U tokens), history (mean of H
tokens), real-time (mean of the user's R tokens strictly earlier than the target — the same causality as the
transformer's mask), the target item/scenario/context token, and a bottom MLP over the target's dense and cross
features; then DLRM's pairwise dot-product interaction and one MLP tower per task.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from kernels.attention import TokenGroup
from model.batch import TARGET_DENSE_COLUMNS, Batch
from model.embedding import GROUP_FEATURES, FeatureEmbedding
from model.features import FLOAT_FEATURES, FeatureSpec
from model.heads import (
    CrossRates,
    item_bias_logits,
    item_bias_table,
    mlp,
    target_item_rows,
)
from model.ranker import _user_of


@dataclass(frozen=True)
class DLRMConfig:
    """Architecture of :class:`DLRMBaseline`.

    The generic (not sequence-related) shortcuts mean the same as in :class:`model.ranker.RankerConfig`:
    ``item_bias`` (per-item, per-task logit table), ``cross_rates`` (the user's smoothed rates from the cross
    counters), ``linear`` (a first-order term on the target's raw features: its item, scenario, context and
    time-gap embeddings, cross/dense values) and ``task_priors`` (initial output biases).

    Example:
        >>> DLRMConfig.from_json(DLRMConfig(embed_dim=16).to_json()).embed_dim
        16
    """

    embed_dim: int = 32
    bottom_hidden: int = 64
    top_hidden: tuple[int, ...] = (128, 64)
    item_bias: bool = False
    linear: bool = False
    cross_rates: bool = False
    cross_rates_init: float = 1.0
    cross_rates_smoothing: float = 5.0
    task_priors: tuple[tuple[str, float], ...] = ()

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @staticmethod
    def from_json(raw: str | dict[str, Any]) -> DLRMConfig:
        d = dict(json.loads(raw) if isinstance(raw, str) else raw)
        d["top_hidden"] = tuple(d["top_hidden"])
        d["task_priors"] = tuple((str(t), float(p)) for t, p in d.get("task_priors", ()))
        return DLRMConfig(**d)


class DLRMBaseline(nn.Module):
    """DLRM-style baseline ranker: ``forward(batch) -> {task: (T,) logits}``.

    Example:
        >>> from streaming.sample import Sample, Target
        >>> from model.batch import collate
        >>> spec = FeatureSpec()
        >>> batch = collate([Sample("s", "u", [Target("e", "r", "i", "home", 1.0)])], spec)
        >>> DLRMBaseline(spec, DLRMConfig())(batch)["conversion"].shape
        torch.Size([1])
    """

    NUM_VECTORS = 5  # user, history, real-time, target, dense

    def __init__(self, spec: FeatureSpec, config: DLRMConfig) -> None:
        super().__init__()
        self.spec, self.config = spec, config
        e = config.embed_dim
        self.features = FeatureEmbedding(spec)
        dims = self.features.dims
        self.proj = nn.ModuleList(nn.Linear(sum(dims[f] for f in GROUP_FEATURES[g]), e) for g in TokenGroup)
        n_float = sum(dims[f] for f in FLOAT_FEATURES) + len(TARGET_DENSE_COLUMNS)
        self.bottom = mlp([n_float, config.bottom_hidden, e], last_act=True)
        n = self.NUM_VECTORS
        top_in = n * (n - 1) // 2 + 2 * e
        self.towers = nn.ModuleDict({t: mlp([top_in, *config.top_hidden, 1]) for t in spec.tasks})
        self.item_bias = item_bias_table(spec) if config.item_bias else None
        self.cross_rates = CrossRates(spec, config.task_priors, config.cross_rates_smoothing,
                                      config.cross_rates_init) if config.cross_rates else None
        t_in = sum(dims[f] for f in GROUP_FEATURES[TokenGroup.T]) + n_float
        self.linear = nn.Linear(t_in, len(spec.tasks)) if config.linear else None
        if self.linear is not None:
            nn.init.zeros_(self.linear.weight)
            nn.init.zeros_(self.linear.bias)
        for task, p in config.task_priors:
            if task in spec.tasks:
                tower = self.towers[task]
                assert isinstance(tower, nn.Sequential)
                last = tower[-1]
                assert isinstance(last, nn.Linear)
                with torch.no_grad():
                    last.bias.fill_(math.log(p / (1.0 - p)))

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        pooled, floats = self.features(batch)
        e, B, T = self.config.embed_dim, batch.num_samples, batch.num_targets
        tok = {}
        for g in TokenGroup:
            rows = batch.group_rows[g]
            tok[g] = self.proj[g](torch.cat([pooled[f][rows] for f in GROUP_FEATURES[g]], dim=-1))
        lens = batch.group_lengths  # (B, 4)
        t_user = _user_of(batch.target_offsets, T)

        def per_user_sum(g: TokenGroup) -> torch.Tensor:
            owner = torch.repeat_interleave(torch.arange(B, device=lens.device), lens[:, g], output_size=tok[g].shape[0])
            return tok[g].new_zeros(B, e).index_add(0, owner, tok[g])

        user = per_user_sum(TokenGroup.U)[t_user]
        hist = (per_user_sum(TokenGroup.H) / lens[:, TokenGroup.H].clamp(min=1).unsqueeze(1))[t_user]
        # real-time: pad each user's R tokens to (B, Lr) and average those strictly before each target
        Lr = batch.max_group_len[TokenGroup.R]
        r_off = torch.zeros(B + 1, dtype=torch.int64, device=lens.device)
        r_off[1:] = lens[:, TokenGroup.R].cumsum(0)
        j = torch.arange(Lr, device=lens.device)
        valid = j[None, :] < lens[:, TokenGroup.R, None]  # (B, Lr)
        idx = (r_off[:-1, None] + j[None, :]).clamp(max=max(tok[TokenGroup.R].shape[0] - 1, 0))
        r_rows = batch.group_rows[TokenGroup.R]
        if r_rows.numel():
            r_emb = tok[TokenGroup.R][idx]  # (B, Lr, e)
            r_ts = batch.token_ts[r_rows][idx]  # (B, Lr)
        else:
            r_emb = tok[TokenGroup.R].new_zeros(B, Lr, e)
            r_ts = batch.token_ts.new_zeros(B, Lr)
        t_ts = batch.token_ts[batch.group_rows[TokenGroup.T]]  # (T,)
        seen = (valid[t_user] & (r_ts[t_user] < t_ts[:, None])).to(r_emb.dtype)  # (T, Lr)
        rt = torch.einsum("tl,tle->te", seen, r_emb[t_user]) / seen.sum(1, keepdim=True).clamp(min=1)
        dense = self.bottom(torch.cat([floats[f] for f in FLOAT_FEATURES] + [batch.target_dense], dim=-1))
        vecs = torch.stack([user, hist, rt, tok[TokenGroup.T], dense], dim=1)  # (T, 5, e)
        inter = torch.bmm(vecs, vecs.transpose(1, 2))  # (T, 5, 5)
        iu, ju = torch.triu_indices(self.NUM_VECTORS, self.NUM_VECTORS, offset=1, device=vecs.device)
        top_in = torch.cat([inter[:, iu, ju], tok[TokenGroup.T], dense], dim=-1)
        out = {t: tower(top_in).squeeze(-1) for t, tower in self.towers.items()}
        extra = []  # (T, tasks) first-order logits
        if self.linear is not None:
            t_rows = batch.group_rows[TokenGroup.T]
            extra.append(self.linear(torch.cat([pooled[f][t_rows] for f in GROUP_FEATURES[TokenGroup.T]]
                                               + [floats[f] for f in FLOAT_FEATURES] + [batch.target_dense], dim=-1)))
        if self.item_bias is not None:
            extra.append(item_bias_logits(self.item_bias, target_item_rows(batch, self.spec), len(self.spec.tasks)))
        if self.cross_rates is not None:
            extra.append(self.cross_rates(batch))
        for z in extra:
            out = {t: out[t] + z[:, i] for i, t in enumerate(out)}
        return out

    def embedding_parameters(self) -> list[nn.Parameter]:
        return list(self.features.parameters()) + (list(self.item_bias.parameters()) if self.item_bias else [])

    def dense_parameters(self) -> list[nn.Parameter]:
        emb = {id(p) for p in self.embedding_parameters()}
        return [p for p in self.parameters() if id(p) not in emb]

    def observe(self, batch: Batch) -> None:
        """No model-side statistics (:class:`model.TrainableModel`): the baseline learns only by gradients."""
