"""Event generators shared by the streaming tests (a seeded plain-random one and a hypothesis strategy)."""

from __future__ import annotations

import random
from dataclasses import dataclass

from hypothesis import strategies as st

from streaming.events import Event, Feedback, Impression

ACTIONS = ("click", "click", "click", "like", "order", "share")


@dataclass(frozen=True)
class GenSpec:
    users: int = 4
    scenarios: int = 3
    items: int = 12
    impressions: int = 60
    horizon: float = 20_000.0  # event-time range of impressions, seconds
    window: float = 1800.0
    jitter: float = 50.0  # max arrival disorder (must be <= allowed lateness for "in order enough")
    dup_rate: float = 0.05
    fb_rate: float = 0.4


def item_features(item: str) -> dict[str, str]:
    n = int(item[1:])
    return {"category": f"c{n % 3}", "brand": f"b{n % 5}"}


def generate(seed: int, spec: GenSpec = GenSpec()) -> tuple[list[Event], list[Event]]:
    """Returns (events in event-time order with duplicates, arrival order with bounded disorder)."""
    rng = random.Random(seed)
    events: list[Event] = []
    n_fb = 0
    for k in range(spec.impressions):
        u = f"u{rng.randrange(spec.users)}"
        s = f"s{rng.randrange(spec.scenarios)}"
        it = f"i{rng.randrange(spec.items)}"
        ts = round(rng.uniform(0, spec.horizon), 1)
        req = f"r{rng.randrange(spec.impressions // 2 + 1)}"
        imp = Impression(f"imp{k}", ts, u, s, req, it, position=rng.randrange(10), item=item_features(it),
                         context={"hour": str(int(ts // 3600) % 24)}, user={"age": f"a{int(u[1:]) % 3}"},
                         dense={"price": float(rng.randrange(100))})
        events.append(imp)
        while rng.random() < spec.fb_rate:
            # mostly in window, some just outside, some at the boundary
            r = rng.random()
            if r < 0.7:
                dt = round(rng.uniform(0, spec.window), 1)
            elif r < 0.8:
                dt = spec.window
            else:
                dt = round(rng.uniform(spec.window, 2 * spec.window), 1)
            events.append(Feedback(f"fb{n_fb}", ts + dt, u, s, req, it, rng.choice(ACTIONS)))
            n_fb += 1
    for k in range(spec.impressions // 10):  # orphans
        u = f"u{rng.randrange(spec.users)}"
        events.append(Feedback(f"orph{k}", round(rng.uniform(0, spec.horizon), 1), u, "s0", "nope", "i0", "click"))
    dups = [e for e in events if rng.random() < spec.dup_rate]
    all_events = events + dups
    all_events.sort(key=lambda e: (e.ts, e.event_id))
    keyed = [(e.ts + rng.uniform(0, spec.jitter * 0.999), i, e) for i, e in enumerate(all_events)]
    keyed.sort(key=lambda x: (x[0], x[1]))
    return all_events, [e for _, _, e in keyed]


@st.composite
def event_streams(draw: st.DrawFn, spec: GenSpec = GenSpec()) -> list[Event]:
    seed = draw(st.integers(0, 2**32 - 1))
    n = draw(st.integers(0, spec.impressions))
    return generate(seed, GenSpec(**{**spec.__dict__, "impressions": n}))[1]
