"""Peer samplers for the sampling frontier: diffusers' schedulers and k-diffusion's sampling functions.

The frontier benchmark hands every sampler here the *same* composed model, wrapped as a denoiser in the
k-diffusion / Karras et al. (2022) "variance exploding" convention: ``D(x, sigma)`` returns the denoised
estimate of ``x = x0 + sigma * eps`` with images in [0, 1]. Each ``PeerSampler.run`` draws
``n`` images from noise at ``SIGMA_MAX`` down the Karras schedule (rho 7) to ``SIGMA_MIN`` and then to 0,
the noise range of conceptlib's annealed sampler, so accuracy per network evaluation compares solvers, not
noise schedules. This module runs in ``benchmarks/.venv-peers`` (``make benchmarks/.venv-peers/.installed``);
``benchmarks/check_peer_samplers.py`` proves the wiring on denoisers whose exact answer is known.

Shared by every peer:

- The data mean is 0.5, not 0: every sampler works on ``y = x - 0.5`` (the denoiser is wrapped the same
  way) and starts from the same tensor ``y = sigma_0 * eps``, ``eps`` the first draw from ``generator``, as
  conceptlib's sampler starts from ``0.5 + sigma_max * eps``. The result ``y + 0.5`` is clamped to [0, 1].
- All randomness comes from ``generator``: the start, diffusers' ancestral/SDE noise (``step(...,
  generator=)``), k-diffusion's ancestral noise (a ``noise_sampler`` drawing from ``generator`` in place of
  the default ``torch.randn_like``) and its Brownian-tree SDE noise (``BrownianTreeNoiseSampler``, the
  library default for those samplers, seeded by an integer drawn from ``generator``).
- Samplers run under ``torch.no_grad()`` (k-diffusion's functions are decorated so; diffusers' pipelines
  are too): a denoiser that needs gradients (classifier guidance) must enable them itself.

diffusers (``EulerDiscreteScheduler``, ``EulerAncestralDiscreteScheduler``, ``HeunDiscreteScheduler``,
``DPMSolverMultistepScheduler``), driven through ``set_timesteps`` / ``scale_model_input`` / ``step`` as a
pipeline drives them:

- Their sigmas come from a discrete beta schedule, so each is built with ``trained_betas`` whose 1000
  training noise levels ``sigma_t = sqrt((1 - alphas_cumprod_t) / alphas_cumprod_t)`` are themselves the
  Karras rho-7 ramp from ``SIGMA_MIN`` (t = 0) to ``SIGMA_MAX`` (t = 999), with ``timestep_spacing=
  "linspace"`` (timesteps from 999 down to 0, so both ends of that range are used). Euler, Heun and
  DPM-Solver++ also get ``use_karras_sigmas=True``, which rebuilds the Karras schedule between the ends of
  the trained range; Euler ancestral has no such option and interpolates the trained levels at its
  linspace timesteps, which on this table is the same ramp up to linear interpolation between adjacent
  training levels. All end at sigma 0 (``final_sigmas_type`` "zero", the default). diffusers holds the
  betas in float32, so the ends come out at 0.004997 and 0.999999 and every level within 8e-4 of
  k-diffusion's (measured by ``benchmarks/check_peer_samplers.py``).
- The model adapter: diffusers feeds the model ``scale_model_input(sample)``, which is the
  variance-preserving point ``x_vp = y / sqrt(1 + sigma^2)`` for every one of these schedulers (the Euler
  family keeps ``sample`` in VE space and divides; DPM-Solver keeps it in VP space and passes it through),
  so the adapter evaluates ``D`` at ``y = x_vp * sqrt(1 + sigma^2)``, with ``sigma`` the scheduler's own
  ``sigmas[i]`` for the i-th model call (Heun's interleaved schedule included), i.e. the sigma the solver
  steps with, not the one its timestep (rounded to an integer by DPM-Solver) would map back to: the most
  favourable wiring for the peer. It answers ``prediction_type="sample"`` (the x0 estimate) where the
  scheduler implements it, and ``"epsilon"`` with ``eps = (y - D) / sigma`` for Euler ancestral, whose
  ``step`` raises NotImplementedError for "sample"; epsilon is the same for the VE and VP views.
- Start: ``init_noise_sigma`` (= sigma_0 with linspace spacing) for the Euler family; DPM-Solver's
  ``init_noise_sigma`` is 1, which assumes ``alpha_T`` near 0, untrue at sigma_max 1 (``alpha_T`` = 0.71),
  so it starts from the same VE point expressed in VP, ``sigma_0 / sqrt(1 + sigma_0^2) * eps``.
- DPM-Solver++ 2M is ``algorithm_type="dpmsolver++"``, ``solver_order=2``; its SDE variant is
  ``"sde-dpmsolver++"``. Both keep the defaults ``lower_order_final=True`` (first order on the last steps
  below 15 steps) and ``solver_type="midpoint"``.

k-diffusion 0.1.1.post1 (``sample_euler``, ``sample_euler_ancestral``, ``sample_heun``, ``sample_dpm_2``,
``sample_dpmpp_2m``, ``sample_dpmpp_2m_sde``, ``sample_dpmpp_sde``, defaults otherwise: ``s_churn`` 0,
``eta`` 1) gets ``get_sigmas_karras(steps, SIGMA_MIN, SIGMA_MAX, rho=7)`` with a zero appended, its own
schedule function. The package ``__init__`` imports everything, torchvision included, which cannot be
installed beside this torch wheel, and ``k_diffusion/utils.py`` imports torchvision at the top too, so
neither is imported: ``k_diffusion/sampling.py`` is loaded alone under a private parent package whose
``utils`` is a stub holding the one helper ``sampling`` uses, ``append_dims``. Its own imports (scipy,
torchdiffeq, torchsde, tqdm) are installed; progress bars are turned off. ``sample_euler``, ``sample_heun``
and ``sample_dpm_2`` draw a ``torch.randn_like`` every step that they only use when ``s_churn`` > 0: they
advance torch's global generator, never the one passed in. The Brownian tree has a cost of its own: about
0.12 s a noise query for 2000 images of 3x8x8 on one core here (dpmpp_sde makes two a step), the library's
default and so part of those samplers' wall time.

Evaluations are calls of ``D`` per sample: one a step, two for Heun, DPM-2 and DPM-Solver++ SDE (k-diffusion)
except on the last step to sigma 0, which is an Euler step (diffusers' Heun likewise).
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from importlib import metadata
from types import ModuleType
from typing import Any

import numpy as np
import torch

SIGMA_MIN = 0.005
SIGMA_MAX = 1.0
RHO = 7.0
DATA_MEAN = 0.5
TRAIN_TIMESTEPS = 1000

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Run = Callable[[Denoiser, int, int, int, torch.Generator, torch.device], torch.Tensor]


@dataclass(frozen=True)
class PeerSampler:
    """One peer: ``run(denoise, n, image_size, steps, generator, device)`` -> (n, 3, H, W) in [0, 1]."""

    name: str
    library: str
    evaluations: Callable[[int], int]
    run: Run


def one_per_step(steps: int) -> int:
    return steps


def two_per_step_but_last(steps: int) -> int:
    """Heun-type samplers: a second evaluation each step except the last, an Euler step to sigma 0."""
    return 2 * steps - 1


def centred(denoise: Denoiser) -> Denoiser:
    """The denoiser on ``y = x - DATA_MEAN``: the samplers assume zero-mean data and zero-mean noise."""
    return lambda y, sigma: denoise(y + DATA_MEAN, sigma) - DATA_MEAN


def start_noise(n: int, image_size: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """Unit noise for the start, the first draw from ``generator`` for every sampler."""
    return torch.randn((n, 3, image_size, image_size), generator=generator, device=device)


def finish(y: torch.Tensor) -> torch.Tensor:
    return (y + DATA_MEAN).clamp(0.0, 1.0)


def check_steps(steps: int) -> None:
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")


# --- diffusers -------------------------------------------------------------------------------------------


def karras_trained_betas() -> np.ndarray:
    """Betas whose training noise levels are the Karras rho-7 ramp from SIGMA_MIN (t = 0) to SIGMA_MAX."""
    ramp = np.linspace(0.0, 1.0, TRAIN_TIMESTEPS)
    low, high = SIGMA_MIN ** (1 / RHO), SIGMA_MAX ** (1 / RHO)
    sigmas = (low + ramp * (high - low)) ** RHO
    alphas_cumprod = 1.0 / (1.0 + sigmas**2)
    return 1.0 - alphas_cumprod / np.concatenate([[1.0], alphas_cumprod[:-1]])


@dataclass(frozen=True)
class SchedulerSpec:
    """How one diffusers scheduler is built and driven (the module docstring says why)."""

    name: str
    scheduler: str
    config: dict[str, Any]
    variance_preserving: bool  # ``sample`` lives in VP space (DPM-Solver) rather than VE (the Euler family)
    stochastic: bool  # ``step`` takes a generator
    evaluations: Callable[[int], int]


DIFFUSERS_SPECS = (
    SchedulerSpec("diffusers Euler", "EulerDiscreteScheduler",
                  {"prediction_type": "sample", "use_karras_sigmas": True}, False, False, one_per_step),
    SchedulerSpec("diffusers Euler ancestral", "EulerAncestralDiscreteScheduler",
                  {"prediction_type": "epsilon"}, False, True, one_per_step),
    SchedulerSpec("diffusers Heun", "HeunDiscreteScheduler",
                  {"prediction_type": "sample", "use_karras_sigmas": True}, False, False, two_per_step_but_last),
    SchedulerSpec("diffusers DPM-Solver++ 2M", "DPMSolverMultistepScheduler",
                  {"prediction_type": "sample", "use_karras_sigmas": True, "algorithm_type": "dpmsolver++",
                   "solver_order": 2}, True, False, one_per_step),
    SchedulerSpec("diffusers DPM-Solver++ 2M SDE", "DPMSolverMultistepScheduler",
                  {"prediction_type": "sample", "use_karras_sigmas": True, "algorithm_type": "sde-dpmsolver++",
                   "solver_order": 2}, True, True, one_per_step),
)


def make_scheduler(diffusers: ModuleType, spec: SchedulerSpec) -> Any:
    scheduler_class = getattr(diffusers, spec.scheduler)
    return scheduler_class(num_train_timesteps=TRAIN_TIMESTEPS, trained_betas=karras_trained_betas(),
                           timestep_spacing="linspace", **spec.config)


@torch.no_grad()
def run_diffusers(diffusers: ModuleType, spec: SchedulerSpec, denoise: Denoiser, n: int, image_size: int,
                  steps: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    check_steps(steps)
    scheduler = make_scheduler(diffusers, spec)
    scheduler.set_timesteps(steps, device=device)
    sigmas = scheduler.sigmas.to(device)
    denoise_y = centred(denoise)
    eps = start_noise(n, image_size, generator, device)
    sigma_0 = sigmas[0]
    sample = eps * (sigma_0 / (1 + sigma_0**2).sqrt() if spec.variance_preserving else scheduler.init_noise_sigma)
    epsilon = scheduler.config.prediction_type == "epsilon"
    step_args = {"generator": generator} if spec.stochastic else {}
    for i, t in enumerate(scheduler.timesteps):
        sigma = sigmas[i]
        y = scheduler.scale_model_input(sample, t) * (1 + sigma**2).sqrt()
        denoised = denoise_y(y, sigma.expand(n))
        output = (y - denoised) / sigma if epsilon else denoised
        sample = scheduler.step(output, t, sample, **step_args).prev_sample
    return finish(sample)  # at sigma 0 the VP and VE points coincide


# --- k-diffusion -----------------------------------------------------------------------------------------

K_PACKAGE = "_peer_k_diffusion"


def append_dims(x: torch.Tensor, target_dims: int) -> torch.Tensor:
    """Stand-in for ``k_diffusion.utils.append_dims``, the one helper ``sampling`` takes from ``utils``."""
    return x[(...,) + (None,) * (target_dims - x.ndim)]


def load_k_sampling() -> ModuleType:
    """``k_diffusion/sampling.py`` alone, under a stub parent package: the real ``__init__`` and ``utils``
    import torchvision."""
    if f"{K_PACKAGE}.sampling" in sys.modules:
        return sys.modules[f"{K_PACKAGE}.sampling"]
    found = importlib.util.find_spec("k_diffusion")  # locates the package without running its __init__
    if found is None or not found.submodule_search_locations:
        raise ImportError("k-diffusion is not installed")
    package, utils = ModuleType(K_PACKAGE), ModuleType(f"{K_PACKAGE}.utils")
    package.__path__ = []
    utils.append_dims = append_dims
    package.utils = utils
    spec = importlib.util.spec_from_file_location(
        f"{K_PACKAGE}.sampling", f"{found.submodule_search_locations[0]}/sampling.py")
    sampling = importlib.util.module_from_spec(spec)
    sys.modules.update({K_PACKAGE: package, utils.__name__: utils, sampling.__name__: sampling})
    try:
        spec.loader.exec_module(sampling)
    except BaseException:
        for name in (K_PACKAGE, utils.__name__, sampling.__name__):
            sys.modules.pop(name, None)
        raise
    return sampling


@dataclass(frozen=True)
class KSpec:
    """One k-diffusion sampling function and where its noise comes from."""

    function: str
    noise: str  # "none", "ancestral" (fresh normal draws) or "brownian" (the library's Brownian tree)
    evaluations: Callable[[int], int]

    @property
    def name(self) -> str:
        return f"k-diffusion {self.function.removeprefix('sample_')}"


K_SPECS = (
    KSpec("sample_euler", "none", one_per_step),
    KSpec("sample_euler_ancestral", "ancestral", one_per_step),
    KSpec("sample_heun", "none", two_per_step_but_last),
    KSpec("sample_dpm_2", "none", two_per_step_but_last),
    KSpec("sample_dpmpp_2m", "none", one_per_step),
    KSpec("sample_dpmpp_2m_sde", "brownian", one_per_step),
    KSpec("sample_dpmpp_sde", "brownian", two_per_step_but_last),
)


def k_noise_sampler(sampling: ModuleType, kind: str, y: torch.Tensor, sigmas: torch.Tensor,
                    generator: torch.Generator) -> dict[str, Any]:
    """The ``noise_sampler`` argument that makes the run's noise come from ``generator``."""
    if kind == "ancestral":
        return {"noise_sampler": lambda sigma, sigma_next: torch.randn(y.shape, generator=generator,
                                                                       device=y.device)}
    if kind == "brownian":
        seed = int(torch.randint(0, 2**63 - 1, (), generator=generator, device=generator.device))
        return {"noise_sampler": sampling.BrownianTreeNoiseSampler(y, sigmas[sigmas > 0].min(), sigmas.max(),
                                                                   seed=seed)}
    return {}


def run_k_diffusion(sampling: ModuleType, spec: KSpec, denoise: Denoiser, n: int, image_size: int, steps: int,
                    generator: torch.Generator, device: torch.device) -> torch.Tensor:
    check_steps(steps)
    sigmas = sampling.get_sigmas_karras(steps, SIGMA_MIN, SIGMA_MAX, rho=RHO, device=device)
    y = start_noise(n, image_size, generator, device) * sigmas[0]
    extra = k_noise_sampler(sampling, spec.noise, y, sigmas, generator)
    return finish(getattr(sampling, spec.function)(centred(denoise), y, sigmas, disable=True, **extra))


# --- what is available -----------------------------------------------------------------------------------


def diffusers_samplers() -> list[PeerSampler]:
    import diffusers

    library = f"diffusers {metadata.version('diffusers')}"
    return [PeerSampler(spec.name, library, spec.evaluations, partial(run_diffusers, diffusers, spec))
            for spec in DIFFUSERS_SPECS]


def k_diffusion_samplers() -> list[PeerSampler]:
    sampling = load_k_sampling()
    library = f"k-diffusion {metadata.version('k-diffusion')}"
    return [PeerSampler(spec.name, library, spec.evaluations, partial(run_k_diffusion, sampling, spec))
            for spec in K_SPECS]


LIBRARIES: dict[str, tuple[Callable[[], list[PeerSampler]], list[str]]] = {
    "diffusers": (diffusers_samplers, [spec.name for spec in DIFFUSERS_SPECS]),
    "k-diffusion": (k_diffusion_samplers, [spec.name for spec in K_SPECS]),
}


def load() -> tuple[list[PeerSampler], dict[str, str]]:
    """Every sampler whose library imports, and why each of the others is missing."""
    samplers: list[PeerSampler] = []
    missing: dict[str, str] = {}
    for library, (build, names) in LIBRARIES.items():
        try:
            samplers += build()
        except ImportError as error:
            missing.update(dict.fromkeys(names, f"{library} does not import: {error}"))
    return samplers, missing


def peer_samplers() -> list[PeerSampler]:
    """Every peer sampler whose library imports here; ``skipped()`` says why any other is missing."""
    return load()[0]


def skipped() -> dict[str, str]:
    """Sampler name -> why it is not in ``peer_samplers()``."""
    return load()[1]
