"""The architecture contract: how a plugin builds a concept's network, and what each kind of network provides.

Images ``x`` are ``(B, 3, H, W)`` with values in [0, 1]; conditions ``c`` are encoded ``(B, schema.dim)``
rows (all zeros with ``keep = 0`` is the null condition). The registry stores the architecture's name and
config beside the weights, so any version can be rebuilt with the same plugin. A network says what it is by
plain class attributes, read once when a concept is loaded (:func:`conceptlib.concepts.network_traits`):

- no ``noise_conditioned``: an :class:`EnergyNet` (objective cd), sampled by Langevin dynamics;
- ``noise_conditioned = True``: a :class:`NoisyEnergyNet` (objective dsm); trained by objective denoiser it
  must be a :class:`DenoiserNet`;
- ``noise_conditioned = ratio_only = True``: a :class:`ClassifierNet` (objective classifier).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from conceptlib import untrusted
from conceptlib.errors import ConceptError
from conceptlib.limits import MAX_CONFIG_BYTES
from conceptlib.schema import ConditionSchema

if TYPE_CHECKING:
    from torch import Tensor, nn


class EnergyNet(Protocol):
    """``net(x, c) -> (B,)``: low for images that show ``c``.

    Optionally ``for_condition(c)``: for one condition ``(1, dim)`` shared by the whole batch, a frozen module
    ``x -> E(x | c)`` equal to the network's own call but cheaper per Langevin step (everything that depends
    only on ``c`` done once); :mod:`conceptlib.batched` uses it when present (``small`` has one).
    """

    def __call__(self, x: Tensor, c: Tensor) -> Tensor: ...


class NoisyEnergyNet(Protocol):
    """``net(x, c, sigma, keep) -> (B,)``: the energy of ``x`` at noise level ``sigma`` ``(B,)``; rows with
    ``keep = 0`` get the null condition, whose energy is the concept's image prior. ``sigma`` and ``keep``
    default to a low noise level and 1, so inference and ``concept show`` can call it like an
    :class:`EnergyNet`. ``sigma_data`` (default 0.25) is the data's scale for the EDM loss weighting."""

    noise_conditioned: bool
    sigma_data: float

    def __call__(self, x: Tensor, c: Tensor, sigma: Tensor | None = None, keep: Tensor | None = None) -> Tensor: ...


class DenoiserNet(NoisyEnergyNet, Protocol):
    """Also ``denoise(x, c, sigma, keep) -> (B, 3, H, W)``: its estimate of the clean image, whose score
    ``(D - x) / sigma^2`` composition follows."""

    def denoise(self, x: Tensor, c: Tensor, sigma: Tensor, keep: Tensor) -> Tensor: ...


class ClassifierNet(Protocol):
    """``net(x, c, sigma) -> (B,)`` = ``-log p(c | x)`` at noise ``sigma``: its null energy is zero.

    ``categorical``: ``exp(-E)`` is a probability over names. ``membership``: a condition may name several
    values (``-log p(one of them | x)``), which lets NOT ask for the complement. ``tempered``: it takes
    ``temperature``, reading ``-log softmax(logits / T)[c]`` (the sampler's ``--classifier-temperature``).
    """

    noise_conditioned: bool
    ratio_only: bool
    categorical: bool
    membership: bool
    tempered: bool

    def __call__(self, x: Tensor, c: Tensor, sigma: Tensor | None = None, keep: Tensor | None = None,
                 temperature: float = 1.0) -> Tensor: ...


@dataclass(frozen=True)
class Architecture:
    """A named network family. ``build(schema, image_size, config)`` returns an ``nn.Module`` of one of the
    protocols above.

    ``migrate`` turns a config stored by an older release of the plugin into one ``build`` takes (e.g. a
    setting added since, at the value those weights were trained with); versions keep their config as
    stored. ``default_config`` names every setting the family takes: a key outside it is refused, so a typo
    in ``--arch-config`` is not silently trained and recorded as if it meant something.
    ``check_config(config)`` (optional) raises ``ValueError`` for a config the network cannot be
    built from or that would make it unreasonably large, before anything is built: a config may come from
    someone else's export file. ``build`` must also work under ``with torch.device("meta")``, where
    conceptlib builds a network first to learn its tensors' shapes without allocating them.
    """

    name: str
    build: Callable[[ConditionSchema, int, Mapping[str, Any]], nn.Module]
    default_config: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""
    migrate: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None = None
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

    def build_stored(self, schema: ConditionSchema, image_size: int, stored: Mapping[str, Any]) -> nn.Module:
        """The network of a version whose config was stored by any release of this plugin."""
        return self.build(schema, image_size, self.migrate(stored) if self.migrate else stored)

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
