"""A seeded synthetic multi-scenario log with planted cross-scenario preferences.

Each user has one latent taste vector ``u`` (dimension ``dim``) shared by every scenario; each item lives in one
scenario's catalog with a latent vector ``v``. A user's requests go to scenarios drawn from a per-user mix (so every
user spans several scenarios); each request shows ``items_per_request`` items of that scenario. Labels:

    p(click) = sigmoid(strength * <u, v> / sqrt(dim) + scenario_bias + item_bias + user_bias)
    p(like | click) = sigmoid(strength * <u, v> / sqrt(dim) - 1)

Because ``u`` is shared, what a user clicked in one scenario predicts their clicks in another: a model that
pools behaviour across scenarios (the user-level sample's history) can beat one that sees each scenario alone.
Side features are weak, noisy views of the latent vectors: ``user.segment`` and ``item.category`` are the argmax of
the first four latent dimensions (with noise on the user side).

Example:
    >>> a = generate(SyntheticConfig(num_users=3, num_items=12, requests_per_user=2, seed=7))
    >>> b = generate(SyntheticConfig(num_users=3, num_items=12, requests_per_user=2, seed=7))
    >>> a == b
    True
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from streaming.datasets import sort_events
from streaming.events import Event, Feedback, Impression

SCENARIO_NAMES = ("home", "search", "video", "shop", "local", "news", "travel", "games")


@dataclass(frozen=True)
class SyntheticConfig:
    """Size and shape of the synthetic log (defaults: ~20k impressions, a few seconds to generate).

    Example:
        >>> SyntheticConfig().num_scenarios
        3
    """

    num_users: int = 200
    num_items: int = 600
    num_scenarios: int = 3
    requests_per_user: int = 20
    items_per_request: int = 5
    dim: int = 8
    strength: float = 3.0
    start_ts: float = 1_700_000_000.0
    duration_s: float = 14 * 86400.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.num_scenarios <= len(SCENARIO_NAMES):
            raise ValueError(f"num_scenarios must be in 1..{len(SCENARIO_NAMES)}")
        if min(self.num_users, self.num_items, self.requests_per_user, self.items_per_request, self.dim) < 1:
            raise ValueError("sizes must be >= 1")
        if self.num_items < self.num_scenarios:
            raise ValueError("need at least one item per scenario")


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def generate(config: SyntheticConfig | None = None) -> list[Event]:
    """The synthetic log as events in event-time order (same config and seed → identical events)."""
    cfg = config or SyntheticConfig()
    rng = np.random.default_rng(cfg.seed)
    S, k = cfg.num_scenarios, cfg.dim
    scenarios = SCENARIO_NAMES[:S]

    user_vec = rng.normal(size=(cfg.num_users, k))                       # (U, k) shared across scenarios
    item_vec = rng.normal(size=(cfg.num_items, k))                       # (I, k)
    item_scn = np.arange(cfg.num_items) % S                              # round-robin catalogs
    item_bias = rng.normal(scale=0.5, size=cfg.num_items)
    user_bias = rng.normal(scale=0.5, size=cfg.num_users)
    scn_bias = np.linspace(-0.8, 0.4, S) if S > 1 else np.zeros(1)
    user_mix = rng.dirichlet(np.ones(S), size=cfg.num_users)             # (U, S) scenario visit mix
    seg_dims = min(4, k)
    user_segment = np.argmax(user_vec[:, :seg_dims] + rng.normal(scale=0.7, size=(cfg.num_users, seg_dims)), axis=1)
    item_category = np.argmax(item_vec[:, :seg_dims], axis=1)
    catalogs = [np.flatnonzero(item_scn == s) for s in range(S)]

    events: list[Event] = []
    for u in range(cfg.num_users):
        uid = f"u{u}"
        user = {"segment": f"seg{user_segment[u]}"}
        req_ts = np.sort(rng.uniform(0.0, cfg.duration_s, size=cfg.requests_per_user)) + cfg.start_ts
        req_scn = rng.choice(S, size=cfg.requests_per_user, p=user_mix[u])
        for r in range(cfg.requests_per_user):
            s = int(req_scn[r])
            t0 = float(np.round(req_ts[r], 3))
            rid = f"syn-{uid}-r{r}"
            cat = catalogs[s]
            n = min(cfg.items_per_request, len(cat))
            shown = rng.choice(cat, size=n, replace=False)
            affinity = item_vec[shown] @ user_vec[u] / np.sqrt(k)        # (n,)
            p_click = _sigmoid(cfg.strength * affinity + scn_bias[s] + item_bias[shown] + user_bias[u])
            p_like = _sigmoid(cfg.strength * affinity - 1.0)
            clicks = rng.random(n) < p_click
            likes = clicks & (rng.random(n) < p_like)
            delays = np.round(rng.uniform(1.0, 30.0, size=n), 3)
            for pos in range(n):
                i = int(shown[pos])
                iid = f"i{i}"
                eid = f"syn-{uid}-r{r}-p{pos}"
                events.append(Impression(
                    event_id=eid, ts=t0, user_id=uid, scenario=scenarios[s], request_id=rid, item_id=iid,
                    position=pos, item={"category": f"cat{item_category[i]}"}, user=dict(user),
                ))
                if clicks[pos]:
                    tc = t0 + float(delays[pos])
                    events.append(Feedback(eid + "-click", tc, uid, scenarios[s], rid, iid, "click"))
                    if likes[pos]:
                        events.append(Feedback(eid + "-like", tc + 5.0, uid, scenarios[s], rid, iid, "like"))
    return sort_events(events)
