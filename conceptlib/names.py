"""The one grammar for names a user gives concepts and aliases: what an expression can reference.

``color``, ``shape@stable`` and ``pos-x@2`` are written in expressions (:mod:`conceptlib.expr`), so a name
the expression language cannot spell could be stored but never composed; a name with a control character,
a path separator or markup could also rewrite the terminal it is printed on. Every name is checked here
where it enters a registry: ``concept add``, ``concept import`` and ``concept alias``.
"""

from __future__ import annotations

import re

from conceptlib.errors import BadNameError

NAME = r"[A-Za-z_][A-Za-z0-9_-]*"
"""A letter or '_', then letters, digits, '_' or '-' (ASCII only): the expression tokenizer's NAME."""
MAX_NAME_LENGTH = 64
_NAME = re.compile(NAME)
SHOWN_CHARACTERS = 40


def check_name(name: object, what: str = "concept name") -> str:
    """``name`` when it is a valid name; otherwise a :class:`BadNameError` saying what a name may hold."""
    if isinstance(name, str) and len(name) <= MAX_NAME_LENGTH and _NAME.fullmatch(name):
        return name
    raise BadNameError(
        f"{what} {excerpt(name)} is not a name: a name starts with a letter or '_', continues with letters, "
        f"digits, '_' or '-' and has at most {MAX_NAME_LENGTH} characters, so that an expression can refer to it"
    )


def excerpt(value: object) -> str:
    """``value`` quoted for a message, control characters escaped and cut to a readable length."""
    if not isinstance(value, str):
        return f"of type {type(value).__name__}"
    text = repr(value)
    return text if len(text) <= SHOWN_CHARACTERS else f"{text[:SHOWN_CHARACTERS]}... ({len(value)} characters)"
