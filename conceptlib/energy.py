"""An expression plus loaded concepts -> one batched energy function (paper eq. 4-10).

AND is a sum of energies (a product of experts), OR is ``-T * logsumexp(-E / T)`` (a mixture; the
temperature ``T`` matters when learned energies are small), NOT is the negated energy, weighted by
``Weighted`` nodes. NOT only appears inside an AND with a positive term (checked by the parser),
since a negated energy alone is not a normalisable distribution.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from conceptlib.concepts import LoadedConcept
from conceptlib.expr import And, Leaf, Node, Not, Or, Weighted

EnergyFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Term:
    """A leaf made concrete: a frozen network and its encoded condition ``(1, dim)``."""

    concept: LoadedConcept
    condition: torch.Tensor

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.concept.model(x, self.condition.expand(x.shape[0], -1))


def compose(node: Node, terms: dict[Leaf, Term], or_temperature: float = 1.0) -> EnergyFn:
    """The energy ``E(x) -> (B,)`` of ``node``; ``terms`` maps every leaf to its network."""
    if isinstance(node, Leaf):
        return terms[node]
    if isinstance(node, And):
        parts = [compose(t, terms, or_temperature) for t in node.terms]
        return lambda x: torch.stack([p(x) for p in parts]).sum(0)  # eq. 5: AND as a sum
    if isinstance(node, Or):
        parts = [compose(t, terms, or_temperature) for t in node.terms]
        temperature = or_temperature
        # eq. 8: OR as -logsumexp(-E), tempered
        return lambda x: -temperature * torch.logsumexp(torch.stack([-p(x) for p in parts]) / temperature, 0)
    if isinstance(node, Not):
        inner = compose(node.term, terms, or_temperature)
        return lambda x: -inner(x)  # eq. 10: NOT as a negated energy, grounded by its AND
    if isinstance(node, Weighted):
        inner = compose(node.term, terms, or_temperature)
        weight = node.weight
        return lambda x: weight * inner(x)
    raise TypeError(f"not an expression node: {node!r}")
