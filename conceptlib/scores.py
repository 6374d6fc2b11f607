"""Composition in score space, for a prior trained as a plain denoiser (objective ``denoiser``).

Why: a denoiser trained on ``||D(x_sigma | c) - x||^2`` learns the score ``(D - x) / sigma^2`` directly, at
about a third of the cost per step of an energy-parameterised one, and learned position to 1.00 where the
energy-parameterised model reached 0.73-0.75 in the same ten minutes (LEARNING.md). It has no scalar
energy whose gradient is that score, but the logic of the paper still applies leaf by leaf:

- a denoiser leaf contributes the guided score ratio ``w (s(x | c) - s(x | null))``, with the denoising
  energy ``(||x - D_c||^2 - ||x - D_null||^2) / 2 sigma^2`` as its value (used only to weigh OR's modes);
- a classifier leaf (``-log p(c | x)``) is evaluated on the prior's denoised estimate ``D(x)`` rather than
  on ``x`` (diffusion posterior sampling, Chung et al. 2023), its gradient taken through ``D``: on a noisy
  ``x`` that gradient is adversarial (measured: multicolored speckle, color right 0.48), on ``D(x)`` it moves
  the object (0.91);
- an energy leaf (objective dsm) contributes its guided energy ratio and its gradient;
- AND sums, NOT negates (a categorical classifier's NOT is its complement, ``-w log p(not c | D(x))``
  asked of the same network), a weight scales, and OR mixes the parts' gradients by ``softmax(-E_i / T)``,
  so ``-T logsumexp(-E_i / T)`` is differentiated exactly given the parts.

The prior is counted once: its null score, or its unguided score at a condition drawn per sample when
the expression does not name it. The result is a score field with no energy, so MALA (which needs one) is
refused; ULA correctors and the ancestral steps need only the score.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from conceptlib.concepts import LoadedConcept
from conceptlib.diffusion import ScoreFn, energy_scores
from conceptlib.energy import Term, compose_noisy
from conceptlib.errors import ConceptError
from conceptlib.expr import And, Leaf, Node, Not, Or, Weighted
from conceptlib.expr import leaves as expression_leaves
from conceptlib.registry import VersionRef
from conceptlib.residual import Chain, ChainReader, build_chain, is_residual

CLASSIFIER_SIGMA = 0.005
"""The noise level a classifier is asked at when it reads a denoised estimate: the sampler's lowest
(``AnnealedConfig.sigma_min``, also the lowest it was trained at, ``NoiseConfig.sigma_min``). Asked at 0.02,
the shape concept let more rounded squares pass as squares: at 0.005, shape alone 0.896 -> 0.932 and
``position & shape & color`` all three right 0.836 -> 0.852 (benchmarks/quality.py, 500 samples, boosted
guidance, softmax temperature 1; color alone 0.990 -> 0.984)."""


@dataclass(frozen=True)
class ClassifierBoost:
    """Classifier guidance that grows as the noise falls: ``w(sigma) = w * clamp(below / sigma, 1, maximum)``.

    Why: a sampler step moves ``x`` by ``sigma^2`` times the score, so a constant weight lets a classifier's
    pull fade quadratically just where a 3-5 pixel object gets its outline (sigma ~ 0.03-0.3), and the prior,
    which knows position but not shape, rounds squares and flattens circles into domes. Measured with the
    shipped registry (``benchmarks/quality.py``, 500 samples, the classifier then read at noise 0.02): shape
    alone 0.838 -> 0.896, ``position & shape & color`` all three right 0.762 -> 0.836, realism within 0.004.
    ``maximum = 1`` is a constant weight.
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

    def factor(self, sigma: torch.Tensor) -> torch.Tensor:
        """``(B,)`` multipliers of the classifier guidance at noise levels ``sigma`` ``(B,)``."""
        return (self.below / sigma).clamp(1.0, self.maximum)


NO_BOOST = ClassifierBoost(maximum=1.0)


def _is_classifier(concept: LoadedConcept) -> bool:
    return bool(getattr(concept.model, "ratio_only", False))


def _is_categorical(concept: LoadedConcept) -> bool:
    return _is_classifier(concept) and bool(getattr(concept.model, "categorical", False))


def _check_tempered(terms: Mapping[Leaf, Term]) -> None:
    """A softmax temperature needs categorical classifiers that take one (``tempered``); say which does not."""
    for term in terms.values():
        if _is_categorical(term.concept) and not getattr(term.concept.model, "tempered", False):
            raise ConceptError(f"{term.concept.version.ref} ({term.concept.version.architecture}) cannot be read at "
                               "a softmax temperature; use --classifier-temperature 1")


def _reads_complement(concept: LoadedConcept) -> bool:
    """A categorical classifier whose condition may name several values (``membership``): its NOT is the
    same network asked for every other value, ``-log p(not c | x)`` computed from the logits."""
    return _is_categorical(concept) and bool(getattr(concept.model, "membership", False))


@dataclass(frozen=True)
class Part:
    """A sub-expression's energy ``(B,)`` and its gradient in ``x``; composes by the paper's logic."""

    energy: torch.Tensor
    grad: torch.Tensor
    probability: torch.Tensor | None = None
    """A classifier leaf's ``p(c | D(x))`` ``(B,)``, which lets NOT use ``1 - p`` (see :func:`_negate`)."""
    scale: float | torch.Tensor = 1.0
    """The classifier leaf's guidance ``w``, a number or ``(B,)`` (its energy is ``-w log p``)."""


def composed_score(
    node: Node,
    terms: dict[Leaf, Term],
    prior: LoadedConcept,
    guidance: float = 1.0,
    classifier_guidance: float = 1.0,
    or_temperature: float = 1.0,
    prior_condition: torch.Tensor | None = None,
    corrector: str = "ula",
    branches: torch.Tensor | None = None,
    prior_guidance: float = 1.0,
    classifier_boost: ClassifierBoost = NO_BOOST,
    classifier_temperature: float = 1.0,
    chain: Chain | None = None,
    residual_guidance: float = 1.0,
) -> ScoreFn:
    """The score of ``node`` with ``prior`` counted once, whatever kinds of concept the leaves are.

    An energy-parameterised prior gives the exact gradient of :func:`conceptlib.energy.compose_noisy`
    (classifier leaves scaled by ``classifier_guidance``); a denoiser prior the score-space composition
    described in this module's docstring. ``branches`` ``(B,)`` (see :func:`draw_branches`), for an
    expression that is an OR at its top, names the part each sample follows.

    ``prior_condition`` (drawn per sample when the expression does not name the prior's concept) is followed
    at ``prior_guidance``, 1 by default: drawing ``c'`` and sampling ``p(x | c')`` unguided samples ``p(x)``
    exactly, while guiding it sharpens toward a condition nobody asked for. Measured with the shipped
    registry (150 samples, 4 corrector steps): shape 0.66 guided at 2, 0.81 unguided; color 0.97 either way.
    Beside a NOT of the prior's concept (``!position & color``) the drawn condition follows ``guidance``
    instead, so that its null score cancels the negated leaf's: unguided against a guided NOT, no sample
    looked real (realism 0.000, color 0.632 of 500). (An energy prior, objective dsm, keeps its guided drawn
    leaf: see :func:`compose_noisy`.)

    ``classifier_boost`` raises classifier leaves' weight at low noise (see :class:`ClassifierBoost`); it
    applies over a denoiser prior, where classifiers guide through ``D(x)``; an energy prior (dsm) keeps the
    constant ``classifier_guidance``.

    ``classifier_temperature`` ``T`` reads categorical classifier leaves as ``-log softmax(logits / T)[c]``
    over a denoiser prior. Why: the pull of ``-log p(c | x)`` on the logits is ``p - onehot(c)``, which
    vanishes once the classifier is sure, and on a 32x32 canvas a rounded square is already "sure" a
    square; warmer, the pull lasts until the outline is unambiguous. Measured with the shipped registry
    (``benchmarks/quality.py``, 500 samples, boosted guidance 3): T = 2 took shape alone 0.932 -> 0.952 and
    ``position & shape & color`` all three right 0.852 -> 0.902; T = 3 gained nothing over T = 1 (150
    samples). Continuous classifiers ignore it.

    ``chain``: for an expression of residual concepts, the chain they stack on (see :func:`chain_score`; built
    from the expression's concepts when not given), read at ``residual_guidance`` instead of ``guidance``: 1 is
    the chain's own conditional estimate, and on the chain of ``benchmarks/continual.py`` guidance 1.5 took the
    samples that look real from 1.00 to 0.27 (stage 2, 64 samples).
    """
    if not classifier_temperature > 0:
        raise ConceptError(f"--classifier-temperature must be positive; got {classifier_temperature}")
    if chain is None and any(is_residual(t.concept.version) for t in terms.values()):
        chain = build_chain(list({c.version.ref: c for c in [prior, *(t.concept for t in terms.values())]}.values()))
    if chain is not None:
        if corrector == "mala":
            raise ConceptError("the MALA corrector needs an energy, and residual concepts give a score only; "
                               "use --corrector ula")
        return chain_score(node, terms, chain, residual_guidance, or_temperature, prior_condition, branches,
                           prior_guidance)
    if not prior.is_denoiser:
        if classifier_guidance != guidance:
            node = _reweigh_classifiers(node, terms, classifier_guidance / guidance)
        return energy_scores(compose_noisy(node, terms, prior, guidance, or_temperature, prior_condition))
    if classifier_temperature != 1.0:
        _check_tempered(terms)
    if corrector == "mala":
        raise ConceptError(
            f"the MALA corrector needs an energy, and {prior.version.ref} (objective denoiser) gives a score only; "
            "use --corrector ula"
        )
    anchor = _prior_leaf_condition(node, terms, prior)
    if any(terms[leaf].concept.version.ref == prior.version.ref for leaf in expression_leaves(node)):
        prior_guidance = guidance  # a drawn condition only beside a NOT of the prior's concept: balance it
    reads_estimate = any(_is_classifier(t.concept) for t in terms.values())

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
        elif prior_guidance == 1.0:  # the implicit leaf samples p(x | c'): the prior itself, counted once
            base = estimate.detach()
        else:
            null = null_of(prior)
            base = null + prior_guidance * (estimate.detach() - null)
        classifier_sigma = torch.full((n,), CLASSIFIER_SIGMA, device=x.device)
        weight = classifier_guidance * classifier_boost.factor(sigma)

        def leaf_part(leaf: Leaf, negated: bool = False) -> Part:
            term = terms[leaf]
            conditions = term.condition.expand(n, -1)
            if negated:
                if not _reads_complement(term.concept):
                    return _negate(leaf_part(leaf))
                conditions = 1 - conditions  # the classifier of the complement, -w log p(not c | D(x))
            if _is_classifier(term.concept):
                categorical = _is_categorical(term.concept)
                warmth = {"temperature": classifier_temperature} if categorical and classifier_temperature != 1 else {}
                nll = term.concept.model(estimate, conditions, classifier_sigma, **warmth)
                (grad,) = torch.autograd.grad((weight * nll).sum(), x_in, retain_graph=True)
                # a categorical classifier's exp(-nll) is a probability; a continuous one's is a density
                probability = torch.exp(-nll.detach()) if categorical else None
                return Part(weight * nll.detach(), grad, probability, weight)
            if term.concept.is_denoiser:
                key = (term.concept.version.ref, id(term.condition))
                if key not in estimates:
                    with torch.no_grad():
                        estimates[key] = term.concept.model.denoise(x, conditions, sigma, ones)
                conditioned, null = estimates[key], null_of(term.concept)
                energy = ((x - conditioned).pow(2) - (x - null).pow(2)).flatten(1).sum(1) / (2 * sigma**2)
                return Part(guidance * energy, -guidance * (conditioned - null) / s2)
            x_leaf = x.detach().requires_grad_(True)
            with torch.enable_grad():
                conditioned, null = term.with_null(x_leaf, sigma)
                energy = guidance * (conditioned - null)
                (grad,) = torch.autograd.grad(energy.sum(), x_leaf)
            return Part(energy.detach(), grad)

        if branches is not None and isinstance(node, Or):
            grads = torch.stack([_combine(t, leaf_part, or_temperature).grad for t in node.terms])
            return (base - x) / s2 - grads[branches, torch.arange(n, device=x.device)], None
        combined = _combine(node, leaf_part, or_temperature)
        return (base - x) / s2 - combined.grad, None

    return score


def chain_score(
    node: Node,
    terms: Mapping[Leaf, Term],
    chain: Chain,
    guidance: float = 1.0,
    or_temperature: float = 1.0,
    prior_condition: torch.Tensor | None = None,
    branches: torch.Tensor | None = None,
    prior_guidance: float = 1.0,
) -> ScoreFn:
    """The score of an expression over one chain of residual concepts, every factor read through the whole chain.

    Each stage of a chain was trained on its own data with the earlier stages inside its loss, so only the
    estimate at the chain's end knows the full data: the frozen root alone, asked what naming a position
    changes, answers for the only data it saw (magenta squares), and guidance on that difference painted
    every object magenta. So every leaf is the difference it makes to the chain's estimate ``T``: with ``A``
    the conditions the expression names once in a plain AND (the root at its drawn condition when the
    expression does not name it), a leaf of ``A`` contributes ``T(A) - T(A without it)``, any other leaf
    (under NOT, in an OR, named twice) ``T(A with it) - T(A)``. AND sums them, NOT negates, weights and
    ``guidance`` scale, OR mixes by ``softmax(-E / T)`` of their denoising energies (or follows ``branches``,
    see :func:`draw_branches`), on top of the base ``T(A)`` less the leaves of ``A``: a plain AND at guidance
    1 is exactly ``T(A)``, the chain's own conditional estimate, and guidance ``w`` adds ``w - 1`` times each
    leaf's difference given the others. ``prior_guidance`` guides the drawn root condition the same way.
    """
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
    anchored = [leaf for leaf in expression_leaves(node)
                if anchors.get(terms[leaf].concept.version.ref) is terms[leaf].condition]
    plain = isinstance(node, Leaf) or (isinstance(node, And) and all(isinstance(t, Leaf) for t in node.terms))
    exact = plain and guidance == 1.0 and (not drawn or prior_guidance == 1.0) and len(anchored) == len(
        expression_leaves(node))

    templates: list[ChainReader] = []  # what the chain draws from nothing: the same at every step

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

        def leaf_part(leaf: Leaf, negated: bool = False) -> Part:
            named, unnamed = difference(leaf)
            energy = ((x - named).pow(2) - (x - unnamed).pow(2)).flatten(1).sum(1) / (2 * sigma**2)
            part = Part(guidance * energy, -guidance * (named - unnamed) / s2)
            return _negate(part) if negated else part

        base = joint
        for leaf in anchored:
            named, unnamed = difference(leaf)
            base = base - (named - unnamed)
        if drawn and prior_guidance != 1.0:
            base = base + (prior_guidance - 1.0) * (joint - reader.total({**assignment, root: None}))
        n = x.shape[0]
        if branches is not None and isinstance(node, Or):
            grads = torch.stack([_combine(t, leaf_part, or_temperature).grad for t in node.terms])
            return (base - x) / s2 - grads[branches, torch.arange(n, device=x.device)], None
        return (base - x) / s2 - _combine(node, leaf_part, or_temperature).grad, None

    return score


def draw_branches(node: Node, prior: LoadedConcept, n: int, generator: torch.Generator,
                  device: torch.device) -> torch.Tensor | None:
    """For an OR at the top of the expression with a denoiser prior: each sample's part, uniformly drawn.

    With the prior counted once, ``p(x | a OR b) = p(x) (p(a | x) + p(b | x)) / Z`` is the mixture of
    ``p(x | a)`` and ``p(x | b)`` (equal weights for conditions equally likely a priori), so drawing the part
    first samples it exactly. Weighing the parts' scores by ``softmax(-E_i)`` along the chain instead uses
    energies of the noisy image, which at high noise cannot yet tell the parts apart: measured on
    ``position | position`` (500 samples), either mode 0.85 and looks real 0.25, with many samples showing
    both objects half-formed.
    """
    if not prior.is_denoiser or not isinstance(node, Or):
        return None
    return torch.randint(0, len(node.terms), (n,), generator=generator, device=device)


def _reweigh_classifiers(node: Node, terms: dict[Leaf, Term], factor: float) -> Node:
    """``node`` with every classifier leaf weighted by ``factor`` (guidance scales the rest)."""
    if isinstance(node, Leaf):
        return Weighted(factor, node) if _is_classifier(terms[node].concept) else node
    if isinstance(node, And):
        return And(tuple(_reweigh_classifiers(t, terms, factor) for t in node.terms))
    if isinstance(node, Or):
        return Or(tuple(_reweigh_classifiers(t, terms, factor) for t in node.terms))
    if isinstance(node, Not):
        return Not(_reweigh_classifiers(node.term, terms, factor))
    if isinstance(node, Weighted):
        return Weighted(node.weight, _reweigh_classifiers(node.term, terms, factor))
    raise TypeError(f"not an expression node: {node!r}")


def _anchor_conditions(node: Node, terms: Mapping[Leaf, Term]) -> dict[VersionRef, torch.Tensor]:
    """Each concept's condition where the expression names it in exactly one leaf of a plain AND (or is that
    leaf): what a chain of residual concepts is read at."""
    leaves = [node] if isinstance(node, Leaf) else list(node.terms) if isinstance(node, And) else []
    named: dict[VersionRef, list[torch.Tensor]] = {}
    for leaf in leaves:
        if isinstance(leaf, Leaf):
            named.setdefault(terms[leaf].concept.version.ref, []).append(terms[leaf].condition)
    return {ref: conditions[0] for ref, conditions in named.items() if len(conditions) == 1}


def _prior_leaf_condition(node: Node, terms: dict[Leaf, Term], prior: LoadedConcept) -> torch.Tensor | None:
    """The condition a classifier's denoised estimate is taken at: the prior concept's, when the expression
    names it in exactly one leaf of a plain AND; otherwise the null estimate is read."""
    leaves = [node] if isinstance(node, Leaf) else list(node.terms) if isinstance(node, And) else []
    mine = [leaf for leaf in leaves if isinstance(leaf, Leaf) and terms[leaf].concept.version.ref == prior.version.ref]
    return terms[mine[0]].condition if len(mine) == 1 else None


def _combine(node: Node, leaf_part: Callable[[Leaf, bool], Part], temperature: float) -> Part:
    """The expression's energy and gradient; ``leaf_part(leaf, negated)`` gives a leaf's, or its NOT's."""
    if isinstance(node, Leaf):
        return leaf_part(node)
    if isinstance(node, And):
        parts = [_combine(t, leaf_part, temperature) for t in node.terms]
        return Part(torch.stack([p.energy for p in parts]).sum(0), torch.stack([p.grad for p in parts]).sum(0))
    if isinstance(node, Or):
        parts = [_combine(t, leaf_part, temperature) for t in node.terms]
        energies = torch.stack([p.energy for p in parts])
        weights = torch.softmax(-energies / temperature, dim=0)[:, :, None, None, None]
        return Part(-temperature * torch.logsumexp(-energies / temperature, 0),
                    (weights * torch.stack([p.grad for p in parts])).sum(0))
    if isinstance(node, Not):
        if isinstance(node.term, Leaf):
            return leaf_part(node.term, True)
        return _negate(_combine(node.term, leaf_part, temperature))
    if isinstance(node, Weighted):
        inner = _combine(node.term, leaf_part, temperature)
        return Part(node.weight * inner.energy, node.weight * inner.grad)
    raise TypeError(f"not an expression node: {node!r}")


def _negate(part: Part) -> Part:
    """NOT: ``-E`` in general; for a classifier leaf, the classifier of the complement, ``-w log(1 - p(c | x))``.

    Negating ``-w log p`` pushes ``p`` toward 0 without bound: measured on ``position & !color`` the objects
    grew and the judge's realism fell to 0.08. ``1 - p`` asks the same question and stops pushing once the
    image no longer shows ``c``. Its gradient is the negated one scaled by ``p / (1 - p)`` (``w`` cancels).
    That is the fallback for a categorical classifier without ``membership``: where the image shows ``c``
    for certain, ``p`` rounds to 1, ``-log p`` to 0 and both gradients vanish, so the NOT gives up on exactly
    the samples that break it (:func:`_reads_complement` asks the network for the complement instead).
    """
    if part.probability is None:
        return Part(-part.energy, -part.grad)
    p = part.probability.clamp(max=1 - 1e-6)
    weight = (p / (1 - p))[:, None, None, None]
    return Part(-part.scale * torch.log1p(-p), -weight * part.grad)
