"""What every objective's loop shares: the run it is given, seeded streams, noisy batches, the clipped Adam
step with an EMA copy, divergence checks and the summary a version records."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from conceptlib import distributed
from conceptlib.architectures import Architecture
from conceptlib.checkpoints import Checkpoint
from conceptlib.concepts import ConceptKind, LoadedConcept, network_traits
from conceptlib.errors import TrainingError
from conceptlib.imaging import images_to_tensor
from conceptlib.registry import VersionInfo
from conceptlib.schema import ConditionSchema
from conceptlib.settings import DsmConfig, NoiseConfig, NoisyTrainConfig, TrainConfig
from conceptlib.sources import Dataset

IterationCallback = Callable[[int, dict[str, float]], None]


@dataclass
class TrainResult:
    model: nn.Module
    metrics: dict[str, float]
    history: list[dict[str, float]]


@dataclass(frozen=True)
class Run:
    """Everything one training run is given, passed whole to the objective's loop."""

    architecture: Architecture
    architecture_config: Mapping[str, Any]
    dataset: Dataset
    attribute: str
    frozen: Sequence[LoadedConcept]
    config: TrainConfig
    device: torch.device
    on_iteration: IterationCallback | None
    prior: LoadedConcept | None
    checkpoint: Checkpoint

    def build(self) -> nn.Module:
        """The new network, on the run's device."""
        return self.architecture.build(self.dataset.schemas[self.attribute], self.dataset.image_size,
                                       self.architecture_config).to(self.device)

    def conditions(self, attribute: str, index: np.ndarray) -> torch.Tensor:
        """The encoded labels of ``attribute`` for the images at ``index``."""
        return torch.from_numpy(self.dataset.condition_vectors(attribute, index)).to(self.device)


def seeded_streams(config: TrainConfig, device: torch.device) -> tuple[np.random.Generator, torch.Generator]:
    """Seed the initial weights alike on every rank; each rank's batches and noise from its own stream."""
    torch.manual_seed(config.seed)
    rank_seed = distributed.stream_seed(config.seed, distributed.current().rank)
    return np.random.default_rng(rank_seed), torch.Generator(device=device).manual_seed(rank_seed)


def draw_noise_levels(config: NoiseConfig, n: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """``n`` noise scales, log-normal around where objects form, clipped to the sampler's range."""
    z = torch.randn(n, generator=generator, device=device)
    return (config.log_mean + config.log_std * z).exp().clamp(config.sigma_min, config.sigma_max)


@dataclass(frozen=True)
class NoisyBatch:
    """One batch of the noise-conditioned objectives: clean images, their labels, noise and dropout."""

    index: np.ndarray
    x0: torch.Tensor
    c: torch.Tensor
    keep: torch.Tensor
    """1 where the condition is kept, 0 where it is dropped for the null condition."""
    sigma: torch.Tensor
    noise: torch.Tensor

    @property
    def x_noisy(self) -> torch.Tensor:
        return self.x0 + self.sigma[:, None, None, None] * self.noise


def noisy_batch(run: Run, config: DsmConfig, rng: np.random.Generator, generator: torch.Generator) -> NoisyBatch:
    """A batch for the objectives that drop the condition (``config.condition_dropout``): dsm, denoiser."""
    device, dataset = run.device, run.dataset
    index = rng.integers(0, len(dataset), config.batch_size)
    x0 = images_to_tensor(dataset.images[index], device)
    c = run.conditions(run.attribute, index)
    n = x0.shape[0]
    keep = (torch.rand(n, generator=generator, device=device) >= config.condition_dropout).float()
    sigma = draw_noise_levels(config.noise_scales, n, generator, device)
    noise = torch.randn(x0.shape, generator=generator, device=device)
    return NoisyBatch(index, x0, c, keep, sigma, noise)


def noise_conditioned_setup(
    run: Run,
    refusal: Callable[[ConceptKind], str | None],
) -> tuple[np.random.Generator, torch.Generator, nn.Module, nn.Module, torch.optim.Optimizer]:
    """Seeded generators, the new network (refused when ``refusal(kind)`` has a reason), its EMA copy and Adam.

    Frozen concepts must be noise-conditioned too: CD energies do not compose with these.
    """
    config, device = run.config, run.device
    rng, generator = seeded_streams(config, device)
    model = run.build()
    reason = refusal(network_traits(model, config.objective).kind)
    if reason is not None:
        raise TrainingError(reason)
    for concept in run.frozen:
        if not concept.kind.noise_conditioned:
            raise TrainingError(
                f"frozen concept {concept.version.ref} was trained by contrastive divergence; noise-conditioned "
                "concepts compose only with noise-conditioned ones (train it again with --objective denoiser)"
            )
    ema = copy.deepcopy(model).requires_grad_(False)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, betas=(0.9, 0.999))
    return rng, generator, model, ema, optimizer


def edm_loss(denoised: torch.Tensor, b: NoisyBatch, sigma_data: float) -> torch.Tensor:
    """``||D - x0||^2`` weighted so that every noise level contributes a unit loss (EDM)."""
    weight = (b.sigma**2 + sigma_data**2) / (b.sigma * sigma_data) ** 2
    return (weight * (denoised - b.x0).pow(2).flatten(1).mean(1)).mean()


class DenoiseCall(nn.Module):
    """``model.denoise`` as ``forward``: DDP's gradient all-reduce hooks only run through ``__call__``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, c: torch.Tensor, sigma: torch.Tensor, keep: torch.Tensor,
                *context: torch.Tensor) -> torch.Tensor:
        return self.model.denoise(x, c, sigma, keep, *context)


def data_scale(model: nn.Module) -> float:
    """The network's ``sigma_data`` (see :class:`conceptlib.architectures.NoisyEnergyNet`), for EDM weighting."""
    return float(getattr(model, "sigma_data", 0.25))


def clipped_step(
    loss: torch.Tensor,
    model: nn.Module,
    ema: nn.Module,
    optimizer: torch.optim.Optimizer,
    config: NoisyTrainConfig,
    iteration: int,
    history: list[dict[str, float]],
    on_iteration: IterationCallback | None,
    extra: Mapping[str, float] | None = None,
) -> None:
    """One update of the noise-conditioned objectives: finite check, warmed-up clipped Adam step, EMA, record
    (with ``extra`` figures of the iteration)."""
    value = float(loss.detach())
    distributed.all_or_none(f"training diverged at iteration {iteration}", _check_loss, value, iteration)
    lr = config.lr * min(1.0, iteration / max(1, config.warmup))  # linear warm-up
    if config.schedule == "cosine":
        lr *= 0.5 * (1 + math.cos(math.pi * min(1.0, iteration / max(1, config.iterations))))
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip))
    if not math.isfinite(grad_norm):  # gradients are all-reduced, so every rank sees the same norm
        raise exploded(iteration, grad_norm)
    optimizer.step()
    _update_ema(ema, model, config.ema, iteration)
    distributed.trace(iteration, {"model": model, "ema": ema})
    record = {"iteration": float(iteration), "loss": value, "grad_norm": grad_norm, **(extra or {})}
    history.append(record)
    if on_iteration is not None:
        on_iteration(iteration, record)


def _check_loss(value: float, iteration: int) -> None:
    if not math.isfinite(value):
        raise TrainingError(
            f"training diverged at iteration {iteration}: the loss became {value}; nothing was registered "
            "(lower --lr)"
        )


def exploded(iteration: int, norm: float) -> TrainingError:
    return TrainingError(
        f"training diverged at iteration {iteration}: the gradient norm became {norm} (exploding gradients); "
        "nothing was registered (lower --lr)"
    )


def _update_ema(ema: nn.Module, model: nn.Module, target: float, iteration: int) -> None:
    """Exponential moving average of the weights, with a short warm-up so early steps do not linger."""
    decay = min(target, (1 + iteration) / (10 + iteration))
    with torch.no_grad():
        for average, current in zip(ema.parameters(), model.parameters()):
            average.lerp_(current, 1 - decay)


def summary(history: list[dict[str, float]], keys: Sequence[str], started: float, iterations: int) -> dict[str, float]:
    """Mean of each metric over the last tenth of the run, plus wall time."""
    seconds = time.perf_counter() - started
    tail = history[-max(1, len(history) // 10):]
    metrics = {key: float(np.mean([h[key] for h in tail])) for key in keys}
    metrics["seconds"] = round(seconds, 3)
    metrics["iterations_per_second"] = round(iterations / seconds, 4) if seconds > 0 else 0.0
    return metrics


def scene_model_result(run: Run, ema: nn.Module, history: list[dict[str, float]], started: float) -> TrainResult:
    """The EMA weights and metrics of a whole-scene model, with the range its condition is drawn from when it
    is a composition's prior (continuous attributes only)."""
    metrics: dict[str, Any] = summary(history, ("loss", "grad_norm"), started, run.config.iterations)
    dataset, attribute = run.dataset, run.attribute
    if dataset.schemas[attribute].kind == "continuous":
        labels = dataset.condition_vectors(attribute, np.arange(len(dataset)))
        metrics["condition_low"] = [float(v) for v in labels.min(0)]
        metrics["condition_high"] = [float(v) for v in labels.max(0)]
    ema.eval()
    return TrainResult(ema, metrics, history)


def check_frozen_attributes(schemas: Mapping[str, ConditionSchema], frozen: Sequence[VersionInfo],
                            source: str) -> None:
    """Every frozen concept must read an attribute the source labels, with the same schema."""
    for version in frozen:
        if version.attribute not in schemas:
            raise TrainingError(
                f"frozen concept {version.ref} reads attribute {version.attribute!r}, which source "
                f"{source!r} does not label (it labels: {', '.join(schemas)})"
            )
        if schemas[version.attribute] != version.schema:
            raise TrainingError(
                f"frozen concept {version.ref} takes {version.schema.describe()}, but source {source!r} "
                f"labels {version.attribute!r} as {schemas[version.attribute].describe()}"
            )
