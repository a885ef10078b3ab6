"""Snapshots of the servable :class:`~model.Ranker`: safetensors weights + JSON metadata, no pickle.

Layout of one snapshot (a directory, written atomically: temp dir + fsync + ``os.rename``)::

    <directory>/snapshot-000000000042/
        weights.safetensors     state_dict of the raw (unwrapped) Ranker
        meta.json               {"format_version", "meta": SnapshotMeta, "feature_spec", "ranker_config",
                                 "weights_sha256", "weights_bytes"}

Loading rebuilds the model from the JSON (spec + config), checks the weights' SHA-256 and loads the tensors with
``safetensors`` (strict: every key and shape must match). Any problem raises :class:`SnapshotError`.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> from model.features import FeatureSpec
    >>> from model import Ranker, RankerConfig
    >>> tmp = tempfile.TemporaryDirectory()
    >>> d = Path(tmp.name)
    >>> p = save_snapshot(d, Ranker(FeatureSpec(), RankerConfig()), SnapshotMeta(1, 0.0, 0.0, 0))
    >>> load_snapshot(p).meta.version, latest_snapshot(d) == p
    (1, True)
    >>> tmp.cleanup()
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from model.features import FeatureSpec
from model.ranker import Ranker, RankerConfig

FORMAT_VERSION = 1
WEIGHTS_FILE = "weights.safetensors"
META_FILE = "meta.json"
_NAME = re.compile(r"^snapshot-(\d{12})$")


class SnapshotError(RuntimeError):
    """A snapshot that is missing, corrupt or incompatible with this build."""


@dataclass(frozen=True)
class SnapshotMeta:
    """What a snapshot is: ``version`` (monotonic, names the directory), when it was made, how fresh its data is.

    Two clocks: ``created_at`` and ``max_produce_ts`` are wall clock (epoch s); ``max_event_ts`` is event time, which
    for a replayed historical log (MovieLens: 1998) says nothing about how fresh the model is.

    Attributes:
        version: monotonic snapshot number.
        created_at: trainer wall clock when the snapshot was written (serving's model age = now − this).
        max_event_ts: largest event time (impression or feedback) in the samples trained on.
        samples_trained: samples trained on so far.
        max_produce_ts: largest Kafka record timestamp (the producer's wall clock: when the streaming worker wrote
            it) of the ``samples`` records consumed up to this snapshot; None when unknown (no record had a
            timestamp, or a snapshot written before the field existed). Serving's data freshness = the time the
            snapshot started serving − this.
        sample_spec: the streaming worker's sample spec (:class:`streaming.spec.SampleSpec` JSON, with its
            ``hash``) the trainer validated the model against at start; None when unknown (no worker had published
            one, or a snapshot written before the field existed). Serving refuses a snapshot whose spec differs
            from its worker's. ``save_snapshot`` fills it from ``Ranker.sample_spec`` when not given.

    Example:
        >>> SnapshotMeta(3, created_at=1.0, max_event_ts=2.0, samples_trained=10).format_version
        1
    """

    version: int
    created_at: float
    max_event_ts: float
    samples_trained: int
    format_version: int = FORMAT_VERSION
    max_produce_ts: float | None = None
    sample_spec: dict[str, Any] | None = None


@dataclass
class LoadedSnapshot:
    """A loaded snapshot: the model (in eval mode), its spec and config, the metadata and where it came from."""

    model: Ranker
    spec: FeatureSpec
    config: RankerConfig
    meta: SnapshotMeta
    path: Path


def snapshot_name(version: int) -> str:
    return f"snapshot-{version:012d}"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_snapshot(directory: Path, model: Ranker, meta: SnapshotMeta) -> Path:
    """Write ``model`` as ``<directory>/snapshot-<version>`` atomically and return that path.

    Raises :class:`SnapshotError` if a snapshot with this version already exists.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if meta.sample_spec is None and model.sample_spec is not None:
        meta = dataclasses.replace(meta, sample_spec=dict(model.sample_spec))
    final = directory / snapshot_name(meta.version)
    if final.exists():
        raise SnapshotError(f"snapshot {final} already exists")
    # contiguous CPU copies; safetensors refuses shared storage, so clone
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    blob = st_save(state, metadata={"format_version": str(FORMAT_VERSION)})
    doc = {
        "format_version": FORMAT_VERSION,
        "meta": dataclasses.asdict(meta),
        "feature_spec": json.loads(model.spec.to_json()),
        "ranker_config": json.loads(model.config.to_json()),
        "weights_sha256": hashlib.sha256(blob).hexdigest(),
        "weights_bytes": len(blob),
    }
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=directory))
    try:
        for name, data in ((WEIGHTS_FILE, blob), (META_FILE, json.dumps(doc, indent=1).encode())):
            with open(tmp / name, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        _fsync_dir(tmp)
        try:
            os.rename(tmp, final)
        except OSError as e:  # a concurrent writer published the same version first
            raise SnapshotError(f"cannot publish {final}: {e}") from None
        _fsync_dir(directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def read_meta(path: Path) -> dict[str, Any]:
    """The parsed ``meta.json`` of a snapshot (raises :class:`SnapshotError`)."""
    try:
        doc = json.loads((Path(path) / META_FILE).read_text())
    except FileNotFoundError:
        raise SnapshotError(f"{path}: no {META_FILE} (not a snapshot, or incomplete)") from None
    except (OSError, ValueError) as e:
        raise SnapshotError(f"{path}: unreadable {META_FILE}: {e}") from None
    if not isinstance(doc, dict):
        raise SnapshotError(f"{path}: {META_FILE} is not a JSON object")
    if doc.get("format_version") != FORMAT_VERSION:
        raise SnapshotError(
            f"{path}: snapshot format_version {doc.get('format_version')!r}, this build reads {FORMAT_VERSION}"
        )
    return doc


def load_snapshot(path: Path, map_location: str | torch.device = "cpu") -> LoadedSnapshot:
    """Load and verify a snapshot; the model comes back in eval mode on ``map_location``."""
    path = Path(path)
    doc = read_meta(path)
    try:
        spec = FeatureSpec.from_json(doc["feature_spec"])
        config = RankerConfig.from_json(doc["ranker_config"])
        meta = SnapshotMeta(**doc["meta"])
        want_sha = str(doc["weights_sha256"])
    except (KeyError, TypeError, ValueError) as e:
        raise SnapshotError(f"{path}: incompatible metadata: {type(e).__name__}: {e}") from None
    try:
        blob = (path / WEIGHTS_FILE).read_bytes()
    except OSError as e:
        raise SnapshotError(f"{path}: cannot read {WEIGHTS_FILE}: {e}") from None
    got_sha = hashlib.sha256(blob).hexdigest()
    if got_sha != want_sha:
        raise SnapshotError(f"{path}: {WEIGHTS_FILE} checksum mismatch (corrupt): {got_sha} != {want_sha}")
    try:
        state = st_load(blob)
    except (SafetensorError, ValueError) as e:
        raise SnapshotError(f"{path}: unreadable {WEIGHTS_FILE}: {e}") from None
    model = Ranker(spec, config)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise SnapshotError(f"{path}: weights do not fit the model: {e}") from None
    model.sample_spec = meta.sample_spec
    model.to(map_location).eval()
    return LoadedSnapshot(model=model, spec=spec, config=config, meta=meta, path=path)


def list_snapshots(directory: Path) -> list[Path]:
    """Complete snapshots under ``directory``, oldest version first (temp dirs and strays are ignored)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir() if _NAME.match(p.name) and (p / META_FILE).is_file()]
    return sorted(found, key=lambda p: p.name)


def latest_snapshot(directory: Path) -> Path | None:
    """The highest-version complete snapshot, or None."""
    snaps = list_snapshots(directory)
    return snaps[-1] if snaps else None


def next_version(directory: Path) -> int:
    """1 + the highest existing version (1 for an empty directory)."""
    last = latest_snapshot(directory)
    m = _NAME.match(last.name) if last else None
    return int(m.group(1)) + 1 if m else 1


def prune_snapshots(directory: Path, keep: int, stale_tmp_s: float = 3600.0) -> list[Path]:
    """Delete all but the ``keep`` newest snapshots; returns the deleted paths.

    Temp directories of interrupted writes older than ``stale_tmp_s`` seconds are removed too.
    """
    if keep < 1:
        raise ValueError("keep must be >= 1 (never delete the newest snapshot)")
    old = list_snapshots(directory)[:-keep]
    for p in old:
        shutil.rmtree(p, ignore_errors=True)
    if Path(directory).is_dir():
        now = time.time()
        for p in Path(directory).glob(".tmp-snapshot-*"):
            try:
                if now - p.stat().st_mtime > stale_tmp_s:
                    shutil.rmtree(p, ignore_errors=True)
            except OSError:
                pass  # removed concurrently
    return old
