"""Contrastive divergence for one new concept against frozen, composed ones (paper eq. 2-3, 3.3).

Each iteration draws positives ``(x+, c)`` from the dataset, draws negatives ``x-`` by Langevin on
``E_new(x | c) + sum_j E_frozen_j(x | c_j)`` (every frozen concept conditioned on the same image's
own label for it), and lowers ``E_new(x+) - E_new(x-) + alpha * (E_new(x+)^2 + E_new(x-)^2)``. Only
the new network is updated: frozen concepts enter only through the negatives, so the new energy
learns what they do not already explain (continual learning). Chains continue from a replay buffer,
with a few restarted from noise and some from real images whose attributes do not match.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from conceptlib.architectures import Architecture
from conceptlib.concepts import LoadedConcept
from conceptlib.errors import TrainingError
from conceptlib.sampling import LangevinConfig, ReplayBuffer, langevin
from conceptlib.sources import Dataset

IterationCallback = Callable[[int, dict[str, float]], None]
DIVERGED_ENERGY = 1e4


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of one run, all in one place (recorded on the version)."""

    iterations: int = 300
    batch_size: int = 64
    lr: float = 1e-3
    l2: float = 1.0
    langevin: LangevinConfig = field(default_factory=lambda: LangevinConfig(steps=20))
    buffer_size: int = 10_000
    reinit: float = 0.05
    real_init: float = 0.3
    seed: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrainResult:
    model: nn.Module
    metrics: dict[str, float]
    history: list[dict[str, float]]


def images_to_tensor(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 ``(B, H, W, 3)`` -> float ``(B, 3, H, W)`` in [0, 1]."""
    return torch.from_numpy(images).to(device).permute(0, 3, 1, 2).float().div_(255.0)


def check_frozen_attributes(dataset: Dataset, frozen: Sequence[LoadedConcept], source: str) -> None:
    """Every frozen concept must read an attribute this dataset labels, with the same schema."""
    for concept in frozen:
        version = concept.version
        if version.attribute not in dataset.schemas:
            raise TrainingError(
                f"frozen concept {version.ref} reads attribute {version.attribute!r}, which source "
                f"{source!r} does not label (it labels: {', '.join(dataset.schemas)})"
            )
        if dataset.schemas[version.attribute] != version.schema:
            raise TrainingError(
                f"frozen concept {version.ref} takes {version.schema.describe()}, but source {source!r} "
                f"labels {version.attribute!r} as {dataset.schemas[version.attribute].describe()}"
            )


def train_concept(
    architecture: Architecture,
    architecture_config: Mapping[str, Any],
    dataset: Dataset,
    attribute: str,
    frozen: Sequence[LoadedConcept],
    config: TrainConfig,
    device: torch.device,
    on_iteration: IterationCallback | None = None,
) -> TrainResult:
    """Train ``E(x | attribute)`` on ``dataset`` by contrastive divergence; raise on divergence."""
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    generator = torch.Generator(device=device).manual_seed(config.seed)
    schema = dataset.schemas[attribute]
    model = architecture.build(schema, dataset.image_size, architecture_config).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, betas=(0.9, 0.999))
    size = dataset.image_size
    buffer = ReplayBuffer(config.buffer_size, (3, size, size), device)
    history: list[dict[str, float]] = []
    started = time.perf_counter()

    for iteration in range(1, config.iterations + 1):
        index = rng.integers(0, len(dataset), config.batch_size)
        x_pos = images_to_tensor(dataset.images[index], device)
        c_new = torch.from_numpy(dataset.condition_vectors(attribute, index)).to(device)
        c_frozen = [
            torch.from_numpy(dataset.condition_vectors(f.version.attribute, index)).to(device) for f in frozen
        ]

        def energy(x: torch.Tensor, c_new: torch.Tensor = c_new, c_frozen: list = c_frozen) -> torch.Tensor:
            total = model(x, c_new)
            for concept, c in zip(frozen, c_frozen):
                total = total + concept.model(x, c)
            return total

        x_init = _chain_starts(buffer, dataset, config, rng, generator, device)
        model.requires_grad_(False)
        x_neg = langevin(energy, x_init, config.langevin, generator)
        model.requires_grad_(True)
        buffer.push(x_neg)

        e_pos = model(x_pos, c_new)
        e_neg = model(x_neg, c_new)
        loss = e_pos.mean() - e_neg.mean() + config.l2 * (e_pos.pow(2).mean() + e_neg.pow(2).mean())
        _check_finite(loss, e_pos, e_neg, iteration)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

        record = {
            "iteration": float(iteration),
            "loss": float(loss.detach()),
            "energy_pos": float(e_pos.detach().mean()),
            "energy_neg": float(e_neg.detach().mean()),
        }
        history.append(record)
        if on_iteration is not None:
            on_iteration(iteration, record)

    seconds = time.perf_counter() - started
    tail = history[-max(1, len(history) // 10):]
    metrics = {
        "loss": float(np.mean([h["loss"] for h in tail])),
        "energy_pos": float(np.mean([h["energy_pos"] for h in tail])),
        "energy_neg": float(np.mean([h["energy_neg"] for h in tail])),
        "seconds": round(seconds, 3),
        "iterations_per_second": round(config.iterations / seconds, 4) if seconds > 0 else 0.0,
    }
    metrics["energy_gap"] = metrics["energy_neg"] - metrics["energy_pos"]
    model.eval().requires_grad_(False)
    return TrainResult(model, metrics, history)


def _chain_starts(
    buffer: ReplayBuffer,
    dataset: Dataset,
    config: TrainConfig,
    rng: np.random.Generator,
    generator: torch.Generator,
    device: torch.device,
) -> torch.Tensor:
    """Starting points: replay buffer, a few fresh noise chains, some real images (other labels)."""
    n = config.batch_size
    size = dataset.image_size
    noise = torch.rand((n, 3, size, size), generator=generator, device=device)
    if len(buffer) == 0:
        return noise
    x = buffer.sample(n, generator)
    u = torch.from_numpy(rng.random(n)).to(device)
    restart = u < config.reinit
    real = (u >= config.reinit) & (u < config.reinit + config.real_init)
    x[restart] = noise[restart]
    if bool(real.any()):
        other = rng.integers(0, len(dataset), int(real.sum()))
        x[real] = images_to_tensor(dataset.images[other], device)
    return x


def _check_finite(loss: torch.Tensor, e_pos: torch.Tensor, e_neg: torch.Tensor, iteration: int) -> None:
    value = float(loss.detach())
    largest = float(torch.cat([e_pos.detach().abs(), e_neg.detach().abs()]).max())
    if not math.isfinite(value) or not math.isfinite(largest):
        raise TrainingError(
            f"training diverged at iteration {iteration}: the loss became {value}; nothing was registered "
            "(lower --lr or --step-size)"
        )
    if largest > DIVERGED_ENERGY:
        raise TrainingError(
            f"training diverged at iteration {iteration}: energies reached {largest:.3g}; nothing was "
            "registered (raise --l2 or lower --lr)"
        )
