"""Hashed-id embeddings through TorchRec and the per-token-type tokenizers (U/H/R/T -> width d).

One unweighted ``EmbeddingBagCollection`` pools each token's bags (stride = tokens), one weighted collection pools
each target's open-keyed float features (stride = targets). Each table's parameters are the *embedding* parameters
the trainer updates with row-wise Adagrad; everything else in the model is dense.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor
from torchrec.modules.embedding_configs import PoolingType

from kernels.attention import TokenGroup
from model.batch import TARGET_DENSE_COLUMNS, Batch
from model.features import FLOAT_FEATURES, SPARSE_FEATURES, FeatureSpec

# Which pooled features describe each token group (the tokenizer of that group concatenates them).
GROUP_FEATURES: dict[TokenGroup, tuple[str, ...]] = {
    TokenGroup.U: ("user_feat",),
    TokenGroup.H: ("item_id", "item_feat", "scenario", "action", "time_gap"),
    TokenGroup.R: ("item_id", "item_feat", "scenario", "action", "time_gap"),
    TokenGroup.T: ("item_id", "item_feat", "scenario", "time_gap", "context"),
}


def _tables(spec: FeatureSpec, features: tuple[str, ...]) -> list[EmbeddingBagConfig]:
    return [
        EmbeddingBagConfig(
            name=f"t_{f}",
            embedding_dim=spec.tables[f].dim,
            num_embeddings=spec.tables[f].num_embeddings,
            feature_names=[f],
            pooling=PoolingType.SUM,
            init_fn=partial(nn.init.normal_, mean=0.0, std=0.02),
        )
        for f in features
    ]


class FeatureEmbedding(nn.Module):
    """Pooled embeddings of every token's bags and every target's float features.

    ``forward(batch)`` returns ``(tokens, floats)``: ``tokens[f]`` is (N, dim_f) for each sparse feature (zeros on
    tokens the feature does not describe), ``floats[f]`` is (T, dim_f) for ``dense`` and ``cross``.

    Example:
        >>> emb = FeatureEmbedding(FeatureSpec())
        >>> sorted(emb.dims)[:2]
        ['action', 'context']
    """

    def __init__(self, spec: FeatureSpec, device: torch.device | None = None) -> None:
        super().__init__()
        if spec.managed_collision:
            from model.managed_collision import managed_collision_ebc

            self.ebc: nn.Module = managed_collision_ebc(spec, _tables(spec, SPARSE_FEATURES), device)
        else:
            self.ebc = EmbeddingBagCollection(tables=_tables(spec, SPARSE_FEATURES), device=device)
        self.float_ebc = EmbeddingBagCollection(
            tables=_tables(spec, FLOAT_FEATURES), is_weighted=True, device=device
        )
        self.dims = {f: spec.tables[f].dim for f in (*SPARSE_FEATURES, *FLOAT_FEATURES)}

    def _sparse(self, kjt: KeyedJaggedTensor) -> dict[str, torch.Tensor]:
        out = self.ebc(kjt)
        if isinstance(out, tuple):  # managed-collision EBC returns (KeyedTensor, remapped ids)
            out = out[0]
        return out.to_dict()  # type: ignore[no-any-return]

    def forward(self, batch: Batch) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        return self._sparse(batch.sparse), self.float_ebc(batch.float_features).to_dict()


class Tokenizer(nn.Module):
    """Per-token-type MLP into the model width: concat(pooled features) -> Linear -> SiLU -> Linear."""

    def __init__(self, in_dim: int, d_model: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, d_model), nn.SiLU(), nn.Linear(d_model, d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # type: ignore[no-any-return]


class TokenEmbedder(nn.Module):
    """Embeds a batch into tokens: a separate :class:`Tokenizer` per group (U, H, R, T) into width ``d_model``.

    ``forward(batch, groups)`` returns ``{group: (n_g, d_model)}`` for the requested groups (rows in
    ``batch.group_rows[g]`` order) and the targets' pooled scenario embedding (T, dim) for the MMoE gate.
    """

    def __init__(self, spec: FeatureSpec, d_model: int) -> None:
        super().__init__()
        self.spec = spec
        self.features = FeatureEmbedding(spec)
        dims = self.features.dims
        self.tokenizers = nn.ModuleList()
        for g in TokenGroup:
            in_dim = sum(dims[f] for f in GROUP_FEATURES[g])
            if g is TokenGroup.T:
                in_dim += sum(dims[f] for f in FLOAT_FEATURES) + len(TARGET_DENSE_COLUMNS)
            self.tokenizers.append(Tokenizer(in_dim, d_model))
        # U tokens are feature groups, not a sequence: each slot gets its own learned offset
        self.user_slot = nn.Parameter(torch.zeros(spec.num_user_tokens, d_model))
        self.scenario_dim = dims["scenario"]

    @property
    def target_in_dim(self) -> int:
        """Width of a T token's concatenated input features (before its tokenizer)."""
        tok = self.tokenizers[TokenGroup.T]
        assert isinstance(tok, Tokenizer)
        first = tok.net[0]
        assert isinstance(first, nn.Linear)
        return first.in_features

    def forward(
        self, batch: Batch, groups: tuple[TokenGroup, ...] = tuple(TokenGroup), inputs: dict[TokenGroup, torch.Tensor]
        | None = None,
    ) -> tuple[dict[TokenGroup, torch.Tensor], torch.Tensor]:
        """``inputs``, when given, receives each group's concatenated features (n_g, in_dim) before its tokenizer."""
        pooled, floats = self.features(batch)
        out: dict[TokenGroup, torch.Tensor] = {}
        for g in groups:
            rows = batch.group_rows[g]
            parts = [pooled[f][rows] for f in GROUP_FEATURES[g]]
            if g is TokenGroup.T:
                parts += [floats[f] for f in FLOAT_FEATURES] + [batch.target_dense]
            raw = torch.cat(parts, dim=-1)
            if inputs is not None:
                inputs[g] = raw
            x = self.tokenizers[g](raw)
            if g is TokenGroup.U:
                x = x + self.user_slot.repeat(batch.num_samples, 1)
            out[g] = x
        scen = pooled["scenario"][batch.group_rows[TokenGroup.T]]  # (T, dim)
        return out, scen

    def embedding_parameters(self) -> list[nn.Parameter]:
        return list(self.features.parameters())
