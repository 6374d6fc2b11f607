"""A plain EDM denoiser ``D(x_sigma, sigma, c)`` of whole scenes (objective denoiser): the prior.

Its score ``(D - x) / sigma^2`` is learned directly instead of as the gradient of an energy: no second
derivative, so an iteration costs about a third of dsm's (docs/design.md has the measured difference). It
models whole scenes, so it is the prior other concepts are added to, never one added to frozen ones.
"""

from __future__ import annotations

import time

from conceptlib import distributed
from conceptlib.checkpoints import TrainingState
from conceptlib.concepts import ConceptKind
from conceptlib.errors import TrainingError
from conceptlib.settings import DenoiserConfig
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
)


def train_denoiser(run: Run) -> TrainResult:
    """EDM-weighted ``||D(x_sigma | c) - x||^2``, the condition dropped part of the time; the EMA weights."""
    config, checkpoint, name = run.config, run.checkpoint, run.architecture.name
    assert isinstance(config, DenoiserConfig)
    if run.frozen:
        raise TrainingError(
            "objective denoiser models whole images, so it is the first concept of a lineage; a concept added "
            "--with frozen ones is a residual (the default) or, for guidance only, --objective classifier"
        )

    def refusal(kind: ConceptKind) -> str | None:
        if not kind.noise_conditioned:
            return f"architecture {name!r} is not a denoiser, which objective denoiser needs; use --arch unet"
        if not kind.denoises:
            return (f"architecture {name!r} has no denoise(x, c, sigma, keep), which objective denoiser needs; "
                    "use --arch unet")
        return None

    rng, generator, model, ema, optimizer = noise_conditioned_setup(run, refusal)
    sigma_data = data_scale(model)
    history: list[dict[str, float]] = []
    state = TrainingState({"model": model, "ema": ema}, optimizer, rng, generator, history)
    denoise = distributed.wrap(DenoiseCall(model))
    started = time.perf_counter()
    for iteration in range(checkpoint.restore(state), config.iterations + 1):
        b = noisy_batch(run, config, rng, generator)
        loss = edm_loss(denoise(b.x_noisy, b.c, b.sigma, b.keep), b, sigma_data)
        clipped_step(loss, model, ema, optimizer, config, iteration, history, run.on_iteration)
        checkpoint.completed(iteration, state)
    return scene_model_result(run, ema, history, started)
