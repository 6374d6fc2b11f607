"""Training one new concept against frozen, composed ones (continual learning, paper 3.3).

Four objectives share this interface. ``denoiser`` (the default for a first concept) is a plain EDM
denoiser of whole scenes, the prior that later concepts are composed with (see ``_train_denoiser``);
``classifier`` (the default with frozen concepts) learns ``-log p(c | noisy x)``, the factor a concept adds.
``dsm`` is denoising score matching of a
noise-conditioned energy: the frozen concepts' composed score (each conditioned on the image's own
label) plus the new concept's score must explain the noisy data, only the new network gets gradients,
and the new condition is dropped part of the time so the concept also learns its null energy.

``cd`` is the paper's contrastive divergence (eq. 2-3). Each iteration draws positives ``(x+, c)``
from the dataset, draws negatives ``x-`` by Langevin on ``E_new(x | c) + sum_j E_frozen_j(x | c_j)``
(every frozen concept conditioned on the same image's own label for it), and lowers
``E_new(x+) - E_new(x-) + alpha * (E_new(x+)^2 + E_new(x-)^2)``. Only the new network is updated:
frozen concepts enter only through the negatives, so the new energy learns what they do not already
explain. Chains continue from a replay buffer, with a few restarted from noise and some from real
images whose attributes do not match.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from conceptlib import distributed
from conceptlib.architectures import Architecture
from conceptlib.batched import prefer_channels_last
from conceptlib.checkpoints import Checkpoint, TrainingState
from conceptlib.concepts import LoadedConcept
from conceptlib.diffusion import NoiseConfig, denoising_loss
from conceptlib.energy import Term
from conceptlib.errors import TrainingError
from conceptlib.expr import And, Leaf, Node
from conceptlib.memory import keep_freed_memory
from conceptlib.registry import VersionInfo
from conceptlib.residual import ChainReader, TrainingTemplates, build_chain, check_trainable, frozen_conditions
from conceptlib.sampling import LangevinConfig, ReplayBuffer, langevin
from conceptlib.schema import ConditionSchema
from conceptlib.scores import composed_score
from conceptlib.sources import Dataset

IterationCallback = Callable[[int, dict[str, float]], None]
DIVERGED_ENERGY = 1e4


OBJECTIVES = ("denoiser", "residual", "dsm", "classifier", "cd")
CD_ONLY = ("l2", "langevin", "buffer_size", "reinit", "real_init")
DSM_ONLY = ("noise_scales", "condition_dropout", "ema", "grad_clip", "warmup", "schedule")
SCHEDULES = ("constant", "cosine")


def resolve_objective(objective: str, with_frozen: bool) -> str:
    """``auto``: a concept alone models whole scenes (denoiser); one added to frozen ones learns, with them
    in its loss, the correction their composition needs on its data (residual)."""
    if objective == "auto":
        return "residual" if with_frozen else "denoiser"
    return objective


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of one run, all in one place (recorded on the version)."""

    objective: str = "dsm"
    iterations: int = 2000
    batch_size: int = 48
    lr: float = 1e-3
    seed: int = 0
    # contrastive divergence
    l2: float = 1.0
    langevin: LangevinConfig = field(default_factory=lambda: LangevinConfig(steps=20))
    buffer_size: int = 10_000
    reinit: float = 0.05
    real_init: float = 0.3
    # denoising score matching
    noise_scales: NoiseConfig = field(default_factory=NoiseConfig)
    condition_dropout: float = 0.2
    ema: float = 0.999
    grad_clip: float = 1.0
    warmup: int = 100
    schedule: str = "constant"
    """Learning rate after warm-up: ``constant``, or ``cosine`` decay to zero at the last iteration."""

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise TrainingError(f"unknown schedule {self.schedule!r}; use one of {', '.join(SCHEDULES)}")

    def to_json(self) -> dict[str, Any]:
        """The settings this objective uses (the other objective's are left out)."""
        data = asdict(self)
        unused = {"cd": DSM_ONLY, "dsm": CD_ONLY, "denoiser": CD_ONLY, "residual": CD_ONLY,
                  "classifier": (*CD_ONLY, "condition_dropout")}
        for key in unused.get(self.objective, ()):
            data.pop(key)
        return data


@dataclass
class TrainResult:
    model: nn.Module
    metrics: dict[str, float]
    history: list[dict[str, float]]


def images_to_tensor(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 ``(B, H, W, 3)`` -> float ``(B, 3, H, W)`` in [0, 1]."""
    return torch.from_numpy(images).to(device).permute(0, 3, 1, 2).float().div_(255.0)


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
    """Train ``E(x | attribute)`` on ``dataset`` by ``config.objective``; raise on divergence.

    ``prior`` is the concept whose null energy is the image prior of the frozen composition (dsm with
    frozen concepts only). ``checkpoint`` restores a stopped run before the loop and saves this one as it goes.
    """
    trainers = {"cd": _train_cd, "dsm": _train_dsm, "classifier": _train_classifier, "denoiser": _train_denoiser,
                "residual": _train_residual}
    if config.objective not in trainers:
        raise TrainingError(f"unknown objective {config.objective!r}; use one of {', '.join(OBJECTIVES)}")
    keep_freed_memory(device)
    return trainers[config.objective](_Run(architecture, architecture_config, dataset, attribute, frozen, config,
                                           device, on_iteration, prior, checkpoint or Checkpoint.disabled()))


@dataclass(frozen=True)
class _Run:
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


def _seeded_streams(config: TrainConfig, device: torch.device) -> tuple[np.random.Generator, torch.Generator]:
    """Seed the initial weights alike on every rank; each rank's batches and noise from its own stream."""
    torch.manual_seed(config.seed)
    rank_seed = distributed.stream_seed(config.seed, distributed.current().rank)
    return np.random.default_rng(rank_seed), torch.Generator(device=device).manual_seed(rank_seed)


def _train_cd(run: _Run) -> TrainResult:
    """Contrastive divergence (eq. 2): frozen concepts enter only through the Langevin negatives."""
    dataset, attribute, frozen, config, device = run.dataset, run.attribute, run.frozen, run.config, run.device
    on_iteration, checkpoint = run.on_iteration, run.checkpoint
    rng, generator = _seeded_streams(config, device)
    schema = dataset.schemas[attribute]
    model = run.architecture.build(schema, dataset.image_size, run.architecture_config).to(device)
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

    metrics = _summary(history, ("loss", "energy_pos", "energy_neg"), started, config.iterations)
    metrics["energy_gap"] = metrics["energy_neg"] - metrics["energy_pos"]
    model.eval().requires_grad_(False)
    return TrainResult(model, metrics, history)


def _train_dsm(run: _Run) -> TrainResult:
    """Denoising score matching of ``E_new`` on top of the frozen composition; returns the EMA weights."""
    architecture, dataset, frozen = run.architecture, run.dataset, run.frozen
    config, device, on_iteration, checkpoint = run.config, run.device, run.on_iteration, run.checkpoint
    prior = run.prior
    if frozen and prior is None:
        raise TrainingError("training against frozen concepts needs the concept that provides the image prior")
    rng, generator, model, ema, optimizer = _noise_conditioned_setup(
        run, "noise_conditioned",
        f"architecture {architecture.name!r} is not noise-conditioned, which objective dsm needs; "
        "use --arch unet, or --objective cd",
    )
    sigma_data = float(getattr(model, "sigma_data", 0.25))
    history: list[dict[str, float]] = []
    state = TrainingState({"model": model, "ema": ema}, optimizer, rng, generator, history)
    net = distributed.wrap(model)
    started = time.perf_counter()

    for iteration in range(checkpoint.restore(state), config.iterations + 1):
        b = _noisy_batch(run, rng, generator)
        frozen_score = torch.zeros_like(b.x0)
        if frozen:
            frozen_scores = _frozen_composition(frozen, dataset, b.index, device, prior)  # type: ignore[arg-type]
            frozen_score, _ = frozen_scores(b.x_noisy, b.sigma)
        x_in = b.x_noisy.detach().requires_grad_(True)
        energy = net(x_in, b.c, b.sigma, b.keep)
        (grad,) = torch.autograd.grad(energy.sum(), x_in, create_graph=True)
        loss = denoising_loss(frozen_score - grad, b.sigma, b.noise, sigma_data)
        _clipped_step(loss, model, ema, optimizer, config, iteration, history, on_iteration)
        checkpoint.completed(iteration, state)
    return _scene_model_result(run, ema, history, started)


def _train_denoiser(run: _Run) -> TrainResult:
    """A plain EDM denoiser ``D(x_sigma, sigma, c)`` of whole images, the condition dropped part of the time.

    Its score ``(D - x) / sigma^2`` is learned directly instead of as the gradient of an energy: no second
    derivative, so an iteration costs about a third of dsm's, and on this CPU it learned position to 1.00
    where the energy-parameterised dsm reached 0.73-0.75 in the same ten minutes (LEARNING.md, CHANGELOG).
    It models whole scenes, so it is the prior other concepts are added to, never one added to frozen ones.
    """
    architecture, config, on_iteration, checkpoint = run.architecture, run.config, run.on_iteration, run.checkpoint
    if run.frozen:
        raise TrainingError(
            "objective denoiser models whole images, so it is the first concept of a lineage; a concept added "
            "--with frozen ones learns its factor with --objective classifier"
        )
    rng, generator, model, ema, optimizer = _noise_conditioned_setup(
        run, "noise_conditioned",
        f"architecture {architecture.name!r} is not a denoiser, which objective denoiser needs; use --arch unet",
    )
    if not callable(getattr(model, "denoise", None)):
        raise TrainingError(
            f"architecture {architecture.name!r} has no denoise(x, c, sigma, keep), which objective denoiser "
            "needs; use --arch unet"
        )
    sigma_data = float(getattr(model, "sigma_data", 0.25))
    history: list[dict[str, float]] = []
    state = TrainingState({"model": model, "ema": ema}, optimizer, rng, generator, history)
    denoise = distributed.wrap(_DenoiseCall(model))
    started = time.perf_counter()
    for iteration in range(checkpoint.restore(state), config.iterations + 1):
        b = _noisy_batch(run, rng, generator)
        loss = _edm_loss(denoise(b.x_noisy, b.c, b.sigma, b.keep), b, sigma_data)
        _clipped_step(loss, model, ema, optimizer, config, iteration, history, on_iteration)
        checkpoint.completed(iteration, state)
    return _scene_model_result(run, ema, history, started)


def _train_residual(run: _Run) -> TrainResult:
    """A correction ``R`` to the frozen denoisers, trained inside their composition (see :mod:`conceptlib.residual`).

    Each image's frozen composition is evaluated at its own labels, then ``D_frozen + R`` must denoise it;
    only ``R`` learns. ``frozen_loss`` records the frozen composition's own loss on the same batches: the gap
    is what the new concept explains.
    """
    architecture, config, on_iteration, checkpoint = run.architecture, run.config, run.on_iteration, run.checkpoint
    if not run.frozen:
        raise TrainingError(
            "objective residual learns what frozen concepts do not explain, so it needs --with; train a first "
            "concept with --objective denoiser"
        )
    chain = build_chain(run.frozen)
    rng, generator, model, ema, optimizer = _noise_conditioned_setup(
        run, "noise_conditioned",
        f"architecture {architecture.name!r} is not a residual denoiser, which objective residual needs; "
        "use --arch residual",
    )
    check_trainable(chain, run.attribute, model, architecture.name)
    for module in (model, ema):  # convolutions skip layout reorders on the CPU: 18 % faster per step here
        prefer_channels_last(module, run.device)
    sigma_data = float(getattr(model, "sigma_data", 0.25))
    history: list[dict[str, float]] = []
    state = TrainingState({"model": model, "ema": ema}, optimizer, rng, generator, history)
    correct = distributed.wrap(_DenoiseCall(model))
    dropout = config.condition_dropout if chain.residuals else 0.0
    started = time.perf_counter()
    templates = TrainingTemplates(chain, run.dataset, dropout > 0, run.device)
    for iteration in range(checkpoint.restore(state), config.iterations + 1):
        b = _noisy_batch(run, rng, generator)
        keep = (torch.rand(b.index.shape[0], generator=generator, device=run.device) >= dropout).float()
        conditions = frozen_conditions(chain, run.dataset, b.index, keep, run.device)
        read = templates.batch(b.index, keep)
        with torch.no_grad():
            context = ChainReader(chain, b.x_noisy, b.sigma, templates=read).total(conditions)
            frozen_loss = float(_edm_loss(context, b, sigma_data))
        reads = torch.cat([context, read.context(templates.everything)], dim=1)
        correction = correct(b.x_noisy, b.c, b.sigma, b.keep, reads)
        loss = _edm_loss(context + correction, b, sigma_data)
        _clipped_step(loss, model, ema, optimizer, config, iteration, history, on_iteration,
                      {"frozen_loss": frozen_loss})
        checkpoint.completed(iteration, state)
    result = _scene_model_result(run, ema, history, started)
    result.metrics["frozen_loss"] = _summary(history, ("frozen_loss",), started, config.iterations)["frozen_loss"]
    return result


def _edm_loss(denoised: torch.Tensor, b: _NoisyBatch, sigma_data: float) -> torch.Tensor:
    """``||D - x0||^2`` weighted so that every noise level contributes a unit loss (EDM)."""
    weight = (b.sigma**2 + sigma_data**2) / (b.sigma * sigma_data) ** 2
    return (weight * (denoised - b.x0).pow(2).flatten(1).mean(1)).mean()


@dataclass(frozen=True)
class _NoisyBatch:
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


def _noisy_batch(run: _Run, rng: np.random.Generator, generator: torch.Generator) -> _NoisyBatch:
    config, device, dataset = run.config, run.device, run.dataset
    index = rng.integers(0, len(dataset), config.batch_size)
    x0 = images_to_tensor(dataset.images[index], device)
    c = torch.from_numpy(dataset.condition_vectors(run.attribute, index)).to(device)
    n = x0.shape[0]
    keep = (torch.rand(n, generator=generator, device=device) >= config.condition_dropout).float()
    sigma = config.noise_scales.draw(n, generator, device)
    noise = torch.randn(x0.shape, generator=generator, device=device)
    return _NoisyBatch(index, x0, c, keep, sigma, noise)


class _DenoiseCall(nn.Module):
    """``model.denoise`` as ``forward``: DDP's gradient all-reduce hooks only run through ``__call__``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, c: torch.Tensor, sigma: torch.Tensor, keep: torch.Tensor,
                *context: torch.Tensor) -> torch.Tensor:
        return self.model.denoise(x, c, sigma, keep, *context)


def _scene_model_result(run: _Run, ema: nn.Module, history: list[dict[str, float]], started: float) -> TrainResult:
    """The EMA weights and metrics of a whole-scene model, with the range its condition is drawn from when it
    is a composition's prior (continuous attributes only)."""
    metrics: dict[str, Any] = _summary(history, ("loss", "grad_norm"), started, run.config.iterations)
    dataset, attribute = run.dataset, run.attribute
    if dataset.schemas[attribute].kind == "continuous":
        labels = dataset.condition_vectors(attribute, np.arange(len(dataset)))
        metrics["condition_low"] = [float(v) for v in labels.min(0)]
        metrics["condition_high"] = [float(v) for v in labels.max(0)]
    ema.eval()
    return TrainResult(ema, metrics, history)


def _train_classifier(run: _Run) -> TrainResult:
    """Cross-entropy (or Gaussian likelihood) of the attribute given noisy images: ``E = -log p(c | x_sigma)``.

    The frozen concepts are not in the loss: an image fixes every attribute, so ``p(c_new | x)`` is
    already the factor they leave unexplained; they supply the image prior when composing. A held-out
    twentieth of the dataset measures the result.
    """
    architecture, dataset, attribute = run.architecture, run.dataset, run.attribute
    config, device, on_iteration, checkpoint = run.config, run.device, run.on_iteration, run.checkpoint
    rng, generator, model, ema, optimizer = _noise_conditioned_setup(
        run, "ratio_only",
        f"architecture {architecture.name!r} is not a classifier energy, which objective classifier needs; "
        "use --arch classifier",
    )
    held_out = np.arange(len(dataset) - max(1, len(dataset) // 20), len(dataset))
    train_size = max(1, int(held_out[0]))
    history: list[dict[str, float]] = []
    state = TrainingState({"model": model, "ema": ema}, optimizer, rng, generator, history)
    net = distributed.wrap(model)
    started = time.perf_counter()
    for iteration in range(checkpoint.restore(state), config.iterations + 1):
        index = rng.integers(0, train_size, config.batch_size)
        x0 = images_to_tensor(dataset.images[index], device)
        c = torch.from_numpy(dataset.condition_vectors(attribute, index)).to(device)
        sigma = config.noise_scales.draw(x0.shape[0], generator, device)
        noise = torch.randn(x0.shape, generator=generator, device=device)
        loss = net(x0 + sigma[:, None, None, None] * noise, c, sigma).mean()
        _clipped_step(loss, model, ema, optimizer, config, iteration, history, on_iteration)
        checkpoint.completed(iteration, state)
    metrics = _summary(history, ("loss", "grad_norm"), started, config.iterations)
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


def _noise_conditioned_setup(
    run: _Run,
    required: str,
    refusal: str,
) -> tuple[np.random.Generator, torch.Generator, nn.Module, nn.Module, torch.optim.Optimizer]:
    """Seeded generators, the new network (which must have the ``required`` flag), its EMA copy and Adam.

    Frozen concepts must be noise-conditioned too: CD energies do not compose with these.
    """
    config, device, dataset = run.config, run.device, run.dataset
    rng, generator = _seeded_streams(config, device)
    model = run.architecture.build(dataset.schemas[run.attribute], dataset.image_size,
                                   run.architecture_config).to(device)
    if not getattr(model, required, False):
        raise TrainingError(refusal)
    for concept in run.frozen:
        if not getattr(concept.model, "noise_conditioned", False):
            raise TrainingError(
                f"frozen concept {concept.version.ref} was trained by contrastive divergence; noise-conditioned "
                "concepts compose only with noise-conditioned ones (train it again with --objective denoiser)"
            )
    ema = copy.deepcopy(model).requires_grad_(False)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, betas=(0.9, 0.999))
    return rng, generator, model, ema, optimizer


def _clipped_step(
    loss: torch.Tensor,
    model: nn.Module,
    ema: nn.Module,
    optimizer: torch.optim.Optimizer,
    config: TrainConfig,
    iteration: int,
    history: list[dict[str, float]],
    on_iteration: IterationCallback | None,
    extra: Mapping[str, float] | None = None,
) -> None:
    """One update of the noise-conditioned objectives: finite check, warmed-up clipped Adam step, EMA, record."""
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
        raise _exploded(iteration, grad_norm)
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


def _update_ema(ema: nn.Module, model: nn.Module, target: float, iteration: int) -> None:
    """Exponential moving average of the weights, with a short warm-up so early steps do not linger."""
    decay = min(target, (1 + iteration) / (10 + iteration))
    with torch.no_grad():
        for average, current in zip(ema.parameters(), model.parameters()):
            average.lerp_(current, 1 - decay)


def _frozen_composition(
    frozen: Sequence[LoadedConcept], dataset: Dataset, index: np.ndarray, device: torch.device, prior: LoadedConcept
) -> Any:
    """The frozen concepts ANDed, each conditioned on every image's own label, the prior counted once."""
    terms: dict[Leaf, Term] = {}
    for i, concept in enumerate(frozen):
        labels = torch.from_numpy(dataset.condition_vectors(concept.version.attribute, index)).to(device)
        terms[Leaf(f"frozen{i}", float(i))] = Term(concept, labels)
    leaves = list(terms)
    node: Node = leaves[0] if len(leaves) == 1 else And(tuple(leaves))
    return composed_score(node, terms, prior)


def _summary(history: list[dict[str, float]], keys: Sequence[str], started: float, iterations: int) -> dict[str, float]:
    """Mean of each metric over the last tenth of the run, plus wall time."""
    seconds = time.perf_counter() - started
    tail = history[-max(1, len(history) // 10):]
    metrics = {key: float(np.mean([h[key] for h in tail])) for key in keys}
    metrics["seconds"] = round(seconds, 3)
    metrics["iterations_per_second"] = round(iterations / seconds, 4) if seconds > 0 else 0.0
    return metrics


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


def _check_gradients(model: nn.Module, iteration: int) -> None:
    """Refuse a step whose gradients overflowed: applied, they would turn every weight into NaN."""
    norm = float(torch.nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None]))
    if not math.isfinite(norm):
        raise _exploded(iteration, norm)


def _exploded(iteration: int, norm: float) -> TrainingError:
    return TrainingError(
        f"training diverged at iteration {iteration}: the gradient norm became {norm} (exploding gradients); "
        "nothing was registered (lower --lr)"
    )


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
