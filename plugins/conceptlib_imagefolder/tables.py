"""Attribute tables: CelebA's ``list_attr_celeba.txt`` and a generic ``labels.csv``, read into schemas.

Names become what the expression language can spell (``[A-Za-z_][A-Za-z0-9_-]*``): lowercased, other
characters turned into ``_``, a leading digit prefixed with ``_``. So CelebA's ``Smiling`` is the concept
``smiling`` and its ``5_o_Clock_Shadow`` is ``_5_o_clock_shadow``; a CelebA attribute (+1 / -1) is
categorical ``no`` / ``yes``. In a CSV, a column of numbers is continuous over the range it spans, and
any other column categorical over its distinct values.
"""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from conceptlib.errors import SourceError, SourceParamError
from conceptlib.schema import Categorical, ConditionSchema, Continuous

LAYOUTS: dict[str, tuple[str, str]] = {
    "celeba": ("img_align_celeba", "list_attr_celeba.txt"),
    "csv": ("images", "labels.csv"),
}
"""Each layout's image folder and attribute table, relative to the root."""
FILENAME_COLUMNS = ("filename", "file", "image", "path")
BINARY = ("no", "yes")
_NOT_NAME = re.compile(r"[^a-z0-9_-]+")


@dataclass(frozen=True)
class Table:
    """Every row of an attribute table: image file names (relative to ``image_dir``) and labels."""

    path: Path
    image_dir: Path
    files: tuple[str, ...]
    schemas: dict[str, ConditionSchema]
    labels: dict[str, np.ndarray]


def detect_layout(root: Path) -> str:
    """The layout whose attribute table ``root`` holds."""
    for layout, (_, table) in LAYOUTS.items():
        if (root / table).is_file():
            return layout
    expected = " or ".join(f"{folder}/ + {table}" for folder, table in LAYOUTS.values())
    raise SourceParamError(f"source 'imagefolder': {root} has no attribute table; expected {expected}")


def read_table(root: Path, layout: str) -> Table:
    """The table of ``layout`` under ``root``, read once per version of the file."""
    folder, name = LAYOUTS[layout]
    path = root / name
    try:
        stat = path.stat()
    except OSError:
        raise SourceParamError(f"source 'imagefolder': layout {layout} needs {path}, which is missing") from None
    return _read(str(path), str(root / folder), layout, stat.st_mtime_ns, stat.st_size)


def name(text: str) -> str:
    """``text`` as a name the expression language accepts."""
    cleaned = _NOT_NAME.sub("_", text.strip().lower()).strip("_")
    return f"_{cleaned}" if cleaned[:1].isdigit() or cleaned[:1] == "-" else cleaned


@lru_cache(maxsize=8)
def _read(path: str, image_dir: str, layout: str, _mtime_ns: int, _size: int) -> Table:
    read = _read_celeba if layout == "celeba" else _read_csv
    files, schemas, labels = read(Path(path))
    return Table(Path(path), Path(image_dir), files, schemas, labels)


def _read_celeba(path: Path) -> tuple[tuple[str, ...], dict[str, ConditionSchema], dict[str, np.ndarray]]:
    """Line 1: the image count (informational); line 2: attribute names; then ``file v1 v2 ...`` in +1/-1."""
    lines = path.read_text().splitlines()
    if len(lines) < 2 or not lines[0].strip().isdigit():
        raise SourceError(f"{path}: not a CelebA attribute file (line 1 must be the image count)")
    attributes = _unique_names([name(a) for a in lines[1].split()], path)
    files: list[str] = []
    values: list[list[bool]] = []
    for number, line in enumerate(lines[2:], start=3):
        tokens = line.split()
        if not tokens:
            continue
        if len(tokens) != len(attributes) + 1 or not all(t in ("1", "-1") for t in tokens[1:]):
            raise SourceError(
                f"{path} line {number}: expected a file name and {len(attributes)} values of 1 or -1"
            )
        files.append(tokens[0])
        values.append([t == "1" for t in tokens[1:]])
    table = np.array(values, dtype=np.int64).reshape(len(files), len(attributes))
    schemas: dict[str, ConditionSchema] = {a: Categorical(values=BINARY) for a in attributes}
    return tuple(files), schemas, {a: table[:, i] for i, a in enumerate(attributes)}


def _read_csv(path: Path) -> tuple[tuple[str, ...], dict[str, ConditionSchema], dict[str, np.ndarray]]:
    with path.open(newline="") as handle:
        rows = list(csv.reader(handle))
    if not rows:
        raise SourceError(f"{path} is empty; its first row must name the columns")
    header = [h.strip() for h in rows[0]]
    lowered = [h.lower() for h in header]
    file_column = next((lowered.index(c) for c in FILENAME_COLUMNS if c in lowered), None)
    if file_column is None:
        raise SourceError(f"{path} needs a column named filename (found: {', '.join(header)})")
    columns = [i for i in range(len(header)) if i != file_column]
    attributes = _unique_names([name(header[i]) for i in columns], path)
    body = [row for row in rows[1:] if any(cell.strip() for cell in row)]
    for number, row in enumerate(body, start=2):
        if len(row) != len(header) or not all(cell.strip() for cell in row):
            raise SourceError(f"{path} row {number}: every one of the {len(header)} columns needs a value")
    files = tuple(row[file_column].strip() for row in body)
    schemas: dict[str, ConditionSchema] = {}
    labels: dict[str, np.ndarray] = {}
    for attribute, i in zip(attributes, columns):
        cells = [row[i].strip() for row in body]
        numbers = _numbers(cells)
        if numbers is not None:
            schemas[attribute] = Continuous(names=(attribute,), low=min(numbers, default=0.0),
                                            high=max(numbers, default=0.0))
            labels[attribute] = np.array(numbers, dtype=np.float32).reshape(-1, 1)
            continue
        spelled = [name(c) for c in cells]
        values = tuple(sorted(set(spelled)))
        if len(values) != len(set(cells)):
            raise SourceError(
                f"{path}: values of column {header[i]!r} collide once spelled as names ({', '.join(values)})"
            )
        schemas[attribute] = Categorical(values=values)
        labels[attribute] = np.array([values.index(s) for s in spelled], dtype=np.int64)
    return files, schemas, labels


def _numbers(cells: list[str]) -> list[float] | None:
    """The cells as finite numbers, or None if any one is not."""
    try:
        numbers = [float(c) for c in cells]
    except ValueError:
        return None
    return numbers if all(math.isfinite(x) for x in numbers) else None


def _unique_names(names: list[str], path: Path) -> list[str]:
    if not all(names):
        raise SourceError(f"{path}: every attribute column needs a name with a letter or digit")
    clashes = sorted({n for n in names if names.count(n) > 1})
    if clashes:
        raise SourceError(f"{path}: two attributes are both spelled {clashes[0]!r} as names; rename one")
    return names
