"""The readable specification of :func:`model.batch.collate`; only tests and benchmarks import this module.

:func:`collate_reference` builds each token from a dict of feature bags, one ``spec.bucket`` call per id.
``tests/model/test_fast_paths.py`` checks that :func:`model.batch.collate` (memoised hashing, array-at-a-time
tensors) builds the same :class:`~model.batch.Batch` bit for bit, and ``benchmarks/bench_serving.py`` times it as
the serving path before the fast ones. Both build the Batch through :func:`model.batch._assemble`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from kernels.attention import TokenGroup
from model.batch import _NEG_INF, Batch, _assemble, _origin
from model.features import FLOAT_FEATURES, SPARSE_FEATURES, FeatureSpec, squash
from streaming.sample import Behavior, Sample
from streaming.spec import keep_last


def collate_reference(samples: Sequence[Sample], spec: FeatureSpec) -> Batch:
    """Readable per-token version of :func:`collate` (same output; the fast one is tested against it).

    History keeps the ``spec.max_history`` most recent behaviors, real-time the ``spec.max_realtime`` most recent.
    Non-finite behavior timestamps are replaced by the origin; non-finite float features count as 0.

    Example:
        >>> from streaming.sample import Target, Sample
        >>> b = collate_reference([Sample("s", "u", [Target("e", "r", "i", "home", 1.0)])], FeatureSpec())
        >>> b.token_group.tolist()  # two U tokens, no history, one target
        [0, 0, 3]
    """
    keys = SPARSE_FEATURES
    # per key: lengths (one entry per token) and values
    lens: list[list[int]] = [[] for _ in keys]
    vals: list[list[int]] = [[] for _ in keys]
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
    f_wts: list[list[float]] = [[] for _ in FLOAT_FEATURES]
    t_users: list[str] = []
    t_scen: list[str] = []
    t_eids: list[str] = []
    G = spec.num_user_tokens

    def token(bags: dict[str, list[int]], g: int, ts: float) -> None:
        for i, k in enumerate(keys):
            ids = bags.get(k)
            if ids:
                lens[i].append(len(ids))
                vals[i].extend(ids)
            else:
                lens[i].append(0)
        group.append(g)
        tts.append(ts)

    def behavior(b: Behavior, g: int, origin: float) -> None:
        ts = b.ts if math.isfinite(b.ts) else origin
        gap = origin - ts if g == TokenGroup.H else ts - origin
        token(
            {
                "item_id": [spec.bucket("item_id", b.item_id)],
                "item_feat": [spec.bucket("item_feat", f"{k}={v}") for k, v in b.item.items()],
                "scenario": [spec.bucket("scenario", b.scenario)],
                "action": [spec.bucket("action", b.action)],
                "time_gap": [spec.time_gap_bucket(gap)],
            },
            g,
            ts - origin,
        )

    for s in samples:
        origin = _origin(s)
        origins.append(origin)
        # U: one bag per user-feature group
        ubags: list[list[int]] = [[] for _ in range(G)]
        if spec.include_user_id:
            ubags[0].append(spec.bucket("user_feat", f"user_id={s.user_id}"))
        for k, v in s.user.items():
            ubags[spec.user_token(k)].append(spec.bucket("user_feat", f"{k}={v}"))
        for ub in ubags:
            token({"user_feat": ub}, TokenGroup.U, _NEG_INF)
        hist = keep_last(s.history, spec.max_history)
        rt = keep_last(s.realtime, spec.max_realtime)
        for b in hist:
            behavior(b, TokenGroup.H, origin)
        for b in rt:
            behavior(b, TokenGroup.R, origin)
        n_ctx = G + len(hist) + len(rt)
        for j, t in enumerate(s.targets):
            ctx = [spec.bucket("context", f"{k}={v}") for k, v in t.context.items()]
            if t.position is not None:
                ctx.append(spec.bucket("context", f"position={t.position}"))
            scen = spec.bucket("scenario", t.scenario)
            dt = t.ts - origin
            token(
                {
                    "item_id": [spec.bucket("item_id", t.item_id)],
                    "item_feat": [spec.bucket("item_feat", f"{k}={v}") for k, v in t.item.items()],
                    "scenario": [scen],
                    "time_gap": [spec.time_gap_bucket(dt)],
                    "context": ctx,
                },
                TokenGroup.T,
                dt,
            )
            tgt_pos.append(n_ctx + j)
            tgt_scen.append(scen)
            has_pos = t.position is not None and t.position >= 0
            tgt_dense.append([float(has_pos), math.log1p(t.position) if has_pos else 0.0, squash(dt)])  # type: ignore[arg-type]
            for task in spec.tasks:
                labels[task].append(float(t.labels.get(task, 0)))
            for i, (name, feats) in enumerate(zip(FLOAT_FEATURES, (t.dense, t.cross), strict=True)):
                f_lens[i].append(len(feats))
                for fk, fv in feats.items():
                    f_vals[i].append(spec.bucket(name, fk))
                    f_wts[i].append(squash(fv))
            t_users.append(s.user_id)
            t_scen.append(s.targets[j].scenario)
            t_eids.append(t.event_id)
        glens.append([G, len(hist), len(rt), len(s.targets)])
        seq_lens.append(n_ctx + len(s.targets))
        tgt_lens.append(len(s.targets))

    group_t = torch.tensor(group, dtype=torch.int64)
    sparse = KeyedJaggedTensor(
        keys=list(keys),
        values=torch.tensor([v for vs in vals for v in vs], dtype=torch.int64),
        lengths=torch.tensor([n for ls in lens for n in ls], dtype=torch.int64),
    )
    float_features = KeyedJaggedTensor(
        keys=list(FLOAT_FEATURES),
        values=torch.tensor([v for vs in f_vals for v in vs], dtype=torch.int64),
        lengths=torch.tensor([n for ls in f_lens for n in ls], dtype=torch.int64),
        weights=torch.tensor([w for ws in f_wts for w in ws], dtype=torch.float32),
    )
    return _assemble(samples, sparse, float_features, group_t, tts, origins, seq_lens, glens, tgt_lens, tgt_pos,
                     tgt_scen, tgt_dense, labels, t_users, t_scen, t_eids)
