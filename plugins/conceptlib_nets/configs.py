"""Bounds on the first-party networks' configs, checked before a network is built.

A config may come from someone else's export file or a hand-edited registry row, so each value is checked
for its type and for a size that keeps the network's construction bounded (the tensors' own size is
checked against the weights by the core). Each check raises ``ValueError`` naming the key.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

MAX_WIDTH = 4096
MAX_STAGES = 8
POOLS = ("mean", "sum")


def _integer(config: Mapping[str, Any], key: str, low: int, high: int) -> int:
    value = config.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{key} must be an integer in [{low}, {high}]; got {str(value)[:40]}")
    return value


def _number(config: Mapping[str, Any], key: str, low: float, high: float) -> float:
    value = config.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not low <= value <= high:
        raise ValueError(f"{key} must be a number in [{low:g}, {high:g}]; got {str(value)[:40]}")
    return float(value)


def _channels(config: Mapping[str, Any], lengths: range) -> None:
    channels = config.get("channels")
    if not isinstance(channels, list) or len(channels) not in lengths:
        raise ValueError(f"channels must be a list of {lengths.start}-{lengths.stop - 1} widths; "
                         f"got {str(channels)[:40]}")
    for width in channels:
        _integer({"channels": width}, "channels", 1, MAX_WIDTH)


def check_small(config: Mapping[str, Any]) -> None:
    _channels(config, range(1, MAX_STAGES + 1))
    _integer(config, "embed", 1, MAX_WIDTH)
    _number(config, "bump_sigma", 0.0, 10.0)


def check_unet(config: Mapping[str, Any]) -> None:
    _channels(config, range(3, 4))
    _integer(config, "embed", 2, MAX_WIDTH)
    _integer(config, "patch", 1, 8)
    _integer({"refine": 0, **config}, "refine", 0, MAX_WIDTH)
    _integer({"condition_frequencies": 0, **config}, "condition_frequencies", 0, 16)
    _number(config, "bump_sigma", 0.0, 10.0)
    _number(config, "sigma_data", 1e-6, 100.0)


def check_residual(config: Mapping[str, Any]) -> None:
    check_unet(config)
    _integer({"context": 0, **config}, "context", 0, 64)
    if not isinstance(config.get("residual", False), bool):
        raise ValueError(f"residual must be true or false; got {str(config.get('residual'))[:40]}")


def check_classifier(config: Mapping[str, Any]) -> None:
    _channels(config, range(1, MAX_STAGES + 1))
    _integer(config, "embed", 2, MAX_WIDTH)
    _number(config, "sigma_data", 1e-6, 100.0)


def check_paper(config: Mapping[str, Any]) -> None:
    _channels(config, range(1, MAX_STAGES + 1))
    _integer(config, "embed", 1, MAX_WIDTH)
    _integer(config, "extra_blocks", 0, 16)
    _number(config, "bump_sigma", 0.0, 10.0)
    if config.get("pool") not in POOLS:
        raise ValueError(f"pool must be one of {', '.join(POOLS)}; got {str(config.get('pool'))[:40]}")
