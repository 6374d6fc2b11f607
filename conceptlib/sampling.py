"""Langevin dynamics on any energy (paper eq. 3) and the replay buffer that seeds training chains.

One step: ``x <- clamp(x - step_size * grad_x E(x) + noise * N(0, I), 0, 1)`` (the paper's
``lambda / 2`` is folded into ``step_size``). Only the input gradient is computed: frozen networks
hold no parameter gradients, so the sampler does no work it does not use.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from conceptlib.batched import one_thread
from conceptlib.errors import ConceptError
from conceptlib.memory import keep_freed_memory

EnergyFn = Callable[[torch.Tensor], torch.Tensor]
StepCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class LangevinConfig:
    steps: int = 40
    step_size: float = 100.0
    noise: float = 0.005
    grad_clip: float | None = None
    init: str = "noise"

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ConceptError(f"steps must be at least 1; got {self.steps}")
        if self.step_size <= 0 or self.noise < 0:
            raise ConceptError("step size must be positive and noise non-negative")
        if self.init not in INITS:
            raise ConceptError(f"unknown init {self.init!r}; use one of {', '.join(INITS)}")

    def to_json(self) -> dict[str, object]:
        return asdict(self)


INITS = ("noise", "gray")


def initial_images(
    n: int, image_size: int, init: str, generator: torch.Generator, device: torch.device
) -> torch.Tensor:
    """Chain starting points: uniform noise, or a mid-gray canvas with a little noise."""
    shape = (n, 3, image_size, image_size)
    x = torch.rand(shape, generator=generator, device=device)
    if init == "gray":
        x = 0.5 + 0.05 * (x - 0.5)
    return x


def langevin(
    energy: EnergyFn,
    x: torch.Tensor,
    config: LangevinConfig,
    generator: torch.Generator,
    on_step: StepCallback | None = None,
) -> torch.Tensor:
    """Run ``config.steps`` Langevin steps from ``x``; returns the detached final images."""
    keep_freed_memory(x.device)
    x = x.detach()
    for step in range(config.steps):
        x.requires_grad_(True)
        (grad,) = torch.autograd.grad(energy(x).sum(), x)
        if config.grad_clip is not None:
            grad = grad.clamp(-config.grad_clip, config.grad_clip)
        with one_thread(x.device):
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = (x.detach() - config.step_size * grad + config.noise * noise).clamp_(0.0, 1.0)
        if on_step is not None:
            on_step(step + 1, config.steps)
    return x.detach()


class ReplayBuffer:
    """Past negatives, so training chains continue instead of restarting (Du & Mordatch 2019)."""

    def __init__(self, capacity: int, image_shape: tuple[int, int, int], device: torch.device) -> None:
        self.capacity = capacity
        self.images = torch.empty((capacity, *image_shape), device=device)
        self.size = 0
        self._next = 0

    def __len__(self) -> int:
        return self.size

    def push(self, images: torch.Tensor) -> None:
        for image_batch in images.detach().split(self.capacity):
            n = image_batch.shape[0]
            index = (torch.arange(n, device=image_batch.device) + self._next) % self.capacity
            self.images[index] = image_batch
            self._next = (self._next + n) % self.capacity
            self.size = min(self.size + n, self.capacity)

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        index = torch.randint(0, self.size, (n,), generator=generator, device=self.images.device)
        return self.images[index].clone()
