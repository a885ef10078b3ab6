"""Named model presets: the one place the Ranker's shapes live.

A :class:`Preset` is a :class:`~model.ranker.RankerConfig` plus the feature-spec limits that belong to the
model's shape (history length L, real-time length R, embedding-table rows). Every entry point takes
``--preset NAME`` (a key of :data:`PRESETS`): ``python -m trainer`` (default ``base``), ``python -m
trainer.evaluate`` (default ``eval-ml100k``), ``python -m deploy demo`` (default ``laptop``) and ``python -m
serving`` (the preset snapshots must come from; default: any). Individual flags (``--d-model``, ``--max-history``,
...) may still override a field; the preset name travels in ``RankerConfig.preset`` into every snapshot and into
the evaluation's ``metrics.json``, so every published number names its preset.

======================  =========================================================  ================================
preset                  shape                                                      for
======================  =========================================================  ================================
``laptop``              d=32, 1 block, K=3 target layers; L=32, R=16; tables       ``make demo`` and the pipeline
                        capped at 32,768 rows                                      benchmark on a 2-core CPU
``base``                d=64, 2 blocks, K=3; L=256, R=64; full tables              ``python -m trainer``'s default
``eval-ml100k``         d=32, 1 block, K=0; L=256, R=64; full tables; co-watch     the published MovieLens-100K
                        readout, cross-counter rates, label-prior output biases    numbers (``docs/results/eval``)
``eval-ml1m``           ``eval-ml100k`` plus user x item factorization logits      the best MovieLens-1M preset of
                        (``mf_dim=32``), co-watch read weights per context size    the main table (trainer.quality)
                        and the signed co-like readout; 65,536 x 512 sketches;
                        reads of actions minus a learned item baseline;
                        recent reads; L=512; experts 128 wide
``small``               d=32, 1 block, K=3, GQA 3:1, head width d/2, experts 2d;   :data:`SCALING`: MTGR's
``medium``              d=64, 2 blocks; ``large``: d=128, 3 blocks; all with       small/medium/large scaled to a
``large``               cross-counter rates, label-prior biases; L=256, R=64       2-core CPU (trainer.quality)
======================  =========================================================  ================================

:data:`ABLATIONS` maps an ablation name to a function ``Preset -> Preset`` that switches one MTGR/MTFM/MDL design
choice and records the name in ``RankerConfig.variant`` (the preset name stays); :func:`flops_per_target` is the
analytic forward cost per target of a preset.

Example:
    >>> sorted(PRESETS)
    ['base', 'eval-ml100k', 'eval-ml1m', 'laptop', 'large', 'medium', 'small']
    >>> ABLATIONS["no_group_norm"](PRESETS["small"]).ranker.variant
    'no_group_norm'
    >>> p = PRESETS["laptop"]
    >>> p.ranker.d_model, p.feature_spec().max_history, p.build().config.preset
    (32, 32, 'laptop')
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kernels.attention import TokenGroup
from model.batch import TARGET_DENSE_COLUMNS
from model.embedding import GROUP_FEATURES
from model.features import FLOAT_FEATURES, FeatureSpec, TableSpec
from model.ranker import Ranker, RankerConfig

# Initial output bias of the Ranker: rough label priors (MovieLens-100K: ~55% ratings >= 4, ~21% = 5), fixed
# constants rather than rates measured on the evaluated stream.
MOVIELENS_PRIORS: tuple[tuple[str, float], ...] = (("click", 0.55), ("conversion", 0.21))


@dataclass(frozen=True)
class Preset:
    """One named model shape.

    Attributes:
        name: the registry key (and ``ranker.preset``).
        description: what it is for (shown by ``--help`` and the docs).
        ranker: the Ranker's architecture; its ``preset`` field must equal ``name``.
        max_history: ``FeatureSpec.max_history`` (H tokens, L).
        max_realtime: ``FeatureSpec.max_realtime`` (R tokens).
        max_table_rows: cap every embedding table at this many hash buckets; 0 = FeatureSpec's own table sizes.
    """

    name: str
    description: str
    ranker: RankerConfig
    max_history: int = FeatureSpec.max_history
    max_realtime: int = FeatureSpec.max_realtime
    max_table_rows: int = 0

    def __post_init__(self) -> None:
        if self.ranker.preset != self.name:
            raise ValueError(f"preset {self.name!r}: its RankerConfig names preset {self.ranker.preset!r}")
        if self.max_table_rows < 0:
            raise ValueError(f"preset {self.name!r}: max_table_rows must be >= 0")

    def feature_spec(self, **changes: Any) -> FeatureSpec:
        """The FeatureSpec of this shape; ``changes`` (e.g. ``tasks``) replace other FeatureSpec fields."""
        return shaped_spec(self.max_history, self.max_realtime, self.max_table_rows, **changes)

    def build(self, spec: FeatureSpec | None = None) -> Ranker:
        """A freshly initialised Ranker of this shape (on ``spec``, default :meth:`feature_spec`)."""
        return Ranker(self.feature_spec() if spec is None else spec, self.ranker)

    def with_changes(self, *, max_history: int | None = None, max_realtime: int | None = None,
                     max_table_rows: int | None = None, **ranker: Any) -> Preset:
        """This preset with some fields overridden (None = keep); the name stays: an override is recorded in the
        effective config every snapshot and report carries, not in the name."""
        rk = {k: v for k, v in ranker.items() if v is not None}
        return dataclasses.replace(
            self, ranker=dataclasses.replace(self.ranker, **rk),
            max_history=self.max_history if max_history is None else max_history,
            max_realtime=self.max_realtime if max_realtime is None else max_realtime,
            max_table_rows=self.max_table_rows if max_table_rows is None else max_table_rows)


def shaped_spec(max_history: int, max_realtime: int, max_table_rows: int, **changes: Any) -> FeatureSpec:
    """``FeatureSpec(max_history, max_realtime, **changes)`` with every table capped at ``max_table_rows`` rows
    (0 = FeatureSpec's own sizes).

    Example:
        >>> max(t.num_embeddings for t in shaped_spec(16, 8, 1000).tables.values())
        1000
    """
    base = FeatureSpec(max_history=max_history, max_realtime=max_realtime, **changes)
    if not max_table_rows:
        return base
    cap = max(max_table_rows, base.time_gap_buckets)  # the time-gap table needs one row per bucket
    return dataclasses.replace(base, tables={n: TableSpec(min(t.num_embeddings, cap), t.dim)
                                             for n, t in base.tables.items()})


PRESETS: dict[str, Preset] = {
    "laptop": Preset(
        name="laptop",
        description="make demo and the pipeline benchmark: a Ranker small enough that a 2-core CPU shared with Kafka "
                    "and the streaming worker keeps up with MovieLens-100K in minutes (tables capped at 32,768 rows: "
                    "3.6x cheaper snapshots, the same progressive AUC on MovieLens)",
        ranker=RankerConfig(preset="laptop", d_model=32, num_blocks=1),
        max_history=32, max_realtime=16, max_table_rows=32768,
    ),
    "base": Preset(
        name="base",
        description="python -m trainer's default: the MTFM-style Ranker (d=64, 2 blocks of one full and 3 target-only "
                    "layers, GQA 3:1) on full-length histories and full-size tables",
        ranker=RankerConfig(preset="base"),
    ),
    "eval-ml100k": Preset(
        name="eval-ml100k",
        description="python -m trainer.evaluate's default, behind the published MovieLens-100K numbers "
                    "(docs/results/eval): a 1-block d=32 Ranker without target-only layers, with the co-watch "
                    "readout, the user's cross-counter rates (initial weight 0.5) and output biases at the label "
                    "priors — the settings tuned on that stream",
        ranker=RankerConfig(preset="eval-ml100k", d_model=32, num_blocks=1, target_layers=0, cross_rates=True,
                            cross_rates_init=0.5, task_priors=MOVIELENS_PRIORS, cowatch=True),
    ),
}
# The sign of a history token's action in the co-like sketch: the MovieLens events' positive feedback and the
# core's skip behavior (trainer.evaluate's skip_action)
LIKED_AND_SKIPPED: tuple[tuple[str, float], ...] = (("click", 1.0), ("like", 1.0), ("skip", -1.0))
PRESETS["eval-ml1m"] = dataclasses.replace(
    PRESETS["eval-ml100k"], name="eval-ml1m",
    description="eval-ml100k plus the user x item factorization logits (mf_dim=32: the user's profile and mean history "
                "against the target's item embeddings), co-watch read weights per context-size bucket and the "
                "co-like readout (a signed co-occurrence sketch: items liked or skipped by the same users), with "
                "65,536 sketch rows (fewer items folded onto one row), item-baseline-adjusted reads and recent reads "
                "(the mean action over the last 4, 16 and 64 visible context tokens, co-like reads of the last 64), "
                "histories of 512, sketches 512 wide (two 128 MB sketches) and experts 128 wide, added on "
                "MovieLens-1M where DLRM had been learning more than the Ranker from the later stream and from a "
                "user's first targets (docs/experiments.md)",
    ranker=dataclasses.replace(PRESETS["eval-ml100k"].ranker, preset="eval-ml1m", mf_dim=32, cowatch_size_buckets=9,
                               colike_signs=LIKED_AND_SKIPPED, cowatch_rows=65536, cowatch_item_baseline=True,
                               cowatch_recent=(4, 16, 64), cowatch_recent_similar=64, cowatch_dim=512,
                               expert_dim=128),
    max_history=512)


# --- The scaling family -------------------------------------------------------------------------------------------
# MTGR's small -> medium -> large (3 layers d512 2 heads -> 5 layers d768 3 heads -> 15 layers d768 3 heads; 5.47 ->
# 18.59 -> 55.76 GFLOPs per candidate: x3.4 then x3.0) scaled down to train on a 2-core CPU: width x2 and one more
# HTA block per step, each block MTFM's layout (1 full + 3 target-only layers, 3 query heads : 1 KV head), head
# width d/2 (MTGR: d/2 at small, d/3 above; 3 heads of d/2 keep the attention 1.5 d wide), MMoE experts 2d wide.
# The embedding tables (FeatureSpec defaults, full size) and L=256, R=64 are the same at every size, so the family
# scales the transformer only. The MTGR/MTFM extras the ablations switch are on: cross features with the user's
# cross-counter rates (init 0.5, label-prior output biases as eval-ml100k); the co-watch readout is off (a
# non-attention read of the history that would blur what size buys).
SCALING: tuple[str, ...] = ("small", "medium", "large")
_SCALING_SHAPES: dict[str, tuple[int, int]] = {"small": (32, 1), "medium": (64, 2), "large": (128, 3)}  # d, blocks


def _scaling_preset(name: str) -> Preset:
    d, blocks = _SCALING_SHAPES[name]
    return Preset(
        name=name,
        description=f"the model-quality scaling family ({'/'.join(SCALING)}; MTGR's sizes scaled to a 2-core CPU): "
                    f"d={d}, {blocks} HTA block(s) of 1 full + 3 target-only layers, GQA 3:1 with head width "
                    f"{d // 2}, MMoE experts {2 * d} wide, cross-counter rates, label-prior biases; L=256, R=64, "
                    "full tables",
        ranker=RankerConfig(preset=name, d_model=d, num_blocks=blocks, target_layers=3, q_heads=3, kv_heads=1,
                            head_dim=d // 2, num_experts=4, expert_dim=2 * d, cross_rates=True,
                            cross_rates_init=0.5, task_priors=MOVIELENS_PRIORS),
    )


PRESETS.update({name: _scaling_preset(name) for name in SCALING})


# --- Ablations ------------------------------------------------------------------------------------------------------
def _ablation(name: str, **changes: Any) -> Callable[[Preset], Preset]:
    """An ablation: ``changes`` to the preset's RankerConfig; the name goes into ``RankerConfig.variant`` (joined
    with ``+`` to an earlier one), the preset's name stays."""

    def apply(preset: Preset) -> Preset:
        variant = f"{preset.ranker.variant}+{name}" if preset.ranker.variant else name
        return dataclasses.replace(preset, ranker=dataclasses.replace(preset.ranker, variant=variant, **changes))

    apply.__name__ = apply.__qualname__ = name
    apply.__doc__ = f"{name}: RankerConfig {changes} (variant {name!r})."
    return apply


def _gqa(ratio: int) -> Callable[[Preset], Preset]:
    """q_heads : kv_heads = ratio : 1 at the preset's query heads (which ``ratio`` must divide)."""
    name = f"gqa_{ratio}_1"

    def apply(preset: Preset) -> Preset:
        q = preset.ranker.q_heads
        if q % ratio:
            raise ValueError(f"{name}: {q} query heads are not a multiple of {ratio}")
        return _ablation(name, kv_heads=q // ratio)(preset)

    apply.__name__ = apply.__qualname__ = name
    apply.__doc__ = f"{name}: kv_heads = q_heads // {ratio} (variant {name!r})."
    return apply


# name -> preset -> the same preset with one MTGR/MTFM design choice switched (``RankerConfig.variant`` = name). On
# the SCALING presets target_ratio_3_1 and gqa_3_1 are their own layout (only ``variant`` changes): the pairs name
# both ends of each comparison.
ABLATIONS: dict[str, Callable[[Preset], Preset]] = {
    # MTGR's ablations (small: CTCVR GAUC 0.6603; no cross 0.6514, no GLN 0.6585, no dynamic mask 0.6587)
    "no_cross": _ablation("no_cross", cross_features=False, cross_rates=False),
    "no_group_norm": _ablation("no_group_norm", group_norm=False),
    "no_dynamic_mask": _ablation("no_dynamic_mask", dynamic_mask=False),
    # MTFM's layout: target-only : full layers per block (3:1 production; pure full attention 1.40x slower)
    "target_ratio_0_1": _ablation("target_ratio_0_1", target_layers=0),
    "target_ratio_3_1": _ablation("target_ratio_3_1", target_layers=3),
    # MTFM's grouped-query attention (3:1 production, +18% throughput over 1:1)
    "gqa_1_1": _gqa(1),
    "gqa_3_1": _gqa(3),
    # MDL-style scenario/task prompt tokens (model.prompts)
    "prompt_tokens": _ablation("prompt_tokens", prompt_tokens=True),
}


# --- Analytic FLOPs -------------------------------------------------------------------------------------------------
def flops_breakdown(preset: Preset, n_history: int, n_targets: int) -> dict[str, float]:
    """Forward FLOPs of one user-level sample of ``preset``, by part (see :func:`flops_per_target`)."""
    c, spec = preset.ranker, preset.feature_spec()
    H, T = n_history, n_targets
    P = 1 + len(spec.tasks) if c.prompt_tokens else 0
    U = P + spec.num_user_tokens  # prompt tokens attend and are attended like U tokens
    C = U + H  # context tokens
    N = C + T
    d, a, kv = c.d_model, c.q_heads * c.head_dim, 2 * c.kv_heads * c.head_dim  # width, query/gate width, K+V width
    dims = {f: t.dim for f, t in spec.tables.items()}
    in_u, in_h = (sum(dims[f] for f in GROUP_FEATURES[g]) for g in (TokenGroup.U, TokenGroup.H))
    in_t = sum(dims[f] for f in GROUP_FEATURES[TokenGroup.T]) + sum(dims[f] for f in FLOAT_FEATURES) \
        + len(TARGET_DENSE_COLUMNS)
    # visible (query, key) pairs per layer; H and T timestamps distinct, every H before every T
    if c.dynamic_mask:  # U/H seen by all, T only by itself
        full_pairs, target_pairs = C * C + T * (C + 1), T * (C + 1)
    else:  # time-causal: U seen by all, H/T by themselves and later tokens
        target_pairs = T * (U + H) + T * (T + 1) // 2
        full_pairs = U * U + H * U + H * (H + 1) // 2 + target_pairs
    e, k, E = c.expert_dim, len(spec.tasks), c.num_experts
    B, K = c.num_blocks, c.target_layers
    return {
        # token MLPs: Linear(in, d) -> SiLU -> Linear(d, d) per token (U tokens: the real ones; prompts are learned)
        "tokenizers": 2.0 * (spec.num_user_tokens * (in_u + d) * d + H * (in_h + d) * d + T * (in_t + d) * d),
        # q, gate (d -> a), K/V (d -> kv), out (a -> d): every token in a full layer; K/V of every token and
        # q/gate/out of the targets in a target layer
        "projections": 2.0 * B * (N * d * (3 * a + kv) + K * (N * d * kv + T * 3 * a * d)),
        # scores q.k and the weighted sum of v: 2 * head_dim each per visible pair and query head
        "attention": 4.0 * a * B * (full_pairs + K * target_pairs),
        # MMoE (experts 2d -> e -> e, per task a gate (scenario dim + 2d) -> E and a tower e -> e/2 -> 1) and the
        # linear term on the target's input features
        "heads": 2.0 * T * (E * (2 * d * e + e * e) + k * ((dims["scenario"] + 2 * d) * E + e * (e // 2) + e // 2)
                            + in_t * k),
    }


def flops_per_target(preset: Preset, n_history: int, n_targets: int) -> float:
    """Analytic forward FLOPs per target of ``preset`` on a user-level sample with ``n_history`` H tokens and
    ``n_targets`` T tokens (no R tokens; the spec's U tokens; the prompt tokens when on).

    One multiply-add = 2 FLOPs; matrix products only (norms, activations, softmax, embedding-bag lookups, the
    per-user linear term, the cross-counter rates and the co-watch readout are left out). With C = U + H context
    tokens, N = C + T tokens, d the width, a = q_heads x head_dim, kv = 2 x kv_heads x head_dim, B blocks of one
    full and K target-only layers::

        tokenizers   2 (U (in_U + d) d + H (in_H + d) d + T (in_T + d) d)
        projections  2 B (N d (3a + kv) + K (N d kv + 3 T a d))
        attention    4 a B (pairs_full + K pairs_target)        dynamic mask: pairs_full = C^2 + T (C + 1),
                                                                pairs_target = T (C + 1); the time-causal mask
                                                                counts the pairs it leaves visible
        heads        2 T (E (2d e + e^2) + tasks ((g + 2d) E + e (e/2) + e/2) + in_T tasks)

    divided by T. MTGR counts the same way (GFLOPs per candidate): its small/medium/large are 5.47/18.59/55.76.

    Example:
        >>> [round(flops_per_target(PRESETS[n], 256, 16) / 1e6, 1) for n in SCALING]
        [1.5, 7.2, 29.7]
    """
    if n_targets < 1 or n_history < 0:
        raise ValueError("flops_per_target needs n_targets >= 1 and n_history >= 0")
    return sum(flops_breakdown(preset, n_history, n_targets).values()) / n_targets
