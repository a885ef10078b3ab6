"""Command-line flags generated from frozen config dataclasses, so a flag's default *is* the field's default.

:func:`add_config_args` adds one ``--flag-name`` per field of a dataclass (``snake_case`` → ``kebab-case``), its
type read from the annotation and its default from the field, with ``(default: X)`` at the end of its help;
:func:`config_from_args` builds the dataclass back from the parsed namespace. Entry points keep by hand only the
flags that are not one config field (computed defaults, inverted switches, choices from a registry).

Supported field types (anything else is a ``TypeError`` naming the field: exclude it or give it a flag by hand):

* ``int``, ``float``, ``str``, :class:`~pathlib.Path`;
* ``bool``: ``--flag`` / ``--no-flag`` (:class:`argparse.BooleanOptionalAction`);
* ``X | None``: the flag of ``X``; an empty value (``--flag ''``) is None;
* ``tuple[X, ...]`` and ``tuple[X, Y]`` of scalars: one comma-separated value (``--windows-s 60,3600``;
  blanks around and between commas are dropped, ``''`` is the empty tuple);
* ``Literal[...]`` and :class:`~enum.Enum` subclasses: choices (an enum by value).

Help comes from, first to last: the ``help`` mapping, ``field(metadata={"help": ...})``, the class docstring's
``Attributes:`` section (``name: text``, ``a / b: text``) or its ``- ``name``: text`` bullets, reST markup
removed. Do not combine with :class:`argparse.ArgumentDefaultsHelpFormatter` (the default would show twice); entry
points use :class:`HelpFormatter`, which never wraps inside a hyphenated value (``dlrm-per-scenario``).

Example:
    >>> import argparse
    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True)
    ... class Demo:
    ...     '''Attributes:
    ...         batch_size: samples per batch.
    ...         windows_s: recent windows, seconds.
    ...         verbose: log every batch.
    ...     '''
    ...     batch_size: int = 32
    ...     windows_s: tuple[float, ...] = (60.0, 3600.0)
    ...     verbose: bool = False
    >>> ap = argparse.ArgumentParser()
    >>> add_config_args(ap, Demo)
    ['batch_size', 'windows_s', 'verbose']
    >>> config_from_args(Demo, ap.parse_args(["--batch-size", "8", "--windows-s", "5,10", "--verbose"]))
    Demo(batch_size=8, windows_s=(5.0, 10.0), verbose=True)
    >>> config_from_args(Demo, ap.parse_args([])) == Demo()
    True
    >>> [a.help for a in ap._actions if a.dest == "windows_s"]
    ['recent windows, seconds (default: 60.0,3600.0)']
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import inspect
import re
import textwrap
import types
import typing
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any, TypeVar

__all__ = ["HelpFormatter", "add_config_args", "config_fields", "config_from_args", "default_text", "field_docs", "generated_actions"]

T = TypeVar("T")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The entry points' formatter: the description/epilog as written, and help wrapped only at spaces.

    argparse's default wraps at hyphens too, which splits values such as ``(default: dlrm,dlrm-per-scenario)`` and
    flag names quoted in help across lines.

    Example:
        >>> p = argparse.ArgumentParser(prog="x", formatter_class=HelpFormatter)
        >>> _ = p.add_argument("--students", help="which (default: dlrm-per-scenario,ranker-per-scenario)")
        >>> "dlrm-per-scenario,ranker-per-scenario)" in p.format_help()
        True
    """

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)


_SCALARS: tuple[type, ...] = (int, float, str, Path)
_FIELD = "_config_field"  # attribute set on each generated argparse action: (dataclass, field name)
_GENERATED = "_config_flags"  # namespace attribute: {dest: "module.Class.field"} of the generated flags


def _key(cls: type, name: str) -> str:
    return f"{cls.__module__}.{cls.__qualname__}.{name}"


def add_config_args(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type,
    *,
    prefix: str = "",
    include: Collection[str] | None = None,
    exclude: Collection[str] = (),
    help: Mapping[str, str] | None = None,
    names: Mapping[str, str] | None = None,
) -> list[str]:
    """Add one flag per field of the dataclass ``cls`` to ``parser`` (or an argument group); returns the fields added.

    Args:
        prefix: put before every flag name and dest (``prefix="eval-"``: ``--eval-window``, dest ``eval_window``).
        include: only these fields (in ``cls``'s order); None = every field not in ``exclude``.
        exclude: fields left out (nested configs, mappings, fields the entry point flags by hand).
        help: field → help text, over the field's metadata and the docstring.
        names: field → flag name without ``--`` and prefix (``{"attribution_window_s": "window-s"}``); the dest
            follows the flag name.
    """
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    added = []
    # dest -> field of every generated flag, a parser default (so in every parsed namespace; argument groups and
    # subcommands share or copy it): config_from_args reads only these, never a hand-written flag of the same name
    generated = parser.get_default(_GENERATED)
    if generated is None:
        generated = {}
        parser.set_defaults(**{_GENERATED: generated})
    for f in config_fields(cls, include, exclude):
        flag = _flag(f.name, prefix, names)
        default = _default(f)
        text = (help or {}).get(f.name) or f.metadata.get("help") or docs.get(f.name)
        if not text:
            raise TypeError(f"{cls.__name__}.{f.name}: no help (give field metadata, a docstring entry or help=)")
        kwargs = _argparse_kwargs(hints[f.name], default, f"{cls.__name__}.{f.name}")
        action = parser.add_argument(f"--{flag}", dest=flag.replace("-", "_"), default=default, **kwargs)
        # after construction: some Python versions' BooleanOptionalAction append their own "(default: ...)"
        text = text.rstrip().removesuffix(".")  # docstring entries are sentences; "(default: X)" ends the help
        action.help = f"{text} (default: {default_text(default)})".replace("%", "%%")
        setattr(action, _FIELD, (cls, f.name))
        generated[action.dest] = _key(cls, f.name)
        added.append(f.name)
    return added


def config_from_args(cls: type[T], ns: argparse.Namespace, *, prefix: str = "",
                     names: Mapping[str, str] | None = None, **overrides: Any) -> T:
    """``cls(**fields)`` from the parsed namespace: every field whose flag :func:`add_config_args` added (same
    ``prefix`` and ``names``), then ``overrides`` (nested configs, fields flagged by hand); the rest keep their
    dataclass defaults (a hand-written flag with a field's name is not read: pass it in ``overrides``)."""
    generated = getattr(ns, _GENERATED, {})
    values = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]  # a dataclass, else cls(**...) fails
        dest = _flag(f.name, prefix, names).replace("-", "_")
        if f.init and generated.get(dest) == _key(cls, f.name):
            values[f.name] = getattr(ns, dest)
    values.update(overrides)
    return cls(**values)


def config_fields(cls: type, include: Collection[str] | None = None,
                  exclude: Collection[str] = ()) -> list[dataclasses.Field[Any]]:
    """The init fields of ``cls`` selected by ``include``/``exclude`` (an unknown name is a ``ValueError``)."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    fs = [f for f in dataclasses.fields(cls) if f.init]
    unknown = (set(include or ()) | set(exclude)) - {f.name for f in fs}
    if unknown:
        raise ValueError(f"{cls.__name__} has no fields {sorted(unknown)}")
    return [f for f in fs if (include is None or f.name in include) and f.name not in exclude]


def generated_actions(parser: argparse.ArgumentParser) -> list[tuple[type, str, argparse.Action]]:
    """(dataclass, field, action) of every flag :func:`add_config_args` put on ``parser`` or its subcommands."""
    out = []
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            for sub in dict.fromkeys(a.choices.values()):  # aliases map to the same parser
                out += generated_actions(sub)
        elif hasattr(a, _FIELD):
            cls, name = getattr(a, _FIELD)
            out.append((cls, name, a))
    return out


def default_text(value: Any) -> str:
    """A default as it is typed on the command line: ``60.0,3600.0`` for a tuple, an enum's value, ``''``."""
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, tuple):
        return ",".join(default_text(v) for v in value)
    if value == "":
        return "''"
    return str(value)


_ATTRIBUTE = re.compile(r"^(\w+(?:\s*/\s*\w+)*)\s*:\s*(.*)$")  # "name: text", "a / b: text"
_BULLET = re.compile(r"^-\s+``(\w+)``\s*:\s*(.*)$")  # "- ``name``: text"


def field_docs(cls: type) -> dict[str, str]:
    """Field → one-line help from ``cls``'s docstring (its ``Attributes:`` entries or ``- ``name``: ...`` bullets),
    continuation lines (indented deeper than the entry) joined and reST markup removed."""
    docs: dict[str, str] = {}
    current: list[str] = []  # the fields the line being read belongs to
    section = False  # inside "Attributes:"
    entry_depth = -1  # indent of the entry being read (of the section's entries)
    for line in inspect.cleandoc(cls.__doc__ or "").splitlines():
        text, depth = line.strip(), len(line) - len(line.lstrip())
        if text == "Attributes:":
            section, entry_depth, current = True, -1, []
            continue
        if not text:
            section = section and entry_depth == -1
            current = []
            continue
        if section and entry_depth == -1:
            entry_depth = depth
        if current and depth > entry_depth:
            for n in current:
                docs[n] += " " + text
            continue
        m = _ATTRIBUTE.match(text) if section and depth == entry_depth else _BULLET.match(text)
        section = section and depth >= entry_depth
        current = [n.strip() for n in m.group(1).split("/")] if m else []
        if m:
            entry_depth = depth if not section else entry_depth
            for n in current:
                docs[n] = m.group(2)
    return {n: _plain(t) for n, t in docs.items()}


_ROLE = re.compile(r":[\w:]+:`(~?)([^`]*)`")  # :class:`~a.B`, :data:`x <a.x>`


def _plain(text: str) -> str:
    """reST inline markup → plain text: ``x`` → x, :class:`~a.B` → B, :func:`a.f` → a.f, :ref:`t <x>` → t."""
    def role(m: re.Match[str]) -> str:
        tilde, body = m.groups()
        titled = re.fullmatch(r"(.*?)\s*<[^>]*>", body)
        if titled:
            return titled.group(1)
        return body.rsplit(".", 1)[-1] if tilde else body

    return re.sub(r"``([^`]*)``", r"\1", _ROLE.sub(role, text)).strip()


def _flag(name: str, prefix: str, names: Mapping[str, str] | None) -> str:
    return prefix + (names or {}).get(name, name.replace("_", "-"))


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    raise TypeError(f"field {f.name} has no default: a flag needs one")


def _argparse_kwargs(tp: Any, default: Any, where: str) -> dict[str, Any]:
    args = typing.get_args(tp)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        if len(rest) != 1:
            raise TypeError(f"{where}: unsupported union {tp}")
        kw = _argparse_kwargs(rest[0], default, where)
        if kw.get("action") is argparse.BooleanOptionalAction:
            return kw
        return {**kw, "type": _or_none(kw.get("type", str))}
    if tp is bool:
        return {"action": argparse.BooleanOptionalAction}
    if origin is typing.Literal:
        kinds = {type(a) for a in args}
        if len(kinds) != 1 or not kinds <= set(_SCALARS):
            raise TypeError(f"{where}: Literal of one scalar type expected, got {tp}")
        return {"type": kinds.pop(), "choices": list(args)}
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        values = [m.value for m in tp]
        return {"type": _by_value(tp), "choices": list(tp), "metavar": "{" + ",".join(map(str, values)) + "}"}
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            elems: tuple[Any, ...] | None = None
            elem = _scalar(args[0], where)
            return {"type": _comma_list(lambda _: elem, None), "metavar": f"{elem.__name__.upper()},..."}
        elems = tuple(_scalar(a, where) for a in args)
        return {"type": _comma_list(lambda i: elems[i], len(elems)),
                "metavar": ",".join(e.__name__.upper() for e in elems)}
    if tp in _SCALARS:
        return {"type": tp}
    raise TypeError(f"{where}: no flag for type {tp} (exclude the field and flag it by hand)")


def _scalar(tp: Any, where: str) -> type:
    if tp not in _SCALARS:
        raise TypeError(f"{where}: tuple elements must be int, float, str or Path, got {tp}")
    return typing.cast(type, tp)


def _or_none(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse_or_none(s: str) -> Any:
        return None if s == "" else parse(s)

    parse_or_none.__name__ = getattr(parse, "__name__", "value")  # argparse names the type in its errors
    return parse_or_none


def _by_value(cls: type[enum.Enum]) -> Callable[[str], enum.Enum]:
    def parse(s: str) -> enum.Enum:
        for m in cls:
            if str(m.value) == s:
                return m
        raise argparse.ArgumentTypeError(f"invalid choice: {s!r} (choose from {', '.join(str(m.value) for m in cls)})")

    return parse


def _comma_list(elem: Callable[[int], type], length: int | None) -> Callable[[str], tuple[Any, ...]]:
    def parse(s: str) -> tuple[Any, ...]:
        parts = [p.strip() for p in s.split(",") if p.strip()]  # "a, b," = (a, b); "" = ()
        if length is not None and len(parts) != length:
            raise argparse.ArgumentTypeError(f"expected {length} comma-separated values, got {len(parts)}: {s!r}")
        out = []
        for i, p in enumerate(parts):
            tp = elem(i)
            try:
                out.append(tp(p))
            except ValueError:
                raise argparse.ArgumentTypeError(f"invalid {tp.__name__} value: {p!r}") from None
        return tuple(out)

    return parse
