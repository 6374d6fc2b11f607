"""The ``mujoco`` dataset source: the paper's MuJoCo scenes, rendered once and cached on disk.

Rendering costs milliseconds per image where the procedural scenes cost microseconds, so a rendered
dataset is kept in the dataset cache (:mod:`conceptlib.datacache`) under its hash. The hash covers the
resolved params, :data:`RENDERER_VERSION` and MuJoCo's version: the dataset is a function of these.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from conceptlib.datacache import cached_dataset
from conceptlib.errors import SourceParamError
from conceptlib.params import image_count, integer, names, number, ordered_range
from conceptlib.schema import Categorical, ConditionSchema, Continuous
from conceptlib.sources import Dataset, Progress, Source, canonical_hash
from conceptlib_mujoco.render import import_mujoco, render_scenes
from conceptlib_mujoco.variants import (
    COLORS,
    SHAPES,
    TRAINING_COLORS,
    VARIANT_DEFAULTS,
    VARIANTS,
    draw_scenes,
)

RENDERER_VERSION = 1
"""Bump on any change to the scene, the camera or the drawing of labels: it enters every dataset hash."""
IMAGE_SIZES = (16, 128)
MAX_CLUTTER = 12
MAX_SIZE = 0.25
"""Largest radius a param may ask for, so that ``unseen-size`` (doubled) stays within the size schema."""


class MujocoSource(Source):
    """A central sphere, cylinder or cube on a lit floor, with optional clutter (paper 3.1), and its variants."""

    name = "mujoco"
    description = (
        "MuJoCo scenes (paper 3.1): a sphere, cylinder or cube of varying color, size and position on a floor "
        "under a varying light, with --param clutter=N background objects; --param variant=cube, "
        "extrapolation or unseen-color/size/light/type for the paper's other datasets. Needs conceptlib[mujoco]."
    )
    default_params: Mapping[str, Any] = {
        "variant": "scene",
        "image_size": 64,
        "n": 10000,
        "seed": 0,
        "shapes": ",".join(SHAPES),
        "colors": ",".join(TRAINING_COLORS),
        "position_low": 0.2,
        "position_high": 0.8,
        "size_low": 0.10,
        "size_high": 0.15,
        "clutter": 0,
        "corner": 0.1,
    }

    def resolve_params(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """Defaults, then the variant's defaults, then ``given``: typed, range-checked, canonical.

        ``corner`` belongs to ``variant=extrapolation`` alone; other variants refuse it and leave it out,
        so it cannot change their hash.
        """
        params = super().resolve_params(given)
        variant = params["variant"]
        if variant not in VARIANTS:
            raise SourceParamError(
                f"source {self.name!r}: variant must be one of {', '.join(VARIANTS)}; got {variant!r}"
            )
        for key, value in VARIANT_DEFAULTS.get(variant, {}).items():
            if key not in given:
                params[key] = value
        if variant != "extrapolation":
            if "corner" in given:
                raise SourceParamError(f"source {self.name!r}: corner applies only to variant=extrapolation")
            del params["corner"]
        else:
            params["corner"] = number(self.name, params, "corner", 0.0, 1.0, "(0, 1]", low_open=True)
        params["image_size"] = integer(self.name, params, "image_size", *IMAGE_SIZES)
        params["n"] = image_count(self.name, params)
        params["seed"] = integer(self.name, params, "seed", 0)
        params["clutter"] = integer(self.name, params, "clutter", 0, MAX_CLUTTER)
        for key in ("position_low", "position_high"):
            params[key] = number(self.name, params, key, 0.0, 1.0, "[0, 1]")
        for key in ("size_low", "size_high"):
            params[key] = number(self.name, params, key, 0.0, MAX_SIZE, f"(0, {MAX_SIZE}]", low_open=True)
        for prefix in ("position", "size"):
            ordered_range(self.name, params, prefix)
        params["shapes"] = names(self.name, params, "shapes", SHAPES)
        params["colors"] = names(self.name, params, "colors", COLORS)
        self._check_variant(params)
        return params

    def attributes(self, params: Mapping[str, Any]) -> dict[str, ConditionSchema]:
        """The same schemas for every variant, so a concept trained on one reads the others' test sets."""
        return {
            "shape": Categorical(values=SHAPES),
            "color": Categorical(values=COLORS),
            "position": Continuous(names=("x", "y"), low=0.0, high=1.0, spatial=True),
            "size": Continuous(names=("size",), low=0.0, high=2 * MAX_SIZE),
            "light": Continuous(names=("azimuth", "elevation", "intensity"), low=0.0, high=1.0),
        }

    def dataset_hash(self, params: Mapping[str, Any]) -> str:
        """Hash of the resolved params, the renderer version and MuJoCo's version."""
        resolved = self.resolve_params(params)
        mujoco = import_mujoco().__version__
        return canonical_hash({"source": self.name, "renderer": RENDERER_VERSION, "mujoco": mujoco, **resolved})

    def load(self, params: Mapping[str, Any], progress: Progress | None = None) -> Dataset:
        """The cached dataset for ``params``, or ``n`` scenes drawn from ``seed``, rendered and cached."""
        resolved = self.resolve_params(params)
        digest = self.dataset_hash(resolved)

        def build() -> Dataset:
            scenes = draw_scenes(resolved["n"], resolved, np.random.default_rng(resolved["seed"]))
            images = render_scenes(scenes, resolved["image_size"], progress)
            return Dataset(images, scenes.labels(), self.attributes(resolved), digest)

        return cached_dataset(self.name, digest, build, progress)

    def _check_variant(self, params: Mapping[str, Any]) -> None:
        """The test sets need something left outside the training distribution the params describe."""
        variant = params["variant"]
        if variant == "unseen-size" and 2 * params["size_low"] <= params["size_high"]:
            raise SourceParamError(
                f"source {self.name!r}: variant=unseen-size doubles the sizes, which then overlap "
                f"[{params['size_low']:g}, {params['size_high']:g}]; make size_high less than twice size_low"
            )
        for key, known, variant_name in (("colors", COLORS, "unseen-color"), ("shapes", SHAPES, "unseen-type")):
            if variant == variant_name and len(params[key].split(",")) == len(known):
                raise SourceParamError(
                    f"source {self.name!r}: variant={variant_name} draws the {key} the params leave out, and "
                    f"{key}={params[key]} leaves none; name the training {key}, e.g. {key}={known[0]},{known[1]}"
                )
