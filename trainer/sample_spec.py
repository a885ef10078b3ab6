"""The trainer's start-up check: does the model fit the samples the streaming worker writes?

``python -m trainer`` reads the worker's :class:`streaming.spec.SampleSpec` from ``<--topic>.spec`` (waiting up to
``--sample-spec-wait-s`` for a worker to publish it) and refuses to start (exit code 2) when the model's feature
spec does not fit it (:func:`model.contract.problems`: ``--max-history`` above the worker's L, a task the worker
does not label, a cross counter it does not compute). No spec (a trainer started before any worker, or samples
written by something else) is one warning line and the trainer runs unchecked. The validated spec is recorded in
every snapshot (``SnapshotMeta.sample_spec``), so serving can refuse a model trained on other samples.

Example (needs a broker, so not a doctest)::

    worker_spec = check_sample_spec("127.0.0.1:9092", "samples", FeatureSpec(max_history=64), wait_s=5.0)
"""

from __future__ import annotations

import logging

from model.contract import problems
from model.features import FeatureSpec
from streaming.spec import SampleSpec, spec_topic
from streaming.spec_topic import SpecConflict, SpecUnavailable, read_spec

log = logging.getLogger(__name__)


class SampleSpecMismatch(Exception):
    """The model cannot train on the worker's samples (or their spec is unreadable); one line for the operator."""


def mismatch_message(spec: FeatureSpec, worker: SampleSpec, samples_topic: str) -> str | None:
    """The one-line refusal for ``spec`` against ``worker``'s spec, or None when the model fits.

    Example:
        >>> m = mismatch_message(FeatureSpec(max_history=512), SampleSpec(history_len=256), "samples")
        >>> m.split(": ")[1]
        'max_history 512 > the worker history_len 256 (samples.spec); lower --max-history or pick another --preset'
        >>> mismatch_message(FeatureSpec(max_history=256), SampleSpec(history_len=256), "samples") is None
        True
    """
    found = problems(spec, worker)
    if not found:
        return None
    return (f"the model does not fit the samples on {samples_topic}: {'; '.join(found)} "
            f"({spec_topic(samples_topic)}); lower --max-history or pick another --preset")


def check_sample_spec(bootstrap: str, samples_topic: str, spec: FeatureSpec, wait_s: float) -> SampleSpec | None:
    """The worker's spec when ``spec`` fits it; None (after one warning) when no spec could be read.

    Raises :class:`SampleSpecMismatch` when the model does not fit, or the spec record is unreadable."""
    try:
        worker = read_spec(bootstrap, samples_topic, wait_s)
    except SpecConflict as e:
        raise SampleSpecMismatch(str(e)) from None
    except SpecUnavailable as e:
        log.warning("sample spec not checked: %s", e)
        return None
    if worker is None:
        log.warning("no sample spec in %s after %gs (no streaming worker has published one): the model's "
                    "max_history %d and tasks are not checked against the samples", spec_topic(samples_topic),
                    wait_s, spec.max_history)
        return None
    msg = mismatch_message(spec, worker, samples_topic)
    if msg is not None:
        raise SampleSpecMismatch(msg)
    log.info("sample spec %s from %s: history_len %d >= max_history %d", worker.fingerprint(),
             spec_topic(samples_topic), worker.history_len, spec.max_history)
    return worker
