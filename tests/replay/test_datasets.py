"""Dataset adapters: MovieLens mapping (recbole and GroupLens layouts), synthetic generator, generic event logs."""

from __future__ import annotations

import collections
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from streaming.datasets import DatasetError, event_order, summarize
from streaming.datasets.eventlog import LogMapping, load_log
from streaming.datasets.movielens import age_bucket, load_movielens, scenario_of, year_bucket
from streaming.datasets.synthetic import SyntheticConfig, generate
from streaming.events import Feedback, Impression, encode_event, parse_event

# Five ratings: user 1 rates three movies (two at the same second), user 2 rates two.
RATINGS = [("1", "10", 5, 1000), ("1", "20", 3, 1000), ("2", "10", 4, 1100), ("1", "30", 4, 1200),
           ("2", "30", 1, 900)]
USERS = [("1", 24, "M", "technician", "85711"), ("2", 53, "F", "other", "94043")]
ITEMS = [("10", "Toy Story", 1995, "Animation Children's Comedy"), ("20", "Heat", 1995, "Action Crime Thriller"),
         ("30", "Casablanca", 1942, "Drama Romance War")]


def write_recbole(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "ml-100k.inter").write_text("user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
                                     + "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in RATINGS))
    (d / "ml-100k.user").write_text("user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n"
                                    + "".join("\t".join(map(str, row)) + "\n" for row in USERS))
    (d / "ml-100k.item").write_text("item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
                                    + "".join("\t".join(map(str, row)) + "\n" for row in ITEMS))
    return d


def write_grouplens(d: Path) -> Path:
    from streaming.datasets.movielens import GROUPLENS_GENRES

    d.mkdir(parents=True, exist_ok=True)
    (d / "u.data").write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in RATINGS))
    (d / "u.user").write_text("".join("|".join(map(str, row)) + "\n" for row in USERS))
    lines = []
    for iid, title, year, genres in ITEMS:
        flags = ["1" if g in genres.split() else "0" for g in GROUPLENS_GENRES]
        lines.append("|".join([iid, f"{title} ({year})", f"01-Jan-{year}", "", "http://x", *flags]))
    (d / "u.item").write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    return d


def test_movielens_mapping(tmp_path: Path) -> None:
    events = load_movielens(write_recbole(tmp_path / "ml"))
    assert events == sorted(events, key=event_order)
    imps = [e for e in events if isinstance(e, Impression)]
    fbs = [e for e in events if isinstance(e, Feedback)]
    assert len(imps) == 5
    # clicks for ratings >= 4 (three), likes for rating 5 (one)
    assert sorted((f.user_id, f.item_id, f.action) for f in fbs) == [
        ("1", "10", "click"), ("1", "10", "like"), ("1", "30", "click"), ("2", "10", "click")]
    first = imps[0]
    assert (first.user_id, first.item_id, first.ts) == ("2", "30", 900.0)
    assert first.scenario == "action"  # Drama Romance War: War is in the action group, which comes first
    assert first.user == {"age": "50-55", "gender": "F", "occupation": "other"}
    assert first.item == {"genres": "Drama|Romance|War", "year": "pre1950"}
    toy = next(e for e in imps if e.user_id == "1" and e.item_id == "10")
    assert toy.scenario == "family" and toy.item["year"] == "1990s"
    heat = next(e for e in imps if e.item_id == "20")
    assert heat.request_id == toy.request_id == "ml-1-1000"  # one request per (user, second)
    click = next(f for f in fbs if f.item_id == "10" and f.user_id == "1" and f.action == "click")
    like = next(f for f in fbs if f.item_id == "10" and f.user_id == "1" and f.action == "like")
    assert (click.ts, like.ts) == (1005.0, 1010.0)
    assert click.request_id == toy.request_id and click.scenario == toy.scenario
    # Unique, deterministic ids; every event survives the wire format.
    assert len({e.event_id for e in events}) == len(events)
    assert load_movielens(tmp_path / "ml") == events
    for e in events:
        kind = "impression" if isinstance(e, Impression) else "feedback"
        assert parse_event(encode_event(e), kind) == e


def test_movielens_grouplens_layout_gives_the_same_events(tmp_path: Path) -> None:
    assert load_movielens(write_grouplens(tmp_path / "gl")) == load_movielens(write_recbole(tmp_path / "rb"))


def test_movielens_bad_input_names_file_and_column(tmp_path: Path) -> None:
    d = write_recbole(tmp_path / "ml")
    text = (d / "ml-100k.inter").read_text().replace("\t1200\n", "\tlater\n")
    (d / "ml-100k.inter").write_text(text)
    with pytest.raises(DatasetError, match=r"ml-100k\.inter: column 'timestamp': unparsable value 'later'"):
        load_movielens(d)
    with pytest.raises(DatasetError, match="not a MovieLens-100K folder"):
        load_movielens(tmp_path)


def test_movielens_helpers() -> None:
    assert scenario_of(["Comedy"]) == "comedy"
    assert scenario_of(["unknown"]) == "drama"
    assert scenario_of(["Horror", "Comedy"]) == "thriller"
    assert [age_bucket(a) for a in (7, 18, 30, 44, 49, 55, 73)] == ["<18", "18-24", "25-34", "35-44", "45-49",
                                                                    "50-55", "56+"]
    assert (year_bucket(1931), year_bucket(1968), year_bucket(None)) == ("pre1950", "1960s", "unknown")


@pytest.mark.slow
def test_movielens_real_data() -> None:
    """The real MovieLens-100K from the recbole wheel (downloaded by pip into .cache/data on first use)."""
    events = load_movielens()
    counts = summarize(events)
    assert counts == {"impression": 100_000, "feedback": 76_576, "click": 55_375, "like": 21_201}
    scen = collections.Counter(e.scenario for e in events if isinstance(e, Impression))
    assert set(scen) == {"family", "action", "thriller", "comedy", "drama"}
    per_user = collections.defaultdict(set)
    for e in events:
        per_user[e.user_id].add(e.scenario)
    assert len(per_user) == 943
    assert np.mean([len(s) >= 3 for s in per_user.values()]) > 0.95  # users span several scenarios


def test_synthetic_deterministic_and_ordered() -> None:
    cfg = SyntheticConfig(num_users=30, num_items=90, requests_per_user=6, seed=3)
    a, b = generate(cfg), generate(cfg)
    assert a == b
    assert a != generate(SyntheticConfig(num_users=30, num_items=90, requests_per_user=6, seed=4))
    assert a == sorted(a, key=event_order)
    assert len({e.event_id for e in a}) == len(a)
    imps = {e.event_id: e for e in a if isinstance(e, Impression)}
    assert len(imps) == 30 * 6 * 5
    for f in (e for e in a if isinstance(e, Feedback)):
        imp = imps[f.event_id.rsplit("-", 1)[0]]
        assert f.ts > imp.ts and (f.request_id, f.item_id, f.scenario) == (imp.request_id, imp.item_id, imp.scenario)


def test_synthetic_plants_cross_scenario_taste() -> None:
    """A user's click rate on an item category in one scenario predicts it in another scenario."""
    events = generate(SyntheticConfig(num_users=300, requests_per_user=30, seed=0))
    clicked = {e.event_id.rsplit("-", 1)[0] for e in events if isinstance(e, Feedback) and e.action == "click"}
    stats: dict[tuple[str, str, str], list[int]] = collections.defaultdict(lambda: [0, 0])
    for e in events:
        if isinstance(e, Impression):
            st = stats[(e.user_id, e.item["category"], e.scenario)]
            st[0] += 1
            st[1] += e.event_id in clicked
    a, b = [], []
    for (u, c, s), (n, k) in stats.items():
        other = stats.get((u, c, "search"))
        if s == "home" and n >= 3 and other and other[0] >= 3:
            a.append(k / n)
            b.append(other[1] / other[0])
    assert len(a) > 200
    assert np.corrcoef(a, b)[0, 1] > 0.3


# ---------------------------------------------------------------- generic event log

SHOP_CSV = """member,sku,seen_at,surface,clicked,bought,device,price
m1,s9,2024-03-01T10:00:00Z,feed,1,0,ios,9.5
m1,s7,2024-03-01T10:00:05Z,search,0,0,ios,3
m2,s9,2024-03-01T09:00:00+00:00,feed,true,yes,web,9.5
"""


def test_eventlog_wide_csv_with_only_a_mapping(tmp_path: Path) -> None:
    f = tmp_path / "shop.csv"
    f.write_text(SHOP_CSV)
    m = LogMapping(user="member", item="sku", timestamp="seen_at", scenario="surface",
                   labels=(("click", "clicked"), ("order", "bought")), context_features=("device",),
                   dense_features=("price",), feedback_delay_s=2.0)
    events = load_log(f, m)
    assert [type(e).__name__ for e in events] == ["Impression", "Feedback", "Feedback", "Impression", "Feedback",
                                                  "Impression"]
    imp = events[0]
    assert isinstance(imp, Impression)
    assert (imp.user_id, imp.item_id, imp.scenario, imp.ts) == ("m2", "s9", "feed", 1709283600.0)
    assert imp.context == {"device": "web"} and imp.dense == {"price": 9.5}
    assert {(e.action, e.ts) for e in events[1:3] if isinstance(e, Feedback)} == {("click", 1709283602.0),
                                                                                  ("order", 1709283602.0)}
    assert all(e.request_id == imp.request_id for e in events[:3])


def test_eventlog_threshold_labels_and_mapping_file(tmp_path: Path) -> None:
    f = tmp_path / "ratings.tsv"
    f.write_text("uid\tmovie\tts_ms\tstars\n7\t1\t1700000000000\t5\n7\t2\t1700000005000\t2\n")
    mf = tmp_path / "map.toml"
    mf.write_text('user = "uid"\nitem = "movie"\ntimestamp = "ts_ms"\n[labels]\nclick = "stars>=4"\nlike = "stars==5"\n')
    events = load_log(f, LogMapping.from_file(mf))
    assert events[0].ts == 1_700_000_000.0  # milliseconds detected
    assert [(type(e).__name__, getattr(e, "action", None)) for e in events] == [
        ("Impression", None), ("Feedback", "click"), ("Feedback", "like"), ("Impression", None)]


def test_eventlog_long_jsonl_and_parquet(tmp_path: Path) -> None:
    rows = [{"u": "a", "i": "x", "t": 10, "type": "view", "page": "home"},
            {"u": "a", "i": "x", "t": 12, "type": "click", "page": "home"},
            {"u": "b", "i": "y", "t": 11, "type": "expose", "page": "video"}]
    f = tmp_path / "log.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    m = LogMapping(user="u", item="i", timestamp="t", scenario="page", action="type")
    events = load_log(f, m)
    assert [(type(e).__name__, e.user_id, e.ts) for e in events] == [
        ("Impression", "a", 10.0), ("Impression", "b", 11.0), ("Feedback", "a", 12.0)]
    assert events[2].request_id == events[0].request_id  # feedback finds its impression by user + item
    pq = tmp_path / "log.parquet"
    pd.DataFrame(rows).to_parquet(pq)
    assert [(type(e).__name__, e.user_id, e.item_id, e.ts) for e in load_log(pq, m)] == [
        (type(e).__name__, e.user_id, e.item_id, e.ts) for e in events]


@pytest.mark.parametrize(
    ("content", "mapping", "pattern"),
    [
        (SHOP_CSV, {"user": "member", "item": "product"}, r"shop\.csv: missing column\(s\) \['product'\]"),
        (SHOP_CSV.replace("2024-03-01T10:00:05Z", "yesterday"), {},
         r"shop\.csv: column 'seen_at': unparsable timestamp .*'yesterday' at data row 2"),
        ("", {}, r"shop\.csv: file is empty"),
        ("member,sku,seen_at,surface,clicked,bought,device,price\n", {}, r"shop\.csv: no rows"),
        (SHOP_CSV.replace(",1,0,ios", ",maybe,0,ios"), {}, r"column 'clicked': label value .*'maybe'"),
        (SHOP_CSV.replace("m1,s7", ",s7"), {}, r"column 'member': empty value"),
    ],
)
def test_eventlog_bad_input_is_a_clear_error(tmp_path: Path, content: str, mapping: dict[str, str],
                                             pattern: str) -> None:
    f = tmp_path / "shop.csv"
    f.write_text(content)
    kw = {"user": "member", "item": "sku", "timestamp": "seen_at", "labels": (("click", "clicked"),)} | mapping
    with pytest.raises(DatasetError, match=pattern):
        load_log(f, LogMapping(**kw))  # type: ignore[arg-type]


def test_eventlog_bad_mapping() -> None:
    with pytest.raises(DatasetError, match="label columns"):
        LogMapping(user="u", item="i", timestamp="t")
    with pytest.raises(DatasetError, match="label expression"):
        LogMapping(user="u", item="i", timestamp="t", labels=(("click", "stars=>4"),))
