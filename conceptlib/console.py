"""Listings that read at any terminal width: a table where it fits, readable records where it would not.

Rich shrinks a table that is too wide by cutting cells ("2026-11-…") or wrapping them into towers of
one-word lines (``concept sources`` took ~90 lines at 80 columns), and it reads ``[mujoco]`` in a cell as
markup and drops it. So: every cell is plain text; a table is printed only when its columns fit at their
natural width (a few designated prose columns may wrap, each down to a width of its own); otherwise
each row becomes a record, its first cell a heading and every other cell a ``label  value`` line wrapped
to the width with a hanging indent. ``--json`` on the same commands gives the data for programs.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from conceptlib.terminal import printable

PADDING = 2
"""Characters a column adds beside its content in the table style below (one space each side)."""


def print_listing(console: Console, headers: Sequence[str], rows: Sequence[Sequence[str]],
                  wrap: Mapping[str, int] | None = None, heading: int = 1) -> None:
    """``rows`` under ``headers``, as a table when it fits ``console.width``, else as :func:`records`.

    ``wrap`` maps the columns whose text may wrap inside the table (descriptions, conditions) to the
    narrowest width each may take; every other column keeps its natural width, never cut.
    """
    wrap = wrap or {}
    rows = [[printable(str(cell)) for cell in row] for row in rows]  # registry text may hold escapes
    width = console.width
    natural = [max([len(h), *(_longest_line(row[i]) for row in rows)]) for i, h in enumerate(headers)]
    needed = sum(min(n, wrap.get(h, n)) + PADDING for h, n in zip(headers, natural))
    if needed <= width:
        console.print(_table(headers, rows, wrap))
    else:
        for line in records(headers, rows, width, heading):
            console.print(line, markup=False, highlight=False)


def _longest_line(text: str) -> int:
    return max((len(line) for line in str(text).splitlines()), default=0)


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], wrap: Mapping[str, int]) -> Table:
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, padding=(0, 1))
    for header in headers:
        wraps = header in wrap
        table.add_column(Text(header, style="bold"), no_wrap=not wraps, overflow="fold", min_width=wrap.get(header))
    for row in rows:
        table.add_row(*(Text(str(cell)) for cell in row))
    return table


def records(headers: Sequence[str], rows: Sequence[Sequence[str]], width: int, heading: int = 1) -> list[str]:
    """Each row as a heading line (its first ``heading`` cells) and ``label  value`` lines for the rest,
    with a blank line between rows.

    Empty cells are left out; values wrap at ``width`` under their own start, and a word longer than
    the line (a path, a hash) is broken rather than let run past it.
    """
    label_width = max((len(h) for h in headers[heading:]), default=0)
    indent = " " * (2 + label_width + 2)
    lines: list[str] = []
    for number, row in enumerate(rows):
        if number:
            lines.append("")
        lines.extend(_wrapped("  ".join(str(c) for c in row[:heading] if str(c)), width, "", "  "))
        for header, cell in zip(headers[heading:], row[heading:]):
            if str(cell).strip():
                lines.extend(_wrapped(str(cell), width, f"  {header:<{label_width}}  ", indent))
    return lines


def _wrapped(text: str, width: int, first: str, rest: str) -> list[str]:
    out: list[str] = []
    for index, paragraph in enumerate(text.splitlines() or [""]):
        out.extend(textwrap.wrap(paragraph, width, initial_indent=first if index == 0 else rest,
                                 subsequent_indent=rest, break_long_words=True, break_on_hyphens=False)
                   or [first.rstrip()])
    return out


def distinct_names(paths: Sequence[Path]) -> list[str]:
    """``paths`` without the directory they all share: rows that differ only in a long common prefix
    (``/tmp/run/scenes/scenes_00001.png``) would otherwise be cut to the same text in a narrow table."""
    parts = [Path(p).parts for p in paths]
    shared = 0
    while all(len(p) > shared + 1 for p in parts) and len({p[shared] for p in parts}) == 1:
        shared += 1
    return [str(Path(*p[shared:])) for p in parts]


def value_text(value: str | Sequence[float], digits: int) -> str:
    """An inferred condition for a table: a name as is, numbers as ``(0.280, 0.640)``."""
    if isinstance(value, str):
        return value
    return "(" + ", ".join(f"{v:.{digits}f}" for v in value) + ")"


def print_warning(console: Console, message: str) -> None:
    """``warning: MESSAGE`` wrapped at words to the console's width (a terminal would cut words), later
    lines indented: a warning is read, not parsed, unlike the one-line ``error:`` a script may grep."""
    lines = textwrap.wrap(f"warning: {printable(message)}", console.width, subsequent_indent="  ",
                          break_long_words=False, break_on_hyphens=False)
    for line in lines:  # one print per line: a console that escapes line breaks in text must not see them
        console.print(line, markup=False, highlight=False, soft_wrap=True)
