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

CONTEXT_CHANNELS = 6
"""What a residual network reads beside ``x``: its frozen concepts' estimate and their template (RGB each)."""


def is_residual(version: VersionInfo) -> bool:
    """Trained by objective residual: its network outputs a correction to its lineage's estimate."""
    return version.hyperparameters.get("objective") == "residual"


def is_root_denoiser(version: VersionInfo) -> bool:
    return version.hyperparameters.get("objective") == "denoiser" and not version.lineage


TEMPLATE_SIGMA = 1.0
"""The noise level of a chain's template: its estimate of a flat gray image, i.e. what the frozen concepts
draw for their conditions from nothing (a clean magenta circle at the asked place, for a position and a shape
concept that only ever saw magenta)."""


@dataclass(frozen=True)
class Chain:
    """A root denoiser and the residual concepts stacked on it, each after everything it was trained with."""

    root: LoadedConcept
    residuals: tuple[LoadedConcept, ...]

    @property
    def members(self) -> tuple[LoadedConcept, ...]:
        return (self.root, *self.residuals)


Assigned = torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None
"""A member's condition: ``(1 or B, dim)``, ``(c, keep)`` with a per-sample ``keep`` ``(B,)``, or None (null)."""


class ChainReader:
    """The chain's estimate at one ``(x, sigma)``, under one or several assignments of conditions.

    Each residual reads two images beside ``x``: its context (its lineage's estimate of ``x``) and its
    template (its lineage's estimate of a flat gray image at :data:`TEMPLATE_SIGMA`). The context says where
    the frozen concepts see the object now; the template says what they would draw, which stays clear where
    the context does not: a frozen shape concept that only saw magenta, asked about a green object at middle
    noise, returns a shapeless blob, but its template is still the asked shape.

    Composition asks the chain with one concept's condition named or left null at a time; a member's output
    depends only on its own condition and its lineage's, so members whose conditions agree are computed once
    (conditions are compared by identity). An assignment maps member concept names to :data:`Assigned`;
    names left out are null.
    """

    def __init__(self, chain: Chain, x: torch.Tensor, sigma: torch.Tensor, differentiable: bool = False,
                 templates: ChainReader | _BatchTemplates | None = None) -> None:
        self.chain, self.x, self.sigma = chain, x, sigma
        self.differentiable = differentiable
        """Keep the graph (inference refines a condition by its gradient); sampling needs none."""
        self._templates = templates
        self._outputs: dict[tuple[object, ...], torch.Tensor] = {}

    @property
    def templates(self) -> ChainReader | _BatchTemplates:
        """The reader at the template point (this one, if it is that reader), or precomputed templates."""
        return self._templates or self

    @classmethod
    def at(cls, chain: Chain, x: torch.Tensor, sigma: torch.Tensor, differentiable: bool = False,
           templates: ChainReader | None = None) -> ChainReader:
        """A reader at ``(x, sigma)`` with the template reader it needs (pass ``templates`` to reuse one)."""
        return cls(chain, x, sigma, differentiable, templates or cls.template_reader(chain, x, differentiable))

    @classmethod
    def template_reader(cls, chain: Chain, like: torch.Tensor, differentiable: bool = False) -> ChainReader:
        """The reader at the template point: a flat gray image at :data:`TEMPLATE_SIGMA` (its own templates)."""
        gray = torch.full_like(like, 0.5)
        return cls(chain, gray, torch.full((like.shape[0],), TEMPLATE_SIGMA, device=like.device), differentiable)

    def total(self, assignment: Mapping[str, Assigned]) -> torch.Tensor:
        """``root + sum of corrections`` with every member at its assigned condition."""
        total = self._output(self.chain.root, assignment)
        for member in self.chain.residuals:
            total = total + self._output(member, assignment)
        return total

    def context(self, lineage: Sequence[VersionRef], assignment: Mapping[str, Assigned]) -> torch.Tensor:
        """The estimate of the members in ``lineage`` (a residual's frozen concepts)."""
        names = {ref.concept for ref in lineage}
        total = self._output(self.chain.root, assignment)
        for member in self.chain.residuals:
            if member.version.concept in names:
                total = total + self._output(member, assignment)
        return total

    def _output(self, member: LoadedConcept, assignment: Mapping[str, Assigned]) -> torch.Tensor:
        names = [*(ref.concept for ref in member.version.lineage), member.version.concept]
        key = (member.version.concept, *(_identity(assignment.get(name)) for name in names))
        if key not in self._outputs:
            n = self.x.shape[0]
            c, keep = _condition(assignment.get(member.version.concept), member, n, self.x.device)
            extra: tuple[torch.Tensor, ...] = ()
            if member is not self.chain.root:
                context = self.context(member.version.lineage, assignment)
                template = self.templates.context(member.version.lineage, assignment)
                extra = (torch.cat([context, template], dim=1),)
            with torch.set_grad_enabled(self.differentiable and torch.is_grad_enabled()):
                self._outputs[key] = member.model.denoise(self.x, c, self.sigma, keep, *extra)
        return self._outputs[key]


def _identity(assigned: Assigned) -> object:
    if isinstance(assigned, tuple):
        return tuple(id(part) for part in assigned)
    return id(assigned)


def _condition(assigned: Assigned, member: LoadedConcept, n: int,
               device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    if assigned is None:
        return torch.zeros(n, member.version.schema.dim, device=device), torch.zeros(n, device=device)
    if isinstance(assigned, tuple):
        return assigned
    return assigned.expand(n, -1), torch.ones(n, device=device)


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


def frozen_conditions(chain: Chain, dataset: Dataset, index: np.ndarray, keep: torch.Tensor,
                      device: torch.device) -> dict[str, Assigned]:
    """Each frozen member at the batch's own labels; the residual members null where ``keep`` ``(B,)`` is 0."""
    conditions: dict[str, Assigned] = {}
    for member in chain.members:
        c = torch.from_numpy(dataset.condition_vectors(member.version.attribute, index)).to(device)
        conditions[member.version.concept] = (c, torch.ones_like(keep) if member is chain.root else keep)
    return conditions


class TrainingTemplates:
    """Every template a residual's training reads, computed once per dataset image.

    A template depends on the image's labels only, never on its noise, so it is read from here instead of
    evaluating the frozen chain on a gray image at every iteration (one forward pass of each frozen network
    per image instead of one per image per visit). Two versions per image: every frozen concept at its label,
    and the frozen residuals dropped to null (the root kept), for the iterations that drop them.
    """

    def __init__(self, chain: Chain, dataset: Dataset, with_dropped: bool, device: torch.device,
                 chunk: int = 256) -> None:
        lineages = {self._key(m.version.lineage): m.version.lineage for m in chain.residuals}
        everything = tuple(m.version.ref for m in chain.members)
        lineages[self._key(everything)] = everything
        n, size = len(dataset), dataset.image_size
        variants = (True, False) if with_dropped else (True,)
        self._stored = {(key, kept): torch.empty((n, 3, size, size), dtype=torch.float16, device=device)
                        for key in lineages for kept in variants}
        self.everything = everything
        for start in range(0, n, chunk):
            index = np.arange(start, min(n, start + chunk))
            reader = ChainReader.template_reader(chain, torch.empty((len(index), 3, size, size), device=device))
            for kept in variants:
                keep = torch.full((len(index),), float(kept), device=device)
                assigned = frozen_conditions(chain, dataset, index, keep, device)
                with torch.no_grad():
                    for key, lineage in lineages.items():
                        self._stored[(key, kept)][index] = reader.context(lineage, assigned).half()

    @staticmethod
    def _key(lineage: Sequence[VersionRef]) -> frozenset[str]:
        return frozenset(ref.concept for ref in lineage)

    def batch(self, index: np.ndarray, keep: torch.Tensor) -> _BatchTemplates:
        return _BatchTemplates(self, torch.from_numpy(index).to(keep.device), keep)


@dataclass(frozen=True)
class _BatchTemplates:
    """One batch's templates, answering :class:`ChainReader`'s question (its ``context`` of a lineage)."""

    store: TrainingTemplates
    index: torch.Tensor
    keep: torch.Tensor

    def context(self, lineage: Sequence[VersionRef], assignment: object = None) -> torch.Tensor:
        key = self.store._key(lineage)
        kept = self.store._stored[(key, True)][self.index].float()
        if (key, False) not in self.store._stored:
            return kept
        dropped = self.store._stored[(key, False)][self.index].float()
        return torch.where(self.keep[:, None, None, None] > 0, kept, dropped)


def check_trainable(chain: Chain, attribute: str, model: torch.nn.Module, architecture: str) -> None:
    """Refuse, before training, what a residual cannot learn: an attribute a member already models, or a
    network that is not a residual reading the frozen estimate and template."""
    for member in chain.members:
        if member.version.attribute == attribute:
            raise TrainingError(f"frozen concept {member.version.ref} already models attribute {attribute!r}; a "
                                "concept added --with it must learn another attribute (or train a new version "
                                "of it instead)")
    if not getattr(model, "residual", False) or getattr(model, "context", 0) != CONTEXT_CHANNELS:
        raise TrainingError(f"architecture {architecture!r} is not a residual denoiser reading the frozen "
                            "estimate and template, which objective residual needs; use --arch residual")
