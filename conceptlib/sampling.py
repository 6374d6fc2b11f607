"""Samples of a composed expression: the one path from resolved leaves to images, for compose and eval alike.

The composition core, read in this order:

1. :mod:`conceptlib.expr`: the expression, and the one fold every composition below is written as;
2. :mod:`conceptlib.energy`: leaves made concrete (:class:`~conceptlib.energy.Term`), and energies composed;
3. :mod:`conceptlib.scores`: scores composed, with the prior counted once;
4. this module: which sampler, and what is drawn per sample before it runs (the prior's condition, the
   alternative of an OR), with every option from one :class:`~conceptlib.settings.SamplerSettings`;
5. the samplers, which know nothing of concepts: :mod:`conceptlib.annealed` (noise-conditioned concepts)
   and :mod:`conceptlib.langevin` (contrastive-divergence ones).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch

from conceptlib.annealed import ScoreFn, annealed_sample
from conceptlib.concepts import ConceptKind, LoadedConcept, prior_concept
from conceptlib.energy import Term, compose
from conceptlib.errors import ConceptError
from conceptlib.expr import And, Leaf, Node, Not, Or, alternatives, leaves, map_negated_leaves, positive_leaves, to_text
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
    mixture, terms = as_mixture(node, terms, prior)
    if len(mixture) > 1:
        return _sample_mixture(mixture, terms, prior, n, image_size, settings, generator, device, on_step, chain)
    scores = score_field(node, terms, prior, n, settings, generator, device, chain)
    annealed = settings.annealed.for_composition(chain is not None)
    return annealed_sample(scores, n, image_size, annealed, generator, device, on_step=on_step)


def score_field(node: Node, terms: Mapping[Leaf, Term], prior: LoadedConcept, n: int, settings: SamplerSettings,
                generator: torch.Generator, device: torch.device, chain: Chain | None = None) -> ScoreFn:
    """The composed score :func:`sample` follows for ``n`` samples of ``node`` (an expression without an OR
    to sample as a mixture) over a noise-conditioned ``prior``, with what is drawn per sample (the prior's
    condition, unnamed residuals' conditions) drawn from ``generator`` first. Any sampler can follow it:
    benchmarks hand it to other libraries' samplers as a denoiser, ``D = x + sigma^2 * score``."""
    node, away = negated_prior(node, terms, prior)
    drawn = None if names_prior(node, terms, prior) else draw_prior_conditions(prior, n, generator, device, away)
    members = {member.version.concept: draw_prior_conditions(member, n, generator, device)
               for member in unnamed_residuals(node, terms, chain)}
    return composed_score(node, terms, prior, settings, drawn, chain=chain, member_conditions=members)


def sampling_networks(concepts: Iterable[LoadedConcept], prior: LoadedConcept | None, chain: Chain | None = None,
                      terms: Mapping[Leaf, Term] | None = None) -> list[tuple[str, torch.nn.Module]]:
    """Every network :func:`sample` may run, by version, for :func:`conceptlib.network_calls.counting`: the
    ``concepts``', the prior's, the chain's, and the specialisations of ``terms`` to a shared condition (which
    Langevin calls in place of the network)."""
    found = [(str(concept.version.ref), concept.model)
             for concept in [*concepts, *([prior] if prior is not None else []), *(chain.members if chain else ())]]
    for term in (terms or {}).values():
        if isinstance(term.specialised, torch.nn.Module):
            found.append((str(term.concept.version.ref), term.specialised))
    return found


def sampler_record(node: Node, terms: Mapping[Leaf, Term], prior: LoadedConcept | None,
                   settings: SamplerSettings, chain: Chain | None = None) -> dict[str, Any]:
    """What a sidecar records of the sampler: every setting :func:`sample` used (``residual_guidance`` only
    when a ``chain`` of residual concepts used it; ``corrector_above`` only when set or a chain's default),
    the prior it chose, and an OR's alternatives with how often each is drawn."""
    if prior is None:
        return {"name": "langevin", **settings.langevin.to_json(), "or_temperature": settings.or_temperature}
    mixture, _ = as_mixture(node, terms, prior)
    rest, away = negated_prior(node, terms, prior)
    drawn = "from the expression or null" if names_prior(rest, terms, prior) else "drawn per sample"
    if away:
        drawn += f", at least {NOT_MARGIN:.3g} of its trained range from the negated one"
    unnamed = unnamed_residuals(rest, terms, chain) if len(mixture) == 1 else []
    guidance = settings.guidance.to_json(residual=chain is not None)
    annealed = settings.annealed.for_composition(chain is not None)
    record = {**annealed.to_json(), **guidance, "prior": str(prior.version.ref),
              "prior_condition": drawn, "or_temperature": settings.or_temperature}
    if unnamed:
        record["drawn_per_sample"] = [str(member.version.ref) for member in unnamed]
    if len(mixture) > 1:
        probabilities = mixture_probabilities(mixture, settings.or_temperature).tolist()
        record["or_alternatives"] = [{"expression": to_text(part), "probability": round(p, 6)}
                                     for (_, part), p in zip(mixture, probabilities)]
    return record


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


NOT_MARGIN = 1 / 6
"""How far (a fraction of the trained range, Euclidean over the axes) a drawn condition of the prior's concept
stays from one the expression negates: 0.1 of the scene for a position trained on [0.2, 0.8], the distance
at which ``concept eval`` counts a position as shown."""


def draw_prior_conditions(prior: LoadedConcept, n: int, generator: torch.Generator, device: torch.device,
                          away: Sequence[torch.Tensor] = ()) -> torch.Tensor:
    """``n`` conditions of the prior concept, uniform over the range it was trained on, at least
    :data:`NOT_MARGIN` from each of ``away`` (``(1 or n, dim)``: the values a NOT of the prior's concept forbids).

    Why: sampling ``p(x | c')`` with ``c'`` drawn per sample samples ``p(x) = E_c'[p(x | c')]`` and keeps an
    object in every sample when the expression does not name the prior's concept (a short-trained null
    model often draws empty scenes). Drawn away from a negated value it samples ``p(x | not c)`` exactly, where
    pushing the score away from ``c`` drew nothing like the data (``!position & color``, 500 samples: looks
    real 0.006 over a classifier, 0.028 through a residual chain, where color fell to 0.714).
    """
    schema = prior.version.schema
    if schema.kind == "categorical":
        index = torch.randint(0, schema.dim, (n,), generator=generator, device=device)
        return torch.eye(schema.dim, device=device)[index]
    low, high = prior.trained_range()
    low_t = torch.as_tensor(low, dtype=torch.float32, device=device)
    extent = torch.as_tensor(high, dtype=torch.float32, device=device) - low_t
    drawn = low_t + extent * torch.rand((n, schema.dim), generator=generator, device=device)
    for _ in range(1000):
        close = torch.zeros(n, dtype=torch.bool, device=device)
        for value in away:
            close |= ((drawn - value.to(device)) / extent.clamp(min=1e-12)).norm(dim=1) < NOT_MARGIN
        if not close.any():
            return drawn
        drawn[close] = low_t + extent * torch.rand((int(close.sum()), schema.dim), generator=generator, device=device)
    raise ConceptError(f"a NOT of {prior.version.ref} leaves no room in the range it was trained on; negate fewer "
                       "values of it")


def unnamed_residuals(node: Node, terms: Mapping[Leaf, Term], chain: Chain | None) -> list[LoadedConcept]:
    """The chain's residual concepts no leaf of ``node`` names: each is read at a condition drawn per sample
    (uniform over its range, as the root's), which samples the attribute's marginal over the data."""
    if chain is None:
        return []
    named = {terms[leaf].concept.version.ref for leaf in leaves(node)}
    return [member for member in chain.residuals if member.version.ref not in named]


def negated_prior(node: Node, terms: Mapping[Leaf, Term],
                  prior: LoadedConcept) -> tuple[Node, list[torch.Tensor]]:
    """``node`` without the NOTs of the prior's own continuous concept that are terms of its top AND, and the
    values they negate, for :func:`draw_prior_conditions` to keep away from; only when the expression does not
    otherwise name the prior's concept (its condition is then drawn per sample)."""
    if not isinstance(node, And) or prior.version.schema.kind == "categorical" or names_prior(node, terms, prior):
        return node, []
    negated = [term for term in node.terms if isinstance(term, Not) and isinstance(term.term, Leaf)
               and terms[term.term].concept.version.ref == prior.version.ref]
    rest = tuple(term for term in node.terms if term not in negated)
    if not negated or all(isinstance(term, Not) for term in rest):
        return node, []
    return (rest[0] if len(rest) == 1 else And(rest)), [terms[term.term].condition for term in negated]


def as_mixture(node: Node, terms: Mapping[Leaf, Term],
               prior: LoadedConcept) -> tuple[list[tuple[float, Node]], Mapping[Leaf, Term]]:
    """What a denoiser prior samples ``node`` as: its alternatives (:func:`conceptlib.expr.alternatives`), with a
    NOT of a categorical denoiser or residual leaf first read as the OR of the values it leaves
    (:func:`complement`); other priors sample ``node`` as written."""
    if not prior.kind.denoises:
        return [(1.0, node)], terms
    node, terms = complement(node, terms)
    return alternatives(node), terms


def complement(node: Node, terms: Mapping[Leaf, Term]) -> tuple[Node, Mapping[Leaf, Term]]:
    """``!color=red`` over a denoiser or residual concept as ``color=green | color=blue | ...``, every value it
    leaves drawn equally often (the data's values are).

    Why: such a concept has no classifier to ask for the complement, and subtracting the difference ``red``
    makes to the estimate subtracts the object with it (shipped registry, ``position & !color``, 500 samples:
    position 0.502, the negated color 0.086, looks real 0.020). Rows that are not one value (a set) stay NOT.
    """
    added: dict[Leaf, Term] = {}

    def others(leaf: Leaf) -> Node:
        term = terms[leaf]
        schema = term.concept.version.schema
        rows = term.condition
        one_hot = schema.kind == "categorical" and bool(((rows == 0) | (rows == 1)).all() and (rows.sum(1) == 1).all())
        if term.concept.kind not in (ConceptKind.DENOISER, ConceptKind.RESIDUAL) or not one_hot or schema.dim < 2:
            return Not(leaf)
        forbidden = rows.argmax(1)
        parts = []
        for k in range(schema.dim - 1):
            index = k + (k >= forbidden).long()  # the k-th value each row leaves
            name = schema.values[int(index[0])] if len(rows) == 1 else f"{leaf.value} other {k + 1}"
            other = Leaf(leaf.concept, name, leaf.version)
            added[other] = dataclasses.replace(term, condition=torch.nn.functional.one_hot(index, schema.dim).to(rows))
            parts.append(other)
        return parts[0] if len(parts) == 1 else Or(tuple(parts))

    rewritten = map_negated_leaves(node, others)
    return (rewritten, {**terms, **added}) if added else (node, terms)


def mixture_probabilities(mixture: Sequence[tuple[float, Node]], temperature: float) -> torch.Tensor:
    """How often each alternative of an OR is drawn: its share to the power ``1 / temperature``, normalised.

    At 1 the shares as written; hotter evens them out, colder favours the largest (a tempered mixture of
    well-separated modes, ``p(x)^(1/T)``, weighs each mode so, up to the modes' own spread).
    """
    logits = torch.log(torch.tensor([share for share, _ in mixture], dtype=torch.float64)) / temperature
    return torch.softmax(logits, 0)


def _sample_mixture(mixture: Sequence[tuple[float, Node]], terms: Mapping[Leaf, Term], prior: LoadedConcept,
                    n: int, image_size: int, settings: SamplerSettings, generator: torch.Generator,
                    device: torch.device, on_step: StepCallback | None, chain: Chain | None) -> torch.Tensor:
    """An expression with ORs over a denoiser prior: each sample's alternative (:func:`conceptlib.expr.alternatives`)
    drawn first, then every alternative sampled as a composition of its own, the prior counted once in each.

    Exact for a mixture, where weighing the parts by the energies of a noisy image cannot tell them apart at
    high noise and leaves both objects half-formed; and each sample costs one alternative's evaluations only.
    """
    probabilities = mixture_probabilities(mixture, settings.or_temperature).to(device=device, dtype=torch.float32)
    picks = torch.multinomial(probabilities, n, replacement=True, generator=generator)
    groups = [(part, rows) for (_, part), rows in
              zip(mixture, (torch.nonzero(picks == i).flatten() for i in range(len(mixture)))) if len(rows)]
    images = torch.empty(n, 3, image_size, image_size, device=device)
    for index, (part, rows) in enumerate(groups):
        part_terms = {leaf: _rows(terms[leaf], rows) for leaf in leaves(part)}

        def step(done: int, total: int, index: int = index) -> None:
            if on_step is not None:  # the alternatives share the batch's progress bar
                on_step((index * total + done) // len(groups), total)

        images[rows] = sample(part, part_terms, prior, len(rows), image_size, settings, generator, device,
                              on_step=step, chain=chain)
    return images


def _rows(term: Term, rows: torch.Tensor) -> Term:
    """``term`` for the samples ``rows`` of the batch (a shared condition stays shared)."""
    return term if term.condition.shape[0] == 1 else dataclasses.replace(term, condition=term.condition[rows])
