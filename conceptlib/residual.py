"""Residual concepts: what a new concept adds to frozen denoisers (continual learning, paper 3.3).

A concept added ``--with`` frozen ones by objective ``residual`` is a network ``R`` trained so that

    D(x_sigma) = D_frozen(x_sigma | every frozen concept at the image's own label) + R(x_sigma, sigma | c, D_frozen)

denoises its data, with only ``R`` learning. So ``R`` learns exactly what the frozen composition does not
explain on the new data: a circle where the frozen position concept only ever drew squares. ``R`` reads
the frozen estimate ``D_frozen`` beside ``x``: at high noise it cannot otherwise see where the frozen
concepts put the object, and a residual that could not see it drew a second object of its own.

The frozen composition is a :class:`Chain`: one root denoiser (objective ``denoiser``, trained alone) and
the residual concepts stacked on it. Each residual reads the composition of exactly the concepts it was
trained with (its lineage), and the estimate of the whole chain is the root's plus every residual's
correction. Training drops the new condition to null part of the time (and each frozen residual's, so the
new one also works where a composition leaves those unnamed): ``R(null)`` is what composition subtracts
to turn a residual into a factor, ``w (R(c) - R(null))``, that AND, NOT and weights apply to.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from conceptlib.concepts import LoadedConcept, load_concept
from conceptlib.errors import ConceptError, TrainingError
from conceptlib.registry import Registry, VersionInfo, VersionRef
from conceptlib.sources import Dataset

Conditions = Mapping[str, tuple[torch.Tensor, torch.Tensor]]
"""Per concept name: its condition ``(B, dim)`` and ``keep`` ``(B,)`` (0 = null) for one batch."""


def is_residual(version: VersionInfo) -> bool:
    """Trained by objective residual: its network outputs a correction to its lineage's estimate."""
    return version.hyperparameters.get("objective") == "residual"


def is_root_denoiser(version: VersionInfo) -> bool:
    return version.hyperparameters.get("objective") == "denoiser" and not version.lineage


@dataclass(frozen=True)
class Chain:
    """A root denoiser and the residual concepts stacked on it, each after everything it was trained with."""

    root: LoadedConcept
    residuals: tuple[LoadedConcept, ...]

    @property
    def members(self) -> tuple[LoadedConcept, ...]:
        return (self.root, *self.residuals)

    def null_conditions(self, n: int, device: torch.device) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Every member at its null condition."""
        zeros = torch.zeros(n, device=device)
        return {m.version.concept: (torch.zeros(n, m.version.schema.dim, device=device), zeros) for m in self.members}

    def estimate(self, x: torch.Tensor, sigma: torch.Tensor, conditions: Conditions) -> ChainEstimate:
        """The chain's denoised estimate of ``x`` at noise ``sigma`` with each member at ``conditions``.

        Returns the total and, per residual, the context it read (its lineage's estimate), so a caller can
        ask the same residual at other conditions against the same context.
        """
        root = self.root.version.concept
        c, keep = conditions[root]
        base = self.root.model.denoise(x, c, sigma, keep)
        corrections: dict[str, torch.Tensor] = {}
        contexts: dict[str, torch.Tensor] = {}
        for member in self.residuals:
            name = member.version.concept
            context = base
            for ref in member.version.lineage:
                if ref.concept != root:
                    context = context + corrections[ref.concept]
            c, keep = conditions[name]
            corrections[name] = member.model.denoise(x, c, sigma, keep, context)
            contexts[name] = context
        total = base
        for correction in corrections.values():
            total = total + correction
        return ChainEstimate(total, base, corrections, contexts)


@dataclass(frozen=True)
class ChainEstimate:
    total: torch.Tensor
    root: torch.Tensor
    """The root denoiser's estimate alone."""
    corrections: dict[str, torch.Tensor]
    contexts: dict[str, torch.Tensor]


def build_chain(concepts: Sequence[LoadedConcept]) -> Chain:
    """The chain of ``concepts``: exactly one root denoiser, every residual's lineage among them, ordered.

    Raises one line naming what does not fit: a classifier or energy concept, two roots, a residual whose
    lineage is missing or another version of a member.
    """
    by_name: dict[str, LoadedConcept] = {}
    for concept in concepts:
        name = concept.version.concept
        if name in by_name and by_name[name].version.number != concept.version.number:
            raise ConceptError(f"{by_name[name].version.ref} and {concept.version.ref} are two versions of one "
                               "concept; a composition of residual concepts takes one of each")
        by_name[name] = concept
    roots = [c for c in by_name.values() if is_root_denoiser(c.version)]
    others = [c for c in by_name.values() if not is_root_denoiser(c.version)]
    for concept in others:
        if not is_residual(concept.version):
            objective = concept.version.hyperparameters.get("objective")
            raise ConceptError(
                f"{concept.version.ref} (objective {objective}) is not a denoiser; a residual concept composes "
                "with denoisers only (the first concept by --objective denoiser, later ones by --objective residual)"
            )
    if len(roots) != 1:
        found = ", ".join(str(c.version.ref) for c in roots) or "none"
        raise ConceptError(f"a residual composition needs exactly one first concept trained by objective "
                           f"denoiser with nothing frozen; found {found}")
    root = roots[0]
    for concept in others:
        for ref in concept.version.lineage:
            member = by_name.get(ref.concept)
            if member is None:
                raise ConceptError(f"{concept.version.ref} was trained with {ref} frozen; compose it with that "
                                   f"concept too")
            if member.version.number != ref.number:
                raise ConceptError(f"{concept.version.ref} was trained with {ref} frozen, not "
                                   f"{member.version.ref}; use {ref} or retrain {concept.version.concept} --with "
                                   f"{member.version.ref}")
    ordered = sorted(others, key=lambda c: (len(c.version.lineage), c.version.concept))
    return Chain(root, tuple(ordered))


def lineage_closure(registry: Registry, versions: Sequence[VersionInfo]) -> list[VersionInfo]:
    """``versions`` plus every version their residual members were trained with, recursively, each once."""
    found: dict[VersionRef, VersionInfo] = {v.ref: v for v in versions}
    pending = [v for v in versions if is_residual(v)]
    while pending:
        version = pending.pop()
        for ref in version.lineage:
            if ref not in found:
                found[ref] = registry.resolve(ref.concept, ref.number)
                if is_residual(found[ref]):
                    pending.append(found[ref])
    return list(found.values())


def load_chain(registry: Registry, plugins: object, concepts: Sequence[LoadedConcept],
               device: torch.device) -> Chain | None:
    """The chain behind ``concepts`` when any is a residual (their lineage loaded as needed), else None."""
    if not any(is_residual(c.version) for c in concepts):
        return None
    loaded = {c.version.ref: c for c in concepts}
    for version in lineage_closure(registry, [c.version for c in concepts]):
        if version.ref not in loaded:
            loaded[version.ref] = load_concept(registry, plugins, version, device)  # type: ignore[arg-type]
    return build_chain(list(loaded.values()))


def frozen_conditions(chain: Chain, dataset: Dataset, index: np.ndarray, dropout: float,
                      generator: torch.Generator, device: torch.device) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Each frozen member at the batch's own labels; residual members dropped to null at ``dropout``."""
    conditions = {}
    for member in chain.members:
        name = member.version.concept
        c = torch.from_numpy(dataset.condition_vectors(member.version.attribute, index)).to(device)
        keep = torch.ones(c.shape[0], device=device)
        if member is not chain.root and dropout > 0:
            keep = (torch.rand(c.shape[0], generator=generator, device=device) >= dropout).float()
        conditions[name] = (c, keep)
    return conditions


def check_trainable(chain: Chain, attribute: str, model: torch.nn.Module, architecture: str) -> None:
    """Refuse, before training, what a residual cannot learn: an attribute a member already models, or a
    network that is not a residual reading a 3-channel context."""
    for member in chain.members:
        if member.version.attribute == attribute:
            raise TrainingError(f"frozen concept {member.version.ref} already models attribute {attribute!r}; a "
                                "concept added --with it must learn another attribute (or train a new version "
                                "of it instead)")
    if not getattr(model, "residual", False) or getattr(model, "context", 0) != 3:
        raise TrainingError(f"architecture {architecture!r} is not a residual denoiser reading the frozen "
                            "estimate, which objective residual needs; use --arch residual")
