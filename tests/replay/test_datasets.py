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


# ---------------------------------------------------------------- timestamps, flags, category key, examples/

def _ts_log(tmp_path: Path, values: list[str]) -> Path:
    f = tmp_path / "ts.csv"
    f.write_text("u,i,t,c\n" + "".join(f"u{n},i{n},{v},1\n" for n, v in enumerate(values)))
    return f


def _ts_load(f: Path, unit: str = "auto") -> list[float]:
    events = load_log(f, LogMapping(user="u", item="i", timestamp="t", labels=(("click", "c"),), ts_unit=unit))
    return sorted(e.ts for e in events if isinstance(e, Impression))


@pytest.mark.parametrize(
    ("values", "unit", "pattern"),
    [
        # auto: the row that holds the bad value is blamed, not the first (good) numeric row
        (["1700000000", "notatime", "1700000060"], "auto",
         r"column 't': unparsable timestamp 'notatime' at data row 2 \(1 bad row\(s\)\): the column's other values "
         r"are epoch numbers"),
        (["2024-03-01T10:00:00Z", "2024-03-01T10:00:05Z", "1700000000"], "auto",
         r"unparsable timestamp '1700000000' at data row 3"),
        # ms in a seconds column
        (["1700000000", "1700000060123"], "s",
         r"timestamp '1700000060123' at data row 2 .*too large for epoch seconds; it looks like epoch milliseconds: "
         r"use --ts-unit ms"),
        # seconds in an ms column (all of them epoch seconds of 2000-2100)
        (["1700000000", "1700000060"], "ms",
         r"timestamp in epoch milliseconds '1700000000' at data row 1 .*falls in January 1970; every value looks "
         r"like epoch seconds of 2000-2100: use --ts-unit s"),
        (["1700000000000", "1700000060000"], "us", r"every value looks like epoch milliseconds .*use --ts-unit ms"),
        (["1700000000", "1700000060000"], "auto",
         r"timestamp '1700000060000' at data row 2 .*looks like epoch milliseconds while most rows look like epoch "
         r"seconds"),
        (["1700000000", "1700000060"], "iso", r"unparsable timestamp '1700000000' at data row 1 .*epoch numbers: "
                                              r"use --ts-unit auto, s, ms or us"),
        (["1e20", "1e20"], "auto", r"too large for epoch seconds, ms or µs"),
    ],
)
def test_eventlog_timestamp_errors_name_the_bad_value_row_and_fix(tmp_path: Path, values: list[str], unit: str,
                                                                  pattern: str) -> None:
    with pytest.raises(DatasetError, match=pattern):
        _ts_load(_ts_log(tmp_path, values), unit)


def test_eventlog_timestamp_units(tmp_path: Path) -> None:
    assert _ts_load(_ts_log(tmp_path, ["1700000000", "1700000001.5"])) == [1_700_000_000.0, 1_700_000_001.5]
    assert _ts_load(_ts_log(tmp_path, ["1700000000000", "1700000001500"])) == [1_700_000_000.0, 1_700_000_001.5]
    assert _ts_load(_ts_log(tmp_path, ["1700000000000000", "1700000001500000"])) == [1_700_000_000.0,
                                                                                     1_700_000_001.5]
    assert _ts_load(_ts_log(tmp_path, ["1700000000000"]), "ms") == [1_700_000_000.0]
    assert _ts_load(_ts_log(tmp_path, ["1700000000000000"]), "us") == [1_700_000_000.0]
    assert _ts_load(_ts_log(tmp_path, ["10", "20"]), "s") == [10.0, 20.0]  # relative seconds are fine
    assert _ts_load(_ts_log(tmp_path, ["2024-03-01T10:00:00Z", "2024-03-01 10:00:05"])) == [1709287200.0,
                                                                                            1709287205.0]
    # Parquet datetime columns (naive = UTC) and JSONL numbers under a date-like column name stay what they are
    pq = tmp_path / "ts.parquet"
    pd.DataFrame({"u": ["a", "b"], "i": ["x", "y"], "c": [1, 0],
                  "t": pd.to_datetime(["2024-03-01T10:00:00", "2024-03-01T10:00:05"])}).to_parquet(pq)
    assert _ts_load(pq) == [1709287200.0, 1709287205.0]
    js = tmp_path / "ts.jsonl"
    js.write_text('{"u": "a", "i": "x", "c": 1, "timestamp": 1700000000123}\n')
    m = LogMapping(user="u", item="i", timestamp="timestamp", labels=(("click", "c"),))
    assert load_log(js, m)[0].ts == 1_700_000_000.123


def _mapping_flags() -> tuple[list[str], dict[str, object]]:
    """Every LogMapping key as a command-line flag, and the same as mapping-file keys."""
    argv = ["--user-col", "u", "--item-col", "i", "--ts-col", "t", "--ts-unit", "ms", "--scenario-col", "s",
            "--default-scenario", "d", "--request-col", "r", "--event-id-col", "e", "--position-col", "p",
            "--impression-actions", "seen,shown", "--label", "click=c", "--label", "like=stars>=4",
            "--user-features", "uf1,uf2", "--item-features", "if1", "--context-features", "cf",
            "--dense-features", "df", "--category-col", "if1", "--feedback-delay", "3.5", "--id-prefix", "x"]
    keys: dict[str, object] = {
        "user": "u", "item": "i", "timestamp": "t", "ts_unit": "ms", "scenario": "s", "default_scenario": "d",
        "request": "r", "event_id": "e", "position": "p", "impression_actions": ["seen", "shown"],
        "labels": {"click": "c", "like": "stars>=4"}, "user_features": ["uf1", "uf2"], "item_features": ["if1"],
        "context_features": ["cf"], "dense_features": ["df"], "category_key": "if1", "feedback_delay_s": 3.5,
        "id_prefix": "x"}
    return argv, keys


def test_every_mapping_key_has_a_flag_and_both_give_the_same_mapping(tmp_path: Path) -> None:
    import argparse
    from dataclasses import fields

    from streaming.datasets.eventlog import add_mapping_args, mapping_from_args

    argv, keys = _mapping_flags()
    mf = tmp_path / "m.json"
    mf.write_text(json.dumps(keys))
    p = argparse.ArgumentParser()
    add_mapping_args(p)
    from_flags = mapping_from_args(p.parse_args(argv))
    from_file = mapping_from_args(p.parse_args(["--mapping", str(mf)]))
    assert from_flags == from_file == LogMapping.from_file(mf)
    # every field but `action` (exclusive with labels; covered below) is set away from its default above
    default = LogMapping(user="u", item="i", timestamp="t", labels=(("click", "c"),))
    unset = {f.name for f in fields(LogMapping) if getattr(from_flags, f.name) == getattr(default, f.name)}
    assert unset <= {"user", "item", "timestamp", "action"}, unset
    long = mapping_from_args(p.parse_args(["--user-col", "u", "--item-col", "i", "--ts-col", "t",
                                           "--action-col", "type"]))
    assert long.action == "type" and long.is_long
    # a flag overrides the file's key
    assert mapping_from_args(p.parse_args(["--mapping", str(mf), "--position-col", "rank"])).position == "rank"


def test_category_key_column_is_an_item_feature_and_a_missing_one_is_announced(tmp_path: Path) -> None:
    from streaming.datasets import category_note

    f = tmp_path / "c.csv"
    f.write_text("u,i,t,c,genre,brand\nu1,i1,10,1,drama,b1\nu1,i2,20,0,comedy,b2\n")
    m = LogMapping(user="u", item="i", timestamp="t", labels=(("click", "c"),), item_features=("brand",),
                   category_key="genre")
    events = load_log(f, m)
    imps = [e for e in events if isinstance(e, Impression)]
    assert [e.item for e in imps] == [{"brand": "b1", "genre": "drama"}, {"brand": "b2", "genre": "comedy"}]
    assert category_note(events, "genre") is None
    plain = load_log(f, LogMapping(user="u", item="i", timestamp="t", labels=(("click", "c"),),
                                   item_features=("brand",)))
    note = category_note(plain, "category")
    assert note is not None and note.startswith("note: no item has the feature 'category'")
    assert "the items have brand" in note and "set category_key in the mapping" in note and "\n" not in note
    with pytest.raises(DatasetError, match="category_key"):
        LogMapping(user="u", item="i", timestamp="t", labels=(("click", "c"),), category_key=" ")


EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_example_mapping_documents_every_key_and_reads_the_example_log() -> None:
    import re
    from dataclasses import fields

    text = (EXAMPLES / "mapping.toml").read_text()
    documented = set(re.findall(r"^#? ?([a-z_]+) = ", text, flags=re.M))
    assert {f.name for f in fields(LogMapping)} <= documented
    m = LogMapping.from_file(EXAMPLES / "mapping.toml")
    events = load_log(EXAMPLES / "events.csv", m)
    counts = summarize(events)
    assert 2000 <= counts["impression"] <= 5000 and counts["click"] > 0 and counts["order"] > 0
    imps = [e for e in events if isinstance(e, Impression)]
    assert all(e.position is not None and m.category_key in e.item and e.dense for e in imps)
    assert len({e.scenario for e in imps}) == 3


def test_example_log_is_what_its_generator_writes(tmp_path: Path) -> None:
    import subprocess
    import sys

    out = tmp_path / "events.csv"
    r = subprocess.run([sys.executable, str(EXAMPLES / "make_events.py"), "--out", str(out)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == (EXAMPLES / "events.csv").read_bytes()


def test_replay_check_reads_a_log_without_a_broker_and_announces_a_missing_category(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from streaming.replay import main

    args = ["--dataset", "log", "--path", str(EXAMPLES / "events.csv"), "--mapping", str(EXAMPLES / "mapping.toml"),
            "--bootstrap", "127.0.0.1:1", "--check"]
    assert main(args) == 0
    out, err = capsys.readouterr()
    assert out.startswith("3762 events: 2400 impressions, 1362 feedback (click 809, long_view 389, order 164)")
    assert "scenarios: cart, home, search" in out and err == ""
    assert main([*args, "--category-col", "category"]) == 0  # a category key no item has: one line at start
    out, err = capsys.readouterr()
    assert err.startswith("note: no item has the feature 'category'") and err.count("\n") == 1
    bad = tmp_path / "bad.csv"
    bad.write_text("u,i,t,c\nu1,i1,1700000000,1\nu1,i2,notatime,0\n")
    assert main(["--dataset", "log", "--path", str(bad), "--user-col", "u", "--item-col", "i", "--ts-col", "t",
                 "--label", "click=c", "--check"]) == 2
    assert "unparsable timestamp 'notatime' at data row 2" in capsys.readouterr().err
