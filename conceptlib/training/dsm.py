"""Denoising score matching of a noise-conditioned energy ``E(x, sigma | c)`` (objective dsm).

The frozen concepts' composed score (each conditioned on the image's own label, the prior counted once)
plus the new concept's score ``-grad_x E_new`` must explain the noisy data; only the new network gets
gradients, and its condition is dropped part of the time so it also learns its null energy. It is still an
energy, so composition by sums, logsumexp and negation works unchanged (Du et al. 2023).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch

from conceptlib import distributed
from conceptlib.annealed import ScoreFn
from conceptlib.checkpoints import TrainingState
from conceptlib.concepts import ConceptKind, LoadedConcept
from conceptlib.energy import Term
from conceptlib.errors import TrainingError
from conceptlib.expr import And, Leaf, Node
from conceptlib.scores import composed_score
from conceptlib.settings import PLAIN, DsmConfig, SamplerSettings
from conceptlib.training.loop import (
    Run,
    TrainResult,
    clipped_step,
    data_scale,
    noise_conditioned_setup,
    noisy_batch,
    scene_model_result,
)

FROZEN = SamplerSettings(guidance=PLAIN)
"""The frozen composition a new concept is trained against: their plain product, nothing guided."""


def denoising_loss(
    predicted: torch.Tensor, sigma: torch.Tensor, noise: torch.Tensor, sigma_data: float
) -> torch.Tensor:
    """Denoising score matching, EDM-weighted: ``(1 + sigma^2/sigma_data^2) ||sigma s + eps||^2``.

    ``predicted`` is the score at ``x0 + sigma * noise``; a perfect score gives ``s = -noise / sigma``.
    """
    s = sigma[:, None, None, None]
    per_sample = (s * predicted + noise).pow(2).flatten(1).mean(1)
    return ((1 + sigma**2 / sigma_data**2) * per_sample).mean()


def train_dsm(run: Run) -> TrainResult:
    """Denoising score matching of ``E_new`` on top of the frozen composition; returns the EMA weights."""
    frozen, prior, config, checkpoint = run.frozen, run.prior, run.config, run.checkpoint
    assert isinstance(config, DsmConfig)
    if frozen and prior is None:
        raise TrainingError("training against frozen concepts needs the concept that provides the image prior")

    def refusal(kind: ConceptKind) -> str | None:
        if kind.noise_conditioned:
            return None
        return (f"architecture {run.architecture.name!r} is not noise-conditioned, which objective dsm needs; "
                "use --arch unet, or --objective cd")

    rng, generator, model, ema, optimizer = noise_conditioned_setup(run, refusal)
    sigma_data = data_scale(model)
    history: list[dict[str, float]] = []
    state = TrainingState({"model": model, "ema": ema}, optimizer, rng, generator, history)
    net = distributed.wrap(model)
    started = time.perf_counter()

    for iteration in range(checkpoint.restore(state), config.iterations + 1):
        b = noisy_batch(run, config, rng, generator)
        frozen_score = torch.zeros_like(b.x0)
        if frozen:
            frozen_scores = _frozen_composition(run, frozen, b.index, prior)  # type: ignore[arg-type]
            frozen_score, _ = frozen_scores(b.x_noisy, b.sigma)
        x_in = b.x_noisy.detach().requires_grad_(True)
        energy = net(x_in, b.c, b.sigma, b.keep)
        (grad,) = torch.autograd.grad(energy.sum(), x_in, create_graph=True)
        loss = denoising_loss(frozen_score - grad, b.sigma, b.noise, sigma_data)
        clipped_step(loss, model, ema, optimizer, config, iteration, history, run.on_iteration)
        checkpoint.completed(iteration, state)
    return scene_model_result(run, ema, history, started)


def _frozen_composition(run: Run, frozen: Sequence[LoadedConcept], index: np.ndarray,
                        prior: LoadedConcept) -> ScoreFn:
    """The frozen concepts ANDed, each conditioned on every image's own label, the prior counted once."""
    terms: dict[Leaf, Term] = {}
    for i, concept in enumerate(frozen):
        terms[Leaf(f"frozen{i}", float(i))] = Term(concept, run.conditions(concept.version.attribute, index))
    leaves = list(terms)
    node: Node = leaves[0] if len(leaves) == 1 else And(tuple(leaves))
    return composed_score(node, terms, prior, FROZEN)
