"""Samples of a composed expression: the one path from resolved leaves to images, for compose and eval alike.

The composition core, read in this order:

1. :mod:`conceptlib.expr`: the expression, and the one fold every composition below is written as;
2. :mod:`conceptlib.energy`: leaves made concrete (:class:`~conceptlib.energy.Term`), and energies composed;
3. :mod:`conceptlib.scores`: scores composed, with the prior counted once;
4. this module: which sampler, and what is drawn per sample before it runs (the prior's condition, the part
   of an OR), with every option from one :class:`~conceptlib.settings.SamplerSettings`;
5. the samplers, which know nothing of concepts: :mod:`conceptlib.annealed` (noise-conditioned concepts)
   and :mod:`conceptlib.langevin` (contrastive-divergence ones).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from conceptlib.annealed import annealed_sample, evaluations
from conceptlib.concepts import LoadedConcept, prior_concept
from conceptlib.energy import Term, compose
from conceptlib.errors import ConceptError
from conceptlib.expr import Leaf, Node, Or, positive_leaves
from conceptlib.langevin import initial_images, langevin
from conceptlib.plugins import PluginManager
from conceptlib.registry import Registry
from conceptlib.residual import Chain, load_chain
from conceptlib.scores import composed_score
from conceptlib.settings import SamplerSettings

StepCallback = Callable[[int, int], None]


def sample(
    node: Node,
    terms: Mapping[Leaf, Term],
    prior: LoadedConcept | None,
    n: int,
    image_size: int,
    settings: SamplerSettings,
    generator: torch.Generator,
    device: torch.device,
    on_step: StepCallback | None = None,
    chain: Chain | None = None,
) -> torch.Tensor:
    """``n`` images ``(n, 3, H, W)`` in [0, 1] of ``node``, drawn from ``generator``.

    With a ``prior`` (noise-conditioned concepts, see :func:`sampling_prior`) the annealed sampler follows the
    composed score, over the ``chain`` of residual concepts when there is one (with that chain's corrector
    default, :meth:`~conceptlib.settings.AnnealedConfig.for_composition`); without, Langevin dynamics the
    composed energy. ``terms`` conditions are ``(1, dim)`` (shared) or ``(n, dim)`` (per sample, as the
    evaluation protocols ask).
    """
    if prior is None:
        energy = compose(node, terms, settings.or_temperature)
        x = initial_images(n, image_size, settings.langevin.init, generator, device)
        return langevin(energy, x, settings.langevin, generator, on_step=on_step)
    drawn = None if names_prior(node, terms, prior) else draw_prior_conditions(prior, n, generator, device)
    branches = draw_branches(node, prior, n, generator, device)
    scores = composed_score(node, terms, prior, settings, drawn, branches, chain)
    annealed = settings.annealed.for_composition(chain is not None)
    return annealed_sample(scores, n, image_size, annealed, generator, device, on_step=on_step)


def steps(prior: LoadedConcept | None, settings: SamplerSettings, chain: Chain | None = None) -> int:
    """Network evaluations per chain of :func:`sample`, for progress bars."""
    if prior is None:
        return settings.langevin.steps
    return evaluations(settings.annealed.for_composition(chain is not None))


def sampler_record(node: Node, terms: Mapping[Leaf, Term], prior: LoadedConcept | None,
                   settings: SamplerSettings, chain: Chain | None = None) -> dict[str, Any]:
    """What a sidecar records of the sampler: every setting :func:`sample` used (``residual_guidance`` only
    when a ``chain`` of residual concepts used it; ``corrector_above`` only when set or a chain's default),
    and the prior it chose."""
    if prior is None:
        return {"name": "langevin", **settings.langevin.to_json(), "or_temperature": settings.or_temperature}
    drawn = "from the expression or null" if names_prior(node, terms, prior) else "drawn per sample"
    guidance = settings.guidance.to_json(residual=chain is not None)
    annealed = settings.annealed.for_composition(chain is not None)
    return {**annealed.to_json(), **guidance, "prior": str(prior.version.ref),
            "prior_condition": drawn, "or_temperature": settings.or_temperature}


def sampling_prior(registry: Registry, plugins: PluginManager, concepts: Sequence[LoadedConcept],
                   device: torch.device) -> tuple[LoadedConcept | None, Chain | None]:
    """What ``concepts`` are sampled against: the prior of noise-conditioned ones
    (:func:`conceptlib.concepts.prior_concept`; ``None`` for contrastive-divergence ones, whose energies do not
    compose with theirs), and the chain of denoisers residual concepts correct (``None`` without residuals)."""
    noisy = {concept.kind.noise_conditioned for concept in concepts}
    if len(noisy) > 1:
        raise ConceptError(
            "this expression mixes concepts trained by denoising score matching and by contrastive "
            "divergence, whose energies do not compose; use versions trained with one objective"
        )
    prior = prior_concept(registry, plugins, concepts, device) if noisy.pop() else None
    return prior, load_chain(registry, plugins, concepts, device)


def names_prior(node: Node, terms: Mapping[Leaf, Term], prior: LoadedConcept) -> bool:
    """True when the expression asks for the prior's concept somewhere outside a NOT."""
    return any(terms[leaf].concept.version.ref == prior.version.ref for leaf in positive_leaves(node))


def draw_prior_conditions(prior: LoadedConcept, n: int, generator: torch.Generator,
                          device: torch.device) -> torch.Tensor:
    """``n`` conditions of the prior concept, uniform over the range it was trained on.

    Why: sampling ``p(x | c')`` with ``c'`` drawn per sample samples ``p(x) = E_c'[p(x | c')]`` and keeps an
    object in every sample when the expression does not name the prior's concept (a short-trained null
    model often draws empty scenes).
    """
    schema = prior.version.schema
    if schema.kind == "categorical":
        index = torch.randint(0, schema.dim, (n,), generator=generator, device=device)
        return torch.eye(schema.dim, device=device)[index]
    low, high = prior.trained_range()
    low_t = torch.as_tensor(low, dtype=torch.float32, device=device)
    high_t = torch.as_tensor(high, dtype=torch.float32, device=device)
    return low_t + (high_t - low_t) * torch.rand((n, schema.dim), generator=generator, device=device)


def draw_branches(node: Node, prior: LoadedConcept, n: int, generator: torch.Generator,
                  device: torch.device) -> torch.Tensor | None:
    """For an OR at the top of the expression with a denoiser prior: each sample's part, uniformly drawn.

    With the prior counted once, ``p(x | a OR b)`` is the equal mixture of ``p(x | a)`` and ``p(x | b)``, so
    drawing the part first samples it exactly; weighing the parts by the energies of a noisy image instead
    cannot tell them apart at high noise and leaves both objects half-formed.
    """
    if not prior.kind.denoises or not isinstance(node, Or):
        return None
    return torch.randint(0, len(node.terms), (n,), generator=generator, device=device)
