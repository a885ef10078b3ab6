"""Write examples/events.csv: a small synthetic shop log (one row per impression) for the own-data walkthrough.

Every row is an item shown to a user in one slot of a request on one surface (home, search, cart), with the
outcome columns a real log would have: clicked (0/1), purchased (0/1) and dwell_s (seconds on the item page).
Users have hidden tastes over item categories; clicks follow taste, item appeal and slot, so a model has something to
learn. Timestamps are epoch milliseconds, as many production logs store them. Deterministic for a given seed
(Python's random.Random only), so the committed file is exactly what this script writes:

    python examples/make_events.py                      # rewrites examples/events.csv
    python examples/make_events.py --out /tmp/e.csv --users 1000
"""

from __future__ import annotations

import argparse
import csv
import math
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
COLUMNS = ("event_id", "request_id", "ts_ms", "user_id", "age_band", "country", "device", "surface", "slot",
           "item_id", "item_category", "brand", "price", "clicked", "purchased", "dwell_s")
SURFACES = ("home", "search", "cart")
CATEGORIES = ("shoes", "shirts", "bags", "watches", "phones", "laptops", "books", "games", "toys", "garden")
START_MS = 1_709_251_200_000  # 2024-03-01T00:00:00Z


def generate(users: int = 120, items: int = 240, requests: int = 4, slots: int = 5, seed: int = 7) -> list[dict]:
    """The log's rows in time order: ``users`` x ``requests`` requests of ``slots`` impressions each."""
    rng = random.Random(seed)
    item_rows = []
    for i in range(items):
        cat = rng.randrange(len(CATEGORIES))
        item_rows.append({"item_id": f"i{i:04d}", "item_category": CATEGORIES[cat], "brand": f"b{rng.randrange(30):02d}",
                          "price": round(math.exp(rng.uniform(1.5, 6.0)), 2), "cat": cat,
                          "appeal": rng.gauss(0.0, 0.6)})
    rows = []
    for u in range(users):
        liked = rng.sample(range(len(CATEGORIES)), 2)  # the hidden taste: two favourite categories
        profile = {"user_id": f"u{u:04d}", "age_band": rng.choice(("18-24", "25-34", "35-44", "45+")),
                   "country": rng.choice(("de", "fr", "us", "jp")), "device": rng.choice(("ios", "android", "web"))}
        t = START_MS + rng.randrange(0, 3 * 86_400_000)
        for r in range(requests):
            t += rng.randrange(600_000, 2 * 86_400_000)  # 10 min to 2 days between a user's requests
            surface = rng.choice(SURFACES)
            pool = [it for it in item_rows if it["cat"] in liked] if rng.random() < 0.5 else item_rows
            for slot, it in enumerate(rng.sample(pool, slots)):
                logit = -1.6 + 1.8 * (it["cat"] in liked) + it["appeal"] - 0.35 * slot + (0.4 if surface == "search"
                                                                                          else 0.0)
                clicked = rng.random() < 1 / (1 + math.exp(-logit))
                purchased = clicked and rng.random() < (0.35 if surface == "cart" else 0.12)
                dwell = round(rng.expovariate(1 / 40), 1) if clicked else 0.0
                rows.append({"request_id": f"r{u:04d}-{r}", "ts_ms": t + slot,
                             **profile, "surface": surface, "slot": slot, "item_id": it["item_id"],
                             "item_category": it["item_category"], "brand": it["brand"], "price": it["price"],
                             "clicked": int(clicked), "purchased": int(purchased), "dwell_s": dwell})
    rows.sort(key=lambda row: (row["ts_ms"], row["request_id"]))
    return [{"event_id": f"e{n:05d}", **row} for n, row in enumerate(rows)]


def write(rows: list[dict], out: Path) -> None:
    with out.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python examples/make_events.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=HERE / "events.csv", help="output CSV (default %(default)s)")
    p.add_argument("--users", type=int, default=120, help="users (default %(default)s)")
    p.add_argument("--items", type=int, default=240, help="items (default %(default)s)")
    p.add_argument("--requests", type=int, default=4, help="requests per user (default %(default)s)")
    p.add_argument("--seed", type=int, default=7, help="random seed (default %(default)s)")
    a = p.parse_args(argv)
    rows = generate(a.users, a.items, a.requests, seed=a.seed)
    write(rows, a.out)
    clicks = sum(r["clicked"] for r in rows)
    print(f"wrote {len(rows)} impressions ({clicks} clicked, {sum(r['purchased'] for r in rows)} purchased) "
          f"to {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
