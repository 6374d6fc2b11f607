"""A noise-conditioned classifier ``E = -log p(c | x_sigma)`` (objective classifier): the factor a concept adds.

Cross-entropy (or a Gaussian likelihood, for a continuous attribute) of the attribute given noisy images.
The frozen concepts are not in the loss: an image fixes every attribute, so ``p(c_new | x)`` is already the
factor they leave unexplained; they supply the image prior when composing. A held-out twentieth of the
dataset measures the result.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

from conceptlib import distributed
from conceptlib.checkpoints import TrainingState
from conceptlib.concepts import ConceptKind
from conceptlib.imaging import images_to_tensor
from conceptlib.settings import ClassifierConfig
from conceptlib.sources import Dataset
from conceptlib.training.loop import (
    Run,
    TrainResult,
    clipped_step,
    draw_noise_levels,
    noise_conditioned_setup,
    summary,
)


def train_classifier(run: Run) -> TrainResult:
    """The classifier's EMA weights, with its held-out accuracy (or energy) among the metrics."""
    dataset, attribute, device = run.dataset, run.attribute, run.device
    config, checkpoint = run.config, run.checkpoint
    assert isinstance(config, ClassifierConfig)

    def refusal(kind: ConceptKind) -> str | None:
        if kind is ConceptKind.CLASSIFIER:
            return None
        return (f"architecture {run.architecture.name!r} is not a classifier energy, which objective classifier "
                "needs; use --arch classifier")

    rng, generator, model, ema, optimizer = noise_conditioned_setup(run, refusal)
    held_out = np.arange(len(dataset) - max(1, len(dataset) // 20), len(dataset))
    train_size = max(1, int(held_out[0]))
    history: list[dict[str, float]] = []
    state = TrainingState({"model": model, "ema": ema}, optimizer, rng, generator, history)
    net = distributed.wrap(model)
    started = time.perf_counter()
    for iteration in range(checkpoint.restore(state), config.iterations + 1):
        index = rng.integers(0, train_size, config.batch_size)
        x0 = images_to_tensor(dataset.images[index], device)
        c = run.conditions(attribute, index)
        sigma = draw_noise_levels(config.noise_scales, x0.shape[0], generator, device)
        noise = torch.randn(x0.shape, generator=generator, device=device)
        loss = net(x0 + sigma[:, None, None, None] * noise, c, sigma).mean()
        clipped_step(loss, model, ema, optimizer, config, iteration, history, run.on_iteration)
        checkpoint.completed(iteration, state)
    metrics = summary(history, ("loss", "grad_norm"), started, config.iterations)
    ema.eval()
    metrics.update(_held_out(ema, dataset, attribute, held_out, device))
    return TrainResult(ema, metrics, history)


def _held_out(model: nn.Module, dataset: Dataset, attribute: str, index: np.ndarray,
              device: torch.device) -> dict[str, float]:
    """How well the classifier energy reads the attribute of clean held-out images (argmin over names)."""
    schema = dataset.schemas[attribute]
    x = images_to_tensor(dataset.images[index], device)
    sigma = torch.full((len(index),), 0.01, device=device)
    with torch.no_grad():
        if schema.kind == "categorical":
            energies = torch.stack([model(x, torch.eye(schema.dim, device=device)[k].expand(len(index), -1), sigma)
                                    for k in range(schema.dim)], dim=1)
            truth = torch.from_numpy(dataset.labels[attribute][index].astype(np.int64)).to(device)
            return {"held_out_accuracy": float((energies.argmin(1) == truth).float().mean())}
        c = torch.from_numpy(dataset.condition_vectors(attribute, index)).to(device)
        return {"held_out_energy": float(model(x, c, sigma).mean())}
