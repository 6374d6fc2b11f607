"""Reading data conceptlib did not write itself (a ``.cpt`` manifest, a safetensors header, a checkpoint,
a hand-edited registry row) without trusting its size, nesting or types.

Each reader here either returns plain, bounded values of the expected type or raises :class:`Malformed`
(a ``ValueError``) with a short reason, which the caller words as its own one-line error.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from conceptlib.limits import MAX_JSON_DEPTH


class Malformed(ValueError):
    """Data that is not what it should be; the message says what was expected."""


def load_json(data: bytes | str, max_bytes: int, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """The JSON document ``data``, refused when longer than ``max_bytes`` or nested deeper than ``max_depth``.

    The size is checked before parsing, which bounds the parser's memory; the parser's own recursion limit
    stops pathological nesting early, and the depth of what it returned is then checked without recursion.
    """
    if len(data) > max_bytes:
        raise Malformed(f"{len(data)} bytes of JSON, more than the {max_bytes} allowed")
    try:
        value = json.loads(data)
    except RecursionError:
        raise Malformed(f"JSON nested deeper than {max_depth} levels") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise Malformed(f"not valid JSON ({exc})") from None
    check_depth(value, max_depth)
    return value


def check_depth(value: Any, max_depth: int = MAX_JSON_DEPTH) -> None:
    """Refuse lists and objects nested deeper than ``max_depth`` (later code may walk them recursively)."""
    stack = [(value, 1)]
    while stack:
        item, level = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        if level > max_depth:
            raise Malformed(f"JSON nested deeper than {max_depth} levels")
        stack.extend((child, level + 1) for child in children)


def text(value: Any) -> str:
    if not isinstance(value, str):
        raise Malformed(f"expected text, got {type(value).__name__}")
    return value


def mapping(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise Malformed(f"expected an object, got {type(value).__name__}")
    return value


def sequence(value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise Malformed(f"expected a list, got {type(value).__name__}")
    return value


def integer(value: Any, low: int, high: int, what: str) -> int:
    """``value`` when it is a JSON integer (not a bool, not a float) in ``[low, high]``."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        shown = repr(value) if isinstance(value, (int, float)) else type(value).__name__
        raise Malformed(f"{what} must be an integer in [{low}, {high}]; got {shown[:40]}")
    return value


def field(document: Mapping[str, Any], key: str) -> Any:
    """``document[key]``, or :class:`Malformed` naming the missing key."""
    if key not in document:
        raise Malformed(f"{key!r} is missing")
    return document[key]
