"""Registered versions as frozen torch modules.

A version names its architecture and config; the architecture plugin rebuilds the network and the
registry's verified safetensors weights fill it. Frozen concepts never get parameter gradients.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from conceptlib.errors import CorruptBlobError
from conceptlib.plugins import PluginManager
from conceptlib.registry import Registry, VersionInfo


@dataclass
class LoadedConcept:
    version: VersionInfo
    model: nn.Module

    def condition(self, value: object, device: torch.device) -> torch.Tensor:
        """The encoded condition ``(1, dim)`` for an expression value like ``red`` or ``(0.3,0.7)``."""
        vector = self.version.schema.encode(value, concept=self.version.concept)  # type: ignore[arg-type]
        return torch.tensor([vector], dtype=torch.float32, device=device)


def state_to_numpy(model: nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().contiguous().numpy() for k, v in model.state_dict().items()}


def load_concept(
    registry: Registry, plugins: PluginManager, version: VersionInfo, device: torch.device
) -> LoadedConcept:
    """Rebuild ``version``'s network, load its verified weights and freeze it."""
    architecture = plugins.architecture(version.architecture)
    image_size = int(version.hyperparameters["image_size"])
    model = architecture.build(version.schema, image_size, version.architecture_config)
    tensors = registry.load_weights(version)
    expected = model.state_dict()
    if set(tensors) != set(expected) or any(
        tuple(tensors[k].shape) != tuple(expected[k].shape) for k in expected
    ):
        raise CorruptBlobError(
            f"weights of {version.ref} do not fit architecture {version.architecture!r} "
            "(tensor names or shapes differ); the blob or the plugin changed"
        )
    model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in tensors.items()})
    model.to(device).eval().requires_grad_(False)
    return LoadedConcept(version, model)
