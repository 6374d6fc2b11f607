"""Composition in score space, for a prior trained as a plain denoiser (objective ``denoiser``).

A denoiser learns the score ``(D - x) / sigma^2`` directly, at a third of the cost per step of an
energy-parameterised one, but it has no scalar energy whose gradient that score is. The paper's logic
still applies leaf by leaf (:class:`Parts`, folded over the expression):

- a denoiser leaf contributes the guided score ratio ``w (s(x | c) - s(x | null))``, with the denoising
  energy ``(||x - D_c||^2 - ||x - D_null||^2) / 2 sigma^2`` as its value (used only to weigh OR's modes);
- a classifier leaf (``-log p(c | x)``) is read on the prior's denoised estimate ``D(x)`` rather than on
  ``x``, its gradient taken through ``D`` (diffusion posterior sampling, Chung et al. 2023): on a noisy ``x``
  that gradient is adversarial and paints speckle, on ``D(x)`` it moves the object;
- an energy leaf (objective dsm) contributes its guided energy ratio and its gradient;
- AND sums, NOT negates (a categorical classifier's NOT is its complement, ``-w log p(not c | D(x))``),
  a weight scales, and an OR left under a NOT or a weight mixes the parts' gradients by ``softmax(-E_i / T)``,
  so ``-T logsumexp(-E_i / T)`` is differentiated exactly given the parts. Every other OR never reaches this
  module: :mod:`conceptlib.sampling` draws each sample's alternative first (a mixture, sampled exactly).

The prior is counted once: its null score, or its score at a condition drawn per sample when the
expression does not name it. The result has no energy, so MALA (which needs one) is refused. Measured
effects of each choice are in docs/design.md.

Residual concepts (objective residual) are read through the whole chain they stack on instead, each leaf the
difference it makes to the chain's estimate (:func:`chain_score`); the same :class:`Parts` fold them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from conceptlib.annealed import ScoreFn, energy_scores
from conceptlib.concepts import ConceptKind, LoadedConcept
from conceptlib.energy import Term, compose_noisy
from conceptlib.errors import ConceptError
from conceptlib.expr import Leaf, Node, Weighted, conjuncts, fold, map_leaves
from conceptlib.expr import leaves as expression_leaves
from conceptlib.registry import VersionRef
from conceptlib.residual import Chain, ChainReader, build_chain
from conceptlib.settings import SamplerSettings

CLASSIFIER_SIGMA = 0.005
"""The noise level a classifier is asked at when it reads a denoised estimate: the sampler's lowest, which
is also the lowest it was trained at (a rounded square passed for a square more often at 0.02)."""


@dataclass(frozen=True)
class Part:
    """A sub-expression's energy ``(B,)`` and its gradient in ``x``; composes by the paper's logic."""

    energy: torch.Tensor
    grad: torch.Tensor
    probability: torch.Tensor | None = None
    """A classifier leaf's ``p(c | D(x))`` ``(B,)``, which lets NOT use ``1 - p`` (see :func:`_negate`)."""
    scale: float | torch.Tensor = 1.0
    """The classifier leaf's guidance ``w``, a number or ``(B,)`` (its energy is ``-w log p``)."""


@dataclass(frozen=True)
class Parts:
    """The paper's logic on :class:`Part` s: the :class:`conceptlib.expr.Algebra` of :func:`composed_score`."""

    temperature: float

    def and_(self, terms: Sequence[Part]) -> Part:
        return Part(torch.stack([p.energy for p in terms]).sum(0), torch.stack([p.grad for p in terms]).sum(0))

    def or_(self, terms: Sequence[Part]) -> Part:
        energies = torch.stack([p.energy for p in terms])
        weights = torch.softmax(-energies / self.temperature, dim=0)[:, :, None, None, None]
        return Part(-self.temperature * torch.logsumexp(-energies / self.temperature, 0),
                    (weights * torch.stack([p.grad for p in terms])).sum(0))

    def not_(self, term: Part) -> Part:
        return _negate(term)

    def weighted(self, weight: float, term: Part) -> Part:
        return Part(weight * term.energy, weight * term.grad)


def composed_score(
    node: Node,
    terms: Mapping[Leaf, Term],
    prior: LoadedConcept,
    settings: SamplerSettings,
    prior_condition: torch.Tensor | None = None,
    chain: Chain | None = None,
    member_conditions: Mapping[str, torch.Tensor] | None = None,
) -> ScoreFn:
    """The score of ``node`` with ``prior`` counted once, whatever kinds of concept the leaves are.

    An energy prior (dsm) gives the exact gradient of :func:`conceptlib.energy.compose_noisy`, classifier
    leaves weighted by ``guidance.classifier`` relative to the rest; a denoiser prior the score-space
    composition of this module. ``prior_condition`` ``(B, dim)`` is the prior's condition drawn per sample
    when the expression does not name the prior's concept (drawn by :mod:`conceptlib.sampling`, which also
    samples an OR over a denoiser prior as a mixture of its alternatives, so the ORs left here sit under a NOT
    or a weight). ``chain``: the root denoiser and the residual concepts stacked on it, when any leaf is a
    residual (built from the leaves when not given); such an expression is read through the chain by
    :func:`chain_score`, at ``guidance.residual``, its unnamed residuals at ``member_conditions``.

    Over a denoiser prior: the drawn condition is followed at ``guidance.prior`` (1 samples ``p(x)``
    exactly), except beside a NOT of the prior's concept, where it follows ``guidance.scale`` so that its
    null score cancels the negated leaf's; classifier leaves are weighted ``guidance.classifier`` times the
    boost at the current noise level, and categorical ones read at ``guidance.classifier_temperature``
    (``-log softmax(logits / T)[c]``: warmer keeps pulling once the classifier is sure).
    """
    guidance = settings.guidance
    w = guidance.scale
    if chain is None and any(t.concept.kind is ConceptKind.RESIDUAL for t in terms.values()):
        chain = build_chain(list({c.version.ref: c for c in [prior, *(t.concept for t in terms.values())]}.values()))
    if chain is not None:
        if settings.annealed.corrector == "mala":
            raise ConceptError("the MALA corrector needs an energy, and residual concepts give a score only; "
                               "use --corrector ula")
        return chain_score(node, terms, chain, settings, prior_condition, member_conditions)
    if not prior.kind.denoises:
        if guidance.classifier != w:
            factor = guidance.classifier / w
            node = map_leaves(node, lambda leaf: Weighted(factor, leaf)
                              if terms[leaf].concept.kind is ConceptKind.CLASSIFIER else leaf)
        return energy_scores(compose_noisy(node, terms, prior, w, settings.or_temperature, prior_condition))
    temperature = guidance.classifier_temperature
    if temperature != 1.0:
        _check_tempered(terms)
    if settings.annealed.corrector == "mala":
        raise ConceptError(
            f"the MALA corrector needs an energy, and {prior.version.ref} (objective denoiser) gives a score only; "
            "use --corrector ula"
        )
    anchors = _anchor_conditions(node, terms)
    anchor = anchors.get(prior.version.ref)
    prior_weight = guidance.prior
    if any(terms[leaf].concept.version.ref == prior.version.ref for leaf in expression_leaves(node)):
        prior_weight = w  # a drawn condition only beside a NOT of the prior's concept: balance it
    reads_estimate = any(t.concept.kind is ConceptKind.CLASSIFIER for t in terms.values())
    parts = Parts(settings.or_temperature)

    def score(x: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, None]:
        n = x.shape[0]
        s2 = sigma[:, None, None, None] ** 2
        ones, zeros = torch.ones(n, device=x.device), torch.zeros(n, device=x.device)
        nulls: dict[object, torch.Tensor] = {}
        estimates: dict[tuple[object, int], torch.Tensor] = {}

        def null_of(concept: LoadedConcept) -> torch.Tensor:
            ref = concept.version.ref
            if ref not in nulls:
                with torch.no_grad():
                    nulls[ref] = concept.model.denoise(
                        x, torch.zeros(n, concept.version.schema.dim, device=x.device), sigma, zeros)
            return nulls[ref]

        # the prior's estimate a classifier reads: at the drawn condition, the expression's, or null
        x_in = x.detach().requires_grad_(reads_estimate)
        reading = prior_condition if prior_condition is not None else anchor
        with torch.set_grad_enabled(reads_estimate):
            if reading is None:
                estimate = prior.model.denoise(
                    x_in, torch.zeros(n, prior.version.schema.dim, device=x.device), sigma, zeros)
                nulls[prior.version.ref] = estimate.detach()
            else:
                estimate = prior.model.denoise(x_in, reading.expand(n, -1), sigma, ones)
                estimates[(prior.version.ref, id(reading))] = estimate.detach()
        if prior_condition is None:
            base = null_of(prior)
        elif prior_weight == 1.0:  # the implicit leaf samples p(x | c'): the prior itself, counted once
            base = estimate.detach()
        else:
            null = null_of(prior)
            base = null + prior_weight * (estimate.detach() - null)
        classifier_sigma = torch.full((n,), CLASSIFIER_SIGMA, device=x.device)
        weight = guidance.classifier * guidance.boost.factor(sigma)

        def leaf_part(leaf: Leaf, negated: bool = False) -> Part:
            term = terms[leaf]
            conditions = term.condition.expand(n, -1)
            if negated:
                if not term.concept.traits.complement:
                    return _negate(leaf_part(leaf))
                conditions = 1 - conditions  # the classifier of the complement, -w log p(not c | D(x))
            if term.concept.kind is ConceptKind.CLASSIFIER:
                categorical = term.concept.traits.categorical
                warmth = {"temperature": temperature} if categorical and temperature != 1 else {}
                nll = term.concept.model(estimate, conditions, classifier_sigma, **warmth)
                (grad,) = torch.autograd.grad((weight * nll).sum(), x_in, retain_graph=True)
                # a categorical classifier's exp(-nll) is a probability; a continuous one's is a density
                probability = torch.exp(-nll.detach()) if categorical else None
                return Part(weight * nll.detach(), grad, probability, weight)
            if term.concept.kind.denoises:
                key = (term.concept.version.ref, id(term.condition))
                if key not in estimates:
                    with torch.no_grad():
                        estimates[key] = term.concept.model.denoise(x, conditions, sigma, ones)
                conditioned, null = estimates[key], null_of(term.concept)
                energy = ((x - conditioned).pow(2) - (x - null).pow(2)).flatten(1).sum(1) / (2 * sigma**2)
                return Part(w * energy, -w * (conditioned - null) / s2)
            x_leaf = x.detach().requires_grad_(True)
            with torch.enable_grad():
                conditioned, null = term.with_null(x_leaf, sigma)
                energy = w * (conditioned - null)
                (grad,) = torch.autograd.grad(energy.sum(), x_leaf)
            return Part(energy.detach(), grad)

        def part(node: Node) -> Part:
            return fold(node, leaf_part, parts, negated_leaf=lambda leaf: leaf_part(leaf, True))

        return (base - x) / s2 - part(node).grad, None

    return score


def chain_score(
    node: Node,
    terms: Mapping[Leaf, Term],
    chain: Chain,
    settings: SamplerSettings,
    prior_condition: torch.Tensor | None = None,
    member_conditions: Mapping[str, torch.Tensor] | None = None,
) -> ScoreFn:
    """The score of an expression over one chain of residual concepts, every factor read through the whole chain.

    Each stage of a chain was trained on its own data with the earlier stages inside its loss, so only the
    estimate at the chain's end knows the full data: the frozen root alone, asked what naming a position
    changes, answers for the only data it saw (magenta squares), and guidance on that difference painted
    every object magenta. So every leaf is the difference it makes to the chain's estimate ``T``: with ``A``
    the conditions the expression names once in a plain AND (the root at its drawn condition when the
    expression does not name it), a leaf of ``A`` contributes ``T(A) - T(A without it)``, any other leaf
    (under NOT, in an OR, named twice) ``T(A with it) - T(A)``. :class:`Parts` fold them (AND sums, NOT
    negates, weights and ``guidance.residual`` scale, an OR under a NOT or a weight mixes by ``softmax(-E / T)``
    of their denoising energies) on top of the base ``T(A)`` less the leaves of ``A``: a plain AND at guidance 1
    is exactly ``T(A)``, the chain's own conditional estimate, and guidance ``w`` adds ``w - 1`` times each
    leaf's difference given the others.
    ``guidance.prior`` guides the drawn root condition the same way.

    ``member_conditions`` (``(B, dim)`` by concept name, drawn by :mod:`conceptlib.sampling`) are read for the
    residuals the expression does not name, so ``color=red`` marginalises the shape rather than reading the
    shape residual at null (which drew a triangle nearly every time).

    ``guidance.residual`` takes the place of ``guidance.scale`` here: on the chain of
    ``benchmarks/continual.py`` guidance 1.5 took the samples that look real from 1.00 to 0.27 (stage 2, 64
    samples), and 1 is the chain's own conditional estimate.
    """
    guidance, prior_guidance = settings.guidance.residual, settings.guidance.prior
    members = {m.version.ref for m in chain.members}
    for term in terms.values():
        if term.concept.version.ref not in members:
            raise ConceptError(f"{term.concept.version.ref} is not in the chain of residual concepts this expression "
                               f"composes ({', '.join(str(r) for r in members)}); compose residual concepts only "
                               "with the concepts they were trained with")
    anchors = _anchor_conditions(node, terms)
    root = chain.root.version.concept
    assignment: dict[str, torch.Tensor | None] = {m.version.concept: anchors.get(m.version.ref) for m in chain.members}
    drawn = prior_condition is not None and assignment[root] is None
    if drawn:
        assignment[root] = prior_condition
    for name, condition in (member_conditions or {}).items():  # residuals the expression does not name
        if assignment[name] is None:
            assignment[name] = condition
    anchored = [leaf for leaf in expression_leaves(node)
                if anchors.get(terms[leaf].concept.version.ref) is terms[leaf].condition]
    plain = all(isinstance(term, Leaf) for term in conjuncts(node))
    exact = plain and guidance == 1.0 and (not drawn or prior_guidance == 1.0) and len(anchored) == len(
        expression_leaves(node))

    templates: list[ChainReader] = []  # what the chain draws from nothing: the same at every step
    parts = Parts(settings.or_temperature)

    def score(x: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, None]:
        if not templates or templates[0].x.shape != x.shape:
            templates[:] = [ChainReader.template_reader(chain, x)]
        reader = ChainReader.at(chain, x, sigma, templates=templates[0])
        s2 = sigma[:, None, None, None] ** 2
        joint = reader.total(assignment)
        if exact:  # a plain AND at guidance 1: the chain's conditional estimate itself
            return (joint - x) / s2, None

        def difference(leaf: Leaf) -> tuple[torch.Tensor, torch.Tensor]:
            """The chain's estimate with and without ``leaf``."""
            name = terms[leaf].concept.version.concept
            if leaf in anchored:
                return joint, reader.total({**assignment, name: None})
            return reader.total({**assignment, name: terms[leaf].condition}), joint

        def leaf_part(leaf: Leaf) -> Part:
            named, unnamed = difference(leaf)
            energy = ((x - named).pow(2) - (x - unnamed).pow(2)).flatten(1).sum(1) / (2 * sigma**2)
            return Part(guidance * energy, -guidance * (named - unnamed) / s2)

        base = joint
        for leaf in anchored:
            named, unnamed = difference(leaf)
            base = base - (named - unnamed)
        if drawn and prior_guidance != 1.0:
            base = base + (prior_guidance - 1.0) * (joint - reader.total({**assignment, root: None}))
        return (base - x) / s2 - fold(node, leaf_part, parts).grad, None

    return score


def _check_tempered(terms: Mapping[Leaf, Term]) -> None:
    """A softmax temperature needs categorical classifiers that take one (``tempered``); say which does not."""
    for term in terms.values():
        traits = term.concept.traits
        if traits.categorical and not traits.tempered:
            raise ConceptError(f"{term.concept.version.ref} ({term.concept.version.architecture}) cannot be read at "
                               "a softmax temperature; use --classifier-temperature 1")


def _anchor_conditions(node: Node, terms: Mapping[Leaf, Term]) -> dict[VersionRef, torch.Tensor]:
    """Each concept's condition where the expression names it in exactly one leaf of a plain AND (or is that
    leaf): what a denoiser prior's estimate and a chain of residual concepts are read at (else null)."""
    named: dict[VersionRef, list[torch.Tensor]] = {}
    for leaf in conjuncts(node):
        if isinstance(leaf, Leaf):
            named.setdefault(terms[leaf].concept.version.ref, []).append(terms[leaf].condition)
    return {ref: conditions[0] for ref, conditions in named.items() if len(conditions) == 1}


def _negate(part: Part) -> Part:
    """NOT: ``-E`` in general; for a classifier leaf, the classifier of the complement, ``-w log(1 - p(c | x))``.

    Negating ``-w log p`` pushes ``p`` toward 0 without bound (objects grew and stopped looking real);
    ``1 - p`` asks the same question and stops pushing once the image no longer shows ``c``. Its gradient is
    the negated one scaled by ``p / (1 - p)`` (``w`` cancels). This is the fallback for a categorical
    classifier that cannot read a set of names: where the image shows ``c`` for certain, ``p`` rounds to 1
    and both gradients vanish, so the NOT gives up on exactly the samples that break it
    (``Traits.complement``: the network is asked for the complement instead).
    """
    if part.probability is None:
        return Part(-part.energy, -part.grad)
    p = part.probability.clamp(max=1 - 1e-6)
    weight = (p / (1 - p))[:, None, None, None]
    return Part(-part.scale * torch.log1p(-p), -weight * part.grad)
