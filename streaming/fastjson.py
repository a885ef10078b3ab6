"""Compact JSON bytes for the hot paths: orjson, with the stdlib as the fallback for what orjson refuses.

orjson writes the same JSON values as ``json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()``
for our records (str keys, finite floats, 64-bit ints), several times faster. It refuses integers beyond 64 bits,
which the stdlib writes, so those records fall back to the stdlib.

Example:
    >>> dumps({"a": [1, 2.5, "x"]})
    b'{"a":[1,2.5,"x"]}'
    >>> dumps({"big": 2**70})
    b'{"big":1180591620717411303424}'
"""

from __future__ import annotations

import json
from typing import Any

import orjson

__all__ = ["dumps"]


def dumps(obj: Any) -> bytes:
    """``obj`` as compact UTF-8 JSON bytes."""
    try:
        return orjson.dumps(obj)
    except TypeError:
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()
