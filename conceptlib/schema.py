"""Condition schemas: what values a concept's condition ``c`` can take and how they become vectors.

A dataset source declares one schema per attribute it labels; a concept stores the schema of the
attribute it was trained on, so that ``color=red`` can be checked and encoded without the source.
Categorical values become one-hot vectors; continuous values are passed through (range-checked).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Union

from conceptlib.errors import ConditionError

Value = Union[str, float, tuple[float, ...]]


def format_value(value: Value) -> str:
    """The expression-language spelling of a condition value."""
    if isinstance(value, tuple):
        return "(" + ",".join(repr(float(v)) for v in value) + ")"
    if isinstance(value, float):
        return repr(value)
    return str(value)


@dataclass(frozen=True)
class Categorical:
    """One of a fixed set of named values (color ``red``, shape ``cube``, ``smiling``)."""

    values: tuple[str, ...]
    kind = "categorical"

    @property
    def dim(self) -> int:
        return len(self.values)

    def encode(self, value: Value, concept: str = "condition") -> list[float]:
        if not isinstance(value, str) or value not in self.values:
            raise ConditionError(
                f"{concept} takes one of {', '.join(self.values)}; got {format_value(value)}"
            )
        index = self.values.index(value)
        return [1.0 if i == index else 0.0 for i in range(self.dim)]

    def encode_label(self, label: Any) -> list[float]:
        """A dataset label (the value's index) as a one-hot vector."""
        return self.encode(self.values[int(label)])

    def describe(self) -> str:
        return "one of " + ", ".join(self.values)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "values": list(self.values)}


@dataclass(frozen=True)
class Continuous:
    """A point in a box: ``names`` are its axes, each in ``[low, high]``.

    ``spatial`` marks the first two axes as a point on the image plane ((x, y), 0..1 left-to-right,
    top-to-bottom), so that architectures can render it as a map instead of a bare vector (position fed as a
    Gaussian bump map learns, fed as constant planes it does not: docs/design.md).
    """

    names: tuple[str, ...]
    low: float = 0.0
    high: float = 1.0
    spatial: bool = False
    kind = "continuous"

    @property
    def dim(self) -> int:
        return len(self.names)

    def encode(self, value: Value, concept: str = "condition") -> list[float]:
        numbers: Sequence[float]
        if isinstance(value, tuple):
            numbers = value
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            numbers = (float(value),)
        else:
            raise ConditionError(f"{concept} takes {self.describe()}; got the name {value!r}")
        if len(numbers) != self.dim:
            raise ConditionError(
                f"{concept} takes {self.dim} number{'s' if self.dim > 1 else ''} "
                f"({', '.join(self.names)}); got {len(numbers)}: {format_value(tuple(numbers))}"
            )
        for axis, number in zip(self.names, numbers):
            if not math.isfinite(number) or not self.low <= number <= self.high:
                named = axis if axis == concept else f"{concept}: {axis}"  # not "size: size must ..."
                raise ConditionError(f"{named} must lie in [{self.low:g}, {self.high:g}]; got {number:g}")
        return [float(n) for n in numbers]

    def encode_label(self, label: Any) -> list[float]:
        numbers = [float(v) for v in (label if hasattr(label, "__len__") else [label])]
        return numbers

    def describe(self) -> str:
        axes = ", ".join(self.names)
        shape = f"({axes})" if self.dim > 1 else axes
        return f"{shape} in [{self.low:g}, {self.high:g}]"

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "names": list(self.names),
            "low": self.low,
            "high": self.high,
            "spatial": self.spatial,
        }


ConditionSchema = Union[Categorical, Continuous]


def is_image_point(schema: ConditionSchema, more_axes: bool = False) -> bool:
    """A 2-D point on the image plane (``spatial``): networks and the judge draw or read it as a map. With
    ``more_axes``, also a longer point whose first two axes are one (``(x, y, size)``: the U-Net draws
    ``(x, y)`` as a map and reads the rest as a vector)."""
    point = schema.dim >= 2 if more_axes else schema.dim == 2
    return isinstance(schema, Continuous) and schema.spatial and point



MAX_VALUES = 4096
"""Values of a categorical schema, axes of a continuous one: a schema may come from someone else's file."""


def schema_from_json(data: Any) -> ConditionSchema:
    """Rebuild a schema stored in the registry, a safetensors header or an export file, checking each field."""
    kind = data.get("kind") if isinstance(data, dict) else None
    if kind == "categorical":
        return Categorical(values=_names(data.get("values"), "values"))
    if kind == "continuous":
        low, high = data.get("low"), data.get("high")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in (low, high)) \
                or low >= high:
            raise ConditionError(f"a continuous condition schema needs finite low < high; got {low!r}, {high!r}")
        return Continuous(names=_names(data.get("names"), "names"), low=float(low), high=float(high),
                          spatial=bool(data.get("spatial", False)))
    shown = repr(kind)[:40] if isinstance(data, dict) else f"a {type(data).__name__}"
    raise ConditionError(f"unknown condition schema kind {shown}; this registry may be from a newer release")


def _names(value: Any, key: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_VALUES or not all(
        isinstance(v, str) and 0 < len(v) <= 256 for v in value
    ) or len(set(value)) != len(value):
        raise ConditionError(f"a condition schema's {key} must be 1-{MAX_VALUES} distinct, non-empty names")
    return tuple(value)
