"""``streaming.cli``: flags generated from config dataclasses round-trip every supported field type, show the
dataclass default in ``--help``, and reject bad values with an argparse error; every converted entry point's
generated flags default to (and show) its config's defaults."""

from __future__ import annotations

import argparse
import enum
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streaming.cli import add_config_args, config_from_args, default_text, field_docs, generated_actions


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"


@dataclass(frozen=True, slots=True)
class Everything:
    """One field of every supported type.

    Attributes:
        count: an int.
        rate: a float.
        name: a str.
        path: a :class:`~pathlib.Path`.
        flag / other_flag: bools (``--flag`` / ``--no-flag``).
        maybe_int: an int or None.
        maybe_path: a path or None.
        floats: a comma list of floats.
        pair: exactly an int and a str.
        mode: a Literal.
        color: an Enum.
        strs: a comma list of strs.
    """

    count: int = 3
    rate: float = 0.5
    name: str = "x"
    path: Path = Path("runs")
    flag: bool = False
    other_flag: bool = True
    maybe_int: int | None = None
    maybe_path: Path | None = Path("a/b")
    floats: tuple[float, ...] = (1.0, 2.5)
    pair: tuple[int, str] = (1, "a")
    mode: Literal["fast", "slow"] = "fast"
    color: Color = Color.RED
    described: int = field(default=7, metadata={"help": "from the field's metadata"})
    strs: tuple[str, ...] = field(default_factory=lambda: ("p", "q"))


def _parser(**kw: Any) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="t", exit_on_error=False)
    add_config_args(ap, Everything, **kw)
    return ap


def _arg(v: Any) -> str:
    """A value as typed on the command line (not :func:`default_text`: '' here is the empty value)."""
    if v is None:
        return ""
    if isinstance(v, tuple):
        return ",".join(map(str, v))
    return str(v.value) if isinstance(v, enum.Enum) else str(v)


_word = st.text(st.characters(categories=("L", "N")), min_size=1, max_size=8)
_values = st.fixed_dictionaries({
    "count": st.integers(), "rate": st.floats(allow_nan=False), "name": st.text(max_size=10),
    "path": _word.map(Path), "flag": st.booleans(), "other_flag": st.booleans(),
    "maybe_int": st.none() | st.integers(), "maybe_path": st.none() | _word.map(Path),
    "floats": st.lists(st.floats(allow_nan=False), max_size=4).map(tuple),
    "pair": st.tuples(st.integers(), _word), "mode": st.sampled_from(["fast", "slow"]),
    "color": st.sampled_from(list(Color)), "described": st.integers(), "strs": st.lists(_word, max_size=3).map(tuple),
})


@settings(max_examples=60, deadline=None)
@given(_values)
def test_every_field_type_round_trips(values: dict[str, Any]) -> None:
    argv = []
    for name, v in values.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(v, bool):
            argv.append(flag if v else flag.replace("--", "--no-", 1))
        else:
            argv.append(f"{flag}={_arg(v)}")  # "=": values that start with "-" are values, not flags
    assert config_from_args(Everything, _parser().parse_args(argv)) == Everything(**values)


def test_no_flags_give_the_dataclass_defaults_and_help_shows_them() -> None:
    ap = _parser()
    assert config_from_args(Everything, ap.parse_args([])) == Everything()
    text = " ".join(ap.format_help().split())
    for f in fields(Everything):
        assert f"(default: {default_text(getattr(Everything(), f.name))})" in text, f.name
    for expected in ("(default: 1.0,2.5)", "(default: red)", "(default: None)", "(default: a/b)", "--flag, --no-flag",
                     "from the field's metadata", "a Path (default: runs)", "{fast,slow}", "{red,green}", "FLOAT,...", "INT,STR"):
        assert expected in text, expected
    assert "`" not in text


@pytest.mark.parametrize(("argv", "message"), [
    (["--count", "x"], "invalid int value: 'x'"),
    (["--rate", "fast"], "invalid float value: 'fast'"),
    (["--mode", "medium"], "invalid choice: 'medium'"),
    (["--color", "blue"], "invalid choice: 'blue'"),
    (["--floats", "1,x"], "invalid float value: 'x'"),
    (["--pair", "1"], "expected 2 comma-separated values, got 1"),
    (["--maybe-int", "1.5"], "invalid int value: '1.5'"),
])
def test_a_bad_value_is_an_argparse_error_naming_the_flag(argv: list[str], message: str,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    ap = argparse.ArgumentParser(prog="t")
    add_config_args(ap, Everything)
    with pytest.raises(SystemExit) as exc:
        ap.parse_args(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {argv[0]}" in err and message in err, err


def test_prefix_names_include_exclude_help_and_overrides() -> None:
    ap = argparse.ArgumentParser()
    added = add_config_args(ap, Everything, prefix="e-", include=("count", "rate", "flag"), exclude=("flag",),
                            names={"rate": "learning-rate"}, help={"count": "how many"})
    assert added == ["count", "rate"]
    ns = ap.parse_args(["--e-count", "4", "--e-learning-rate", "0.25"])
    assert (ns.e_count, ns.e_learning_rate) == (4, 0.25)
    cfg = config_from_args(Everything, ns, prefix="e-", names={"rate": "learning-rate"}, name="y")
    assert cfg == Everything(count=4, rate=0.25, name="y")
    assert "how many (default: 3)" in ap.format_help()
    assert config_from_args(Everything, _parser().parse_args(["--strs", " a, ,b,", "--floats", ""])) == Everything(
        strs=("a", "b"), floats=())
    with pytest.raises(ValueError, match="no fields"):
        add_config_args(argparse.ArgumentParser(), Everything, exclude=("nope",))


def test_an_unsupported_field_type_is_a_type_error_naming_it() -> None:
    @dataclass(frozen=True)
    class Nested:
        """Attributes:
            inner: a nested config.
        """

        inner: Everything = field(default_factory=Everything)

    with pytest.raises(TypeError, match=r"Nested\.inner"):
        add_config_args(argparse.ArgumentParser(), Nested)
    assert add_config_args(argparse.ArgumentParser(), Nested, exclude=("inner",)) == []


def test_docstring_attributes_and_bullets_become_help() -> None:
    class Doc:
        """Title.

        - ``a``: first, with :data:`x <y.z>` and
          a continuation.
        - ``b``: second.

        Attributes:
            c / d: shared, see :class:`~pkg.mod.Thing`
                and more.
            e: plain :func:`pkg.f`.

        Example:
            >>> 1
            1
        """

    assert field_docs(Doc) == {"a": "first, with x and a continuation.", "b": "second.",
                               "c": "shared, see Thing and more.", "d": "shared, see Thing and more.",
                               "e": "plain pkg.f."}


def _entry_point_parser(name: str) -> argparse.ArgumentParser:
    """The parser of ``python -m NAME`` (imported here: each entry point's dependencies load only for its case)."""
    if name == "trainer":
        from trainer.__main__ import _parser as trainer_parser

        return trainer_parser()
    if name == "trainer.quality":
        from trainer.quality import _parser as quality_parser

        return quality_parser()
    if name == "trainer.evaluate":
        from trainer.evaluate import _parser as evaluate_parser

        return evaluate_parser()
    if name == "serving":
        from serving.__main__ import _parser as serving_parser

        return serving_parser()
    from streaming.__main__ import _parser as streaming_parser

    return streaming_parser()


def _field_default(cls: type, name: str) -> Any:
    f = next(f for f in fields(cls) if f.name == name)
    return f.default_factory() if callable(f.default_factory) else f.default


@pytest.mark.parametrize("name", ["trainer", "streaming", "serving", "trainer.evaluate", "trainer.quality"])
def test_entry_point_flags_default_to_their_config_and_help_shows_it(name: str) -> None:
    """Drift is impossible: every generated flag's default and ``(default: X)`` are the dataclass field's."""
    parser = _entry_point_parser(name)
    actions = generated_actions(parser)
    assert len(actions) >= 5, name
    for cls, field_name, action in actions:
        default = _field_default(cls, field_name)
        assert action.default == default, field_name
        assert action.help and action.help.endswith(f"(default: {default_text(default)})".replace("%", "%%"))
    help_text = " ".join(parser.format_help().split())
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    help_text += " ".join(" ".join(p.format_help().split()) for s in subs for p in s.choices.values())
    for cls, field_name, _ in actions:
        assert f"(default: {default_text(_field_default(cls, field_name))})" in help_text, field_name


def test_worker_flags_build_its_configs() -> None:
    from streaming.__main__ import _parser as streaming_parser
    from streaming.__main__ import worker_configs
    from streaming.config import CoreConfig, CrossSpec, WorkerConfig

    parse = streaming_parser().parse_args
    assert worker_configs(parse(["worker"])) == (WorkerConfig(), CoreConfig())
    cfg, core = worker_configs(parse(["worker", "--no-user-state", "--agent-delivery", "--window-s", "60",
                                      "--skip-action", "skip", "--category-key", "genre", "--partitions", "2"]))
    assert cfg == WorkerConfig(publish_user_state=False, batch_drain=False, partitions=2)
    assert core == CoreConfig(attribution_window_s=60.0, skip_action="skip", cross=CrossSpec(category_key="genre"))
    assert worker_configs(parse(["worker", "--skip-action", ""]))[1].skip_action is None


def test_serving_flags_build_its_config() -> None:
    from serving.__main__ import parse_config
    from serving.config import ServingConfig

    assert parse_config([]) == ServingConfig()
    assert parse_config(["--no-kafka", "--port", "9", "--log-level", "debug"]) == ServingConfig(
        kafka_bootstrap=None, port=9, log_level="debug")
    assert parse_config(["--bootstrap", "h:1"]).kafka_bootstrap == "h:1"
    assert parse_config(["--preset", "laptop"]).preset == "laptop"
    with pytest.raises(SystemExit):  # a config check (port range) is an argparse error too
        parse_config(["--port", "70000"])


def test_a_hand_written_flag_named_like_a_field_is_not_read() -> None:
    ap = argparse.ArgumentParser()
    add_config_args(ap, Everything, include=("count",))
    ap.add_argument("--rate", type=float, default=9.0, help="by hand: its own meaning")
    assert config_from_args(Everything, ap.parse_args(["--rate", "2"])) == Everything()
