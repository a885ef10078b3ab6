"""Progressive validation: every batch is scored *before* the trainer learns from it.

For each task, overall (every target once) and per ``(scenario, task)`` pair, :class:`ProgressiveValidator` keeps

* a **window** — the most recent ``window`` targets (a ring buffer of prediction, label and user hash), from which
  AUC (exact, :func:`torchmetrics.functional.classification.binary_auroc`), GAUC, log loss and calibration are
  computed on demand;
* a **lifetime** summary in bounded memory — AUC from :class:`torchmetrics.classification.BinaryAUROC` with binned
  thresholds (a ``(thresholds, 2, 2)`` confusion-matrix state), running sums for log loss and calibration, and GAUC
  accumulated over consecutive non-overlapping blocks of ``window`` targets (users are grouped within a block).

GAUC (group AUC): the AUC of each user's targets, averaged with weights = the user's impression count, over users
that have both a positive and a negative label (others carry no ranking signal). Ties count one half.

Scenario names are open strings: the overall aggregate is kept apart from them (:meth:`ProgressiveValidator.compute`
returns ``{"overall": ..., "scenarios": ...}``), so no scenario name — ``all``, ``*``, ``overall`` — can collide
with it.

All state is plain tensors/numbers (:meth:`ProgressiveValidator.state_dict`), so it goes into the trainer checkpoint
and is loadable with ``torch.load(weights_only=True)``; metrics continue across restarts.

Example:
    >>> import torch
    >>> pv = ProgressiveValidator(ProgressiveConfig(window=100, auc_thresholds=101))
    >>> pv.update({"click": torch.tensor([0.9, 0.2, 0.7, 0.4])}, {"click": torch.tensor([1.0, 0.0, 0.0, 1.0])},
    ...           scenarios=["home", "home", "search", "search"], user_ids=["a", "a", "b", "b"])
    >>> round(pv.compute()["overall"]["click"]["window"]["auc"], 2)
    0.75
    >>> pv.compute()["overall"]["click"]["window"]["gauc"]  # user a: 1.0, user b: 0.0, weighted 2:2
    0.5
    >>> pv.compute()["scenarios"]["search"]["click"]["window"]["auc"]
    0.0
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypedDict

import numpy as np
import torch
from torchmetrics.classification import BinaryAUROC
from torchmetrics.functional.classification import binary_auroc

WINDOWS = ("window", "lifetime")
_EPS = 1e-7


@dataclass(frozen=True, slots=True)
class ProgressiveConfig:
    """Progressive-validation settings.

    Attributes:
        window: targets per (scenario, task) in the sliding window (and the block size for lifetime GAUC).
        auc_thresholds: bins of the constant-memory lifetime AUC (torchmetrics ``BinaryAUROC(thresholds=...)``).
    """

    window: int = 10_000
    auc_thresholds: int = 1_000


def user_hash(user_id: str) -> int:
    """Stable signed 63-bit hash of a user id (grouping key for GAUC; stable across processes and restarts)."""
    return int.from_bytes(hashlib.blake2b(user_id.encode(), digest_size=8).digest(), "little") >> 1


def grouped_auc(preds: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor) -> tuple[float, float]:
    """Impression-weighted sum of per-group AUCs and the total weight, over groups with both classes.

    Mann-Whitney U per group with tie-averaged ranks, vectorised (no Python loop over users).

    Args:
        preds: (N,) float scores.
        labels: (N,) {0, 1} labels.
        groups: (N,) int64 group keys.

    Returns:
        ``(sum_g n_g * auc_g, sum_g n_g)``; GAUC = first / second (NaN when the second is 0).
    """
    n = preds.numel()
    if n == 0:
        return 0.0, 0.0
    p = preds.detach().double().cpu()
    y = labels.detach().double().cpu()
    g = groups.detach().long().cpu()
    # Sort by (group, pred): stable sort on pred, then stable sort on group.
    o1 = torch.argsort(p, stable=True)
    o2 = torch.argsort(g[o1], stable=True)
    order = o1[o2]
    p, y, g = p[order], y[order], g[order]
    _, gcounts = torch.unique_consecutive(g, return_counts=True)
    gstart = torch.cumsum(gcounts, 0) - gcounts  # (G,)
    gid = torch.repeat_interleave(torch.arange(gcounts.numel()), gcounts)  # (N,)
    # Runs of equal (group, pred) get the average of their 1-based in-group ranks.
    key_change = torch.ones(n, dtype=torch.bool)
    key_change[1:] = (g[1:] != g[:-1]) | (p[1:] != p[:-1])
    run_id = torch.cumsum(key_change.long(), 0) - 1
    pos_in_group = torch.arange(n, dtype=torch.float64) - gstart[gid].double() + 1.0
    run_sum = torch.zeros(int(run_id[-1]) + 1, dtype=torch.float64).index_add_(0, run_id, pos_in_group)
    run_cnt = torch.zeros_like(run_sum).index_add_(0, run_id, torch.ones(n, dtype=torch.float64))
    rank = (run_sum / run_cnt)[run_id]
    n_pos = torch.zeros(gcounts.numel(), dtype=torch.float64).index_add_(0, gid, y)
    n_neg = gcounts.double() - n_pos
    rank_pos = torch.zeros_like(n_pos).index_add_(0, gid, rank * y)
    ok = (n_pos > 0) & (n_neg > 0)
    if not bool(ok.any()):
        return 0.0, 0.0
    auc = (rank_pos[ok] - n_pos[ok] * (n_pos[ok] + 1) / 2) / (n_pos[ok] * n_neg[ok])
    w = gcounts[ok].double()
    return float((auc * w).sum()), float(w.sum())


def binned_confmat(preds: torch.Tensor, labels: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """The (thresholds, 2, 2) confusion matrices ``[[tn, fp], [fn, tp]]`` that torchmetrics' binned ``BinaryAUROC``
    adds per update (prediction positive iff ``pred >= threshold``), in O(N log K + K) instead of an (N, K) compare.

    Example:
        >>> binned_confmat(torch.tensor([0.2, 0.8]), torch.tensor([0.0, 1.0]), torch.tensor([0.0, 0.5, 1.0]))[1]
        tensor([[1, 0],
                [0, 1]])
    """
    k = thresholds.numel()
    if not bool(((preds >= 0) & (preds <= 1)).all()):  # torchmetrics' rule: logits get a sigmoid
        preds = preds.sigmoid()
    above = torch.searchsorted(thresholds, preds.to(thresholds.dtype), right=True)  # thresholds <= pred, 0..K
    pos = labels.long() == 1
    n_pos = torch.bincount(above[pos], minlength=k + 1)
    n_neg = torch.bincount(above[~pos], minlength=k + 1)
    tp = n_pos.flip(0).cumsum(0).flip(0)[1:]  # (K,) positives with pred >= threshold t, i.e. above > t
    fp = n_neg.flip(0).cumsum(0).flip(0)[1:]
    fn, tn = n_pos.sum() - tp, n_neg.sum() - fp
    return torch.stack([tn, fp, fn, tp], dim=1).reshape(k, 2, 2)


def exact_auc(preds: torch.Tensor, labels: torch.Tensor) -> float:
    """Exact ROC AUC via torchmetrics; NaN when only one class is present."""
    if preds.numel() == 0:
        return math.nan
    pos = int(labels.sum())
    if pos == 0 or pos == labels.numel():
        return math.nan
    return float(binary_auroc(preds.float(), labels.long(), thresholds=None))


def _logloss_sum(preds: torch.Tensor, labels: torch.Tensor) -> float:
    p = preds.double().clamp(_EPS, 1 - _EPS)
    y = labels.double()
    return float(-(y * p.log() + (1 - y) * (1 - p).log()).sum())


class _Stream:
    """Window + lifetime state of one (scenario, task)."""

    def __init__(self, cfg: ProgressiveConfig) -> None:
        w = cfg.window
        self.preds = torch.zeros(w, dtype=torch.float32)
        self.labels = torch.zeros(w, dtype=torch.float32)
        self.users = torch.zeros(w, dtype=torch.int64)
        self.pos = 0  # next write index in the ring
        self.filled = 0  # valid entries in the ring (≤ window)
        self.since_block = 0  # entries written since the last completed GAUC block
        self.auroc = BinaryAUROC(thresholds=cfg.auc_thresholds, validate_args=False)
        self.auroc.persistent(True)
        self.count = 0
        self.label_sum = 0.0
        self.pred_sum = 0.0
        self.logloss_sum = 0.0
        self.gauc_num = 0.0
        self.gauc_den = 0.0

    @property
    def window(self) -> int:
        return self.preds.numel()

    def _last(self, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The most recent k entries of the ring, oldest first."""
        idx = (torch.arange(self.pos - k, self.pos) % self.window) if k else torch.zeros(0, dtype=torch.long)
        return self.preds[idx], self.labels[idx], self.users[idx]

    def update(self, p: torch.Tensor, y: torch.Tensor, u: torch.Tensor) -> None:
        n = p.numel()
        if n == 0:
            return
        thresholds = self.auroc.thresholds
        assert isinstance(thresholds, torch.Tensor)  # binned: set in __init__
        self.auroc.confmat += binned_confmat(p, y, thresholds)  # = self.auroc.update(p, y.long())
        self.count += n
        self.label_sum += float(y.sum())
        self.pred_sum += float(p.double().sum())
        self.logloss_sum += _logloss_sum(p, y)
        i = 0
        while i < n:  # write in chunks that never cross a block boundary
            take = min(n - i, self.window - self.since_block)
            idx = (torch.arange(self.pos, self.pos + take)) % self.window
            self.preds[idx], self.labels[idx], self.users[idx] = p[i : i + take], y[i : i + take], u[i : i + take]
            self.pos = (self.pos + take) % self.window
            self.filled = min(self.window, self.filled + take)
            self.since_block += take
            i += take
            if self.since_block == self.window:  # a full block of fresh targets: fold its GAUC into lifetime
                num, den = grouped_auc(self.preds, self.labels, self.users)
                self.gauc_num += num
                self.gauc_den += den
                self.since_block = 0

    def compute(self) -> dict[str, dict[str, float]]:
        p, y, u = self._last(self.filled)
        wnum, wden = grouped_auc(p, y, u)
        win = {
            "count": float(self.filled),
            "auc": exact_auc(p, y),
            "gauc": wnum / wden if wden else math.nan,
            "logloss": _logloss_sum(p, y) / self.filled if self.filled else math.nan,
            "calibration": float(p.double().sum() / y.double().sum()) if float(y.sum()) > 0 else math.nan,
            "label_mean": float(y.double().mean()) if self.filled else math.nan,
            "pred_mean": float(p.double().mean()) if self.filled else math.nan,
        }
        # Lifetime GAUC = completed blocks + the current partial block.
        pp, py, pu = self._last(self.since_block)
        bnum, bden = grouped_auc(pp, py, pu)
        num, den = self.gauc_num + bnum, self.gauc_den + bden
        has_both = 0 < self.label_sum < self.count
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            life_auc = float(self.auroc.compute()) if has_both else math.nan
        life = {
            "count": float(self.count),
            "auc": life_auc,
            "gauc": num / den if den else math.nan,
            "logloss": self.logloss_sum / self.count if self.count else math.nan,
            "calibration": self.pred_sum / self.label_sum if self.label_sum > 0 else math.nan,
            "label_mean": self.label_sum / self.count if self.count else math.nan,
            "pred_mean": self.pred_sum / self.count if self.count else math.nan,
        }
        return {"window": win, "lifetime": life}

    def state_dict(self) -> dict[str, Any]:
        return {
            "preds": self.preds.clone(), "labels": self.labels.clone(), "users": self.users.clone(),
            "pos": self.pos, "filled": self.filled, "since_block": self.since_block,
            "confmat": self.auroc.confmat.clone(), "count": self.count, "label_sum": self.label_sum,
            "pred_sum": self.pred_sum, "logloss_sum": self.logloss_sum, "gauc_num": self.gauc_num,
            "gauc_den": self.gauc_den,
        }

    def load_state_dict(self, s: Mapping[str, Any]) -> None:
        if s["preds"].numel() != self.window or s["confmat"].shape != self.auroc.confmat.shape:
            raise ValueError("progressive state was saved with a different window or auc_thresholds")
        self.preds.copy_(s["preds"])
        self.labels.copy_(s["labels"])
        self.users.copy_(s["users"])
        self.auroc.confmat.copy_(s["confmat"])
        self.pos, self.filled, self.since_block = int(s["pos"]), int(s["filled"]), int(s["since_block"])
        self.count = int(s["count"])
        self.label_sum, self.pred_sum = float(s["label_sum"]), float(s["pred_sum"])
        self.logloss_sum = float(s["logloss_sum"])
        self.gauc_num, self.gauc_den = float(s["gauc_num"]), float(s["gauc_den"])


Metrics = dict[str, dict[str, float]]  # window ("window" | "lifetime") -> metric -> value


class Quality(TypedDict):
    """:meth:`ProgressiveValidator.compute` output: the overall aggregate apart from the open-keyed scenarios."""

    overall: dict[str, Metrics]  # task -> windows: every target once, whatever its scenario
    scenarios: dict[str, dict[str, Metrics]]  # scenario -> task -> windows


class ProgressiveValidator:
    """Windowed and lifetime AUC / GAUC / log loss / calibration per task, overall and per scenario × task.

    Call :meth:`update` with the model's probabilities for a batch *before* the optimizer step on that batch.
    """

    def __init__(self, config: ProgressiveConfig) -> None:
        self.config = config
        self._streams: dict[tuple[str | None, str], _Stream] = {}  # (scenario, task); scenario None = overall

    def _stream(self, scenario: str | None, task: str) -> _Stream:
        key = (scenario, task)
        s = self._streams.get(key)
        if s is None:
            s = self._streams[key] = _Stream(self.config)
        return s

    def update(
        self,
        probs: Mapping[str, torch.Tensor],
        labels: Mapping[str, torch.Tensor],
        scenarios: Sequence[str],
        user_ids: Sequence[str],
        masks: Mapping[str, torch.Tensor] | None = None,
    ) -> None:
        """Add one batch of scored targets.

        Args:
            probs: task → (T,) predicted probabilities (any device; copied to CPU).
            labels: task → (T,) {0, 1} labels.
            scenarios: (T,) scenario of each target.
            user_ids: (T,) user of each target (GAUC grouping key).
            masks: optional task → (T,) bool, False where the label is unknown (excluded).
        """
        t = len(scenarios)
        if t == 0:
            return
        hashes = {u: user_hash(u) for u in dict.fromkeys(user_ids)}  # a user's targets come together
        users = torch.tensor([hashes[u] for u in user_ids], dtype=torch.int64)
        scen = np.asarray(scenarios, dtype=object)
        by_scen = {str(s): torch.from_numpy(np.flatnonzero(scen == s)) for s in dict.fromkeys(scenarios)}
        for task, pr in probs.items():
            p = pr.detach().float().cpu().reshape(-1)
            y = labels[task].detach().float().cpu().reshape(-1)
            keep = torch.isfinite(y) & torch.isfinite(p)
            if masks is not None and task in masks:
                keep &= masks[task].detach().cpu().reshape(-1).bool()
            self._stream(None, task).update(p[keep], y[keep], users[keep])
            for s, idx in by_scen.items():
                k = keep[idx]
                sel = idx[k]
                self._stream(s, task).update(p[sel], y[sel], users[sel])

    def compute(self) -> Quality:
        """``{"overall": {task: windows}, "scenarios": {scenario: {task: windows}}}`` with windows =
        ``{"window"|"lifetime": {metric: value}}``; NaN where undefined."""
        out = Quality(overall={}, scenarios={})
        for (scenario, task), s in sorted(self._streams.items(), key=lambda kv: (kv[0][0] is not None, kv[0])):
            if scenario is None:
                out["overall"][task] = s.compute()
            else:
                out["scenarios"].setdefault(scenario, {})[task] = s.compute()
        return out

    def state_dict(self) -> dict[str, Any]:
        """Plain containers of tensors and numbers (``torch.load(weights_only=True)``-safe)."""
        scenarios: dict[str, dict[str, Any]] = {}
        for (sc, t), s in self._streams.items():
            if sc is not None:
                scenarios.setdefault(sc, {})[t] = s.state_dict()
        return {
            "window": self.config.window,
            "auc_thresholds": self.config.auc_thresholds,
            "overall": {t: s.state_dict() for (sc, t), s in self._streams.items() if sc is None},
            "scenarios": scenarios,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore from :meth:`state_dict` (same ``window`` and ``auc_thresholds`` required).

        A state written before the overall aggregate had its own key (``streams``: ``"<scenario>\x1f<task>"``,
        overall under scenario ``all``) loads with ``all`` as the overall aggregate.
        """
        self._streams.clear()
        if "streams" in state:
            for key, s in state["streams"].items():
                scenario, task = key.rsplit("\x1f", 1)
                self._stream(None if scenario == "all" else scenario, task).load_state_dict(s)
            return
        for task, s in state["overall"].items():
            self._stream(None, task).load_state_dict(s)
        for scenario, tasks in state["scenarios"].items():
            for task, s in tasks.items():
                self._stream(scenario, task).load_state_dict(s)
