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

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from conceptlib import untrusted
from conceptlib.errors import ConceptError
from conceptlib.limits import MAX_CONFIG_BYTES
from conceptlib.schema import ConditionSchema

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class Architecture:
    """A named network family. ``build(schema, image_size, config)`` returns an ``nn.Module``.

    ``default_config`` names every setting the family takes: a key outside it is refused, so a typo in
    ``--arch-config`` is not silently trained and recorded as if it meant something.
    ``check_config(config)`` (optional) raises ``ValueError`` for a config the network cannot be built from
    or that would make it unreasonably large, before anything is built: a config may come from someone
    else's export file. ``build`` must also work under ``with torch.device("meta")``, where conceptlib
    builds a network first to learn its tensors' shapes without allocating them.
    """

    name: str
    build: Callable[[ConditionSchema, int, Mapping[str, Any]], nn.Module]
    default_config: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""
    check_config: Callable[[Mapping[str, Any]], None] | None = None

    def config(self, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The defaults overlaid with ``overrides``, checked: what the registry records for a version."""
        unknown = sorted(set(overrides or {}) - set(self.default_config))
        if unknown:
            known = ", ".join(sorted(self.default_config)) or "none"
            raise ConceptError(f"architecture {self.name!r} has no setting {unknown[0]!r} (its settings: {known}); "
                               "fix the --arch-config key")
        merged = {**self.default_config, **(overrides or {})}
        self.check(merged)
        return merged

    def check(self, config: Any) -> None:
        """Refuse a config that is not a small JSON object, or that ``check_config`` refuses, in one line."""
        try:
            untrusted.mapping(config)
            untrusted.check_depth(config, 4)
            size = len(json.dumps(config))
            if size > MAX_CONFIG_BYTES:
                raise untrusted.Malformed(f"{size} bytes of JSON, more than {MAX_CONFIG_BYTES}")
            if self.check_config is not None:
                self.check_config({**self.default_config, **config})  # as build() sees it
        except Exception as exc:  # a plugin's check is plugin code: whatever it raises is one line
            shown = (str(exc).splitlines() or [""])[0][:200] or type(exc).__name__
            raise ConceptError(f"architecture {self.name!r} does not take this config: {shown}") from None
