"""First-party plugin: the ``scenes`` dataset source, procedural one-object scenes in numpy."""

from __future__ import annotations

from conceptlib.hookspecs import hookimpl
from conceptlib.sources import Source
from conceptlib_scenes.render import COLORS, RENDERER_VERSION, SHAPES, render_scenes, sample_attributes
from conceptlib_scenes.source import ScenesSource

__all__ = [
    "COLORS",
    "RENDERER_VERSION",
    "SHAPES",
    "ScenesSource",
    "conceptlib_sources",
    "render_scenes",
    "sample_attributes",
]


@hookimpl
def conceptlib_sources() -> list[Source]:
    """Register the ``scenes`` source with conceptlib's plugin manager."""
    return [ScenesSource()]
