"""What is in each image: the central object, the light and the clutter, drawn per dataset variant.

Pure numpy and seeded, so every label constraint can be tested without MuJoCo. The variants are the
paper's datasets:

- ``scene`` (3.1): a central sphere, cylinder or cube of a given color, size and position, a varying
  light, and ``clutter`` smaller background objects that never share the central object's color;
- ``cube`` (Fig. 6): one green cube among clutter, none of it green;
- ``extrapolation`` (3.4): spheres of every size only in the top-right ``corner`` fraction of the
  position range, elsewhere only large ones (the upper half of the size range);
- ``unseen-color``, ``unseen-size``, ``unseen-light``, ``unseen-type`` (Table 3): the training
  distribution the same params describe, with one factor moved outside it: colors the params leave out,
  sizes doubled, a lower and stronger light, shapes the params leave out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from conceptlib.colors import palette
from conceptlib.errors import SourceParamError
from conceptlib.params import split_names
from conceptlib_mujoco.camera import apparent_radius, project, unproject

SHAPES: tuple[str, ...] = ("sphere", "cylinder", "cube")
COLORS: tuple[str, ...] = ("red", "green", "blue", "yellow", "magenta", "cyan", "orange", "purple")
TRAINING_COLORS: tuple[str, ...] = COLORS[:6]
"""The default colors; orange and purple are left for the ``unseen-color`` test set."""
PALETTE = palette(COLORS)
VARIANTS: tuple[str, ...] = (
    "scene", "cube", "extrapolation", "unseen-color", "unseen-size", "unseen-light", "unseen-type",
)
VARIANT_DEFAULTS: Mapping[str, Mapping[str, Any]] = {
    "cube": {"shapes": "cube", "colors": "green", "clutter": 6},
    "extrapolation": {"shapes": "sphere"},
}
"""Params each variant changes from the source's defaults (given params still win)."""

LIGHT = {"elevation": (45.0, 80.0), "intensity": (0.50, 0.80)}
"""The training light: degrees above the horizon and diffuse strength; the azimuth is any."""
UNSEEN_LIGHT = {"elevation": (15.0, 35.0), "intensity": (0.85, 1.00)}
"""The ``unseen-light`` test set's light: lower (long shadows) and stronger than any in training."""

CLUTTER_SIZE = (0.6, 1.0)
"""Clutter radius as a fraction of ``size_low``: never larger than the smallest central object."""
CLUTTER_REACH = (0.05, 0.95)
"""Label range clutter is placed in: the whole visible floor, less a margin."""
GAP = 0.03
"""Floor distance kept between objects beyond their bounding circles."""
_CANDIDATES = 64
_ATTEMPTS = 16


@dataclass
class Scenes:
    """Everything ``n`` images show. Shapes and colors index :data:`SHAPES` / :data:`COLORS`.

    ``position`` is the central object's label (see :mod:`conceptlib_mujoco.camera`), ``size`` its
    radius (floor units), ``light`` ``(azimuth, elevation, intensity)`` as fractions of a turn, of 90
    degrees and of full strength; ``clutter_*`` have one column per background object and
    ``clutter_floor`` is each one's centre in world coordinates.
    """

    shape: np.ndarray
    color: np.ndarray
    position: np.ndarray
    size: np.ndarray
    light: np.ndarray
    yaw: np.ndarray
    clutter_shape: np.ndarray
    clutter_color: np.ndarray
    clutter_size: np.ndarray
    clutter_floor: np.ndarray
    clutter_yaw: np.ndarray

    def __len__(self) -> int:
        return int(self.shape.shape[0])

    def labels(self) -> dict[str, np.ndarray]:
        """The labels a :class:`~conceptlib.sources.Dataset` carries."""
        return {
            "shape": self.shape,
            "color": self.color,
            "position": self.position,
            "size": self.size,
            "light": self.light,
        }


def draw_scenes(n: int, params: Mapping[str, Any], rng: np.random.Generator) -> Scenes:
    """Draw ``n`` scenes of ``params["variant"]`` from resolved ``params``."""
    variant = params["variant"]
    shapes = _indices(split_names(params["shapes"]), SHAPES, complement=variant == "unseen-type")
    colors = _indices(split_names(params["colors"]), COLORS, complement=variant == "unseen-color")
    low, high = params["position_low"], params["position_high"]
    size_low, size_high = params["size_low"], params["size_high"]
    position = rng.uniform(low, high, size=(n, 2))
    if variant == "extrapolation":
        size = rng.uniform(size_low, size_high, size=n)
        outside = ~in_corner(position, params)
        size[outside] = rng.uniform(large_size(params), size_high, size=int(outside.sum()))
    elif variant == "unseen-size":
        size = rng.uniform(2 * size_low, 2 * size_high, size=n)
    else:
        size = rng.uniform(size_low, size_high, size=n)
    light = UNSEEN_LIGHT if variant == "unseen-light" else LIGHT
    scenes = Scenes(
        shape=shapes[rng.integers(len(shapes), size=n)],
        color=colors[rng.integers(len(colors), size=n)],
        position=position.astype(np.float32),
        size=size.astype(np.float32)[:, None],
        light=np.stack(
            [
                rng.uniform(0.0, 1.0, size=n),
                rng.uniform(*light["elevation"], size=n) / 90.0,
                rng.uniform(*light["intensity"], size=n),
            ],
            axis=1,
        ).astype(np.float32),
        yaw=rng.uniform(0.0, math.pi / 2, size=n).astype(np.float32),
        clutter_shape=np.empty((n, 0), dtype=np.int64),
        clutter_color=np.empty((n, 0), dtype=np.int64),
        clutter_size=np.empty((n, 0), dtype=np.float32),
        clutter_floor=np.empty((n, 0, 3), dtype=np.float32),
        clutter_yaw=np.empty((n, 0), dtype=np.float32),
    )
    if params["clutter"]:
        _place_clutter(scenes, params["clutter"], size_low, rng)
    return scenes


def in_corner(position: np.ndarray, params: Mapping[str, Any]) -> np.ndarray:
    """Which labels lie in the top-right square holding ``corner`` of the position range's area."""
    low, high = params["position_low"], params["position_high"]
    side = math.sqrt(params["corner"]) * (high - low)
    return (position[:, 0] >= high - side) & (position[:, 1] <= low + side)


def large_size(params: Mapping[str, Any]) -> float:
    """The smallest size ``extrapolation`` puts outside the corner: the middle of the size range."""
    return (params["size_low"] + params["size_high"]) / 2


def _indices(names: list[str], known: tuple[str, ...], complement: bool) -> np.ndarray:
    chosen = [i for i, name in enumerate(known) if (name in names) != complement]
    return np.array(chosen, dtype=np.int64)


def _place_clutter(scenes: Scenes, count: int, size_low: float, rng: np.random.Generator) -> None:
    """Background objects on free floor: apart from each other, and never touching or hiding the central one.

    Rejection sampling per image: of a batch of random candidates, the first that keeps its distance is
    taken; a scene too crowded to take another is a parameter error, not an endless loop.
    """
    n = len(scenes)
    scenes.clutter_shape = rng.integers(len(SHAPES), size=(n, count))
    pool = len(TRAINING_COLORS)
    inside = scenes.color < pool  # clutter takes any training color but the central object's
    others = (rng.random((n, count)) * (pool - inside)[:, None]).astype(np.int64)
    scenes.clutter_color = others + (inside[:, None] & (others >= scenes.color[:, None]))
    scenes.clutter_yaw = rng.uniform(0.0, math.pi / 2, size=(n, count)).astype(np.float32)
    scenes.clutter_size = np.empty((n, count), dtype=np.float32)
    scenes.clutter_floor = np.empty((n, count, 3), dtype=np.float32)
    centre = unproject(scenes.position, scenes.size[:, 0])
    reach = apparent_radius(centre, scenes.size[:, 0] * 1.5)
    for i in range(n):
        placed: list[tuple[np.ndarray, float]] = [(centre[i], float(scenes.size[i, 0]))]
        for k in range(count):
            for _ in range(_ATTEMPTS):
                radius = rng.uniform(*CLUTTER_SIZE, size=_CANDIDATES) * size_low
                floor = unproject(rng.uniform(*CLUTTER_REACH, size=(_CANDIDATES, 2)), radius)
                seen = np.hypot(*(project(floor) - scenes.position[i]).T)
                free = seen > reach[i] + apparent_radius(floor, radius * 1.5)
                for point, r in placed:
                    free &= np.hypot(*(floor[:, :2] - point[:2]).T) > (radius + r) * math.sqrt(2) + GAP
                if free.any():
                    j = int(np.argmax(free))
                    scenes.clutter_size[i, k], scenes.clutter_floor[i, k] = radius[j], floor[j]
                    placed.append((floor[j], float(radius[j])))
                    break
            else:
                raise SourceParamError(
                    f"source 'mujoco': {count} clutter objects do not fit around the central one; "
                    "lower --param clutter or size_high"
                )
