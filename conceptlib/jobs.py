"""The library's entry points for whole jobs: add a concept, compose samples.

The CLI is a thin shell over these two functions, so notebooks and other programs get the same
behaviour with one call each.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from conceptlib import expr
from conceptlib.concepts import LoadedConcept, load_concept, state_to_numpy
from conceptlib.energy import Term, compose
from conceptlib.errors import ConceptError, ConditionError
from conceptlib.imaging import to_uint8
from conceptlib.plugins import PluginManager
from conceptlib.registry import NewVersion, Registry, VersionInfo, VersionRef
from conceptlib.sampling import LangevinConfig, initial_images, langevin
from conceptlib.sources import Progress
from conceptlib.training import IterationCallback, TrainConfig, check_frozen_attributes, train_concept


def split_ref(text: str) -> tuple[str, str | None]:
    """``name@ref`` -> (name, ref); ``name`` -> (name, None)."""
    name, _, ref = text.partition("@")
    if not name or (ref == "" and "@" in text):
        raise ConceptError(f"bad concept reference {text!r}; write NAME, NAME@VERSION or NAME@ALIAS")
    return name, ref or None


@dataclass
class AddRequest:
    name: str
    source: str
    params: Mapping[str, Any] = field(default_factory=dict)
    attribute: str | None = None
    frozen: Sequence[str] = ()
    architecture: str = "small"
    architecture_config: Mapping[str, Any] = field(default_factory=dict)
    train: TrainConfig = field(default_factory=TrainConfig)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    description: str = ""


def add_concept(
    registry: Registry,
    plugins: PluginManager,
    request: AddRequest,
    on_load: Progress | None = None,
    on_iteration: IterationCallback | None = None,
) -> VersionInfo:
    """Train ``request.name`` with every ``request.frozen`` concept frozen; register one version.

    Everything that can be checked is checked before training starts, and nothing is written
    unless training finishes: an error, a divergence or Ctrl-C leaves the registry as it was.
    """
    source = plugins.source(request.source)
    architecture = plugins.architecture(request.architecture)
    params = source.resolve_params(request.params)
    schemas = source.attributes(params)
    attribute = request.attribute or request.name
    if attribute not in schemas:
        raise ConceptError(
            f"source {request.source!r} has no attribute {attribute!r} (it labels: {', '.join(schemas)}); "
            "name the concept after one, or pass --attribute"
        )
    frozen_versions = []
    for text in request.frozen:
        name, ref = split_ref(text)
        if name == request.name:
            raise ConceptError(f"--with {text}: a concept cannot be frozen into its own training")
        frozen_versions.append(registry.resolve(name, ref))
    frozen = [load_concept(registry, plugins, v, request.device) for v in frozen_versions]
    dataset = source.load(params, progress=on_load)
    check_frozen_attributes(dataset, frozen, request.source)
    for concept in frozen:
        if int(concept.version.hyperparameters["image_size"]) != dataset.image_size:
            raise ConceptError(
                f"frozen concept {concept.version.ref} works on {concept.version.hyperparameters['image_size']}px "
                f"images, this dataset on {dataset.image_size}px; pass --param image_size=..."
            )
    config = architecture.config(request.architecture_config)
    result = train_concept(
        architecture, config, dataset, attribute, frozen, request.train, request.device, on_iteration
    )
    hyperparameters = {
        "objective": "contrastive_divergence",
        "image_size": dataset.image_size,
        "device": str(request.device),
        **request.train.to_json(),
    }
    new = NewVersion(
        concept=request.name,
        schema=schemas[attribute],
        architecture=request.architecture,
        architecture_config=config,
        source=request.source,
        source_params=params,
        attribute=attribute,
        dataset_hash=dataset.hash,
        hyperparameters=hyperparameters,
        seed=request.train.seed,
        metrics=result.metrics,
        lineage=[v.ref for v in frozen_versions],
        description=request.description,
    )
    return registry.add_version(new, state_to_numpy(result.model))


@dataclass
class Composition:
    images: np.ndarray
    """uint8 ``(N, H, W, 3)``."""
    provenance: dict[str, Any]
    warnings: list[str]


def compose_images(
    registry: Registry,
    plugins: PluginManager,
    expression: str,
    n: int,
    sampler: LangevinConfig,
    seed: int = 0,
    device: torch.device | None = None,
    or_temperature: float = 1.0,
    batch_size: int = 64,
    on_step: Callable[[int, int], None] | None = None,
) -> Composition:
    """Sample ``n`` images from the composed energy of ``expression`` by Langevin dynamics."""
    if n < 1:
        raise ConceptError(f"-n must be at least 1; got {n}")
    if or_temperature <= 0:
        raise ConceptError(f"--temperature must be positive; got {or_temperature}")
    device = device or torch.device("cpu")
    node = expr.parse(expression)
    loaded: dict[VersionRef, LoadedConcept] = {}
    terms: dict[expr.Leaf, Term] = {}
    for leaf in expr.leaves(node):
        version = registry.resolve(leaf.concept, leaf.version)
        if version.ref not in loaded:
            loaded[version.ref] = load_concept(registry, plugins, version, device)
        concept = loaded[version.ref]
        try:
            terms[leaf] = Term(concept, concept.condition(leaf.value, device))
        except ConditionError as exc:
            raise ConditionError(f"in '{expr.to_text(leaf)}': {exc}") from None
    sizes = {int(c.version.hyperparameters["image_size"]) for c in loaded.values()}
    if len(sizes) > 1:
        raise ConceptError(f"the concepts in this expression work on different image sizes: {sorted(sizes)}")
    image_size = sizes.pop()
    energy = compose(node, terms, or_temperature)
    generator = torch.Generator(device=device).manual_seed(seed)
    batches = []
    done_steps = 0
    total_steps = sampler.steps * ((n + batch_size - 1) // batch_size)
    started = time.perf_counter()
    for start in range(0, n, batch_size):
        count = min(batch_size, n - start)
        x = initial_images(count, image_size, sampler.init, generator, device)

        def step(done: int, _total: int, offset: int = done_steps) -> None:
            if on_step is not None:
                on_step(offset + done, total_steps)

        batches.append(to_uint8(langevin(energy, x, sampler, generator, on_step=step)))
        done_steps += sampler.steps
    versions = {v.concept: v.number for v in loaded}
    provenance = {
        "expression": expr.to_text(node),
        "versions": {str(ref): loaded[ref].version.weights_sha256 for ref in loaded},
        "sampler": {"name": "langevin", **sampler.to_json(), "or_temperature": or_temperature},
        "seed": seed,
        "n": n,
        "batch_size": batch_size,
        "image_size": image_size,
        "device": str(device),
        "seconds": round(time.perf_counter() - started, 3),
    }
    return Composition(np.concatenate(batches), provenance, _lineage_warnings(loaded, versions))


def _lineage_warnings(loaded: Mapping[VersionRef, LoadedConcept], versions: Mapping[str, int]) -> list[str]:
    """Concepts trained against other versions of concepts composed here (allowed, but worth a word)."""
    warnings = []
    for concept in loaded.values():
        for frozen in concept.version.lineage:
            used = versions.get(frozen.concept)
            if used is not None and used != frozen.number:
                warnings.append(
                    f"{concept.version.ref} was trained with {frozen} frozen, but this composes "
                    f"{frozen.concept}@{used}"
                )
    return warnings
