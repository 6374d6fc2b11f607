"""The scenes' fixed camera, and the map between floor points and position labels.

A position label is where a viewer sees the object: the image-plane point ``(x, y)`` in [0, 1]² (x left
to right, y top to bottom) onto which the object's centre projects. That is what a spatial schema means
everywhere in conceptlib (networks draw it as a bump map at those pixels), so MuJoCo concepts compose
with the same positions as procedural ones. The camera looks at the floor's origin from ``DISTANCE``
away and ``ELEVATION_DEG`` above the horizon, facing +y: the top of the image is the far side of the
floor, and far objects look smaller. A label becomes a floor point by casting that pixel's ray onto the
horizontal plane at the object's centre height (its radius: objects rest on the floor).

Pure numpy, the same pinhole model as MuJoCo's camera (``fovy`` vertical, square images), so labels
can be drawn and checked without MuJoCo; ``tests/test_mujoco.py`` checks it against rendered pixels.
"""

from __future__ import annotations

import math

import numpy as np

ELEVATION_DEG = 55.0
DISTANCE = 1.8
FOVY_DEG = 32.0
"""Vertical field of view: the floor seen across the image centre is about 1.03 units wide."""

_ELEVATION = math.radians(ELEVATION_DEG)
AXES = np.array(
    [
        [1.0, 0.0, 0.0],  # camera x: image right
        [0.0, math.sin(_ELEVATION), math.cos(_ELEVATION)],  # camera y: image up
        [0.0, -math.cos(_ELEVATION), math.sin(_ELEVATION)],  # camera z: backwards, from the floor to the eye
    ]
)
POSITION = DISTANCE * AXES[2]
_SPAN = 2.0 * math.tan(math.radians(FOVY_DEG) / 2.0)
"""Image-plane width at unit depth."""


def project(points: np.ndarray) -> np.ndarray:
    """World points ``(N, 3)`` -> position labels ``(N, 2)``."""
    camera = (np.asarray(points, dtype=np.float64) - POSITION) @ AXES.T
    depth = -camera[:, 2]
    return np.stack([0.5 + camera[:, 0] / (depth * _SPAN), 0.5 - camera[:, 1] / (depth * _SPAN)], axis=1)


def unproject(labels: np.ndarray, height: np.ndarray) -> np.ndarray:
    """Position labels ``(N, 2)`` -> world points ``(N, 3)`` at ``height`` ``(N,)`` above the floor."""
    labels = np.asarray(labels, dtype=np.float64).reshape(-1, 2)
    rays = (
        AXES[0] * ((labels[:, :1] - 0.5) * _SPAN)
        + AXES[1] * ((0.5 - labels[:, 1:]) * _SPAN)
        - AXES[2]
    )
    scale = (np.asarray(height, dtype=np.float64).reshape(-1) - POSITION[2]) / rays[:, 2]
    return POSITION + scale[:, None] * rays


def apparent_radius(points: np.ndarray, radius: np.ndarray) -> np.ndarray:
    """Roughly how far ``(N,)`` objects of ``radius`` at ``points`` reach on the image plane (label units)."""
    depth = -((np.asarray(points, dtype=np.float64) - POSITION) @ AXES[2])
    return np.asarray(radius, dtype=np.float64).reshape(-1) / (depth * _SPAN)
