"""``Batch``: the typed, device-movable model input built from user-level samples by :func:`collate`.

Layout (B users, N tokens, T targets; jagged, no padding)::

    user b's token sequence = [U_0 .. U_{G-1}, H_0 .. H_{h-1}, R_0 .. R_{r-1}, T_0 .. T_{t-1}]
    seq_offsets     (B+1,)   int64    user b owns token rows seq_offsets[b]:seq_offsets[b+1]; max_seq_len = longest
    sparse          KeyedJaggedTensor keys model.features.SPARSE_FEATURES, one bag per token (stride N): a key
                                      is empty on tokens it does not describe (e.g. ``action`` on U and T tokens)
    float_features  KeyedJaggedTensor keys FLOAT_FEATURES, weighted, one bag per target (stride T)
    token_group     (N,)     int64    kernels.TokenGroup of each token (U=0, H=1, R=2, T=3)
    token_ts        (N,)     float32  seconds relative to ts_origin[b] (U tokens: -inf, i.e. they see no R token)
    ts_origin       (B,)     float64  per-user time origin = the sample's earliest target ts (the request time);
                                      time-gap buckets are measured from it too
    group_rows      4 x (n_g,) int64  token rows of each group, users in order (group_rows[3] = target rows)
    group_lengths   (B, 4)   int64    tokens of each group per user; max_group_len = column maxima (ints),
                                      max_context_len = longest U+H+R part of a user
    target_offsets  (B+1,)   int64    user b owns targets target_offsets[b]:target_offsets[b+1]; max_targets
    target_pos      (T,)     int64    each target's position inside its user's token sequence (attention q_pos)
    target_scenario_ids (T,) int64    hashed scenario id of each target (same id as in ``sparse``)
    target_dense    (T, 3)   float32  [has_position, log1p(position), squash(target ts - origin)]
    labels          {task: (T,) float32}  0/1; missing label -> 0

Python-side metadata stays on the CPU: ``sample_ids``, ``user_ids`` (per sample), ``target_user_ids``,
``target_scenarios``, ``target_event_ids`` (per target) and ``max_event_ts``.
"""

from __future__ import annotations

import array
import dataclasses
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from kernels.attention import TokenGroup
from model.features import FLOAT_FEATURES, SPARSE_FEATURES, FeatureSpec, squash
from streaming.sample import Sample
from streaming.spec import keep_last

TARGET_DENSE_COLUMNS: tuple[str, ...] = ("has_position", "log_position", "target_dt")
_NEG_INF = float("-inf")


@dataclass
class Batch:
    """A collated batch of user-level samples (see the module docstring for every field's shape).

    Example:
        >>> from streaming.sample import Target, Sample
        >>> s = Sample("s1", "u1", [Target("e1", "r1", "i1", "home", 5.0, labels={"click": 1})])
        >>> b = collate([s], FeatureSpec())
        >>> b.num_samples, b.num_targets, b.labels["click"].tolist(), b.labels["conversion"].tolist()
        (1, 1, [1.0], [0.0])
    """

    sparse: KeyedJaggedTensor
    float_features: KeyedJaggedTensor
    seq_offsets: torch.Tensor
    max_seq_len: int
    token_group: torch.Tensor
    token_ts: torch.Tensor
    ts_origin: torch.Tensor
    group_rows: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
    group_lengths: torch.Tensor
    max_group_len: tuple[int, int, int, int]
    max_context_len: int
    target_offsets: torch.Tensor
    max_targets: int
    target_pos: torch.Tensor
    target_scenario_ids: torch.Tensor
    target_dense: torch.Tensor
    labels: dict[str, torch.Tensor]
    sample_ids: list[str]
    user_ids: list[str]
    target_user_ids: list[str]
    target_scenarios: list[str]
    target_event_ids: list[str]
    max_event_ts: float

    @property
    def num_samples(self) -> int:
        return len(self.sample_ids)

    @property
    def num_targets(self) -> int:
        return len(self.target_user_ids)

    @property
    def num_tokens(self) -> int:
        return int(self.token_group.numel())

    @property
    def device(self) -> torch.device:
        return self.token_ts.device

    def _map(self, fn: Any) -> Batch:
        changes: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, torch.Tensor | KeyedJaggedTensor):
                changes[f.name] = fn(v)
            elif isinstance(v, tuple) and v and isinstance(v[0], torch.Tensor):
                changes[f.name] = tuple(fn(t) for t in v)
            elif isinstance(v, dict):
                changes[f.name] = {k: fn(t) for k, t in v.items()}
        return dataclasses.replace(self, **changes)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """A copy with every tensor on ``device`` (metadata lists stay Python objects)."""
        device = torch.device(device)
        return self._map(lambda t: t.to(device=device, non_blocking=non_blocking))

    def pin_memory(self) -> Batch:
        """Page-locked copy for async host->GPU copies; a no-op where no CUDA device exists."""
        if not torch.cuda.is_available():
            return self
        return self._map(lambda t: t.pin_memory())

    def record_stream(self, stream: torch.cuda.Stream) -> None:
        """Mark every CUDA tensor as used on ``stream`` (for copies made on a side stream)."""
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            items = v.values() if isinstance(v, dict) else v if isinstance(v, tuple) else [v]
            for t in items:
                if isinstance(t, torch.Tensor | KeyedJaggedTensor) and self.device.type == "cuda":
                    t.record_stream(stream)


def _origin(s: Sample) -> float:
    if s.targets:
        return min(t.ts for t in s.targets)
    if s.span_start:
        return s.span_start
    ts = [b.ts for b in (*s.history, *s.realtime)]
    return max(ts) if ts else 0.0


def _offsets(lengths: list[int]) -> torch.Tensor:
    out = torch.zeros(len(lengths) + 1, dtype=torch.int64)
    if lengths:
        out[1:] = torch.cumsum(torch.tensor(lengths, dtype=torch.int64), 0)
    return out


def _assemble(samples: Sequence[Sample], sparse: KeyedJaggedTensor, float_features: KeyedJaggedTensor,
              group_t: torch.Tensor, tts: list[float], origins: list[float], seq_lens: list[int],
              glens: list[list[int]], tgt_lens: list[int], tgt_pos: list[int], tgt_scen: list[int],
              tgt_dense: list[list[float]], labels: dict[str, list[float]], t_users: list[str], t_scen: list[str],
              t_eids: list[str]) -> Batch:
    """The :class:`Batch` from per-token/per-target lists (shared by :func:`collate` and
    :func:`model.reference.collate_reference`)."""
    return Batch(
        sparse=sparse,
        float_features=float_features,
        seq_offsets=_offsets(seq_lens),
        max_seq_len=max(seq_lens, default=0),
        token_group=group_t,
        token_ts=torch.tensor(tts, dtype=torch.float32),
        ts_origin=torch.tensor(origins, dtype=torch.float64),
        group_rows=tuple(torch.nonzero(group_t == g).flatten() for g in TokenGroup),  # type: ignore[arg-type]
        group_lengths=torch.tensor(glens, dtype=torch.int64).reshape(len(samples), 4),
        max_group_len=tuple(max((g[i] for g in glens), default=0) for i in range(4)),  # type: ignore[arg-type]
        max_context_len=max((g[0] + g[1] + g[2] for g in glens), default=0),
        target_offsets=_offsets(tgt_lens),
        max_targets=max(tgt_lens, default=0),
        target_pos=torch.tensor(tgt_pos, dtype=torch.int64),
        target_scenario_ids=torch.tensor(tgt_scen, dtype=torch.int64),
        target_dense=torch.tensor(tgt_dense, dtype=torch.float32).reshape(-1, len(TARGET_DENSE_COLUMNS)),
        labels={k: torch.tensor(v, dtype=torch.float32) for k, v in labels.items()},
        sample_ids=[s.sample_id for s in samples],
        user_ids=[s.user_id for s in samples],
        target_user_ids=t_users,
        target_scenarios=t_scen,
        target_event_ids=t_eids,
        max_event_ts=max((s.max_event_ts for s in samples), default=0.0),
    )


class _Buckets(dict[str, int]):
    """Per-call memo of ``spec.bucket(feature, value)`` (a request repeats the same keys hundreds of times)."""

    def __init__(self, spec: FeatureSpec, feature: str) -> None:
        super().__init__()
        self.spec, self.feature = spec, feature

    def __missing__(self, value: str) -> int:
        b = self[value] = self.spec.bucket(self.feature, value)
        return b


def _flat(parts: list[list[Any]]) -> list[Any]:
    """Concatenated lists (``array`` reads a list several times faster than a ``chain`` iterator)."""
    out: list[Any] = []
    for p in parts:
        out += p
    return out


def _i64(xs: Iterable[int]) -> torch.Tensor:
    """Python ints -> int64 tensor through ``array`` (several times faster than ``torch.tensor(list)``)."""
    return torch.from_numpy(np.frombuffer(array.array("q", xs), dtype=np.int64).copy())


def _squash_array(raw: Iterable[float]) -> torch.Tensor:
    """Vectorised :func:`model.features.squash` of numbers -> float32 tensor (non-finite -> 0)."""
    x = np.frombuffer(array.array("d", raw), dtype=np.float64)  # array('d') rejects non-numbers like math.isfinite
    with np.errstate(invalid="ignore", over="ignore"):
        y = np.copysign(np.log1p(np.abs(x)), x)
    y[~np.isfinite(x)] = 0.0
    return torch.from_numpy(y.astype(np.float32))


def collate(samples: Sequence[Sample], spec: FeatureSpec) -> Batch:
    """Build a :class:`Batch` from user-level samples (pure, CPU, deterministic).

    History keeps the ``spec.max_history`` most recent behaviors, real-time the ``spec.max_realtime`` most recent.
    Non-finite behavior timestamps are replaced by the origin; non-finite float features count as 0.
    (Same output as :func:`model.reference.collate_reference`, with memoised hashing and array-at-a-time tensors.)

    Example:
        >>> from streaming.sample import Target, Sample
        >>> b = collate([Sample("s", "u", [Target("e", "r", "i", "home", 1.0)])], FeatureSpec())
        >>> b.token_group.tolist()  # two U tokens, no history, one target
        [0, 0, 3]
    """
    # per key (SPARSE_FEATURES order: user_feat, item_id, item_feat, scenario, action, time_gap, context)
    UF, IID, IFT, SCN, ACT, TG, CTX = range(len(SPARSE_FEATURES))
    m_uf, m_iid, m_ift, m_scn, m_act, m_ctx = (
        _Buckets(spec, f) for f in ("user_feat", "item_id", "item_feat", "scenario", "action", "context")
    )
    m_float = [_Buckets(spec, f) for f in FLOAT_FEATURES]
    tg_bucket = spec.time_gap_bucket
    lens: list[int] = []  # per token, flat: the bag length of every key (SPARSE_FEATURES order)
    vals: list[list[int]] = [[] for _ in SPARSE_FEATURES]
    group: list[int] = []
    tts: list[float] = []
    origins: list[float] = []
    seq_lens: list[int] = []
    glens: list[list[int]] = []
    tgt_lens: list[int] = []
    tgt_pos: list[int] = []
    tgt_scen: list[int] = []
    tgt_dense: list[list[float]] = []
    labels: dict[str, list[float]] = {t: [] for t in spec.tasks}
    f_lens: list[list[int]] = [[] for _ in FLOAT_FEATURES]
    f_vals: list[list[int]] = [[] for _ in FLOAT_FEATURES]
    f_raw: list[list[float]] = [[] for _ in FLOAT_FEATURES]
    # id(feature dict) -> (the dict, its bucket ids, its values): the dict is kept so its id stays unique in this call
    f_memo: dict[int, tuple[dict[str, float], list[int], list[float]]] = {}
    t_users: list[str] = []
    t_scen: list[str] = []
    t_eids: list[str] = []
    G = spec.num_user_tokens
    H, R = int(TokenGroup.H), int(TokenGroup.R)
    U, T = int(TokenGroup.U), int(TokenGroup.T)

    for s in samples:
        origin = _origin(s)
        origins.append(origin)
        # U: one bag per user-feature group
        ubags: list[list[int]] = [[] for _ in range(G)]
        if spec.include_user_id:
            ubags[0].append(m_uf[f"user_id={s.user_id}"])
        for k, v in s.user.items():
            ubags[spec.user_token(k)].append(m_uf[f"{k}={v}"])
        for ub in ubags:
            lens += (len(ub), 0, 0, 0, 0, 0, 0)
            vals[UF].extend(ub)
            group.append(U)
            tts.append(_NEG_INF)
        hist = keep_last(s.history, spec.max_history)
        rt = keep_last(s.realtime, spec.max_realtime)
        for g, part in ((H, hist), (R, rt)):
            for b in part:
                ts = b.ts if math.isfinite(b.ts) else origin
                ift = [m_ift[f"{k}={v}"] for k, v in b.item.items()]
                lens += (0, 1, len(ift), 1, 1, 1, 0)
                vals[IID].append(m_iid[b.item_id])
                vals[IFT].extend(ift)
                vals[SCN].append(m_scn[b.scenario])
                vals[ACT].append(m_act[b.action])
                vals[TG].append(tg_bucket(origin - ts if g == H else ts - origin))
                group.append(g)
                tts.append(ts - origin)
        n_ctx = G + len(hist) + len(rt)
        for j, t in enumerate(s.targets):
            ctx = [m_ctx[f"{k}={v}"] for k, v in t.context.items()]
            if t.position is not None:
                ctx.append(m_ctx[f"position={t.position}"])
            ift = [m_ift[f"{k}={v}"] for k, v in t.item.items()]
            scen = m_scn[t.scenario]
            dt = t.ts - origin
            lens += (0, 1, len(ift), 1, 0, 1, len(ctx))
            vals[IID].append(m_iid[t.item_id])
            vals[IFT].extend(ift)
            vals[SCN].append(scen)
            vals[TG].append(tg_bucket(dt))
            vals[CTX].extend(ctx)
            group.append(T)
            tts.append(dt)
            tgt_pos.append(n_ctx + j)
            tgt_scen.append(scen)
            has_pos = t.position is not None and t.position >= 0
            tgt_dense.append([float(has_pos), math.log1p(t.position) if has_pos else 0.0, squash(dt)])  # type: ignore[arg-type]
            for task in spec.tasks:
                labels[task].append(float(t.labels.get(task, 0)))
            feats = t.dense
            f_lens[0].append(len(feats))
            f_vals[0].extend(map(m_float[0].__getitem__, feats))
            f_raw[0].extend(feats.values())
            feats = t.cross
            f_lens[1].append(len(feats))
            memo = f_memo.get(id(feats))  # serving's candidates share one cross dict per item category
            if memo is None or memo[0] is not feats:
                memo = f_memo[id(feats)] = (feats, list(map(m_float[1].__getitem__, feats)), list(feats.values()))
            f_vals[1] += memo[1]
            f_raw[1] += memo[2]
            t_users.append(s.user_id)
            t_scen.append(t.scenario)
            t_eids.append(t.event_id)
        glens.append([G, len(hist), len(rt), len(s.targets)])
        seq_lens.append(n_ctx + len(s.targets))
        tgt_lens.append(len(s.targets))

    n_tok = len(group)
    group_t = torch.tensor(group, dtype=torch.int64)
    lens_t = _i64(lens).reshape(n_tok, len(SPARSE_FEATURES))
    sparse = KeyedJaggedTensor(
        keys=list(SPARSE_FEATURES),
        values=_i64(_flat(vals)),
        lengths=lens_t.t().reshape(-1),  # key-major, like KJT wants
    )
    float_features = KeyedJaggedTensor(
        keys=list(FLOAT_FEATURES),
        values=_i64(_flat(f_vals)),
        lengths=_i64(_flat(f_lens)),
        weights=_squash_array(_flat(f_raw)),
    )
    return _assemble(samples, sparse, float_features, group_t, tts, origins, seq_lens, glens, tgt_lens, tgt_pos,
                     tgt_scen, tgt_dense, labels, t_users, t_scen, t_eids)
