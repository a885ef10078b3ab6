"""``Ranker``: the MTFM-style multi-scenario transformer (heterogeneous tokens, HTA blocks, GQA, GLN, MMoE).

Per user the token sequence is ``[U.., H.., R.., T..]`` (see :mod:`model.batch`). MTGR's dynamic mask (U/H seen by
all, R only by later tokens, T only by itself) is applied inside :func:`kernels.hta_attention`. Each of the
``num_blocks`` blocks is one full layer (all tokens are queries) and ``target_layers`` target layers (only T tokens
are queries and are updated). Because no context token (U/H/R) ever sees a T token, the context's hidden states and
keys/values do not depend on the targets: :meth:`Ranker.encode_user` computes them once per user and
:meth:`Ranker.score_candidates` scores any number of candidates against that cache (M-FALCON style).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torchrec import KeyedJaggedTensor

from kernels.attention import AttentionKind, TokenGroup
from kernels.dispatch import Kernel, get_kernel, use_triton
from model.batch import Batch
from model.cowatch import CoLike, CoWatch, RecentReads, visible_context
from model.embedding import GROUP_FEATURES, TokenEmbedder
from model.features import FeatureSpec
from model.heads import (
    CrossRates,
    MMoE,
    UserItemFactors,
    item_bias_logits,
    item_bias_table,
    target_item_rows,
)
from model.hta import HTALayer, KVLayout
from model.prompts import PromptTokens, TokenSequence

_CTX_GROUPS = (TokenGroup.U, TokenGroup.H, TokenGroup.R)
CROSS_RATES_SMOOTHING = 5.0  # pseudo-count of the cross-counter rates' shrinkage towards the task priors
COWATCH_TEMPERATURES = (0.0, 10.0, 30.0, 100.0)  # one softmax read of the history per temperature
# Options earlier experiments could switch, now fixed (no preset varied them; their ablation numbers are in
# docs/experiments.md): name -> the only value this build has. from_json drops them from configs written before
# they were removed and refuses any other value (a model this build cannot construct).
REMOVED_FIELDS: dict[str, object] = {
    "wide": True,
    "linear": True,
    "user_linear": True,
    "item_bias": True,
    "zero_init": False,
    "cross_rates_smoothing": CROSS_RATES_SMOOTHING,
    "cowatch_temperatures": COWATCH_TEMPERATURES,
}


@dataclass(frozen=True)
class RankerConfig:
    """Architecture of :class:`Ranker` (defaults: a small model that trains on a CPU laptop).

    Attributes:
        d_model: token width d.
        num_blocks: HTA blocks B.
        target_layers: target-only layers K after each block's full layer (MTFM production 3, i.e. 3:1);
            0 gives a plain full-attention transformer.
        q_heads / kv_heads: grouped-query attention heads (MTFM 3:1); equal numbers give multi-head attention.
        head_dim: width of one attention head (decoupled from d_model so 3 heads fit any d).
        attention: softmax, or HSTU's pointwise SiLU.
        num_experts / expert_dim: MMoE head.
        dropout: on each layer's residual branch.
        cross_rates: the user's smoothed lifetime label rates (overall, in the target's scenario and category),
            read from the target's cross counters, as a direct logit term (:class:`model.heads.CrossRates`,
            smoothed towards ``task_priors`` with :data:`CROSS_RATES_SMOOTHING`); ``cross_rates_init`` is the
            initial weight of the overall rate.
        task_priors: ``((task, p), ...)`` initial output bias = log-odds of ``p`` per task (others start at 0).
        cowatch: a target-aware kNN read of the history keyed by a streaming item co-occurrence sketch
            (:class:`model.cowatch.CoWatch`: ``cowatch_rows`` x ``cowatch_dim`` sketch, one softmax read of
            the context tokens' action embeddings per temperature in :data:`COWATCH_TEMPERATURES`), added to the
            logits. Its sketch is model state updated by :meth:`Ranker.observe` after each training step.
        cowatch_size_buckets: with ``cowatch``, read weights per log2 bucket of the number of context tokens
            read (:func:`model.cowatch.size_bucket`) next to the shared ones, so a read over a user's first few
            items is weighed apart from one over a long history; 0 = shared weights only (ignored without cowatch).
        colike_signs: with ``cowatch``, a second readout of the same form over a signed co-occurrence sketch
            (:class:`model.cowatch.CoLike`: items liked or not by the same users), ``((action, +1.0 | -1.0),
            ...)`` the sign of a history token's action (a target's sign is its first task's label); () = off
            (ignored without cowatch).
        cowatch_item_baseline: with ``cowatch``, the readouts read each context token's action embedding minus a
            learned linear function of its item's embeddings (zero-initialised): the user's action relative to
            how that item is usually received — the baseline-adjusted neighbourhood of item-based CF — instead of
            the raw action (ignored without cowatch).
        cowatch_recent: with ``cowatch``, the recent reads (:class:`model.cowatch.RecentReads`): for each ``k``
            the mean of those actions over the target's last ``k`` visible context tokens, a zero-initialised
            logit term — the user's recent behavior next to the readouts' similarity-weighted and whole-context
            reads; () = off (ignored without cowatch).
        cowatch_recent_similar: with ``cowatch_recent`` and ``colike_signs``, the co-like readout's reads at
            temperatures 10 and 30 over each target's last this many visible context tokens only (the recent
            reads' second term); 0 = off.
        cross_features: the targets' cross features (the weighted ``cross`` bag) reach the model; False empties
            that bag in every batch the Ranker reads (the ``no_cross`` ablation; ``cross_rates`` must be off too).
        group_norm: MTGR's Group LayerNorm (one affine per token group) in every layer; False = one shared
            LayerNorm affine (the ``no_group_norm`` ablation).
        dynamic_mask: MTGR's dynamic mask (U/H seen by all, R only by later tokens, T only by itself); False =
            the plain time-causal mask: every token sees U, itself and every strictly earlier token of any group
            (so targets see earlier targets; the ``no_dynamic_mask`` ablation).
        prompt_tokens: MDL-style prompt tokens (:class:`model.prompts.PromptTokens`): a learned token for the
            sample's scenario mix and one per task, prepended to every user's sequence as U tokens.
        mf_dim: width of the user × item factorization logits (:class:`model.heads.UserItemFactors`: the user's
            U features and mean H features against the target's item embeddings, SVD++'s form); 0 = off.
        preset: name of the :mod:`model.presets` entry this config was built from ('' = built by hand);
            provenance only (snapshots and reports name it), it changes nothing in the model.
        variant: the :data:`model.presets.ABLATIONS` entry applied to that preset ('' = none); provenance only.

    With ``dynamic_mask`` off or ``prompt_tokens`` on a target's score depends on its user's other targets, so
    :meth:`Ranker.score_candidates` runs :meth:`Ranker.forward` on the batch instead of the context cache.

    Every Ranker also has these first-order shortcuts, always on (they learn as fast as a shallow model early in a
    stream while attention catches up): the *wide* input — each target token's own input representation (its
    tokenizer output: item, scenario, context, cross and dense features) joins the transformer output in the MMoE
    head; a *linear* term per task on the target's raw input features; a per-item, per-task *item bias* table
    (zero-initialised, trained with row-wise Adagrad like every table); and a per-user *user linear* term on the
    sum of the user's U-token features and the mean of the H-token features. All start at zero.

    Example:
        >>> RankerConfig.from_json(RankerConfig(d_model=32).to_json()).d_model
        32
    """

    d_model: int = 64
    num_blocks: int = 2
    target_layers: int = 3
    q_heads: int = 3
    kv_heads: int = 1
    head_dim: int = 32
    attention: AttentionKind = AttentionKind.SOFTMAX
    num_experts: int = 4
    expert_dim: int = 64
    dropout: float = 0.0
    cross_rates: bool = False
    cross_rates_init: float = 1.0
    task_priors: tuple[tuple[str, float], ...] = ()
    cowatch: bool = False
    cowatch_rows: int = 16384
    cowatch_dim: int = 128
    cowatch_size_buckets: int = 0
    colike_signs: tuple[tuple[str, float], ...] = ()
    cowatch_item_baseline: bool = False
    cowatch_recent: tuple[int, ...] = ()
    cowatch_recent_similar: int = 0
    cross_features: bool = True
    group_norm: bool = True
    dynamic_mask: bool = True
    prompt_tokens: bool = False
    mf_dim: int = 0
    preset: str = ""
    variant: str = ""

    def __post_init__(self) -> None:
        if self.q_heads % self.kv_heads:
            raise ValueError(f"q_heads ({self.q_heads}) must be a multiple of kv_heads ({self.kv_heads})")
        if self.num_blocks < 1 or self.target_layers < 0:
            raise ValueError("num_blocks must be >= 1 and target_layers >= 0")
        if self.mf_dim < 0 or self.cowatch_size_buckets < 0:
            raise ValueError("mf_dim and cowatch_size_buckets must be >= 0")
        if any(v not in (1.0, -1.0) for _, v in self.colike_signs):
            raise ValueError(f"colike_signs are (action, +1.0 or -1.0) pairs, got {self.colike_signs!r}")
        if any(k < 1 for k in self.cowatch_recent):
            raise ValueError(f"cowatch_recent lengths must be >= 1, got {self.cowatch_recent!r}")
        if self.cowatch_recent_similar < 0:
            raise ValueError("cowatch_recent_similar must be >= 0")
        if self.cross_rates and not self.cross_features:
            raise ValueError("cross_rates reads the cross features: it needs cross_features=True")

    @property
    def num_layers(self) -> int:
        return self.num_blocks * (1 + self.target_layers)

    def to_json(self) -> str:
        d: dict[str, Any] = dataclasses.asdict(self)
        d["attention"] = self.attention.value
        return json.dumps(d, sort_keys=True)

    @staticmethod
    def from_json(raw: str | dict[str, Any]) -> RankerConfig:
        d = dict(json.loads(raw) if isinstance(raw, str) else raw)
        d["attention"] = AttentionKind(d["attention"])
        for name, fixed in REMOVED_FIELDS.items():
            value = d.pop(name, fixed)
            if (tuple(value) if isinstance(value, list) else value) != fixed:
                raise ValueError(f"RankerConfig.{name}={value!r} is no longer supported: this build always has "
                                 f"{name}={fixed!r} (train a new model, e.g. from a model.presets preset)")
        d["task_priors"] = tuple((str(t), float(p)) for t, p in d.get("task_priors", ()))
        d["colike_signs"] = tuple((str(a), float(v)) for a, v in d.get("colike_signs", ()))
        d["cowatch_recent"] = tuple(int(k) for k in d.get("cowatch_recent", ()))
        return RankerConfig(**d)


@dataclass
class UserCache:
    """Per-layer keys/values of every user's context tokens (U, H, R), from :meth:`Ranker.encode_user`.

    ``keys[l]``, ``values[l]`` (N_ctx, kv_heads, head_dim) per layer; ``offsets`` (B+1,) jagged per user;
    ``ts`` (N_ctx,) float32 relative to ``ts_origin`` (B,) float64; ``group`` (N_ctx,) token groups.
    """

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    offsets: torch.Tensor
    ts: torch.Tensor
    group: torch.Tensor
    max_len: int
    ts_origin: torch.Tensor
    user_ids: list[str]
    user_logit: torch.Tensor  # (B, tasks) per-user first-order logits
    cw_rows: torch.Tensor | None = None  # (N_ctx,) co-watch sketch row of each context token (RankerConfig.cowatch)
    cw_act: torch.Tensor | None = None  # (N_ctx, a) action embedding of each context token (zeros on U tokens)
    mf_user: torch.Tensor | None = None  # (B, tasks * mf_dim) user factors (RankerConfig.mf_dim)

    @property
    def num_users(self) -> int:
        return len(self.user_ids)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> UserCache:
        """A copy with every tensor on ``device``."""

        def mv(t: torch.Tensor) -> torch.Tensor:
            return t.to(device=device, non_blocking=non_blocking)

        def opt(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else mv(t)

        return UserCache([mv(k) for k in self.keys], [mv(v) for v in self.values], mv(self.offsets), mv(self.ts),
                         mv(self.group), self.max_len, mv(self.ts_origin), list(self.user_ids),
                         mv(self.user_logit), opt(self.cw_rows), opt(self.cw_act), opt(self.mf_user))


def _user_of(offsets: torch.Tensor, n: int) -> torch.Tensor:
    """(B+1,) offsets -> (n,) owning user of each row."""
    b = offsets.numel() - 1
    return torch.repeat_interleave(torch.arange(b, device=offsets.device), offsets.diff(), output_size=n)


def _cpu_fast_path(x: torch.Tensor) -> bool:
    """True for CPU inference without the Triton kernels: the target layers skip the merged key sequence."""
    return not x.is_cuda and not use_triton(x) and get_kernel() is Kernel.AUTO and not torch.is_grad_enabled()


def _empty_bag(kjt: KeyedJaggedTensor, key: str) -> KeyedJaggedTensor:
    """``kjt`` (weighted) with every bag of ``key`` emptied (the other keys unchanged)."""
    names: list[str] = kjt.keys()
    jts = kjt.to_dict()
    keep = [k for k in names if k != key]
    return KeyedJaggedTensor(
        keys=names, values=torch.cat([jts[k].values() for k in keep]), weights=torch.cat([jts[k].weights() for k in keep]),
        lengths=torch.cat([torch.zeros_like(jts[k].lengths()) if k == key else jts[k].lengths() for k in names]),
        stride=kjt.stride())


def _positions(offsets: torch.Tensor, n: int) -> torch.Tensor:
    """(B+1,) offsets -> (n,) index of each row inside its user's sequence."""
    return torch.arange(n, device=offsets.device) - offsets[_user_of(offsets, n)]


class Ranker(nn.Module):
    """The servable multi-task, multi-scenario ranker (no loss inside).

    ``forward(batch) -> {task: (T,) logits}``, one logit per target per task (apply a sigmoid for probabilities).

    Example:
        >>> from streaming.sample import Sample, Target
        >>> from model.batch import collate
        >>> spec = FeatureSpec()
        >>> batch = collate([Sample("s", "u", [Target("e", "r", "i", "home", 1.0)])], spec)
        >>> Ranker(spec, RankerConfig()).eval()(batch)["click"].shape
        torch.Size([1])
    """

    def __init__(self, spec: FeatureSpec, config: RankerConfig) -> None:
        super().__init__()
        self.spec, self.config = spec, config
        # The worker's sample spec (streaming.spec.SampleSpec JSON) this model is trained on, checked at the
        # trainer's start; model.snapshot records it in SnapshotMeta.sample_spec. None = unknown.
        self.sample_spec: dict[str, Any] | None = None
        c = config
        self.embedder = TokenEmbedder(spec, c.d_model)
        self.blocks = nn.ModuleList(
            nn.ModuleList(
                HTALayer(c.d_model, c.q_heads, c.kv_heads, c.head_dim, c.attention, c.dropout, group_norm=c.group_norm)
                for _ in range(1 + c.target_layers)
            )
            for _ in range(c.num_blocks)
        )
        self.final_norm = nn.LayerNorm(c.d_model)
        # wide shortcut: the target token's input (before any attention) joins the head input
        self.wide_norm = nn.LayerNorm(c.d_model)
        self.head = MMoE(2 * c.d_model, self.embedder.scenario_dim, spec.tasks, c.num_experts, c.expert_dim)
        n_tasks = len(spec.tasks)
        self.linear = nn.Linear(self.embedder.target_in_dim, n_tasks)
        dims = self.embedder.features.dims
        self.user_lin = nn.Linear(dims["user_feat"], n_tasks, bias=False)
        self.hist_lin = nn.Linear(sum(dims[f] for f in GROUP_FEATURES[TokenGroup.H]), n_tasks, bias=False)
        for w in (self.linear.weight, self.linear.bias, self.user_lin.weight, self.hist_lin.weight):
            nn.init.zeros_(w)
        self.item_bias = item_bias_table(spec)
        self.cross_rates = CrossRates(spec, c.task_priors, CROSS_RATES_SMOOTHING, c.cross_rates_init) \
            if c.cross_rates else None
        feats = GROUP_FEATURES[TokenGroup.H]
        assert GROUP_FEATURES[TokenGroup.R] == feats
        a0 = sum(dims[f] for f in feats[:feats.index("action")])
        self._action_cols = (a0, a0 + dims["action"])  # the action embedding's columns in raw H/R features
        self.cowatch = CoWatch(spec, dims["action"], c.cowatch_rows, c.cowatch_dim, COWATCH_TEMPERATURES,
                               size_buckets=c.cowatch_size_buckets) if c.cowatch else None
        for task, p in c.task_priors:
            if task in spec.tasks:
                self.head.set_output_bias(task, math.log(p / (1.0 - p)))
        # created last and only when on: a model without prompts draws the same initial weights as before
        self.prompts = PromptTokens(spec, c.d_model) if c.prompt_tokens else None
        self._item_cols = dims["item_id"] + dims["item_feat"]  # the item embeddings' columns in raw T features
        assert GROUP_FEATURES[TokenGroup.T][:2] == feats[:2] == ("item_id", "item_feat")
        self.mf = UserItemFactors(dims["user_feat"], sum(dims[f] for f in feats), self._item_cols, n_tasks,
                                  c.mf_dim) if c.mf_dim else None
        self.colike = CoLike(spec, dims["action"], c.cowatch_rows, c.cowatch_dim, COWATCH_TEMPERATURES,
                             size_buckets=c.cowatch_size_buckets, signs=c.colike_signs) \
            if c.cowatch and c.colike_signs else None
        # (item embeddings -> action width), zero-initialised: the readouts start as without it
        self.cw_baseline = nn.Linear(self._item_cols, dims["action"], bias=False) \
            if c.cowatch and c.cowatch_item_baseline else None
        if self.cw_baseline is not None:
            nn.init.zeros_(self.cw_baseline.weight)
        self.recent = RecentReads(dims["action"], n_tasks, c.cowatch_recent,
                                  c.cowatch_recent_similar if c.colike_signs else 0) \
            if c.cowatch and c.cowatch_recent else None

    def _inputs(self, batch: Batch) -> Batch:
        """``batch`` as this model reads it: without the targets' cross features when ``cross_features`` is off."""
        if self.config.cross_features:
            return batch
        return dataclasses.replace(batch, float_features=_empty_bag(batch.float_features, "cross"))

    def _mask_group(self, group: torch.Tensor) -> torch.Tensor:
        """Token groups as the attention mask reads them. The plain time-causal mask (``dynamic_mask`` off) is the
        dynamic mask with every H/R/T token treated as an R token: each token sees U, itself and every strictly
        earlier token (Group LayerNorm keeps the real groups)."""
        if self.config.dynamic_mask:
            return group
        return group.masked_fill(group != TokenGroup.U, int(TokenGroup.R))

    @property
    def target_dependent(self) -> bool:
        """True when a target's score depends on its user's other targets (no dynamic mask, or prompt tokens):
        :meth:`score_candidates` then runs :meth:`forward` instead of the context cache."""
        return not self.config.dynamic_mask or self.config.prompt_tokens

    def _user_terms(self, batch: Batch, raw: dict[TokenGroup, torch.Tensor]) -> tuple[torch.Tensor,
                                                                                     torch.Tensor | None]:
        """(B, tasks) per-user first-order logits and (B, tasks * mf_dim) user factors (None without ``mf_dim``)
        from the raw U/H features."""
        B, lens = batch.num_samples, batch.group_lengths

        def per_user_sum(g: TokenGroup) -> torch.Tensor:
            x = raw[g]
            owner = torch.repeat_interleave(torch.arange(B, device=lens.device), lens[:, g], output_size=x.shape[0])
            return x.new_zeros(B, x.shape[1]).index_add(0, owner, x)

        u = per_user_sum(TokenGroup.U)
        h = per_user_sum(TokenGroup.H) / lens[:, TokenGroup.H].clamp(min=1).unsqueeze(1).to(raw[TokenGroup.H].dtype)
        return self.user_lin(u) + self.hist_lin(h), None if self.mf is None else self.mf.user(u, h)

    def _item_logit(self, batch: Batch) -> torch.Tensor:
        """(T, tasks) first-order logits of the targets' own features: the item bias table and (when on) the user's
        cross-counter rates."""
        out = item_bias_logits(self.item_bias, target_item_rows(batch, self.spec), len(self.spec.tasks))
        if self.cross_rates is not None:
            out = out + self.cross_rates(batch)
        return out

    def _actions(self, batch: Batch, raw: dict[TokenGroup, torch.Tensor], n: int) -> torch.Tensor:
        """(n, a) what the co-watch readouts read of every token, in sequence order (zeros on U and T tokens): its
        action embedding, minus its item's learned baseline with ``cowatch_item_baseline``."""
        a0, a1 = self._action_cols
        h, r = raw[TokenGroup.H], raw[TokenGroup.R]
        act = torch.cat([h[:, a0:a1], r[:, a0:a1]])  # (N_H + N_R, a)
        if self.cw_baseline is not None:  # H/R raw features start with the item embeddings, as T's do
            act = act - self.cw_baseline(torch.cat([h[:, :self._item_cols], r[:, :self._item_cols]]))
        out = act.new_zeros(n, a1 - a0)
        return out.index_copy(0, torch.cat([batch.group_rows[TokenGroup.H], batch.group_rows[TokenGroup.R]]), act)

    def _readouts(self, item_logit: torch.Tensor, args: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """``item_logit`` (T, tasks) plus the co-watch, co-like and recent reads; ``args`` = :meth:`CoWatch.forward`'s
        (context rows, actions, ts, groups, users; target rows, ts, users)."""
        assert self.cowatch is not None
        c_rows, c_act, c_ts, c_group, c_user, t_rows, t_ts, t_user = args
        vis = visible_context(c_ts, c_group, c_user, t_ts, t_user)  # one per batch, shared by every readout
        item_logit = item_logit + self.cowatch(*args, visible=vis)
        sim = None  # the co-like cosines, shared by its readout and the recent reads' similar term
        if self.colike is not None:
            sim = self.colike.similarity(c_rows, t_rows, vis)
            item_logit = item_logit + self.colike(*args, visible=vis, sim=sim)
        if self.recent is not None:
            item_logit = item_logit + self.recent(c_act, c_ts, c_group, c_user, t_ts, t_user, sim, vis)
        return item_logit

    def observe(self, batch: Batch) -> None:
        """Update model-side streaming statistics with a batch just trained on (the co-watch and co-like sketches)."""
        if self.cowatch is not None:
            self.cowatch.observe(batch)
        if self.colike is not None:
            self.colike.observe(batch)

    def to_ranker(self) -> Ranker:
        """The servable form of this model: itself (see :class:`model.SnapshotSource`)."""
        return self

    def _head(self, x: torch.Tensor, x0: torch.Tensor, raw: torch.Tensor, scen: torch.Tensor,
              user: tuple[torch.Tensor, torch.Tensor | None], t_user: torch.Tensor,
              item_logit: torch.Tensor) -> dict[str, torch.Tensor]:
        """Final target tokens (T, d), their input tokens (T, d) and raw features (T, in), per-user terms
        (:meth:`_user_terms`), each target's user (T,) and per-target logits (T, tasks) -> {task: (T,) logits}."""
        h = torch.cat([self.final_norm(x), self.wide_norm(x0)], dim=-1)
        out: dict[str, torch.Tensor] = self.head(h, scen)
        user_logit, mf_user = user
        if self.mf is not None:
            assert mf_user is not None
            item_logit = item_logit + self.mf(mf_user[t_user], raw[:, :self._item_cols])
        lin, ul = self.linear(raw), user_logit[t_user]  # (T, tasks) each; added in this order (bitwise-stable scores)
        return {t: z + lin[:, i] + item_logit[:, i] + ul[:, i] for i, (t, z) in enumerate(out.items())}

    def layers(self) -> list[tuple[bool, HTALayer]]:
        """All layers in order as ``(is_full, layer)``."""
        out: list[tuple[bool, HTALayer]] = []
        for block in self.blocks:
            assert isinstance(block, nn.ModuleList)
            out.extend((i == 0, layer) for i, layer in enumerate(block))  # type: ignore[misc]
        return out

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        batch = self._inputs(batch)
        raw: dict[TokenGroup, torch.Tensor] = {}
        toks, scen = self.embedder(batch, inputs=raw)
        N = batch.num_tokens
        rows = torch.cat([batch.group_rows[g] for g in TokenGroup])
        x = toks[TokenGroup.U].new_zeros(N, self.config.d_model)
        x = x.index_copy(0, rows, torch.cat([toks[g] for g in TokenGroup]))  # (N, d) in sequence order
        seq = TokenSequence(x, batch.token_group, batch.token_ts, batch.seq_offsets, batch.max_seq_len,
                            batch.group_rows[TokenGroup.T], batch.target_pos)
        if self.prompts is not None:  # (N + B P) tokens: each user's prompts in front
            seq = self.prompts.prepend(batch, seq)
        x, group, t_rows = seq.x, seq.group, seq.t_rows
        kv = KVLayout(seq.offsets, seq.ts, self._mask_group(group), seq.max_len)
        pos = _positions(seq.offsets, x.shape[0])
        t_group = group[t_rows]
        x0 = toks[TokenGroup.T]  # (T, d) the targets' input tokens, rows in t_rows order
        for full, layer in self.layers():
            xn = layer.norm_in(x, group)
            k, v = layer.kv(xn)
            if full:  # every token is a query
                x = layer.query_update(x, xn, group, k, v, kv, seq.offsets, pos, seq.max_len)
            else:  # only targets are queries and are updated; U/H/R pass through
                xt = layer.query_update(
                    x[t_rows], xn[t_rows], t_group, k, v, kv, batch.target_offsets, seq.t_pos,
                    batch.max_targets,
                )
                x = x.index_copy(0, t_rows, xt)
        t_user = _user_of(batch.target_offsets, batch.num_targets)
        item_logit = self._item_logit(batch)
        if self.cowatch is not None:  # on the batch's own layout (no prompts)
            rows_all = self.cowatch.sketch_rows(batch)
            tok_user = _user_of(batch.seq_offsets, N)
            b_t_rows = batch.group_rows[TokenGroup.T]
            args = (rows_all, self._actions(batch, raw, N), batch.token_ts, batch.token_group, tok_user,
                    rows_all[b_t_rows], batch.token_ts[b_t_rows], t_user)
            item_logit = self._readouts(item_logit, args)
        return self._head(x[t_rows], x0, raw[TokenGroup.T], scen, self._user_terms(batch, raw), t_user, item_logit)

    @torch.no_grad()
    def encode_user(self, batch: Batch) -> UserCache:
        """Run every user's U/H/R tokens through the model once; keep each layer's keys/values (targets ignored)."""
        batch = self._inputs(batch)
        raw: dict[TokenGroup, torch.Tensor] = {}
        toks, _ = self.embedder(batch, _CTX_GROUPS, inputs=raw)
        ctx_offsets = batch.seq_offsets - batch.target_offsets  # (B+1,)
        n_ctx = batch.num_tokens - batch.num_targets
        token_user = _user_of(batch.seq_offsets, batch.num_tokens)
        ctx_rows = torch.cat([batch.group_rows[g] for g in _CTX_GROUPS])
        dst = ctx_rows - batch.target_offsets[token_user[ctx_rows]]  # row inside the context-only sequence
        x = toks[TokenGroup.U].new_zeros(n_ctx, self.config.d_model)
        x = x.index_copy(0, dst, torch.cat([toks[g] for g in _CTX_GROUPS]))
        ts = batch.token_ts.new_empty(n_ctx).index_copy(0, dst, batch.token_ts[ctx_rows])
        group = batch.token_group.new_empty(n_ctx).index_copy(0, dst, batch.token_group[ctx_rows])
        kv = KVLayout(ctx_offsets, ts, self._mask_group(group), batch.max_context_len)
        pos = _positions(ctx_offsets, n_ctx)
        keys, values = [], []
        for full, layer in self.layers():
            xn = layer.norm_in(x, group)
            k, v = layer.kv(xn)
            keys.append(k)
            values.append(v)
            if full:
                x = layer.query_update(x, xn, group, k, v, kv, ctx_offsets, pos, batch.max_context_len)
        cw_rows = cw_act = None
        if self.cowatch is not None:
            rows = self.cowatch.sketch_rows(batch)[ctx_rows]
            cw_rows = rows.new_empty(n_ctx).index_copy(0, dst, rows)
            act = self._actions(batch, raw, batch.num_tokens)
            cw_act = act.new_empty(n_ctx, act.shape[1]).index_copy(0, dst, act[ctx_rows])
        user_logit, mf_user = self._user_terms(batch, raw)
        return UserCache(keys, values, ctx_offsets, ts, group, batch.max_context_len, batch.ts_origin,
                         list(batch.user_ids), user_logit, cw_rows, cw_act, mf_user)

    @torch.no_grad()
    def score_candidates(self, cache: UserCache, batch: Batch) -> dict[str, torch.Tensor]:
        """Score ``batch``'s targets against ``cache`` (same users, same order); equals ``forward(batch)``.

        Only the T tokens of ``batch`` are embedded and run; each attends to its user's cached context keys/values
        and to itself. Candidate timestamps are re-expressed relative to the cache's time origin. A
        :attr:`target_dependent` model runs :meth:`forward` on ``batch`` (the cache cannot hold what it needs).
        """
        if batch.user_ids != cache.user_ids:
            raise ValueError("score_candidates: batch users differ from the cache's users (same order required)")
        if self.target_dependent:
            return self.forward(batch)
        batch = self._inputs(batch)
        raw: dict[TokenGroup, torch.Tensor] = {}
        toks, scen = self.embedder(batch, (TokenGroup.T,), inputs=raw)
        x = x0 = toks[TokenGroup.T]  # (T, d)
        T, n_ctx = batch.num_targets, int(cache.ts.numel())
        t_off, c_off = batch.target_offsets, cache.offsets
        t_user = _user_of(t_off, T)
        c_user = _user_of(c_off, n_ctx)
        kv_offsets = c_off + t_off
        c_dst = torch.arange(n_ctx, device=x.device) + t_off[c_user]  # context rows first, then the user's targets
        t_dst = torch.arange(T, device=x.device) + c_off[t_user + 1]
        q_pos = t_dst - kv_offsets[t_user]
        shift = (batch.ts_origin - cache.ts_origin).to(torch.float32)[t_user]
        t_ts = batch.token_ts[batch.group_rows[TokenGroup.T]] + shift
        t_group = batch.token_group[batch.group_rows[TokenGroup.T]]
        item_logit = self._item_logit(batch)
        if self.cowatch is not None:
            if cache.cw_rows is None or cache.cw_act is None:
                raise ValueError("score_candidates: the cache was encoded without the co-watch context")
            t_rows = self.cowatch.sketch_rows(batch)[batch.group_rows[TokenGroup.T]]
            args = (cache.cw_rows, cache.cw_act, cache.ts, cache.group, c_user, t_rows, t_ts, t_user)
            item_logit = self._readouts(item_logit, args)
        if self.mf is not None and cache.mf_user is None:
            raise ValueError("score_candidates: the cache was encoded without the user factors (mf_dim)")
        user = (cache.user_logit, cache.mf_user)

        def merge(ctx: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
            out = ctx.new_empty((n_ctx + T, *ctx.shape[1:]))
            return out.index_copy(0, c_dst, ctx).index_copy(0, t_dst, tgt)

        if _cpu_fast_path(x):  # no merged [context, targets] keys: (T, Hq, L_ctx) scores + each target's self term
            ctx = KVLayout(c_off, cache.ts, cache.group, cache.max_len)
            for li, (_, layer) in enumerate(self.layers()):
                xn = layer.norm_in(x, t_group)
                k, v = layer.kv(xn)
                x = layer.target_update(x, xn, t_group, k, v, t_off, t_ts, batch.max_targets, ctx, cache.keys[li],
                                        cache.values[li])
            return self._head(x, x0, raw[TokenGroup.T], scen, user, t_user, item_logit)
        kv = KVLayout(kv_offsets, merge(cache.ts, t_ts), merge(cache.group, t_group), cache.max_len + batch.max_targets)
        for li, (_, layer) in enumerate(self.layers()):
            xn = layer.norm_in(x, t_group)
            k, v = layer.kv(xn)
            x = layer.query_update(
                x, xn, t_group, merge(cache.keys[li], k), merge(cache.values[li], v), kv, t_off, q_pos,
                batch.max_targets,
            )
        return self._head(x, x0, raw[TokenGroup.T], scen, user, t_user, item_logit)

    def embedding_parameters(self) -> list[nn.Parameter]:
        """Embedding-table parameters (row-wise Adagrad in the trainer)."""
        return self.embedder.embedding_parameters() + list(self.item_bias.parameters())

    def dense_parameters(self) -> list[nn.Parameter]:
        """Every other parameter (AdamW in the trainer)."""
        emb = {id(p) for p in self.embedding_parameters()}
        return [p for p in self.parameters() if id(p) not in emb]
