"""JSON Schemas (draft 2020-12) of every record the pipeline publishes or accepts, and a tiny loader.

One file per record kind, ``<name>.schema.json`` in this folder (shipped as package data):

* ``impression``, ``feedback`` — the input events (open: unknown fields are ignored);
* ``sample`` — the ``samples`` topic; ``user_state`` — the ``user_state`` topic;
* ``deadletter.<reason>`` — the streaming worker's dead letters: bad input (``invalid_json``, ``not_object``,
  ``missing_field``, ``bad_type``, ``bad_ts``, ``oversized``, ``null_value``: the original record as base64) and the
  core's ``late_impression``, ``orphan_feedback`` and ``late_positive``;
* ``deadletter.trainer.<reason>`` — the trainer's dead letters (``source: "trainer"``): ``invalid_json``,
  ``not_object``, ``schema_version``, ``bad_field``, ``no_targets``, ``collate_error``;
* ``snapshot_announcement`` — the ``snapshots`` topic.

Files starting with ``_`` hold a shape that several schemas share (referenced with ``$ref``), not a record kind.
``$ref``s are sibling file names, so tools reading the files from disk resolve them too (e.g.
``check-jsonschema --schemafile streaming/schemas/sample.schema.json record.json``).
The schemas document the wire format for other systems; the code that reads and writes records stays the owner of
their rules (some, like finite numbers, JSON Schema cannot express). Validation needs ``jsonschema`` (a dev/test
dependency): only :func:`validator` and :func:`validate` import it.

Example:
    >>> load("sample")["properties"]["schema_version"]
    {'const': 1}
    >>> deadletter_schema({"reason": "orphan_feedback", "user_id": "u1"})
    'deadletter.orphan_feedback'
    >>> deadletter_schema({"source": "trainer", "reason": "invalid_json"})
    'deadletter.trainer.invalid_json'
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jsonschema.protocols import Validator

PACKAGE = "streaming.schemas"
SUFFIX = ".schema.json"


def names() -> list[str]:
    """Every record schema's name (shared ``_`` parts excluded), sorted."""
    files = (f.name for f in resources.files(PACKAGE).iterdir() if f.name.endswith(SUFFIX))
    return sorted(n[: -len(SUFFIX)] for n in files if not n.startswith("_"))


@functools.cache
def _text(file_name: str) -> str:
    try:
        return resources.files(PACKAGE).joinpath(file_name).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise KeyError(f"no schema {file_name!r} in streaming/schemas (known: {', '.join(names())})") from None


def load(name: str) -> dict[str, Any]:
    """The parsed schema ``<name>.schema.json`` (a fresh copy); ``KeyError`` for an unknown name."""
    doc: dict[str, Any] = json.loads(_text(name + SUFFIX))
    return doc


@functools.cache
def _registry() -> Any:
    from referencing import Registry, Resource

    files = [f.name for f in resources.files(PACKAGE).iterdir() if f.name.endswith(SUFFIX)]
    return Registry().with_resources(
        (n, Resource.from_contents(json.loads(_text(n)))) for n in files)  # "$ref": "<file>" resolves here


@functools.cache
def validator(name: str) -> Validator:
    """A draft 2020-12 validator of ``name`` whose ``$ref``s resolve to the other files here."""
    from jsonschema import Draft202012Validator

    schema = load(name)
    Draft202012Validator.check_schema(schema)
    v: Validator = Draft202012Validator(schema, registry=_registry())
    return v


def validate(name: str, record: Any) -> None:
    """Raise ``jsonschema.ValidationError`` (the most relevant error) unless ``record`` fits schema ``name``."""
    validator(name).validate(record)


def deadletter_schema(record: Any) -> str:
    """The schema name of a ``deadletter`` topic record: trainer records carry ``source: "trainer"``, the
    worker's do not; the reason picks the schema. ``KeyError`` when no schema covers it."""
    if not isinstance(record, dict) or not isinstance(record.get("reason"), str):
        raise KeyError(f"not a dead-letter record (no string 'reason'): {record!r:.200}")
    name = f"deadletter.trainer.{record['reason']}" if record.get("source") == "trainer" \
        else f"deadletter.{record['reason']}"
    if name not in names():
        raise KeyError(f"no schema for dead-letter reason {record['reason']!r} ({name})")
    return name
