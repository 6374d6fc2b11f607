"""Training one new concept against frozen, composed ones (continual learning, paper 3.3).

One module per objective, each a loop to read top to bottom, its settings one class of
:mod:`conceptlib.settings`: :mod:`~conceptlib.training.denoiser` (the default for a first concept: the prior
later concepts are composed with), :mod:`~conceptlib.training.residual` (the default with frozen concepts: a
correction to their composition, trained with them in its loss), :mod:`~conceptlib.training.classifier` (the
factor a concept adds, as guidance), :mod:`~conceptlib.training.dsm` (a noise-conditioned energy) and
:mod:`~conceptlib.training.cd` (the paper's contrastive divergence). What they share is in
:mod:`~conceptlib.training.loop`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from conceptlib.architectures import Architecture
from conceptlib.checkpoints import Checkpoint
from conceptlib.concepts import LoadedConcept
from conceptlib.memory import keep_freed_memory
from conceptlib.settings import TrainConfig
from conceptlib.sources import Dataset
from conceptlib.training.cd import train_cd
from conceptlib.training.classifier import train_classifier
from conceptlib.training.denoiser import train_denoiser
from conceptlib.training.dsm import train_dsm
from conceptlib.training.loop import IterationCallback, Run, TrainResult, check_frozen_attributes
from conceptlib.training.residual import train_residual

TRAINERS: dict[str, Callable[[Run], TrainResult]] = {
    "denoiser": train_denoiser, "residual": train_residual, "dsm": train_dsm, "classifier": train_classifier,
    "cd": train_cd,
}

__all__ = ["TRAINERS", "IterationCallback", "TrainResult", "check_frozen_attributes", "train_concept"]


def train_concept(
    architecture: Architecture,
    architecture_config: Mapping[str, Any],
    dataset: Dataset,
    attribute: str,
    frozen: Sequence[LoadedConcept],
    config: TrainConfig,
    device: torch.device,
    on_iteration: IterationCallback | None = None,
    prior: LoadedConcept | None = None,
    checkpoint: Checkpoint | None = None,
) -> TrainResult:
    """Train ``E(x | attribute)`` on ``dataset`` by ``config``'s objective; raise on divergence.

    ``prior`` is the concept whose null energy is the image prior of the frozen composition (dsm with
    frozen concepts only). ``checkpoint`` restores a stopped run before the loop and saves this one as it goes.
    """
    keep_freed_memory(device)
    return TRAINERS[config.objective](Run(architecture, architecture_config, dataset, attribute, frozen, config,
                                          device, on_iteration, prior, checkpoint or Checkpoint.disabled()))
