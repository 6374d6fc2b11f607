"""Decoding image files into one uint8 array: centre crop, resize, a few threads.

A crop and a resize are one Pillow call (``resize(box=...)``, antialiased), and JPEGs are decoded at a
reduced scale when the target is at most half the crop (``draft``), which is most of the cost at 64x64
from CelebA's 178x218. Pillow releases the GIL while decoding and resizing, so threads overlap files.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from conceptlib.errors import SourceError
from conceptlib.sources import Progress

CHUNK = 512
"""Files per batch of threads: bounds the queued work and paces progress reports."""
WORKERS = min(4, os.cpu_count() or 1)


def read_images(paths: Sequence[Path], size: int, crop: int, progress: Progress | None = None) -> np.ndarray:
    """uint8 ``(N, size, size, 3)``: each file's centred ``crop`` square (0: the largest) resized to ``size``."""
    images = np.empty((len(paths), size, size, 3), dtype=np.uint8)
    read = partial(read_image, size=size, crop=crop)
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        for start in range(0, len(paths), CHUNK):
            chunk = paths[start : start + CHUNK]
            for i, image in enumerate(pool.map(read, chunk), start=start):
                images[i] = image
            if progress is not None:
                progress(start + len(chunk), len(paths))
    return images


def read_image(path: Path, size: int, crop: int) -> np.ndarray:
    """One file as uint8 ``(size, size, 3)``; a missing, unreadable or too small file is a one-line error."""
    try:
        with Image.open(path) as picture:
            width, height = picture.size
            side = crop or min(width, height)
            if side > min(width, height):
                raise SourceError(f"image {path} is {width}x{height}, smaller than crop={crop}; lower --param crop")
            picture.draft("RGB", (size * width // side, size * height // side))
            scale = picture.size[0] / width
            box = tuple(scale * v for v in ((width - side) / 2, (height - side) / 2, (width + side) / 2,
                                            (height + side) / 2))
            return np.asarray(picture.convert("RGB").resize((size, size), Image.BICUBIC, box=box))
    except FileNotFoundError:
        raise SourceError(f"image {path} is listed in the attribute table but missing") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise SourceError(f"cannot read image {path}: {exc}") from None
