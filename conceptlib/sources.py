"""The dataset-source contract: what a plugin gives the trainer and what the registry records.

A source renders or reads labelled images. It declares one condition schema per attribute, turns
user parameters (``--param size=64``) into a complete, validated parameter dict, and loads a
:class:`Dataset` whose hash depends on those parameters alone, so the hash recorded on a version
changes when and only when the data that trained it could have changed.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from conceptlib.errors import SourceParamError
from conceptlib.schema import ConditionSchema

Progress = Callable[[int, int], None]
"""Called as ``progress(done, total)`` while a source renders or reads its images."""


def canonical_hash(payload: Mapping[str, Any]) -> str:
    """sha256 of a JSON document with sorted keys: equal parameters, equal hash."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class Dataset:
    """Labelled images in memory.

    ``images`` is uint8 ``(N, H, W, 3)``; ``labels[attr]`` holds int64 indices ``(N,)`` for a
    categorical attribute and float32 ``(N, dim)`` for a continuous one.
    """

    images: np.ndarray
    labels: dict[str, np.ndarray]
    schemas: dict[str, ConditionSchema]
    hash: str

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def image_size(self) -> int:
        return int(self.images.shape[1])

    def condition_vectors(self, attribute: str, index: np.ndarray) -> np.ndarray:
        """Encoded conditions ``(len(index), dim)`` for ``attribute`` of the images at ``index``."""
        schema = self.schemas[attribute]
        labels = self.labels[attribute][index]
        if schema.kind == "categorical":
            return np.eye(schema.dim, dtype=np.float32)[labels.astype(np.int64)]
        return labels.reshape(len(index), schema.dim).astype(np.float32)

    def label_record(self, i: int) -> dict[str, Any]:
        """Attributes of image ``i`` as JSON-ready values (names for categorical ones)."""
        record: dict[str, Any] = {}
        for attribute, schema in self.schemas.items():
            label = self.labels[attribute][i]
            if schema.kind == "categorical":
                record[attribute] = schema.values[int(label)]
            else:
                values = [round(float(v), 6) for v in np.atleast_1d(label)]
                record[attribute] = values if schema.dim > 1 else values[0]
        return record


class Source(ABC):
    """A plugin's dataset source. Subclass it and return instances from ``conceptlib_sources``."""

    name: str
    description: str = ""
    default_params: Mapping[str, Any] = {}

    def resolve_params(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """Defaults overlaid with ``given``, each coerced to its default's type.

        Override for richer validation; raise :class:`SourceParamError` naming the parameter.
        """
        unknown = sorted(set(given) - set(self.default_params))
        if unknown:
            known = ", ".join(sorted(self.default_params)) or "none"
            raise SourceParamError(f"source {self.name!r} has no parameter {unknown[0]!r} (known: {known})")
        params = dict(self.default_params)
        for key, raw in given.items():
            params[key] = _coerce(self.name, key, raw, self.default_params[key])
        return params

    @abstractmethod
    def attributes(self, params: Mapping[str, Any]) -> dict[str, ConditionSchema]:
        """The condition schema of every attribute this source labels under ``params``."""

    @abstractmethod
    def dataset_hash(self, params: Mapping[str, Any]) -> str:
        """A hash that changes when and only when the dataset for ``params`` would change."""

    @abstractmethod
    def load(self, params: Mapping[str, Any], progress: Progress | None = None) -> Dataset:
        """The labelled dataset for ``params`` (already resolved by :meth:`resolve_params`)."""


def _coerce(source: str, key: str, raw: Any, default: Any) -> Any:
    if not isinstance(raw, str) or isinstance(default, str):
        return raw
    try:
        if isinstance(default, bool):
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
    except ValueError:
        kind = type(default).__name__
        raise SourceParamError(
            f"source {source!r}: parameter {key!r} must be {kind}; got {raw!r}"
        ) from None
    return raw
