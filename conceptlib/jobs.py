"""The library's entry points for whole jobs: add a concept, compose samples, import a concept file.

The CLI is a thin shell over these functions, so notebooks and other programs get the same behaviour
(and the same defaults) with one call each.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from conceptlib import distributed, expr
from conceptlib.cautions import check_min_accuracy, outside_trained_range
from conceptlib.checkpoints import Checkpoint, DeferredInterrupt, checkpoint_root
from conceptlib.concepts import (
    LoadedConcept,
    build_network,
    check_layout,
    expected_layout,
    load_concept,
    prior_concept,
    state_to_numpy,
)
from conceptlib.energy import Term
from conceptlib.errors import (
    CheckpointError,
    ConceptError,
    ConditionError,
    Interrupted,
    RegistryError,
    SourceError,
    TrainingError,
)
from conceptlib.imaging import to_uint8
from conceptlib.limits import MAX_HELD_IMAGES_BYTES
from conceptlib.names import check_name
from conceptlib.network_calls import counting
from conceptlib.plots import loss_curve
from conceptlib.plugins import PluginManager
from conceptlib.registry import NewVersion, Registry, VersionInfo, VersionRef, split_ref
from conceptlib.registry.api import ImportResult
from conceptlib.registry.blobs import Header
from conceptlib.registry.transfer import ConceptFile, read_concept_file
from conceptlib.residual import build_chain, lineage_closure
from conceptlib.sampling import sample, sampler_record, sampling_networks, sampling_prior
from conceptlib.schema import ConditionSchema
from conceptlib.settings import SamplerSettings, TrainConfig, resolve_objective, train_config
from conceptlib.sources import Progress, Source, canonical_hash
from conceptlib.training import IterationCallback, check_frozen_attributes, train_concept


@dataclass
class AddRequest:
    name: str
    source: str
    params: Mapping[str, Any] = field(default_factory=dict)
    attribute: str | None = None
    frozen: Sequence[str] = ()
    architecture: str | None = None
    """Default: the objective's (``TrainConfig.architecture``)."""
    architecture_config: Mapping[str, Any] = field(default_factory=dict)
    train: TrainConfig | None = None
    """Default: the objective ``auto`` picks (a denoiser alone, a residual with frozen concepts)."""
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    description: str = ""
    resume: bool = False
    """Continue the checkpoint of an earlier, stopped run of this request instead of starting again."""
    checkpoint_every: int = 100
    checkpoint_dir: Path | None = None
    """Default: see :func:`conceptlib.checkpoints.checkpoint_root`."""
    min_accuracy: float | None = None
    """Refuse to register a version whose held-out accuracy is below this (categorical classifier concepts)."""


def add_concept(
    registry: Registry,
    plugins: PluginManager,
    request: AddRequest,
    on_load: Progress | None = None,
    on_iteration: IterationCallback | None = None,
) -> VersionInfo:
    """Train ``request.name`` with every ``request.frozen`` concept frozen; register one version.

    Everything that can be checked is checked before training starts, and nothing is written
    unless training finishes: an error, a divergence or Ctrl-C leaves the registry as it was. The run
    keeps a checkpoint outside the registry as it goes, so a stopped run continues with ``resume``;
    the checkpoint is removed once the version is registered.
    """
    check_name(request.name)
    ranks = distributed.current()
    source = plugins.source(request.source)
    train = request.train or train_config(resolve_objective("auto", bool(request.frozen)), {})
    architecture_name = request.architecture or train.architecture
    architecture = plugins.architecture(architecture_name)
    params = source.resolve_params(request.params)
    schemas = source.attributes(params)
    attribute = request.attribute or request.name
    if attribute not in schemas:
        raise ConceptError(
            f"source {request.source!r} has no attribute {attribute!r} (it labels: {', '.join(schemas)}); "
            "name the concept after one, or pass --attribute"
        )
    if request.min_accuracy is not None and (train.objective != "classifier"
                                             or schemas[attribute].kind != "categorical"):
        raise ConceptError("--min-accuracy needs a held-out accuracy, which only categorical concepts trained "
                           f"with objective classifier report; {attribute!r} is {schemas[attribute].kind}, "
                           f"objective {train.objective}")
    frozen_versions = []
    for text in request.frozen:
        name, ref = split_ref(text)
        if name == request.name:
            raise ConceptError(f"--with {text}: a concept cannot be frozen into its own training")
        frozen_versions.append(registry.resolve(name, ref))
    if train.objective == "residual":  # a residual reads its frozen concepts' whole composition: their lineage too
        frozen_versions = lineage_closure(registry, frozen_versions)
    _check_before_training(registry, request.name, attribute, schemas, params, frozen_versions, request.source)
    config = architecture.config(request.architecture_config)
    run_key = canonical_hash({
        "registry": registry.display_url, "name": request.name, "source": request.source, "params": params,
        "attribute": attribute, "frozen": [str(v.ref) for v in frozen_versions], "architecture": architecture_name,
        "architecture_config": config,
        "train": {k: v for k, v in train.to_json().items() if k not in RESUMABLE_CHANGES},
        **({"world_size": ranks.world_size} if ranks.active else {}),
    })
    directory = (request.checkpoint_dir or checkpoint_root(registry.url)) / run_key[:16]
    if ranks.active:  # each rank its own generators and replay buffer, so each its own checkpoint
        directory = directory / f"rank{ranks.rank}"
    bound = {"key": run_key, "frozen": {str(v.ref): v.weights_sha256 for v in frozen_versions}}
    checkpoint = Checkpoint(directory, request.checkpoint_every, request.resume, train.iterations, run=bound)
    resumed_from = checkpoint.saved
    frozen = [load_concept(registry, plugins, v, request.device) for v in frozen_versions]
    if train.objective == "residual":
        build_chain(frozen)
    dataset = _load(source, params, on_load)
    _check_image_size(frozen_versions, dataset.image_size)
    prior = prior_concept(registry, plugins, frozen, request.device) if frozen else None
    with DeferredInterrupt() as interrupt:
        checkpoint.interrupt = interrupt
        result = _train(source, checkpoint, lambda: train_concept(
            architecture, config, dataset, attribute, frozen, train, request.device, on_iteration, prior,
            checkpoint,
        ))
    if interrupt.pressed:
        raise Interrupted(f"interrupted: nothing was registered; {checkpoint.describe()}")
    if request.min_accuracy is not None:
        try:
            check_min_accuracy(result.metrics, request.min_accuracy, request.name)
        except ConceptError as exc:
            raise TrainingError(f"{exc}; {checkpoint.describe()}") from None
    hyperparameters = {
        "image_size": dataset.image_size,
        "device": str(request.device),
        **train.to_json(),
        **({"resumed_from_iteration": resumed_from} if resumed_from is not None else {}),
        **(ranks.to_json() if ranks.active else {}),
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
        seed=train.seed,
        metrics={**result.metrics, "loss_curve": loss_curve(result.history)},
        lineage=[v.ref for v in frozen_versions],
        description=request.description,
    )
    distributed.barrier()  # every rank finished: a rank that failed never gets here, and torchrun stops the rest
    version, failure = None, None
    if ranks.is_main:
        try:
            version = registry.add_version(new, state_to_numpy(result.model))
        except ConceptError as exc:
            failure = type(exc)(f"{exc}; the trained weights are kept: {checkpoint.describe()}")
    number = distributed.broadcast_int(version.number if version is not None else -1)
    if failure is not None:
        raise failure
    if number < 0:
        raise RegistryError(f"rank 0 could not register the version (see its error); {checkpoint.describe()}")
    checkpoint.discard()
    return version if version is not None else registry.resolve(request.name, number)


RESUMABLE_CHANGES = ("iterations", "lr")
"""Settings a resumed run may change: train longer, or more gently after a divergence."""


def _check_before_training(registry: Registry, name: str, attribute: str, schemas: Mapping[str, ConditionSchema],
                           params: Mapping[str, Any], frozen: Sequence[VersionInfo], source: str) -> None:
    """What would make the finished run unregistrable or meaningless, refused before any work is done."""
    known = {c.name: c for c in registry.concepts()}
    if name in known and known[name].schema != schemas[attribute]:
        raise ConceptError(
            f"concept {name!r} takes {known[name].schema.describe()}, but attribute {attribute!r} of source "
            f"{source!r} is {schemas[attribute].describe()}; name the new concept differently"
        )
    for version in frozen:
        if version.attribute == attribute:
            raise ConceptError(
                f"--with {version.ref}: it already models attribute {attribute!r}; a concept added --with frozen "
                "ones must learn another attribute (train a new version of it without --with instead)"
            )
    check_frozen_attributes(schemas, frozen, source)
    if "image_size" in params:
        _check_image_size(frozen, int(params["image_size"]))


def _check_image_size(frozen: Sequence[VersionInfo], image_size: int) -> None:
    for version in frozen:
        if int(version.hyperparameters["image_size"]) != image_size:
            raise ConceptError(
                f"frozen concept {version.ref} works on {version.hyperparameters['image_size']}px images, this "
                f"dataset on {image_size}px; pass --param image_size={version.hyperparameters['image_size']}"
            )


def _load(source: Source, params: Mapping[str, Any], on_load: Progress | None) -> Any:
    """The source's dataset; a plugin that fails while loading is named in one line, not a traceback."""
    try:
        return source.load(params, progress=on_load)
    except ConceptError:
        raise
    except Exception as exc:
        raise SourceError(
            f"source {source.name!r} failed while loading its dataset: {_summary(exc)}; nothing was trained"
        ) from exc


def _train(source: Source, checkpoint: Checkpoint, run: Callable[[], Any]) -> Any:
    """``run()``; a run that stops after it started says where, why, and where its checkpoint is.

    Anything a long run raises (a source failing half way, a plugin bug) ends in one line that names
    the culprit and the checkpoint to resume from, not a traceback; the exception stays chained.
    """
    try:
        return run()
    except (Interrupted, CheckpointError):  # a checkpoint that cannot be resumed is no place to continue from
        raise
    except ConceptError as exc:
        if checkpoint.completed_iterations == 0 and checkpoint.saved is None:
            raise
        raise TrainingError(f"{exc}; {checkpoint.describe()}") from exc
    except Exception as exc:
        culprit = f"source {source.name!r}" if _raised_in(exc, type(source).__module__) else "training"
        raise TrainingError(
            f"{culprit} failed after iteration {checkpoint.completed_iterations}: {_summary(exc)}; nothing was "
            f"registered; {checkpoint.describe()}"
        ) from exc


def _raised_in(exc: BaseException, module: str) -> bool:
    package = module.split(".")[0]
    return any(str(frame.f_globals.get("__name__", "")).split(".")[0] == package
               for frame, _ in traceback.walk_tb(exc.__traceback__))


def _summary(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def import_concept(registry: Registry, plugins: PluginManager, path: Path) -> tuple[ConceptFile, list[ImportResult]]:
    """Import a ``.cpt`` file: every sha256 and header verified, every version's weights fitted to its
    installed architecture, then one transaction (see :mod:`conceptlib.registry.transfer`)."""
    def fits(new: NewVersion, header: Header, what: str) -> None:
        expected = expected_layout(plugins, new.architecture, new.schema, new.hyperparameters,
                                   new.architecture_config, what)
        check_layout(expected, header.layout, new.architecture, what)

    concept_file = read_concept_file(path, fits)
    for item in concept_file.versions:
        build_network(plugins, item.new.architecture, item.new.schema, item.new.hyperparameters,
                      item.new.architecture_config, item.tensors, f"{item.origin} in {path}")
    return concept_file, registry.import_versions(concept_file.versions, concept_file.label)


@dataclass
class Composition:
    images: np.ndarray
    """uint8 ``(N, H, W, 3)``."""
    provenance: dict[str, Any]
    warnings: list[str]
    first: int = 0
    """The index of ``images[0]`` among all ``n`` samples (not 0 for a shard)."""


def compose_images(
    registry: Registry,
    plugins: PluginManager,
    expression: str,
    n: int,
    settings: SamplerSettings | None = None,
    seed: int = 0,
    device: torch.device | None = None,
    shard: tuple[int, int] = (0, 1),
    on_progress: Callable[[float, int], None] | None = None,
) -> Composition:
    """Sample ``n`` images of ``expression`` with ``settings`` (default: what ``concept compose`` uses).

    Batch ``b`` draws from its own random stream of ``seed``, so ``shard=(rank, ranks)`` (a contiguous
    run of batches) gives exactly the samples a single process draws at those indices, for any rank count.
    ``on_progress(done, total)`` follows the samples this process draws (``done`` counts a batch's share of
    its steps). The provenance records the network evaluations spent per sample (forward and backward, by
    network), counted as they happen (:mod:`conceptlib.network_calls`).
    """
    if n < 1:
        raise ConceptError(f"-n must be at least 1; got {n}")
    settings = settings or SamplerSettings()
    device = device or torch.device("cpu")
    node = expr.parse(expression)
    loaded, terms, cautions = _resolve(registry, plugins, node, device)
    sizes = {int(c.version.hyperparameters["image_size"]) for c in loaded.values()}
    if len(sizes) > 1:
        raise ConceptError(f"the concepts in this expression work on different image sizes: {sorted(sizes)}")
    image_size = sizes.pop()
    prior, chain = sampling_prior(registry, plugins, list(loaded.values()), device)
    rank, ranks = shard
    batch_size = settings.batch_size
    batch_count = (n + batch_size - 1) // batch_size
    mine = range(batch_count * rank // ranks, batch_count * (rank + 1) // ranks)
    held = min(n, len(mine) * batch_size) * 3 * image_size**2
    if held > MAX_HELD_IMAGES_BYTES:
        raise ConceptError(
            f"-n {n} would hold {held / 2**30:.1f} GiB of {image_size}px images before writing them (at most "
            f"{MAX_HELD_IMAGES_BYTES / 2**30:.0f} GiB per process); draw fewer per run, or share them out "
            "across ranks with torchrun"
        )
    batches = [np.zeros((0, image_size, image_size, 3), np.uint8)]
    held_samples = sum(min(batch_size, n - batch * batch_size) for batch in mine)
    done_samples = 0
    started = time.perf_counter()
    with counting(sampling_networks(loaded.values(), prior, chain, terms)) as calls:
        for batch in mine:
            count = min(batch_size, n - batch * batch_size)

            def step(done: int, total: int, finished: int = done_samples, count: int = count) -> None:
                if on_progress is not None:  # in samples: the finished batches' and this one's share so far
                    on_progress(finished + count * min(done / total, 1.0), held_samples)

            generator = torch.Generator(device=device).manual_seed(distributed.stream_seed(seed, batch))
            images = sample(node, terms, prior, count, image_size, settings, generator, device, on_step=step,
                            chain=chain)
            if not bool(torch.isfinite(images).all()):
                raise ConceptError(
                    f"sampling diverged: batch {batch} came out NaN or infinite, so nothing was written; lower the "
                    "expression's weights, --guidance or --step-size"
                )
            batches.append(to_uint8(images))
            done_samples += count
    versions = {v.concept: v.number for v in loaded}
    provenance = {
        "expression": expr.to_text(node),
        "versions": {str(ref): loaded[ref].version.weights_sha256 for ref in loaded},
        "sampler": sampler_record(node, terms, prior, settings, chain),
        "seed": seed,
        "n": n,
        "batch_size": batch_size,
        "image_size": image_size,
        "device": str(device),
        "seconds": round(time.perf_counter() - started, 3),
        "network_evaluations": calls.per_sample(done_samples),
    }
    return Composition(np.concatenate(batches), provenance, cautions + _lineage_warnings(loaded, versions),
                       mine.start * batch_size)


def _resolve(registry: Registry, plugins: PluginManager, node: expr.Node, device: torch.device,
             ) -> tuple[dict[VersionRef, LoadedConcept], dict[expr.Leaf, Term], list[str]]:
    """Every leaf's version loaded once, and its value encoded: the expression made concrete; with the
    cautions its values earn (outside the range a concept was trained on), each once."""
    loaded: dict[VersionRef, LoadedConcept] = {}
    terms: dict[expr.Leaf, Term] = {}
    cautions: list[str] = []
    for leaf in expr.leaves(node):
        version = registry.resolve(leaf.concept, leaf.version)
        if version.ref not in loaded:
            loaded[version.ref] = load_concept(registry, plugins, version, device)
        concept = loaded[version.ref]
        try:
            terms[leaf] = Term(concept, concept.condition(leaf.value, device))
        except ConditionError as exc:
            raise ConditionError(f"in '{expr.to_text(leaf)}': {exc}") from None
        caution = outside_trained_range(concept, leaf.value, expr.to_text(leaf))
        if caution is not None and caution not in cautions:
            cautions.append(caution)
    return loaded, terms, cautions


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
