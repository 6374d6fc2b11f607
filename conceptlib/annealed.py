"""The annealed sampler: noise-conditioned concepts sampled from high noise to low along a composed score.

At each of ``levels`` noise scales, from ``sigma_max`` down to ``sigma_min`` on the Karras et al. (2022)
schedule: optional Langevin corrector steps at that level (ULA, or MALA with a per-sample Metropolis
accept), then an Euler-ancestral step to the next. The corrector is what makes a *product* of models sample
well: the ancestral step alone assumes the composed score is a diffusion's. The sampler knows nothing of
concepts: composition (:mod:`conceptlib.scores`) hands it one score callable. Images live in [0, 1].
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from conceptlib.batched import one_thread
from conceptlib.errors import ConceptError
from conceptlib.memory import keep_freed_memory
from conceptlib.settings import AnnealedConfig

NoisyEnergyFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``E(x, sigma) -> (B,)`` for images ``(B, 3, H, W)`` and noise scales ``(B,)``."""
ScoreFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, "torch.Tensor | None"]]
"""``(x, sigma) -> (score, energy or None)``: what the sampler follows; a pure score field has no energy."""
StepCallback = Callable[[int, int], None]


def karras_sigmas(config: AnnealedConfig, device: torch.device) -> torch.Tensor:
    """``levels`` noise scales from sigma_max down to sigma_min, dense near the bottom (rho)."""
    config = config.for_composition(residual_chain=False)  # what a caller left unset: the generic defaults
    ramp = torch.linspace(0, 1, config.levels, device=device, dtype=torch.float64)
    high, low = config.sigma_max ** (1 / config.rho), config.sigma_min ** (1 / config.rho)
    return ((high + ramp * (low - high)) ** config.rho).float()


def evaluations(config: AnnealedConfig, sigmas: torch.Tensor | None = None) -> int:
    """Network evaluations per chain of :func:`annealed_sample`, for progress bars: one per level, and the
    corrector steps of the levels that take them, counted on the float32 noise levels the sampler walks
    (``sigmas``, by default :func:`karras_sigmas` on the CPU)."""
    config = config.for_composition(residual_chain=False)
    levels = (karras_sigmas(config, torch.device("cpu")) if sigmas is None else sigmas).tolist()
    return config.levels + config.corrector_steps * sum(config.corrects(sigma) for sigma in levels)


def score(energy: NoisyEnergyFn, x: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(-grad_x E, E)`` at ``x``; the graph is freed (sampling needs no second derivative)."""
    x = x.detach().requires_grad_(True)
    e = energy(x, sigma)
    (grad,) = torch.autograd.grad(e.sum(), x)
    return -grad, e.detach()


def energy_scores(energy: NoisyEnergyFn) -> ScoreFn:
    """The score field of an energy, with the energy itself (MALA's accept test needs it)."""
    return lambda x, sigma: score(energy, x, sigma)


def annealed_sample(
    scores: ScoreFn,
    n: int,
    image_size: int,
    config: AnnealedConfig,
    generator: torch.Generator,
    device: torch.device,
    on_step: StepCallback | None = None,
) -> torch.Tensor:
    """``n`` images following ``scores`` by annealed Euler-ancestral steps plus Langevin correctors."""
    keep_freed_memory(device)
    config = config.for_composition(residual_chain=False)  # composition resolves first: see AnnealedConfig
    sigmas = karras_sigmas(config, device)
    x = 0.5 + sigmas[0] * torch.randn((n, 3, image_size, image_size), generator=generator, device=device)
    done, total = 0, evaluations(config, sigmas)

    def tick() -> None:
        nonlocal done
        done += 1
        if on_step is not None:
            on_step(done, total)

    for i in range(config.levels):
        sigma = sigmas[i]
        level = sigma.expand(n)
        if config.corrects(float(sigma)):
            for _ in range(config.corrector_steps):
                x = _corrector_step(scores, x, level, config, generator)
                tick()
        s, _ = scores(x, level)
        with one_thread(device):  # see batched.one_thread: the next evaluation's chunk threads get the cores
            denoised = x + sigma**2 * s
            if i == config.levels - 1:
                x = denoised
            else:
                following = sigmas[i + 1]
                up = config.eta * (following**2 * (sigma**2 - following**2) / sigma**2).clamp_min(0).sqrt()
                down = (following**2 - up**2).clamp_min(0).sqrt()
                noise = torch.randn(x.shape, generator=generator, device=device)
                x = denoised + (x - denoised) * (down / sigma) + up * noise
        tick()
    return x.clamp(0.0, 1.0).detach()


def _corrector_step(
    scores: ScoreFn, x: torch.Tensor, sigma: torch.Tensor, config: AnnealedConfig, generator: torch.Generator
) -> torch.Tensor:
    """One Langevin step at a fixed level; MALA accepts or rejects each sample by its energy."""
    step = config.corrector_step * sigma[0] ** 2
    s, e = scores(x, sigma)
    with one_thread(x.device):
        noise = torch.randn(x.shape, generator=generator, device=x.device)
        proposal = x + step * s + (2 * step).sqrt() * noise
    if config.corrector == "ula":
        return proposal.detach()
    s_new, e_new = scores(proposal, sigma)
    if e is None or e_new is None:
        raise ConceptError("the MALA corrector needs an energy, and this composition gives a score only; use ula")

    def log_q(to: torch.Tensor, start: torch.Tensor, s_start: torch.Tensor) -> torch.Tensor:
        return -(to - start - step * s_start).pow(2).flatten(1).sum(1) / (4 * step)

    log_accept = (-e_new + e) + log_q(x, proposal, s_new) - log_q(proposal, x, s)
    u = torch.rand(x.shape[0], generator=generator, device=x.device)
    accept = (u.log() < log_accept)[:, None, None, None]
    return torch.where(accept, proposal, x).detach()
