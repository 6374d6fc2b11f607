"""Procedural one-object scenes drawn with numpy, vectorised over the batch.

Every pixel of every image is computed at once by broadcasting a pixel grid ``(1, H, W)`` against
per-image parameters ``(N, 1, 1)``: 20,000 scenes at 32x32 take well under a second on one core, so
the trainer can render its data instead of reading it from disk. Edges are anti-aliased from a
signed distance, which keeps the images clean and the data distribution smooth for an energy model.

The background is exactly gray (equal channels) under a random linear lighting gradient; the object
is a saturated color. So a pixel's chroma (max minus min channel) is the object's coverage times its
color's chroma: labels can be checked against pixels without knowing the background.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from conceptlib.colors import palette
from conceptlib.params import split_names

RENDERER_VERSION = 1
"""Bump on any change to the drawing code: it enters every dataset hash."""

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
COLORS: tuple[str, ...] = ("red", "green", "blue", "yellow", "magenta", "cyan")

PALETTE = palette(COLORS)
"""RGB in [0, 1] of each name in :data:`COLORS`, before the per-image shade."""

BACKGROUND_LEVEL = (0.40, 0.60)
"""Range of the per-image gray level at the image centre (brightness jitter)."""
GRADIENT_MAX = 0.20
"""Largest lighting slope (gray level per scene unit, random direction): about ±0.1 at the edges."""
SHADE = (0.85, 1.00)
"""Range of the per-image factor on the object's color: dimmer or brighter, never another hue."""

_SIN60 = float(np.sqrt(3.0) / 2.0)


def sample_attributes(n: int, params: Mapping[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Draw ``n`` scenes' labels uniformly within resolved ``params``.

    Indices always refer to the full :data:`SHAPES` / :data:`COLORS`, whatever subset ``params``
    allows, so labels mean the same thing in every dataset of this source.
    """
    shapes = np.array([SHAPES.index(s) for s in split_names(params["shapes"])], dtype=np.int64)
    colors = np.array([COLORS.index(c) for c in split_names(params["colors"])], dtype=np.int64)
    labels = {
        "shape": shapes[rng.integers(len(shapes), size=n)],
        "color": colors[rng.integers(len(colors), size=n)],
        "position": rng.uniform(params["position_low"], params["position_high"], size=(n, 2)).astype(
            np.float32
        ),
        "size": rng.uniform(params["size_low"], params["size_high"], size=(n, 1)).astype(np.float32),
    }
    if "corner" in params:  # extrapolation: small objects only in the corner
        outside = ~in_corner(labels["position"], params)
        large = rng.uniform(large_size(params), params["size_high"], size=(n, 1)).astype(np.float32)
        labels["size"] = np.where(outside[:, None], large, labels["size"])
    return labels


def in_corner(position: np.ndarray, params: Mapping[str, Any]) -> np.ndarray:
    """Which positions lie in the top-right square (x high, y low: y runs top to bottom) that holds
    ``corner`` of the position range's area."""
    low, high = params["position_low"], params["position_high"]
    side = float(np.sqrt(params["corner"])) * (high - low)
    return (position[:, 0] >= high - side) & (position[:, 1] <= low + side)


def large_size(params: Mapping[str, Any]) -> float:
    """The smallest size the extrapolation split puts outside the corner: the middle of the size range."""
    return (params["size_low"] + params["size_high"]) / 2


def render_scenes(
    shape_idx: np.ndarray,
    color_idx: np.ndarray,
    position: np.ndarray,
    size: np.ndarray,
    image_size: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Render one object per image: uint8 ``(N, image_size, image_size, 3)``.

    ``shape_idx`` / ``color_idx`` index :data:`SHAPES` / :data:`COLORS`; ``position`` ``(N, 2)``
    is the object's centre (x left to right, y top to bottom, scene units 0..1); ``size`` ``(N,)``
    or ``(N, 1)`` its radius as a fraction of the scene. ``rng`` draws the lighting and shade.
    """
    shape_idx = np.asarray(shape_idx, dtype=np.int64).reshape(-1)
    color_idx = np.asarray(color_idx, dtype=np.int64).reshape(-1)
    position = np.asarray(position, dtype=np.float32).reshape(-1, 2)
    radius = np.asarray(size, dtype=np.float32).reshape(-1)
    n = shape_idx.shape[0]

    level = rng.uniform(*BACKGROUND_LEVEL, size=n).astype(np.float32)
    angle = rng.uniform(0.0, 2.0 * np.pi, size=n)
    strength = rng.uniform(0.0, GRADIENT_MAX, size=n)
    shade = rng.uniform(*SHADE, size=n).astype(np.float32)

    grid = (np.arange(image_size, dtype=np.float32) + 0.5) / image_size
    xs, ys = grid[None, None, :] - 0.5, grid[None, :, None] - 0.5
    gx = (strength * np.cos(angle)).astype(np.float32)[:, None, None]
    gy = (strength * np.sin(angle)).astype(np.float32)[:, None, None]
    background = level[:, None, None] + gx * xs + gy * ys  # (N, H, W)

    coverage = np.empty((n, image_size, image_size), dtype=np.float32)
    for k in range(len(SHAPES)):
        chosen = np.flatnonzero(shape_idx == k)
        if chosen.size:
            coverage[chosen] = _coverage(k, position[chosen], radius[chosen], grid, image_size)

    # background * (1 - coverage) + color * coverage, scaled to 0..255 and offset by 0.5 so that the
    # cast rounds; the gray part is computed once per pixel, not per channel.
    color = PALETTE[color_idx] * (shade * 255.0)[:, None]  # (N, 3)
    gray = background * (255.0 - 255.0 * coverage) + 0.5
    image = coverage[..., None] * color[:, None, None, :]
    image += gray[..., None]
    return image.astype(np.uint8)


def _coverage(
    shape: int, centre: np.ndarray, radius: np.ndarray, grid: np.ndarray, image_size: int
) -> np.ndarray:
    """Fraction of each pixel inside the shape, from its signed distance (scene units, <0 inside).

    A one-pixel linear ramp across the edge: cheap anti-aliasing, close to the covered area at straight edges.
    """
    dx = grid[None, None, :] - centre[:, 0, None, None]  # (M, 1, W)
    dy = grid[None, :, None] - centre[:, 1, None, None]  # (M, H, 1)
    r = radius[:, None, None]
    if SHAPES[shape] == "circle":
        distance = np.sqrt(dx * dx + dy * dy) - r
    elif SHAPES[shape] == "square":  # half-side r
        distance = np.maximum(np.abs(dx), np.abs(dy)) - r
    else:  # equilateral, apex up, circumradius r (inradius r/2): the largest of its edges' half-planes
        distance = np.maximum(dy, _SIN60 * np.abs(dx) - 0.5 * dy) - 0.5 * r
    return np.clip(0.5 - distance * image_size, 0.0, 1.0)
