"""Checks for dataset-source parameters, shared by sources so every one words its errors alike.

Each returns the value in canonical form (plain ``int`` / ``float``, names in a fixed order), so equal
datasets get equal parameters, and hence equal hashes, however the user spelled them; each raises a
:class:`SourceParamError` that names the source, the parameter and what it accepts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from conceptlib.errors import SourceParamError
from conceptlib.limits import MAX_DATASET_BYTES


def integer(source: str, params: Mapping[str, Any], key: str, low: int, high: int | None = None) -> int:
    """``params[key]`` as an ``int`` in ``[low, high]`` (no upper bound when ``high`` is None)."""
    value = params[key]
    valid = f"in [{low}, {high}]" if high is not None else f">= {low}"
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, np.integer))
        or value < low
        or (high is not None and value > high)
    ):
        raise SourceParamError(f"source {source!r}: {key} must be an integer {valid}; got {value!r}")
    return int(value)


def image_count(source: str, params: Mapping[str, Any], low: int = 1) -> int:
    """``params["n"]``: an image count whose images (at ``params["image_size"]``, already checked) fit in
    memory: a source renders its whole dataset before anything uses it."""
    size = int(params["image_size"])
    high = max(low, MAX_DATASET_BYTES // (3 * size * size))
    try:
        return integer(source, params, "n", low, high)
    except SourceParamError:
        if isinstance(params["n"], int) and params["n"] > high:
            raise SourceParamError(
                f"source {source!r}: n={params['n']} images of {size}x{size} would take "
                f"{params['n'] * 3 * size * size / 2**30:.1f} GiB in memory (at most "
                f"{MAX_DATASET_BYTES / 2**30:.0f} GiB); lower n or image_size"
            ) from None
        raise


def number(
    source: str,
    params: Mapping[str, Any],
    key: str,
    low: float,
    high: float,
    valid: str,
    low_open: bool = False,
) -> float:
    """``params[key]`` as a finite ``float`` in ``[low, high]`` (``(low, high]`` with ``low_open``)."""
    value = params[key]
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise SourceParamError(f"source {source!r}: {key} must be a number in {valid}; got {value!r}")
    result = float(value)
    below = result <= low if low_open else result < low
    if not math.isfinite(result) or below or result > high:
        raise SourceParamError(f"source {source!r}: {key} must lie in {valid}; got {result:g}")
    return result


def split_names(text: str) -> list[str]:
    """The names in a comma-separated parameter value (``"red, blue"``), blanks dropped."""
    return [name.strip() for name in text.split(",") if name.strip()]


def names(source: str, params: Mapping[str, Any], key: str, known: Sequence[str]) -> str:
    """``params[key]``: distinct names from ``known``, comma-separated, returned in ``known``'s order."""
    value = params[key]
    given = split_names(value) if isinstance(value, str) else []
    unknown = [name for name in given if name not in known]
    if not given or unknown or len(set(given)) != len(given):
        raise SourceParamError(
            f"source {source!r}: {key} must be distinct names from {', '.join(known)}, "
            f"comma-separated; got {value!r}"
        )
    return ",".join(name for name in known if name in given)


def ordered_range(source: str, params: Mapping[str, Any], prefix: str) -> None:
    """``{prefix}_low`` must not exceed ``{prefix}_high``."""
    low, high = params[f"{prefix}_low"], params[f"{prefix}_high"]
    if low > high:
        raise SourceParamError(
            f"source {source!r}: {prefix}_low ({low:g}) must not exceed {prefix}_high ({high:g})"
        )
