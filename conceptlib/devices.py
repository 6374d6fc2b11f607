"""``--device auto|cpu|cuda[:N]``: CUDA when present, the CPU otherwise."""

from __future__ import annotations

import torch

from conceptlib.errors import ConceptError


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConceptError(f"unknown device {name!r}; use auto, cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConceptError(f"device {name!r} asked for, but CUDA is not available here; use --device cpu")
    return device
