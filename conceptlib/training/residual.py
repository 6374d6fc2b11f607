"""A correction ``R`` to frozen denoisers, trained inside their composition (objective residual).

Each image's frozen chain is evaluated at its own labels (its frozen residuals dropped to null together at
``condition_dropout``), then ``D_frozen + R`` must denoise it, ``R`` reading the frozen estimate and template
beside ``x``; only ``R`` learns, so it learns exactly what the frozen concepts do not explain on this data
(see :mod:`conceptlib.residual`). ``frozen_loss`` records the frozen chain's own loss on the same batches:
the gap is what the new concept explains. The timer includes the template precomputation.
"""

from __future__ import annotations

import time

import torch

from conceptlib import distributed
from conceptlib.batched import prefer_channels_last
from conceptlib.checkpoints import TrainingState
from conceptlib.concepts import ConceptKind
from conceptlib.errors import TrainingError
from conceptlib.residual import ChainReader, TrainingTemplates, build_chain, check_trainable, frozen_conditions
from conceptlib.settings import ResidualConfig
from conceptlib.training.loop import (
    DenoiseCall,
    Run,
    TrainResult,
    clipped_step,
    data_scale,
    edm_loss,
    noise_conditioned_setup,
    noisy_batch,
    scene_model_result,
    summary,
)


def train_residual(run: Run) -> TrainResult:
    """The correction's EMA weights, with the frozen composition's own loss among the metrics."""
    config, checkpoint, name = run.config, run.checkpoint, run.architecture.name
    assert isinstance(config, ResidualConfig)
    if not run.frozen:
        raise TrainingError(
            "objective residual learns what frozen concepts do not explain, so it needs --with; train a first "
            "concept with --objective denoiser"
        )
    chain = build_chain(run.frozen)

    def refusal(kind: ConceptKind) -> str | None:
        if kind.noise_conditioned:
            return None
        return f"architecture {name!r} is not a residual denoiser, which objective residual needs; use --arch residual"

    rng, generator, model, ema, optimizer = noise_conditioned_setup(run, refusal)
    check_trainable(chain, run.attribute, model, name)
    for module in (model, ema):  # convolutions skip layout reorders on the CPU: 18 % faster per step here
        prefer_channels_last(module, run.device)
    sigma_data = data_scale(model)
    history: list[dict[str, float]] = []
    state = TrainingState({"model": model, "ema": ema}, optimizer, rng, generator, history)
    correct = distributed.wrap(DenoiseCall(model))
    dropout = config.condition_dropout if chain.residuals else 0.0
    started = time.perf_counter()
    templates = TrainingTemplates(chain, run.dataset, dropout > 0, run.device)
    for iteration in range(checkpoint.restore(state), config.iterations + 1):
        b = noisy_batch(run, config, rng, generator)
        keep = (torch.rand(b.index.shape[0], generator=generator, device=run.device) >= dropout).float()
        conditions = frozen_conditions(chain, run.dataset, b.index, keep, run.device)
        read = templates.batch(b.index, keep)
        with torch.no_grad():
            context = ChainReader(chain, b.x_noisy, b.sigma, templates=read).total(conditions)
            frozen_loss = float(edm_loss(context, b, sigma_data))
        reads = torch.cat([context, read.context(templates.everything)], dim=1)
        loss = edm_loss(context + correct(b.x_noisy, b.c, b.sigma, b.keep, reads), b, sigma_data)
        clipped_step(loss, model, ema, optimizer, config, iteration, history, run.on_iteration,
                     {"frozen_loss": frozen_loss})
        checkpoint.completed(iteration, state)
    result = scene_model_result(run, ema, history, started)
    result.metrics["frozen_loss"] = summary(history, ("frozen_loss",), started, config.iterations)["frozen_loss"]
    return result
