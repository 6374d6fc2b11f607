"""Concept inference by energy minimisation (paper eq. 11-12, section 3.5).

``c* = argmin_c sum_i E(x_i | c)`` over one or many observations ``x_i`` of the same scene: first an
exhaustive search over a grid of candidate conditions (every name of a categorical concept, a grid over
a continuous box), then, for continuous concepts, gradient refinement of the best candidates.

A noise-conditioned concept (objective dsm) is scored by its energy averaged over a few noise levels
and fixed noise draws, ``E(x + sigma eps, sigma | c)``: the denoising view of ``-log p(x | c)`` used by
diffusion classifiers; a plain denoiser (objective denoiser) by its denoising error
``||x - D(x + sigma eps, sigma | c)||^2 / 2 sigma^2``, the same view without an energy network; a residual
concept by the denoising error of the whole chain it stacks on. The same draws are used for every
candidate, so the comparison is paired.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from conceptlib.concepts import LoadedConcept
from conceptlib.errors import ConceptError
from conceptlib.residual import Chain, ChainReader
from conceptlib.schema import Categorical
from conceptlib.sources import Progress

DEFAULT_SIGMAS = (0.05, 0.1, 0.2)


@dataclass(frozen=True)
class InferenceConfig:
    grid: int = 9
    """Candidates per continuous axis."""
    refine_steps: int = 30
    refine_lr: float = 0.01
    sigmas: tuple[float, ...] = DEFAULT_SIGMAS
    draws: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        if self.grid < 2 or self.refine_steps < 0 or self.draws < 1 or not self.sigmas:
            raise ConceptError("inference needs --grid >= 2, refine steps >= 0, draws >= 1 and a noise level")


@dataclass(frozen=True)
class Inferred:
    """The inferred condition: a name (categorical) or a tuple of numbers, with its summed energy."""

    value: str | tuple[float, ...]
    energy: float
    candidates: list[tuple[str | tuple[float, ...], float]]
    """Every grid candidate with its energy, lowest first (the top few, for display)."""


def summed_energy(
    concept: LoadedConcept, images: torch.Tensor, conditions: torch.Tensor, config: InferenceConfig,
    chain: Chain | None = None,
) -> torch.Tensor:
    """``sum_i E(x_i | c)`` for each row ``c`` of ``conditions`` ``(K, dim)`` -> ``(K,)``, differentiable in c."""
    n, k = images.shape[0], conditions.shape[0]
    return image_energies(concept, images, conditions.repeat_interleave(n, dim=0), config, repeats=k,
                          chain=chain).view(k, n).sum(1)


def image_energies(
    concept: LoadedConcept, images: torch.Tensor, conditions: torch.Tensor, config: InferenceConfig,
    repeats: int = 1, shared_noise: bool = False, chain: Chain | None = None, null: bool = False,
) -> torch.Tensor:
    """``E(x_j | c_j)`` per row for ``x = images`` tiled ``repeats`` times and ``conditions`` ``(repeats * N, dim)``.

    A noise-conditioned concept is averaged over ``config``'s noise levels and draws; each image gets the
    same noise in every repeat, so energies of one image under different conditions compare paired.
    ``shared_noise`` gives every row the noise a single image would get, so a batch of independent
    inferences computes exactly what one call per image would. ``null`` reads a noise-conditioned concept
    at its null condition (``conditions`` then only give the shape): the image's energy under the whole
    scene model, ``-log p(x)`` up to a constant, which says how much an image looks like the training data.

    A residual concept (``chain``: the chain it stacks on, see :mod:`conceptlib.residual`) is scored by the
    denoising error of the whole chain with it at ``c`` (at null with ``null``) and every other member at null.
    """
    model = concept.model
    x = images.repeat(repeats, 1, 1, 1)
    if not concept.kind.noise_conditioned:
        return model(x, conditions)
    generator = torch.Generator(device=images.device).manual_seed(config.seed)
    total = torch.zeros(x.shape[0], device=images.device)
    keep = torch.full((x.shape[0],), 0.0 if null else 1.0, device=images.device)
    templates = ChainReader.template_reader(chain, x, differentiable=True) if chain is not None else None
    shape = (1, *images.shape[1:]) if shared_noise else images.shape
    for sigma in config.sigmas:
        for _ in range(config.draws):
            noise = torch.randn(shape, generator=generator, device=images.device).expand(images.shape)
            noise = noise.repeat(repeats, 1, 1, 1)
            s = torch.full((x.shape[0],), sigma, device=images.device)
            if chain is not None:
                reader = ChainReader.at(chain, x + sigma * noise, s, differentiable=True, templates=templates)
                error = x - reader.total({concept.version.concept: None if null else conditions})
                total = total + error.pow(2).flatten(1).sum(1) / (2 * sigma**2)
            elif concept.kind.denoises:  # its denoising error: the diffusion-classifier view of -log p(x | c)
                error = x - model.denoise(x + sigma * noise, conditions, s, keep)
                total = total + error.pow(2).flatten(1).sum(1) / (2 * sigma**2)
            elif null:
                total = total + model(x + sigma * noise, conditions, s, keep)
            else:
                total = total + model(x + sigma * noise, conditions, s)
    return total / (len(config.sigmas) * config.draws)


def _candidates(
    concept: LoadedConcept, config: InferenceConfig, device: torch.device
) -> tuple[torch.Tensor, list[str | tuple[float, ...]]]:
    """The grid searched first: every name of a categorical concept, a grid over a continuous one's range."""
    schema = concept.version.schema
    if isinstance(schema, Categorical):
        return torch.eye(schema.dim, device=device), list(schema.values)
    low, high = concept.trained_range()
    axes = [np.linspace(low[d], high[d], config.grid) for d in range(schema.dim)]
    points = list(itertools.product(*axes))
    return torch.tensor(points, dtype=torch.float32, device=device), [tuple(float(v) for v in p) for p in points]


def infer(
    concept: LoadedConcept, images: torch.Tensor, config: InferenceConfig | None = None, batch: int = 256,
    chain: Chain | None = None, on_progress: Progress | None = None,
) -> Inferred:
    """The condition of ``concept`` that best explains all of ``images`` ``(N, 3, H, W)`` together
    (``chain``: the chain a residual concept stacks on).

    ``on_progress(done, total)`` counts network calls: the grid's batches, then the refinement steps.
    """
    config = config or InferenceConfig()
    schema = concept.version.schema
    candidates, labels = _candidates(concept, config, images.device)
    per_call = max(1, batch // images.shape[0])
    refines = not isinstance(schema, Categorical) and config.refine_steps > 0
    calls = _Calls(-(-len(candidates) // per_call) + (config.refine_steps + 1 if refines else 0), on_progress)
    with torch.no_grad():
        energies = torch.cat([
            calls.count(summed_energy(concept, images, candidates[i : i + per_call], config, chain))
            for i in range(0, len(candidates), per_call)
        ])
    order = torch.argsort(energies).tolist()
    ranked = [(labels[i], float(energies[i])) for i in order]
    if not refines:
        return Inferred(ranked[0][0], ranked[0][1], ranked[:5])
    concept.model.requires_grad_(False)
    best = _refine(candidates[order[0]],
                   lambda c: calls.count(summed_energy(concept, images, c[None], config, chain)), config,
                   concept.trained_range())
    with torch.no_grad():
        energy = float(calls.count(summed_energy(concept, images, best[None], config, chain))[0])
    if energy > ranked[0][1]:
        return Inferred(ranked[0][0], ranked[0][1], ranked[:5])
    return Inferred(tuple(float(v) for v in best.tolist()), energy, ranked[:5])


def infer_each(
    concept: LoadedConcept, images: torch.Tensor, config: InferenceConfig | None = None, batch: int = 256,
    chain: Chain | None = None, on_progress: Progress | None = None,
) -> list[Inferred]:
    """One inference per image (each its own observation), batched across images.

    The same result as one :func:`infer` call per image (every image gets the noise a lone image would, and
    Adam's update is elementwise, so refining all conditions at once refines each on its own), at full
    batches: a grid of 81 positions and the refinement run on many images per network call instead of one.
    """
    config = config or InferenceConfig()
    n, device = images.shape[0], images.device
    candidates, labels = _candidates(concept, config, device)
    k = len(candidates)
    refines = not isinstance(concept.version.schema, Categorical) and config.refine_steps > 0
    calls = _Calls(-(-n * k // batch) + ((config.refine_steps + 1) * -(-n // batch) if refines else 0), on_progress)
    image_of = torch.arange(n, device=device).repeat_interleave(k)
    candidate_of = torch.arange(k, device=device).repeat(n)
    with torch.no_grad():
        energies = torch.cat([
            calls.count(image_energies(concept, images[image_of[i : i + batch]],
                                       candidates[candidate_of[i : i + batch]], config, shared_noise=True,
                                       chain=chain))
            for i in range(0, n * k, batch)
        ]).view(n, k)
    order = torch.argsort(energies, dim=1)
    ranked = [[(labels[j], float(energies[i, j])) for j in order[i].tolist()] for i in range(n)]
    if not refines:
        return [Inferred(r[0][0], r[0][1], r[:5]) for r in ranked]
    concept.model.requires_grad_(False)
    results: list[Inferred] = []
    for start in range(0, n, batch):
        part = slice(start, min(n, start + batch))
        best = _refine(candidates[order[part, 0]],
                       lambda c, x=images[part]: calls.count(image_energies(concept, x, c, config,
                                                                            shared_noise=True, chain=chain)),
                       config, concept.trained_range())
        with torch.no_grad():
            refined = calls.count(image_energies(concept, images[part], best, config, shared_noise=True,
                                                 chain=chain))
        for row, i in enumerate(range(part.start, part.stop)):
            top = ranked[i]
            if float(refined[row]) > top[0][1]:
                results.append(Inferred(top[0][0], top[0][1], top[:5]))
            else:
                results.append(Inferred(tuple(float(v) for v in best[row].tolist()), float(refined[row]), top[:5]))
    return results


class _Calls:
    """Counts network calls for a progress callback: inference on a 32 px position takes ~15 s on a CPU."""

    def __init__(self, total: int, callback: Progress | None) -> None:
        self.total, self.done, self.callback = total, 0, callback

    def count(self, result: torch.Tensor) -> torch.Tensor:
        self.done += 1
        if self.callback is not None:
            self.callback(min(self.done, self.total), self.total)
        return result


def _refine(
    start: torch.Tensor, energy: Callable[[torch.Tensor], torch.Tensor], config: InferenceConfig,
    bounds: tuple[np.ndarray, np.ndarray],
) -> torch.Tensor:
    """Adam on the condition(s) from the best grid point, kept inside the range the concept was trained on.

    ``start`` is one condition ``(dim,)`` or one per image ``(N, dim)``; ``energy`` maps it to what is summed.
    """
    low, high = (torch.as_tensor(b, dtype=start.dtype, device=start.device) for b in bounds)
    c = start.clone().detach().requires_grad_(True)
    optimizer = torch.optim.Adam([c], lr=config.refine_lr)
    for _ in range(config.refine_steps):
        optimizer.zero_grad()
        energy(c).sum().backward()
        optimizer.step()
        with torch.no_grad():
            c.copy_(torch.maximum(torch.minimum(c, high), low))
    return c.detach()
