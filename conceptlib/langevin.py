"""Langevin dynamics on any energy (paper eq. 3).

One step: ``x <- clamp(x - step_size * grad_x E(x) + noise * N(0, I), 0, 1)`` (the paper's ``lambda / 2``
is folded into ``step_size``). Only the input gradient is computed: frozen networks hold no parameter
gradients, so the sampler does no work it does not use.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from conceptlib.batched import one_thread
from conceptlib.memory import keep_freed_memory
from conceptlib.settings import LangevinConfig

EnergyFn = Callable[[torch.Tensor], torch.Tensor]
StepCallback = Callable[[int, int], None]


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
