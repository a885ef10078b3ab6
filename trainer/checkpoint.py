"""Trainer checkpoints for resume: model, optimizers, Kafka offsets, metric state and recently trained sample ids.

A checkpoint is one file ``ckpt-<samples_trained:012d>.pt`` written by :func:`torch.save` from plain containers of
tensors, numbers and strings (no pickled classes), atomically: temp file in the same directory → fsync → rename →
fsync of the directory. It is read back with ``torch.load(weights_only=True)``. Payload (format 1)::

    format:            1
    model:             state_dict of the raw (unwrapped) model
    optim_embedding:   state_dict of the embedding optimizer (row-wise Adagrad)
    optim_dense:       state_dict of the dense optimizer (AdamW)
    offsets:           {"topic": str, "partitions": {partition: next offset to read}}
    progressive:       ProgressiveValidator.state_dict()
    trained_ids:       [sample_id, ...] the most recent N trained ids, oldest first (dedupe after restart)
    samples_trained, targets_trained, max_event_ts, snapshot_version
    max_produce_ts:    newest Kafka timestamp of a consumed samples record (epoch s) or None (absent before it existed)
    trained_log_bytes: size of the trained-ids log that belongs to this checkpoint (or -1 when there is none)
    feature_spec:      FeatureSpec JSON; model_config: the model config as plain data

Example:
    >>> import tempfile, torch
    >>> tmp = tempfile.TemporaryDirectory()
    >>> p = save_checkpoint(tmp.name, 7, {"format": 1, "w": torch.ones(2)})
    >>> load_checkpoint(latest_checkpoint(tmp.name))["w"].tolist()
    [1.0, 1.0]
    >>> tmp.cleanup()
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

CHECKPOINT_FORMAT = 1
_NAME = re.compile(r"^ckpt-(\d{12})\.pt$")


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not supported on every filesystem
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def save_checkpoint(directory: str | os.PathLike[str], step: int, payload: dict[str, Any]) -> Path:
    """Atomically write ``payload`` as ``<directory>/ckpt-<step>.pt`` and return its path."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    final = checkpoint_path(d, step)
    fd, tmp = tempfile.mkstemp(prefix=".ckpt-", suffix=".tmp", dir=d)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(d)
    return final


def checkpoint_path(directory: str | os.PathLike[str], step: int) -> Path:
    """Where the checkpoint of ``step`` lives: ``<directory>/ckpt-<step:012d>.pt``."""
    return Path(directory) / f"ckpt-{step:012d}.pt"


def checkpoint_step(path: Path) -> int:
    """The step number in a checkpoint file name ``ckpt-<step>.pt``.

    >>> checkpoint_step(checkpoint_path("runs/checkpoints", 42))
    42
    """
    return int(path.stem.split("-", 1)[1])


def list_checkpoints(directory: str | os.PathLike[str]) -> list[Path]:
    """Complete checkpoints in ``directory``, oldest first (temp files are ignored)."""
    d = Path(directory)
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir() if _NAME.match(p.name))


def latest_checkpoint(directory: str | os.PathLike[str]) -> Path | None:
    """The newest complete checkpoint, or None."""
    ckpts = list_checkpoints(directory)
    return ckpts[-1] if ckpts else None


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a checkpoint onto the CPU without unpickling arbitrary objects."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a streamrec trainer checkpoint (format {CHECKPOINT_FORMAT})")
    return payload


def prune_checkpoints(directory: str | os.PathLike[str], keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` (≥ 1) checkpoints and stale temp files; return what was removed."""
    ckpts = list_checkpoints(directory)
    removed = ckpts[: max(0, len(ckpts) - max(1, keep))]
    for p in removed:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
    return removed


class TrainedLog:
    """Append-only log of trained sample ids (one per line), committed together with checkpoints.

    Ids of trained samples are buffered and appended just before a checkpoint is written; the checkpoint records the
    log's size. On resume the log is truncated to that size, so lines of a crashed run's uncheckpointed training
    (which the restored model never saw, and which will be trained again) disappear: every sample id appears exactly
    once per time it is part of the checkpointed model.

    Example:
        >>> import tempfile, os
        >>> tmp = tempfile.TemporaryDirectory()
        >>> log = TrainedLog(os.path.join(tmp.name, "ids.txt"))
        >>> log.add(["a", "b"]); size = log.commit(); log.add(["c"]); _ = log.commit()
        >>> log.truncate(size); log.read()
        ['a', 'b']
        >>> tmp.cleanup()
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._pending: list[str] = []

    def add(self, ids: Iterable[str]) -> None:
        self._pending.extend(ids)

    def commit(self) -> int:
        """Append and fsync pending ids; return the file size to record in the checkpoint."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            if self._pending:
                f.write("".join(i + "\n" for i in self._pending))
            f.flush()
            os.fsync(f.fileno())
            size = f.tell()
        self._pending.clear()
        return size

    def truncate(self, size: int) -> None:
        """Cut the log back to ``size`` bytes (the checkpoint's view) and drop pending ids."""
        self._pending.clear()
        if size < 0:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a+b") as f:
            f.truncate(size)
            f.flush()
            os.fsync(f.fileno())

    def read(self) -> list[str]:
        if not self.path.exists():
            return []
        return self.path.read_text(encoding="utf-8").splitlines()
