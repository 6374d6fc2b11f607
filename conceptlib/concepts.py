"""Registered versions as frozen torch modules, each of a known kind.

A version names its architecture and config; the architecture plugin rebuilds the network and the
registry's verified safetensors weights fill it. Frozen concepts never get parameter gradients. What a
concept *is* (its :class:`ConceptKind`) is read from its network and objective once, here; composition and
sampling ask ``concept.kind`` and never probe the network.
"""

from __future__ import annotations

import contextlib
import enum
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from conceptlib.batched import prefer_channels_last
from conceptlib.errors import ConceptError, CorruptBlobError
from conceptlib.limits import MAX_IMAGE_SIZE
from conceptlib.plugins import PluginManager
from conceptlib.registry import Registry, VersionInfo
from conceptlib.schema import ConditionSchema


class ConceptKind(enum.Enum):
    """What a concept's network gives composition; the protocols in :mod:`conceptlib.architectures` say what
    a network of each kind provides."""

    ENERGY = "energy"
    """``E(x | c)`` with no noise level (contrastive divergence): sampled by Langevin dynamics."""
    NOISY_ENERGY = "noisy energy"
    """``E(x, sigma | c)`` with a null condition (dsm): composed as energy ratios, its gradient a score."""
    DENOISER = "denoiser"
    """``D(x, sigma | c)`` with a null condition: its score ``(D - x) / sigma^2``, composed in score space."""
    CLASSIFIER = "classifier"
    """``-log p(c | x_sigma)``: already a ratio (no null energy); steers a prior, is never one."""
    RESIDUAL = "residual"
    """``R(x, sigma | c, context)``: its estimate less its lineage's, reading their estimate and template as
    ``context`` (objective residual); composed through the whole chain it stacks on, each leaf the difference
    it makes to the chain's estimate (:mod:`conceptlib.residual`, :func:`conceptlib.scores.chain_score`)."""

    @property
    def noise_conditioned(self) -> bool:
        """Sampled by the annealed sampler with a prior counted once; composes only with its like."""
        return self is not ConceptKind.ENERGY

    @property
    def denoises(self) -> bool:
        """Gives a whole denoised estimate ``D(x)`` and is composed by its score, without an energy (a residual
        gives a correction to one)."""
        return self in DENOISING_KINDS

    @property
    def models_images(self) -> bool:
        """Can be the prior: its null condition models whole images."""
        return self is not ConceptKind.CLASSIFIER


DENOISING_KINDS = frozenset({ConceptKind.DENOISER})
DENOISING_OBJECTIVES = {"denoiser": ConceptKind.DENOISER, "residual": ConceptKind.RESIDUAL}
"""Objectives that train a denoiser (``denoise(x, c, sigma, keep)``) rather than an energy: a network that
denoises but was trained as an energy (dsm) is composed as one."""


class Traits(NamedTuple):
    """What composition needs to know of a network, read from it once (:func:`network_traits`)."""

    kind: ConceptKind
    categorical: bool = False
    """A classifier over names: ``exp(-E)`` is a probability, so NOT can use ``1 - p``."""
    complement: bool = False
    """A categorical classifier whose condition may name several values (``membership``): its NOT is the
    same network asked for every other value."""
    tempered: bool = False
    """A categorical classifier that takes a softmax ``temperature``."""


def network_traits(model: nn.Module, objective: str | None) -> Traits:
    """The one place a network's kind is read: its flags (``noise_conditioned``, ``ratio_only``, and a
    classifier's ``categorical``, ``membership``, ``tempered``; absent means False) and the objective it
    was trained by. A new kind is one more member of :class:`ConceptKind` and one more rule here."""
    if not getattr(model, "noise_conditioned", False):
        return Traits(ConceptKind.ENERGY)
    if getattr(model, "ratio_only", False):
        categorical = bool(getattr(model, "categorical", False))
        return Traits(ConceptKind.CLASSIFIER, categorical, categorical and bool(getattr(model, "membership", False)),
                      categorical and bool(getattr(model, "tempered", False)))
    if objective in DENOISING_OBJECTIVES and callable(getattr(model, "denoise", None)):
        return Traits(DENOISING_OBJECTIVES[objective])
    return Traits(ConceptKind.NOISY_ENERGY)


@dataclass
class LoadedConcept:
    """A registered version with its frozen network, and the network's :class:`Traits`."""

    version: VersionInfo
    model: nn.Module
    traits: Traits = field(init=False)

    def __post_init__(self) -> None:
        self.traits = network_traits(self.model, self.version.hyperparameters.get("objective"))

    @property
    def kind(self) -> ConceptKind:
        return self.traits.kind

    def condition(self, value: object, device: torch.device) -> torch.Tensor:
        """The encoded condition ``(1, dim)`` for an expression value like ``red`` or ``(0.3,0.7)``."""
        vector = self.version.schema.encode(value, concept=self.version.concept)  # type: ignore[arg-type]
        return torch.tensor([vector], dtype=torch.float32, device=device)

    def trained_range(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-dimension bounds of the continuous conditions this concept was trained on.

        Outside them its energies are extrapolation (measured: an inference grid over the schema's whole
        [0, 1] box put a position trained on [0.2, 0.8] at the corner (1, 0) for every image), so sampling
        and inference stay inside: the range training recorded, else the source's, else the schema's.
        """
        schema = self.version.schema
        metrics, params, name = self.version.metrics, self.version.source_params, self.version.attribute
        low = metrics.get("condition_low", params.get(f"{name}_low", schema.low))  # type: ignore[union-attr]
        high = metrics.get("condition_high", params.get(f"{name}_high", schema.high))  # type: ignore[union-attr]
        shape = (schema.dim,)
        return (np.broadcast_to(np.asarray(low, np.float64), shape).copy(),
                np.broadcast_to(np.asarray(high, np.float64), shape).copy())


def state_to_numpy(model: nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().contiguous().numpy() for k, v in model.state_dict().items()}


def load_concept(
    registry: Registry, plugins: PluginManager, version: VersionInfo, device: torch.device
) -> LoadedConcept:
    """Rebuild ``version``'s network, load its verified weights and freeze it."""
    model = build_network(plugins, version.architecture, version.schema, version.hyperparameters,
                          version.architecture_config, registry.load_weights(version), str(version.ref))
    model.to(device).eval().requires_grad_(False)
    prefer_channels_last(model, device)
    return LoadedConcept(version, model)


def prior_concept(
    registry: Registry, plugins: PluginManager, concepts: Sequence[LoadedConcept], device: torch.device
) -> LoadedConcept:
    """The concept whose null energy is the image prior: a root of the lineage (trained with nothing frozen).

    A concept trained against frozen ones learned only what they did not explain, so its null energy is
    a residual, not a prior; the prior comes from the first concept of its lineage.
    """
    for concept in concepts:
        if not concept.version.lineage and concept.kind.models_images:
            return concept
    for concept in concepts:
        ref = concept.version.lineage[0] if concept.version.lineage else None
        while ref is not None:
            version = registry.resolve(ref.concept, ref.number)
            if not version.lineage:
                root = load_concept(registry, plugins, version, device)
                if root.kind.models_images:
                    return root
            ref = version.lineage[0] if version.lineage else None
    names = ", ".join(sorted({c.version.concept for c in concepts}))
    raise ConceptError(
        f"no concept in this expression ({names}) or its lineage models whole images, which sampling needs as "
        "the prior; add a concept trained with --objective denoiser (e.g. position) to the expression or train "
        "these --with one"
    )


Layout = Mapping[str, tuple[np.dtype, tuple[int, ...]]]
"""Tensor name -> (dtype, shape): what a network's weights must be, or what a safetensors header holds."""


def expected_layout(
    plugins: PluginManager,
    architecture: str,
    schema: ConditionSchema,
    hyperparameters: Mapping[str, Any],
    config: Mapping[str, Any],
    what: str,
) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
    """The weights ``architecture`` builds under ``config``, found without allocating them.

    The network is built on torch's meta device, where tensors have shapes but no memory: a config from
    someone's export file that asks for a network of gigabytes is found out before anything of that size
    exists. (The first meta build imports much of torch, about a second, so only imports pay for it; a
    registry's own versions were checked this way when they entered it, or were trained here.) A build
    that fails in any way (a config of the wrong type, a plugin that raises or calls ``sys.exit``) is one
    line naming the version and the architecture.
    """
    return _layout(_build(plugins, architecture, schema, hyperparameters, config, what, meta=True))


def check_layout(expected: Layout, actual: Layout, architecture: str, what: str) -> None:
    """Refuse weights whose names, shapes or dtypes differ from what the architecture builds."""
    if set(actual) != set(expected) or any(
        tuple(actual[k][1]) != tuple(expected[k][1]) or np.dtype(actual[k][0]) != np.dtype(expected[k][0])
        for k in expected
    ):
        raise CorruptBlobError(
            f"weights of {what} do not fit architecture {architecture!r} "
            "(tensor names, shapes or dtypes differ); the blob or the plugin changed"
        )


def build_network(
    plugins: PluginManager,
    architecture: str,
    schema: ConditionSchema,
    hyperparameters: Mapping[str, Any],
    config: Mapping[str, Any],
    tensors: Mapping[str, np.ndarray],
    what: str,
) -> nn.Module:
    """The architecture's network filled with ``tensors``; refuses tensors whose names or shapes do not fit.

    A safetensors header can be self-consistent and still describe another network (a blob from a
    changed plugin, or an altered export file): loading it would fail deep inside torch, so say so here.
    The config is checked against the architecture's bounds first; a file from elsewhere is also checked
    against :func:`expected_layout` before its network is built at all.
    """
    model = _build(plugins, architecture, schema, hyperparameters, config, what)
    check_layout(_layout(model), {k: (v.dtype, v.shape) for k, v in tensors.items()}, architecture, what)
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in tensors.items()})
    return model


def _build(plugins: PluginManager, architecture: str, schema: ConditionSchema, hyperparameters: Mapping[str, Any],
           config: Mapping[str, Any], what: str, meta: bool = False) -> nn.Module:
    image_size = hyperparameters.get("image_size") if isinstance(hyperparameters, Mapping) else None
    if isinstance(image_size, bool) or not isinstance(image_size, int) or not 1 <= image_size <= MAX_IMAGE_SIZE:
        raise CorruptBlobError(
            f"{what} records no usable image_size among its hyperparameters (an integer in [1, {MAX_IMAGE_SIZE}])"
        )
    chosen = plugins.architecture(architecture)
    chosen.check(config)
    try:
        with torch.device("meta") if meta else contextlib.nullcontext():
            module = chosen.build_stored(schema, image_size, config)
        if not isinstance(module, nn.Module):
            raise TypeError(f"it returned a {type(module).__name__}, not a torch module")
        return module
    except ConceptError:
        raise
    except (Exception, SystemExit) as exc:
        summary = (str(exc).splitlines() or [""])[0][:200]
        raise CorruptBlobError(
            f"{what}: architecture {architecture!r} cannot build its network from config {_shown(config)} "
            f"({type(exc).__name__}: {summary})"
        ) from None


def _shown(config: Mapping[str, Any]) -> str:
    text = json.dumps(config, sort_keys=True, default=str)
    return text if len(text) <= 120 else text[:120] + "..."


def _layout(module: nn.Module) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
    return {name: (_numpy_dtype(t), tuple(t.shape)) for name, t in module.state_dict().items()}


def _numpy_dtype(tensor: torch.Tensor) -> np.dtype:
    return torch.empty((), dtype=tensor.dtype).numpy().dtype
