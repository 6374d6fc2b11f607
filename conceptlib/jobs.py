"""The library's entry points for whole jobs: add a concept, compose samples.

The CLI is a thin shell over these two functions, so notebooks and other programs get the same
behaviour with one call each.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from conceptlib import expr
from conceptlib.concepts import LoadedConcept, load_concept, state_to_numpy
from conceptlib.diffusion import AnnealedConfig, annealed_sample
from conceptlib.energy import Term, compose, compose_noisy, draw_prior_conditions, names_prior
from conceptlib.errors import ConceptError, ConditionError
from conceptlib.imaging import to_uint8
from conceptlib.plugins import PluginManager
from conceptlib.registry import NewVersion, Registry, VersionInfo, VersionRef
from conceptlib.sampling import LangevinConfig, initial_images, langevin
from conceptlib.sources import Progress
from conceptlib.training import (
    IterationCallback,
    TrainConfig,
    check_frozen_attributes,
    resolve_objective,
    train_concept,
)


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
    architecture: str | None = None
    """Default: ``unet`` for objective dsm, ``small`` for cd."""
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
    objective = resolve_objective(request.train.objective, bool(request.frozen))
    request = replace(request, train=replace(request.train, objective=objective))
    architecture_name = request.architecture or DEFAULT_ARCHITECTURES.get(request.train.objective, "unet")
    architecture = plugins.architecture(architecture_name)
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
    prior = prior_concept(registry, plugins, frozen, request.device) if frozen else None
    result = train_concept(
        architecture, config, dataset, attribute, frozen, request.train, request.device, on_iteration, prior
    )
    hyperparameters = {
        "image_size": dataset.image_size,
        "device": str(request.device),
        **request.train.to_json(),
    }
    new = NewVersion(
        concept=request.name,
        schema=schemas[attribute],
        architecture=architecture_name,
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


DEFAULT_ARCHITECTURES = {"dsm": "unet", "classifier": "classifier", "cd": "small"}


def prior_concept(
    registry: Registry, plugins: PluginManager, concepts: Sequence[LoadedConcept], device: torch.device
) -> LoadedConcept:
    """The concept whose null energy is the image prior: a root of the lineage (trained with nothing frozen).

    A concept trained against frozen ones learned only what they did not explain, so its null energy is
    a residual, not a prior; the prior comes from the first concept of its lineage.
    """
    for concept in concepts:
        if not concept.version.lineage:
            return concept
    ref = concepts[0].version.lineage[0]
    while True:
        version = registry.resolve(ref.concept, ref.number)
        if not version.lineage:
            return load_concept(registry, plugins, version, device)
        ref = version.lineage[0]


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
    sampler: LangevinConfig | None = None,
    seed: int = 0,
    device: torch.device | None = None,
    or_temperature: float = 1.0,
    batch_size: int = 64,
    on_step: Callable[[int, int], None] | None = None,
    annealed: AnnealedConfig | None = None,
    guidance: float = 1.0,
) -> Composition:
    """Sample ``n`` images from the composed energy of ``expression``.

    Noise-conditioned concepts (objective dsm) are sampled by the annealed sampler with the prior
    counted once; contrastive-divergence concepts by Langevin dynamics. One expression cannot mix them.
    """
    if n < 1:
        raise ConceptError(f"-n must be at least 1; got {n}")
    if or_temperature <= 0:
        raise ConceptError(f"--temperature must be positive; got {or_temperature}")
    if guidance <= 0:
        raise ConceptError(f"--guidance must be positive; got {guidance}")
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
    noisy = {bool(getattr(c.model, "noise_conditioned", False)) for c in loaded.values()}
    if len(noisy) > 1:
        raise ConceptError(
            "this expression mixes concepts trained by denoising score matching and by contrastive "
            "divergence, whose energies do not compose; use versions trained with one objective"
        )
    generator = torch.Generator(device=device).manual_seed(seed)
    if noisy.pop():
        annealed = annealed or AnnealedConfig()
        prior = prior_concept(registry, plugins, list(loaded.values()), device)
        latent = not names_prior(node, terms, prior)
        steps_per_batch = annealed.steps
        settings = {**annealed.to_json(), "guidance": guidance, "prior": str(prior.version.ref),
                    "prior_condition": "drawn per sample" if latent else "from the expression or null"}

        def draw(count: int, step: Callable[[int, int], None]) -> torch.Tensor:
            drawn = draw_prior_conditions(prior, count, generator, device) if latent else None
            energy = compose_noisy(node, terms, prior, guidance, or_temperature, drawn)
            return annealed_sample(energy, count, image_size, annealed, generator, device, on_step=step)
    else:
        sampler = sampler or LangevinConfig()
        energy = compose(node, terms, or_temperature)
        steps_per_batch = sampler.steps
        settings = {"name": "langevin", **sampler.to_json()}

        def draw(count: int, step: Callable[[int, int], None]) -> torch.Tensor:
            x = initial_images(count, image_size, sampler.init, generator, device)
            return langevin(energy, x, sampler, generator, on_step=step)

    batches = []
    done_steps = 0
    total_steps = steps_per_batch * ((n + batch_size - 1) // batch_size)
    started = time.perf_counter()
    for start in range(0, n, batch_size):
        count = min(batch_size, n - start)

        def step(done: int, _total: int, offset: int = done_steps) -> None:
            if on_step is not None:
                on_step(offset + done, total_steps)

        batches.append(to_uint8(draw(count, step)))
        done_steps += steps_per_batch
    versions = {v.concept: v.number for v in loaded}
    provenance = {
        "expression": expr.to_text(node),
        "versions": {str(ref): loaded[ref].version.weights_sha256 for ref in loaded},
        "sampler": {**settings, "or_temperature": or_temperature},
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
