"""Contrastive divergence (paper eq. 2-3): the paper's objective, sampled by Langevin dynamics.

Each iteration draws positives ``(x+, c)`` from the dataset, negatives ``x-`` by Langevin on
``E_new(x | c) + sum_j E_frozen_j(x | c_j)`` (every frozen concept conditioned on the same image's own label
for it), and lowers ``E_new(x+) - E_new(x-) + alpha * (E_new(x+)^2 + E_new(x-)^2)``. Only the new network is
updated: frozen concepts enter only through the negatives, so the new energy learns what they do not
already explain. Chains continue from a replay buffer, a few restarted from noise and some from real images
whose attributes do not match.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
from torch import nn

from conceptlib import distributed
from conceptlib.checkpoints import TrainingState
from conceptlib.errors import TrainingError
from conceptlib.imaging import images_to_tensor
from conceptlib.langevin import langevin
from conceptlib.settings import CdConfig
from conceptlib.sources import Dataset
from conceptlib.training.loop import Run, TrainResult, exploded, seeded_streams, summary
from conceptlib.training.replay import ReplayBuffer

DIVERGED_ENERGY = 1e4


def train_cd(run: Run) -> TrainResult:
    """Contrastive divergence (eq. 2): frozen concepts enter only through the Langevin negatives."""
    dataset, attribute, frozen, device = run.dataset, run.attribute, run.frozen, run.device
    config, on_iteration, checkpoint = run.config, run.on_iteration, run.checkpoint
    assert isinstance(config, CdConfig)
    rng, generator = seeded_streams(config, device)
    model = run.build()
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, betas=(0.9, 0.999))
    size = dataset.image_size
    buffer = ReplayBuffer(config.buffer_size, (3, size, size), device)
    history: list[dict[str, float]] = []
    state = TrainingState({"model": model}, optimizer, rng, generator, history, buffer)
    net = distributed.wrap(model)
    started = time.perf_counter()

    for iteration in range(checkpoint.restore(state), config.iterations + 1):
        index = rng.integers(0, len(dataset), config.batch_size)
        x_pos = images_to_tensor(dataset.images[index], device)
        c_new = run.conditions(attribute, index)
        c_frozen = [run.conditions(f.version.attribute, index) for f in frozen]

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

        e_pos = net(x_pos, c_new)
        e_neg = net(x_neg, c_new)
        loss = e_pos.mean() - e_neg.mean() + config.l2 * (e_pos.pow(2).mean() + e_neg.pow(2).mean())
        distributed.all_or_none(f"training diverged at iteration {iteration}", _check_finite, loss, e_pos, e_neg,
                                iteration)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        _check_gradients(model, iteration)
        optimizer.step()
        distributed.trace(iteration, state.modules)

        record = {
            "iteration": float(iteration),
            "loss": float(loss.detach()),
            "energy_pos": float(e_pos.detach().mean()),
            "energy_neg": float(e_neg.detach().mean()),
        }
        history.append(record)
        if on_iteration is not None:
            on_iteration(iteration, record)
        checkpoint.completed(iteration, state)

    metrics = summary(history, ("loss", "energy_pos", "energy_neg"), started, config.iterations)
    metrics["energy_gap"] = metrics["energy_neg"] - metrics["energy_pos"]
    model.eval().requires_grad_(False)
    return TrainResult(model, metrics, history)


def _chain_starts(
    buffer: ReplayBuffer,
    dataset: Dataset,
    config: CdConfig,
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


def _check_gradients(model: nn.Module, iteration: int) -> None:
    """Refuse a step whose gradients overflowed: applied, they would turn every weight into NaN."""
    norm = float(torch.nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None]))
    if not math.isfinite(norm):
        raise exploded(iteration, norm)


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
