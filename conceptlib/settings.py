"""What every job can be told, and the defaults users get: one settings object per job, all torch-free.

A constructor's keywords *are* the saved settings (diffusers' habit): a sidecar or a version records
``to_json()``, and the CLI's options take their defaults from these classes, so a notebook that calls the
library with default settings gets what ``concept compose`` and ``concept add`` give. Sampling:
:class:`SamplerSettings` (with :class:`Guidance`, :class:`AnnealedConfig`, :class:`LangevinConfig`).
Training: one config per objective (:data:`TRAIN_CONFIGS`). Measured reasons for the defaults are in
docs/design.md.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from conceptlib.errors import ConceptError, TrainingError

# ------------------------------------------------------------------ samplers
CORRECTORS = ("none", "ula", "mala")
INITS = ("noise", "gray")
RESIDUAL_CORRECTOR_ABOVE = 0.05
"""Residual chains take corrector steps only at noise levels above this (``corrector_above`` left unset):
below it the chain's score is too rough to walk on. Residual stage 3 on seed 0, 64 samples (tune split): all
three right 0.906 and looks real 0.64 with correctors at every level; 0.938 and 0.92 above 0.05; 0.812 and
0.92 with one corrector step per level; 0.56 and 0.92 with none."""
LEVELS = 40
"""Noise levels of a composition that is not a residual chain (``levels`` left unset): measured on a denoiser
prior with classifier concepts, 20 levels left two rows below target (docs/design.md)."""
RESIDUAL_LEVELS = 10
"""Noise levels on a residual chain (``levels`` left unset). The triple on the tune split, 200 samples,
benchmarks/results/tuning/sampling_frontier-tune.md: 10 levels spend 34 evaluations per sample against 144 at
40 levels, all three right 0.945 against 0.955, with the stronger two-sample critic 0.882 against 0.902."""
ETA = 1.0
RESIDUAL_ETA = 0.5
"""A residual chain's fresh noise per step down (``eta`` left unset): at 10 levels, 1.0 drew the speckle the
two-sample critic finds most easily (0.973 against 0.882 at 0.5; 0 gave 0.897), same tune samples."""


@dataclass(frozen=True)
class AnnealedConfig:
    """The annealed sampler (noise-conditioned concepts): noise levels, and Langevin correctors at each.

    ``levels``, ``eta`` and ``corrector_above`` left unset (None) take the defaults measured for the kind of
    composition (:meth:`for_composition`, which :mod:`conceptlib.sampling` applies); the sampler itself, which
    knows nothing of chains, gives what is still unset the defaults of a composition that is not one.
    """

    levels: int | None = None
    """Noise levels: :data:`RESIDUAL_LEVELS` on a residual chain, else :data:`LEVELS`."""
    sigma_min: float = 0.005
    sigma_max: float = 1.0
    rho: float = 7.0
    corrector: str = "ula"
    corrector_steps: int = 4
    """Langevin steps per level: four of 0.3 sigma^2 finish objects that one of 0.1 left as dark blobs."""
    corrector_step: float = 0.3
    """Langevin step as a fraction of sigma^2 at each level (the score's natural scale)."""
    eta: float | None = None
    """Fresh noise of each step down, as a fraction of the ancestral amount: 1 = Euler-ancestral, 0 = the
    deterministic probability-flow (DDIM) step. :data:`RESIDUAL_ETA` on a residual chain, else :data:`ETA`."""
    corrector_above: float | None = None
    """Corrector steps only at levels whose sigma is at least this. ``None``: every level, except on a residual
    chain (:meth:`for_composition`), where it is :data:`RESIDUAL_CORRECTOR_ABOVE`."""

    def __post_init__(self) -> None:
        if self.levels is not None and self.levels < 2:
            raise ConceptError(f"levels must be at least 2; got {self.levels}")
        if not 0 < self.sigma_min < self.sigma_max:
            raise ConceptError("noise scales must satisfy 0 < sigma_min < sigma_max")
        if self.corrector not in CORRECTORS:
            raise ConceptError(f"unknown corrector {self.corrector!r}; use one of {', '.join(CORRECTORS)}")
        if self.corrector_steps < 0 or self.corrector_step <= 0:
            raise ConceptError("corrector steps must be >= 0 and the corrector step positive")
        if self.eta is not None and not 0 <= self.eta <= 1:
            raise ConceptError(f"eta must lie in [0, 1]; got {self.eta}")
        if self.corrector_above is not None and not (math.isfinite(self.corrector_above) and self.corrector_above >= 0):
            raise ConceptError(f"--corrector-above must be a finite number >= 0; got {self.corrector_above}")

    def for_composition(self, residual_chain: bool) -> AnnealedConfig:
        """The settings a composition samples with: unset ``levels``, ``eta`` and (on a residual chain)
        ``corrector_above`` resolved for its kind."""
        return dataclasses.replace(
            self,
            levels=self.levels if self.levels is not None else (RESIDUAL_LEVELS if residual_chain else LEVELS),
            eta=self.eta if self.eta is not None else (RESIDUAL_ETA if residual_chain else ETA),
            corrector_above=(RESIDUAL_CORRECTOR_ABOVE if self.corrector_above is None and residual_chain
                             else self.corrector_above))

    def corrects(self, sigma: float) -> bool:
        """Whether the level at ``sigma`` takes corrector steps."""
        return self.corrector != "none" and sigma >= (self.corrector_above or 0.0)

    def to_json(self) -> dict[str, object]:
        """The settings, without those left unset (every level corrects; levels and eta by composition)."""
        fields = {key: value for key, value in asdict(self).items()
                  if value is not None or key not in ("corrector_above", "levels", "eta")}
        return {"name": "annealed", **fields}


@dataclass(frozen=True)
class LangevinConfig:
    """Langevin dynamics (contrastive-divergence concepts, and their training negatives)."""

    steps: int = 40
    step_size: float = 10.0
    """Multiplies the energy's input gradient. At 100 (the prototype's) training flattened the ``small``
    network's energy within 20 iterations (mean input gradient 7e-4 -> 1e-5 per pixel): every slope it
    learned, 20 steps of the negatives' chains slid down at once, and CD learned nothing (position 0.09 on
    the report split). At 10 the slope stays (2e-4 - 8e-4) and position is learned (docs/quality.md, "The
    paper's objective")."""
    noise: float = 0.005
    grad_clip: float | None = None
    init: str = "noise"

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ConceptError(f"steps must be at least 1; got {self.steps}")
        if self.step_size <= 0 or self.noise < 0:
            raise ConceptError("step size must be positive and noise non-negative")
        if self.init not in INITS:
            raise ConceptError(f"unknown init {self.init!r}; use one of {', '.join(INITS)}")

    def to_json(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class ClassifierBoost:
    """Classifier guidance that grows as the noise falls: ``w(sigma) = w * clamp(below / sigma, 1, maximum)``.

    Why: a sampler step moves ``x`` by ``sigma^2`` times the score, so a constant weight lets a classifier's
    pull fade just where a small object gets its outline. ``maximum = 1`` is a constant weight.
    """

    below: float = 0.3
    maximum: float = 8.0

    def __post_init__(self) -> None:
        if not (self.below > 0 and self.maximum >= 1):
            raise ConceptError(f"classifier boost needs below > 0 and max >= 1; got below {self.below}, "
                               f"max {self.maximum}")

    def to_json(self) -> dict[str, float]:
        """The settings under the names the CLI's options have (``--classifier-boost-below``, ``-max``)."""
        return {"classifier_boost_below": self.below, "classifier_boost_max": self.maximum}

    @classmethod
    def from_json(cls, values: Mapping[str, Any]) -> ClassifierBoost:
        """From :meth:`to_json`'s names: a sidecar, ``option_defaults``, parsed arguments."""
        return cls(float(values["classifier_boost_below"]), float(values["classifier_boost_max"]))

    def factor(self, sigma: Any) -> Any:
        """``(B,)`` multipliers of the classifier guidance at noise levels ``sigma`` ``(B,)`` (a tensor)."""
        return (self.below / sigma).clamp(1.0, self.maximum)


NO_BOOST = ClassifierBoost(maximum=1.0)


@dataclass(frozen=True)
class Guidance:
    """How hard each kind of leaf is followed (see :mod:`conceptlib.scores`); all 1 and no boost is the plain
    product of the concepts' distributions, which training composes with (:data:`PLAIN`)."""

    scale: float = 1.5
    """Every concept's ``E(x | c) - E(x | null)`` (classifier-free guidance); ``--guidance``."""
    classifier: float = 3.0
    """Classifier concepts' ``-log p(c | x)``; ``--classifier-guidance``."""
    prior: float = 1.0
    """The prior's condition drawn per sample when the expression does not name it (1 = sample ``p(x)``
    exactly); ``--prior-guidance``."""
    boost: ClassifierBoost = field(default_factory=ClassifierBoost)
    classifier_temperature: float = 2.0
    """Softmax temperature categorical classifiers are read at over a denoiser prior (1 = as trained)."""
    residual: float = 1.0
    """Each residual concept's difference to its chain's estimate, in place of ``scale`` (1 = the chain's own
    conditional estimate; see :func:`conceptlib.scores.chain_score`); ``--residual-guidance``."""

    def __post_init__(self) -> None:
        if min(self.scale, self.classifier, self.prior) <= 0:
            raise ConceptError(f"--guidance, --classifier-guidance and --prior-guidance must be positive; got "
                               f"{self.scale}, {self.classifier}, {self.prior}")
        if not self.classifier_temperature > 0:
            raise ConceptError(f"--classifier-temperature must be positive; got {self.classifier_temperature}")
        if not (math.isfinite(self.residual) and self.residual > 0):
            raise ConceptError(f"--residual-guidance must be a finite number above 0; got {self.residual}")

    def to_json(self, residual: bool = True) -> dict[str, float]:
        """Under the CLI's option names, as sidecars record them (``residual``: with ``residual_guidance``,
        which a sidecar records only when residual concepts were composed)."""
        return {"guidance": self.scale, "classifier_guidance": self.classifier, "prior_guidance": self.prior,
                **self.boost.to_json(), "classifier_temperature": self.classifier_temperature,
                **({"residual_guidance": self.residual} if residual else {})}

    @classmethod
    def from_json(cls, values: Mapping[str, Any]) -> Guidance:
        """From :meth:`to_json`'s names; ``residual_guidance`` is 1 where a record has none (before it existed,
        or no residual concept was composed)."""
        return cls(scale=float(values["guidance"]), classifier=float(values["classifier_guidance"]),
                   prior=float(values["prior_guidance"]), boost=ClassifierBoost.from_json(values),
                   classifier_temperature=float(values["classifier_temperature"]),
                   residual=float(values.get("residual_guidance", 1.0)))


PLAIN = Guidance(scale=1.0, classifier=1.0, prior=1.0, boost=NO_BOOST, classifier_temperature=1.0)


@dataclass(frozen=True)
class SamplerSettings:
    """Everything a composed sample depends on besides the expression, the concepts and the seed."""

    annealed: AnnealedConfig = field(default_factory=AnnealedConfig)
    langevin: LangevinConfig = field(default_factory=LangevinConfig)
    guidance: Guidance = field(default_factory=Guidance)
    or_temperature: float = 1.0
    """``T`` of OR, ``--temperature``: over a denoiser prior each alternative is drawn in proportion to its
    weight ``^(1/T)`` (:func:`conceptlib.sampling.mixture_probabilities`); elsewhere ``-T logsumexp(-E / T)``."""
    batch_size: int = 64

    def __post_init__(self) -> None:
        if not self.or_temperature > 0:
            raise ConceptError(f"--temperature must be positive; got {self.or_temperature}")
        if self.batch_size < 1:
            raise ConceptError(f"--batch-size must be at least 1; got {self.batch_size}")

    @staticmethod
    def option_names() -> frozenset[str]:
        """The names :meth:`from_options` reads."""
        fields = [f.name for config in (AnnealedConfig, LangevinConfig) for f in dataclasses.fields(config)]
        return frozenset([*fields, *Guidance().to_json(), "temperature", "batch_size"])

    @classmethod
    def from_options(cls, values: Mapping[str, Any]) -> SamplerSettings:
        """From values under the CLI's option names (parsed arguments, ``option_defaults``); names that are
        absent keep their defaults (``concept eval`` has no Langevin options)."""
        default = cls()
        annealed = {f.name: values[f.name] for f in dataclasses.fields(AnnealedConfig) if f.name in values}
        langevin = {f.name: values[f.name] for f in dataclasses.fields(LangevinConfig) if f.name in values}
        guidance = {**default.guidance.to_json(), **values}
        return cls(annealed=AnnealedConfig(**annealed), langevin=LangevinConfig(**langevin),
                   guidance=Guidance.from_json(guidance),
                   or_temperature=float(values.get("temperature", default.or_temperature)),
                   batch_size=int(values.get("batch_size", default.batch_size)))


# ------------------------------------------------------------------ training
SCHEDULES = ("constant", "cosine")


@dataclass(frozen=True)
class NoiseConfig:
    """Noise scales seen in training: log-normal around the scales where objects form, clipped."""

    sigma_min: float = 0.005
    sigma_max: float = 1.0
    log_mean: float = math.log(0.15)
    log_std: float = 1.2


@dataclass(frozen=True)
class TrainConfig:
    """What every objective is told; each objective's config adds its own settings and defaults."""

    objective: ClassVar[str]
    architecture: ClassVar[str]
    """The architecture a version of this objective gets when ``--arch`` is not given."""
    iterations: int
    batch_size: int
    lr: float = 1e-3
    seed: int = 0

    def to_json(self) -> dict[str, Any]:
        """The settings a version records, keys in the order versions have always recorded them."""
        data = {"objective": self.objective, **asdict(self)}
        return {key: data[key] for key in RECORDED_ORDER if key in data}


@dataclass(frozen=True)
class CdConfig(TrainConfig):
    """Contrastive divergence (paper eq. 2-3)."""

    objective: ClassVar[str] = "cd"
    architecture: ClassVar[str] = "small"
    iterations: int = 300
    batch_size: int = 64
    l2: float = 1.0
    """alpha of eq. 2: keeps energies near zero."""
    langevin: LangevinConfig = field(default_factory=lambda: LangevinConfig(steps=20))
    """How the negatives are drawn."""
    buffer_size: int = 10_000
    reinit: float = 0.05
    """Fraction of chains restarted from noise instead of the replay buffer."""
    real_init: float = 0.3
    """Fraction of chains started from real images (with other labels)."""


@dataclass(frozen=True)
class NoisyTrainConfig(TrainConfig):
    """What the noise-conditioned objectives share: noise levels, clipped Adam with warm-up, EMA weights."""

    noise_scales: NoiseConfig = field(default_factory=NoiseConfig)
    ema: float = 0.999
    grad_clip: float = 1.0
    warmup: int = 100
    schedule: str = "constant"
    """Learning rate after warm-up: ``constant``, or ``cosine`` decay to zero at the last iteration."""

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise TrainingError(f"unknown schedule {self.schedule!r}; use one of {', '.join(SCHEDULES)}")


@dataclass(frozen=True)
class ClassifierConfig(NoisyTrainConfig):
    """``-log p(c | noisy x)``: the factor a concept adds to frozen ones."""

    objective: ClassVar[str] = "classifier"
    architecture: ClassVar[str] = "classifier"
    iterations: int = 1500
    batch_size: int = 64


@dataclass(frozen=True)
class DsmConfig(NoisyTrainConfig):
    """Denoising score matching of a noise-conditioned energy."""

    objective: ClassVar[str] = "dsm"
    architecture: ClassVar[str] = "unet"
    iterations: int = 1800
    batch_size: int = 48
    condition_dropout: float = 0.2
    """Fraction of samples trained with the null condition, so the concept also learns ``E(x | null)``."""


@dataclass(frozen=True)
class DenoiserConfig(DsmConfig):
    """A plain EDM denoiser of whole scenes: the prior other concepts are composed with."""

    objective: ClassVar[str] = "denoiser"
    iterations: int = 5500
    batch_size: int = 24
    schedule: str = "cosine"


@dataclass(frozen=True)
class ResidualConfig(DenoiserConfig):
    """A correction to the frozen concepts' composed denoiser, trained with them in its loss."""

    objective: ClassVar[str] = "residual"
    architecture: ClassVar[str] = "residual"
    iterations: int = 4000


TRAIN_CONFIGS: dict[str, type[TrainConfig]] = {
    c.objective: c for c in (DenoiserConfig, ResidualConfig, DsmConfig, ClassifierConfig, CdConfig)
}
OBJECTIVES = tuple(TRAIN_CONFIGS)
RECORDED_ORDER = ("objective", "iterations", "batch_size", "lr", "seed", "l2", "langevin", "buffer_size", "reinit",
                  "real_init", "noise_scales", "condition_dropout", "ema", "grad_clip", "warmup", "schedule")


def resolve_objective(objective: str, with_frozen: bool) -> str:
    """``auto``: a concept alone models whole scenes (denoiser); one added to frozen ones learns, with them
    in its loss, the correction their composition needs on its data (residual)."""
    if objective == "auto":
        return "residual" if with_frozen else "denoiser"
    if objective not in TRAIN_CONFIGS:
        raise TrainingError(f"unknown objective {objective!r}; use one of {', '.join(OBJECTIVES)}")
    return objective


def train_config(objective: str, values: Mapping[str, Any]) -> TrainConfig:
    """``objective``'s config from ``values``, taking the ones it has (the CLI passes every objective's
    options); ``None`` keeps the default."""
    config = TRAIN_CONFIGS[objective]
    names = {f.name for f in dataclasses.fields(config)}
    return config(**{k: v for k, v in values.items() if k in names and v is not None})
