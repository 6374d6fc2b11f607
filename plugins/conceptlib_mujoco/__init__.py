"""First-party plugin: the ``mujoco`` dataset source, the paper's MuJoCo scenes (optional extra).

MuJoCo itself is imported only when a dataset is rendered, so this plugin loads, and ``concept
sources`` lists it, on machines without MuJoCo; using it there says how to install it.
"""

from __future__ import annotations

from conceptlib.hookspecs import hookimpl
from conceptlib.sources import Source
from conceptlib_mujoco.source import RENDERER_VERSION, MujocoSource
from conceptlib_mujoco.variants import COLORS, SHAPES, VARIANTS

__all__ = ["COLORS", "RENDERER_VERSION", "SHAPES", "VARIANTS", "MujocoSource", "conceptlib_sources"]


@hookimpl
def conceptlib_sources() -> list[Source]:
    """Register the ``mujoco`` source with conceptlib's plugin manager."""
    return [MujocoSource()]
