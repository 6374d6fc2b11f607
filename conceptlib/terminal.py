"""Printing text that came from outside (names, descriptions, paths, plugin messages) without letting it
drive the terminal: no escape sequence, line break or rich markup in it takes effect."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.text import Text


def printable(text: str) -> str:
    """``text`` with every unprintable character (ESC, newline, NUL, bidi overrides...) as its escape."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


class SafeConsole(Console):
    """A rich console that prints every string as plain text: markup and emoji codes are not interpreted
    and unprintable characters are shown escaped, in messages and table cells alike (rich renders both
    through ``render_str``). Styling is given as ``Text`` objects instead of markup."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(markup=False, emoji=False, highlight=False, **kwargs)

    def render_str(self, text: str, **kwargs: Any) -> Text:
        return super().render_str(printable(text), **kwargs)
