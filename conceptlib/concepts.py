"""Registered versions as frozen torch modules.

A version names its architecture and config; the architecture plugin rebuilds the network and the
registry's verified safetensors weights fill it. Frozen concepts never get parameter gradients.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from conceptlib.batched import prefer_channels_last
from conceptlib.errors import CorruptBlobError
from conceptlib.plugins import PluginManager
from conceptlib.registry import Registry, VersionInfo
from conceptlib.schema import ConditionSchema


@dataclass
class LoadedConcept:
    version: VersionInfo
    model: nn.Module

    def condition(self, value: object, device: torch.device) -> torch.Tensor:
        """The encoded condition ``(1, dim)`` for an expression value like ``red`` or ``(0.3,0.7)``."""
        vector = self.version.schema.encode(value, concept=self.version.concept)  # type: ignore[arg-type]
        return torch.tensor([vector], dtype=torch.float32, device=device)

    @property
    def is_denoiser(self) -> bool:
        """Trained as a plain denoiser (objective denoiser): its score is ``(D - x) / sigma^2``, not ``-grad E``."""
        return self.version.hyperparameters.get("objective") == "denoiser"

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
    """
    try:
        image_size = int(hyperparameters["image_size"])
    except (KeyError, TypeError, ValueError):
        raise CorruptBlobError(f"{what} records no usable image_size among its hyperparameters") from None
    model = plugins.architecture(architecture).build_stored(schema, image_size, config)
    expected = model.state_dict()
    if set(tensors) != set(expected) or any(
        tuple(tensors[k].shape) != tuple(expected[k].shape) or tensors[k].dtype != _numpy_dtype(expected[k])
        for k in expected
    ):
        raise CorruptBlobError(
            f"weights of {what} do not fit architecture {architecture!r} "
            "(tensor names, shapes or dtypes differ); the blob or the plugin changed"
        )
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in tensors.items()})
    return model


def _numpy_dtype(tensor: torch.Tensor) -> np.dtype:
    return torch.empty((), dtype=tensor.dtype).numpy().dtype
