"""The architecture contract: how a plugin builds a conditional energy network.

An energy network maps images ``x`` (``(B, 3, H, W)``, values in [0, 1]) and encoded conditions
``c`` (``(B, schema.dim)``) to energies ``(B,)``: low for images that show the condition. The
registry stores the architecture's name and config beside the weights, so any version can be
rebuilt with the same plugin.

Optionally, a network may offer ``for_condition(c)``: for one condition ``c`` ``(1, dim)`` shared by a
whole batch, a frozen module ``x -> E(x | c)`` equal to the network's own call but cheaper per Langevin
step (everything that depends only on ``c`` done once). The sampler uses it when present
(``conceptlib.batched``); ``small`` has one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from conceptlib.errors import ConceptError
from conceptlib.schema import ConditionSchema

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class Architecture:
    """A named network family. ``build(schema, image_size, config)`` returns an ``nn.Module``.

    ``default_config`` names every setting the family takes: a key outside it is refused, so a typo in
    ``--arch-config`` is not silently trained and recorded as if it meant something.
    """

    name: str
    build: Callable[[ConditionSchema, int, Mapping[str, Any]], nn.Module]
    default_config: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""

    def config(self, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The defaults overlaid with ``overrides``: what the registry records for a version."""
        unknown = sorted(set(overrides or {}) - set(self.default_config))
        if unknown:
            known = ", ".join(sorted(self.default_config)) or "none"
            raise ConceptError(f"architecture {self.name!r} has no setting {unknown[0]!r} (its settings: {known}); "
                               "fix the --arch-config key")
        return {**self.default_config, **(overrides or {})}
