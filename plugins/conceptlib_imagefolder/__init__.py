"""First-party plugin: the ``imagefolder`` dataset source, local images with an attribute table (CelebA)."""

from __future__ import annotations

from conceptlib.hookspecs import hookimpl
from conceptlib.sources import Source
from conceptlib_imagefolder.source import READER_VERSION, ImageFolderSource

__all__ = ["READER_VERSION", "ImageFolderSource", "conceptlib_sources"]


@hookimpl
def conceptlib_sources() -> list[Source]:
    """Register the ``imagefolder`` source with conceptlib's plugin manager."""
    return [ImageFolderSource()]
