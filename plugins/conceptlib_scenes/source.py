"""The ``scenes`` dataset source: procedural one-object scenes rendered in memory, seeded.

Rendering is fast enough (see :mod:`conceptlib_scenes.render`) that a dataset is never stored:
its parameters, plus :data:`RENDERER_VERSION`, are the whole dataset, and they are what the hash
covers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from conceptlib.params import image_count, integer, names, number, ordered_range
from conceptlib.schema import Categorical, ConditionSchema, Continuous
from conceptlib.sources import Dataset, Progress, Source, canonical_hash
from conceptlib_scenes.render import (
    COLORS,
    RENDERER_VERSION,
    SHAPES,
    render_scenes,
    sample_attributes,
)

IMAGE_SIZES = (16, 128)
CHUNK_PIXELS = 1024 * 32 * 32
"""Pixels rendered per chunk (1,024 images at 32x32): bounds memory and paces progress reports."""


class ScenesSource(Source):
    """One object (shape, color, position, size) on a gray, unevenly lit background."""

    name = "scenes"
    description = (
        "Procedural scenes (numpy): one circle, square or triangle in one of 6 colors, at a position "
        "and size drawn uniformly, on a gray background with random lighting."
    )
    default_params: Mapping[str, Any] = {
        "image_size": 32,
        "n": 20000,
        "seed": 0,
        "position_low": 0.2,
        "position_high": 0.8,
        "size_low": 0.10,
        "size_high": 0.15,
        "shapes": ",".join(SHAPES),
        "colors": ",".join(COLORS),
        "corner": 1.0,
    }
    """``corner`` < 1 is the paper's extrapolation split (3.4): every size only inside the top-right square that
    holds that fraction of the position range's area, only the upper half of the size range elsewhere."""

    def resolve_params(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """Defaults overlaid with ``given``, typed, range-checked and in canonical form.

        Numbers become plain ``int`` / ``float`` and name lists follow the schema's order, so equal
        datasets get equal parameters (and equal hashes) however they were spelled.
        """
        params = super().resolve_params(given)
        params["image_size"] = integer(self.name, params, "image_size", *IMAGE_SIZES)
        params["n"] = image_count(self.name, params)
        params["seed"] = integer(self.name, params, "seed", 0)
        for key in ("position_low", "position_high"):
            params[key] = number(self.name, params, key, 0.0, 1.0, "[0, 1]")
        for key in ("size_low", "size_high"):
            params[key] = number(self.name, params, key, 0.0, 0.5, "(0, 0.5]", low_open=True)
        for prefix in ("position", "size"):
            ordered_range(self.name, params, prefix)
        params["shapes"] = names(self.name, params, "shapes", SHAPES)
        params["colors"] = names(self.name, params, "colors", COLORS)
        params["corner"] = number(self.name, params, "corner", 0.0, 1.0, "(0, 1]", low_open=True)
        if params["corner"] == 1.0:  # unrestricted: left out, so every earlier dataset keeps its hash
            del params["corner"]
        return params

    def attributes(self, params: Mapping[str, Any]) -> dict[str, ConditionSchema]:
        """The same four schemas under any params, so concepts trained on subsets stay comparable."""
        return {
            "shape": Categorical(values=SHAPES),
            "color": Categorical(values=COLORS),
            "position": Continuous(names=("x", "y"), low=0.0, high=1.0, spatial=True),
            "size": Continuous(names=("size",), low=0.0, high=0.5),
        }

    def dataset_hash(self, params: Mapping[str, Any]) -> str:
        """Hash of the resolved params and the renderer version: the dataset is a function of these.

        Resolving again is idempotent and makes a partial dict hash like its completion.
        """
        resolved = self.resolve_params(params)
        return canonical_hash({"source": self.name, "renderer": RENDERER_VERSION, **resolved})

    def load(self, params: Mapping[str, Any], progress: Progress | None = None) -> Dataset:
        """Render ``n`` scenes from ``seed`` in chunks, reporting progress after each."""
        resolved = self.resolve_params(params)
        n, size = resolved["n"], resolved["image_size"]
        rng = np.random.default_rng(resolved["seed"])
        labels = sample_attributes(n, resolved, rng)
        images = np.empty((n, size, size, 3), dtype=np.uint8)
        chunk = max(1, CHUNK_PIXELS // (size * size))
        for start in range(0, n, chunk):
            part = slice(start, min(start + chunk, n))
            images[part] = render_scenes(
                labels["shape"][part],
                labels["color"][part],
                labels["position"][part],
                labels["size"][part],
                size,
                rng,
            )
            if progress is not None:
                progress(part.stop, n)
        return Dataset(images, labels, self.attributes(resolved), self.dataset_hash(resolved))
