"""A test plugin whose dataset source and architecture fail on demand (``--plugins-dir tests/plugins``).

The fault is chosen by environment variables, not by parameters, so a rerun without them is the same
request and ``concept add --resume`` finds the stopped run's checkpoint:

- ``FLAKY_FAIL_AT=k``: source ``flaky`` (the scenes) raises OSError at its k-th label read, i.e. in
  training iteration k of a run without frozen concepts.
- ``FAULTY=nan@k`` or ``FAULTY=explode@k``: architecture ``faulty`` (the small network) returns NaN
  energies, or gradients that overflow to inf, from training iteration k on (contrastive divergence);
  with ``FAULTY_RANK=r`` too, only on rank ``r`` of a distributed run.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from conceptlib.architectures import Architecture
from conceptlib.hookspecs import hookimpl
from conceptlib.schema import ConditionSchema
from conceptlib.sources import Dataset, Progress
from conceptlib_nets import SMALL_CONFIG, build_small
from conceptlib_scenes.source import ScenesSource


class FlakyDataset(Dataset):
    def condition_vectors(self, attribute: str, index: Any) -> Any:
        self.reads = getattr(self, "reads", 0) + 1
        if self.reads == int(os.environ.get("FLAKY_FAIL_AT", "0")):
            raise OSError("the disk holding the labels went away")
        return super().condition_vectors(attribute, index)


class FlakySource(ScenesSource):
    name = "flaky"
    description = "The scenes, with a label read that fails when $FLAKY_FAIL_AT says so."

    def load(self, params: Mapping[str, Any], progress: Progress | None = None) -> Dataset:
        dataset = super().load(params, progress)
        return FlakyDataset(dataset.images, dataset.labels, dataset.schemas, dataset.hash)


class Overflow(torch.autograd.Function):
    """The identity forward; backward multiplies the gradient past float32's range."""

    @staticmethod
    def forward(ctx: Any, energy: torch.Tensor) -> torch.Tensor:
        return energy.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad * 1e30 * 1e30


class Faulty(nn.Module):
    """The small network; its training forward passes (two per CD iteration) count the iterations."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.passes = 0

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        energy = self.inner(x, c)
        if not next(self.parameters()).requires_grad:
            return energy
        self.passes += 1
        kind, _, at = os.environ.get("FAULTY", "").partition("@")
        if kind not in ("nan", "explode") or (self.passes + 1) // 2 < int(at):
            return energy
        if os.environ.get("FAULTY_RANK", os.environ.get("RANK")) != os.environ.get("RANK"):
            return energy
        return energy * float("nan") if kind == "nan" else Overflow.apply(energy)


def build_faulty(schema: ConditionSchema, image_size: int, config: Mapping[str, Any]) -> nn.Module:
    return Faulty(build_small(schema, image_size, config))


@hookimpl
def conceptlib_sources() -> list[ScenesSource]:
    return [FlakySource()]


@hookimpl
def conceptlib_architectures() -> list[Architecture]:
    return [Architecture("faulty", build_faulty, SMALL_CONFIG, "The small network, failing when $FAULTY says so.")]
