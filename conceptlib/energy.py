"""An expression plus loaded concepts -> one batched energy function (paper eq. 4-10).

AND is a sum of energies (a product of experts), OR is ``-T * logsumexp(-E / T)`` (a mixture; the
temperature ``T`` matters when learned energies are small), NOT is the negated energy, and a weight scales
it: :class:`Energies`, folded over the expression (:func:`conceptlib.expr.fold`). NOT only appears inside an
AND with a positive term (checked by the parser), since a negated energy alone is not a distribution.

Noise-conditioned concepts each model a whole ``p(x | c)``, so a plain sum would count the image prior once
per concept, and the doubled prior drowns the objects. For them the logic applies to each leaf's *ratio*
``E(x | c) - E(x | null)`` (``-log p(c | x)`` up to a constant) and the prior is added once:
``E = E_prior(x) + F(w * ratios)``, where ``w`` is the guidance scale (classifier-free guidance; ``w = 1`` is
the plain product).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property

import torch

from conceptlib import batched
from conceptlib.concepts import ConceptKind, LoadedConcept
from conceptlib.expr import Leaf, Node, conjuncts, fold
from conceptlib.registry import VersionRef

EnergyFn = Callable[[torch.Tensor], torch.Tensor]
NoisyEnergyFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Term:
    """A leaf made concrete: a frozen network and its encoded condition, ``(1, dim)`` or ``(B, dim)``.

    ``fast`` evaluates it through :mod:`conceptlib.batched` (same energy, less work per Langevin step);
    ``False`` calls the network plainly, as a reference.
    """

    concept: LoadedConcept
    condition: torch.Tensor
    fast: bool = True

    def _conditions(self, n: int) -> torch.Tensor:
        return self.condition.expand(n, -1) if self.condition.shape[0] == 1 else self.condition

    @cached_property
    def specialised(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """The network specialised to this term's shared condition (:func:`conceptlib.batched.for_condition`),
        which Langevin calls in its place, or None."""
        return batched.for_condition(self.concept.model, self.condition) if self.fast else None

    def _model(self, x: torch.Tensor, *per_sample: torch.Tensor) -> torch.Tensor:
        if self.fast:
            return batched.evaluate(self.concept.model, x, *per_sample)
        return self.concept.model(x, *per_sample)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.specialised is not None:
            return batched.evaluate(self.specialised, x)
        return self._model(x, self._conditions(x.shape[0]))

    def with_null(self, x: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(E(x | c), E(x | null))`` at noise ``sigma``, in one batched call.

        A classifier's energy is already ``-log p(c | x)``: its null energy is zero.
        """
        n = x.shape[0]
        c = self._conditions(n)
        if self.concept.kind is ConceptKind.CLASSIFIER:
            return self._model(x, c, sigma), torch.zeros(n, device=x.device)
        keep = torch.cat([torch.ones(n, device=x.device), torch.zeros(n, device=x.device)])
        both = self._model(torch.cat([x, x]), torch.cat([c, c]), torch.cat([sigma, sigma]), keep)
        return both[:n], both[n:]


def compose(node: Node, terms: Mapping[Leaf, Term], or_temperature: float = 1.0, fuse: bool = True) -> EnergyFn:
    """The energy ``E(x) -> (B,)`` of ``node``; ``terms`` maps every leaf to its network.

    With ``fuse``, when every leaf is a frozen network specialised to a condition shared by the batch, the
    whole expression is evaluated as one function, chunk by chunk (:func:`conceptlib.batched.evaluate`): one
    pass of the chunk threads per step instead of one per concept, each thread keeping its chunk through
    every network. Every operation in an expression is per sample, so chunking the whole is exact (the same
    samples bit for bit), and faster with several concepts (docs/speed.md).
    """
    specialised = {leaf: term.specialised for leaf, term in terms.items()} if fuse and all(
        term.fast for term in terms.values()) else {}
    energies = Energies(or_temperature)
    if specialised and all(part is not None for part in specialised.values()):
        def whole(x: torch.Tensor) -> torch.Tensor:
            return fold(node, lambda leaf: specialised[leaf](x), energies)  # type: ignore[misc]

        return lambda x: batched.evaluate(whole, x)
    return lambda x: fold(node, lambda leaf: terms[leaf](x), energies)


def compose_noisy(
    node: Node,
    terms: Mapping[Leaf, Term],
    prior: LoadedConcept,
    guidance: float = 1.0,
    or_temperature: float = 1.0,
    prior_condition: torch.Tensor | None = None,
) -> NoisyEnergyFn:
    """``E(x, sigma) = E_prior(x | null) + F(w * (E_i(x | c_i) - E_i(x | null)))`` for noise-conditioned terms.

    ``prior_condition`` ``(B, dim)``, when given, replaces the prior's null energy by ``E_prior(x | c')``
    with ``c'`` drawn per sample from the prior concept's training range: ancestral sampling of
    ``p(x) = E_c'[p(x | c')]``, which keeps objects in every sample when the expression does not name
    the prior's concept (a short-trained null model often draws empty scenes). Guidance applies to that
    drawn condition like any leaf: ``E_prior(x | null) + w (E_prior(x | c') - E_prior(x | null))``; unguided,
    its objects come out faint and a classifier's gradient then pushes them to speckle.

    In a plain AND without guidance the prior's own leaf contributes ``E_prior(x | c)`` whole, its null
    energy cancelling against the prior's: one network call saved per step, same energy.
    """
    direct = _plain_and_leaves(node) if guidance == 1.0 else set()
    energies = Energies(or_temperature)
    prior_leaf = next((leaf for leaf in direct if terms[leaf].concept.version.ref == prior.version.ref), None)
    call = batched.evaluate if all(term.fast for term in terms.values()) else _plain_call

    def energy(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        nulls: dict[VersionRef, torch.Tensor] = {}

        def ratio(leaf: Leaf) -> torch.Tensor:
            term = terms[leaf]
            if leaf == prior_leaf:
                return term._model(x, term._conditions(x.shape[0]), sigma)
            conditioned, null = term.with_null(x, sigma)
            nulls.setdefault(term.concept.version.ref, null)
            return guidance * (conditioned - null)

        combined = fold(node, ratio, energies)
        if prior_leaf is not None:
            return combined
        if prior_condition is not None:  # an implicit leaf of the prior's concept, guided like the others
            if guidance == 1.0:
                return call(prior.model, x, prior_condition, sigma) + combined
            drawn, null = Term(prior, prior_condition).with_null(x, sigma)
            return null + guidance * (drawn - null) + combined
        prior_energy = nulls.get(prior.version.ref)
        if prior_energy is None:
            n = x.shape[0]
            prior_energy = call(prior.model, x, torch.zeros(n, prior.version.schema.dim, device=x.device), sigma,
                                torch.zeros(n, device=x.device))
        return prior_energy + combined

    return energy


def _plain_call(fn: Callable[..., torch.Tensor], *args: torch.Tensor) -> torch.Tensor:
    return fn(*args)


def _plain_and_leaves(node: Node) -> set[Leaf]:
    """The leaves of a leaf or of an AND of bare leaves; empty for anything with OR, NOT or weights."""
    terms = conjuncts(node)
    return set(terms) if all(isinstance(t, Leaf) for t in terms) else set()  # type: ignore[arg-type]


@dataclass(frozen=True)
class Energies:
    """The paper's logic on energies ``(B,)``: the :class:`conceptlib.expr.Algebra` of :func:`compose`."""

    temperature: float = 1.0

    def and_(self, terms: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.stack(list(terms)).sum(0)  # eq. 5: AND as a sum

    def or_(self, terms: Sequence[torch.Tensor]) -> torch.Tensor:
        t = self.temperature  # eq. 8: OR as -logsumexp(-E), tempered
        return -t * torch.logsumexp(torch.stack([-e for e in terms]) / t, 0)

    def not_(self, term: torch.Tensor) -> torch.Tensor:
        return -term  # eq. 10: NOT as a negated energy, grounded by its AND

    def weighted(self, weight: float, term: torch.Tensor) -> torch.Tensor:
        return weight * term
