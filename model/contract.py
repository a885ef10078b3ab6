"""Does a model's feature spec fit the samples a streaming worker produces (its :class:`streaming.spec.SampleSpec`)?

Checked where a model meets the stream: the trainer at start (``python -m trainer``), serving at start for its
``--preset`` and for every snapshot it loads. A model fits when it reads no more history than the worker keeps
(``FeatureSpec.max_history <= SampleSpec.history_len``: more would train on histories serving never sees, and the
other way round), scores only tasks the worker labels, and every cross counter its :class:`model.heads.CrossRates`
reads is a feature the worker computes.

Example:
    >>> from streaming.spec import SampleSpec
    >>> problems(FeatureSpec(max_history=512), SampleSpec(history_len=256))
    ['max_history 512 > the worker history_len 256']
    >>> problems(FeatureSpec(max_history=64), SampleSpec(history_len=256))
    []
"""

from __future__ import annotations

from model.features import FeatureSpec
from streaming.cross import lifetime_count_names
from streaming.spec import SampleSpec


def problems(spec: FeatureSpec, sample: SampleSpec) -> list[str]:
    """Why ``spec`` cannot train on / serve ``sample``'s samples, one short phrase each (empty: it fits)."""
    out: list[str] = []
    if spec.max_history > sample.history_len:
        out.append(f"max_history {spec.max_history} > the worker history_len {sample.history_len}")
    unknown = [t for t in spec.tasks if t not in sample.tasks]
    if unknown:
        out.append(f"tasks {list(spec.tasks)} include {unknown}, not in the worker tasks {list(sample.tasks)}")
    else:
        have = set(sample.cross_features)
        missing = [n for n in lifetime_count_names(spec.tasks) if n not in have]
        if missing:  # only a change to streaming.cross's layout gets here
            out.append(f"cross counters {missing} read by the model are not in the worker cross features")
    return out
