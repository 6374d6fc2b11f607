"""Images in and out: tensors to uint8, PNG files and grids.

Image files a user hands in are checked from their header before they are decoded (a PNG of a few kB can
declare billions of pixels); image files written go through :func:`conceptlib.files.atomic_write`.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from conceptlib.errors import ConceptError, OutputError
from conceptlib.files import atomic_write, make_directory
from conceptlib.limits import MAX_IMAGE_PIXELS


def to_uint8(images: np.ndarray | object) -> np.ndarray:
    """float ``(B, 3, H, W)`` in [0, 1] (tensor or array) -> uint8 ``(B, H, W, 3)``."""
    array = images.detach().cpu().numpy() if hasattr(images, "detach") else np.asarray(images)
    return (np.clip(array, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8).transpose(0, 2, 3, 1)


def images_to_tensor(images: np.ndarray, device: Any) -> Any:
    """uint8 ``(B, H, W, 3)`` -> float ``(B, 3, H, W)`` in [0, 1] on ``device``, the inverse of :func:`to_uint8`."""
    import torch  # here, not above: reading and writing images needs no torch (``concept source sample``)

    return torch.from_numpy(images).to(device).permute(0, 3, 1, 2).float().div_(255.0)


def grid(images: np.ndarray, columns: int | None = None, scale: int = 2, pad: int = 2) -> Image.Image:
    """One picture of uint8 ``(N, H, W, 3)`` images, ``columns`` wide, each scaled up ``scale`` times."""
    n, h, w, _ = images.shape
    columns = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    canvas = np.full((rows * (h + pad) + pad, columns * (w + pad) + pad, 3), 255, dtype=np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        top, left = pad + r * (h + pad), pad + c * (w + pad)
        canvas[top : top + h, left : left + w] = image
    picture = Image.fromarray(canvas)
    if scale > 1:
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    return picture


def image_format(path: Path) -> str:
    """The image format ``path``'s extension names (``.png``, ``.jpg``...), checked before any work is done
    for it: a path without a known extension is an error now rather than after sampling."""
    Image.init()
    found = Image.registered_extensions().get(path.suffix.lower())
    if found is None or found not in Image.SAVE:
        raise OutputError(f"{path}: give the image file an extension that names its format, such as .png")
    return found


def save_grid(images: np.ndarray, path: Path, columns: int | None = None, scale: int = 2) -> None:
    """The images as one grid picture at ``path`` (its parent directories created), written atomically."""
    kind = image_format(path)
    picture = grid(images, columns, scale)
    make_directory(path.parent)
    atomic_write(path, lambda temporary: picture.save(temporary, format=kind))


def save_png(image: np.ndarray, path: Path) -> None:
    picture = Image.fromarray(image)
    atomic_write(path, lambda temporary: picture.save(temporary, format="PNG"))


TOO_MANY = f"more than the {MAX_IMAGE_PIXELS} this tool decodes; resize it first"


def load_images(paths: list[Path] | tuple[Path, ...], size: int) -> np.ndarray:
    """uint8 ``(N, size, size, 3)`` from image files, resized; a file that is not an image is a clear error."""
    images = []
    for path in paths:
        if path.exists() and not path.is_file():
            raise ConceptError(f"{path} is not a regular file; pass image files")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)  # an error, not a stray line
                picture = Image.open(path)
            with picture:
                width, height = picture.size
                if width * height > MAX_IMAGE_PIXELS:
                    raise ConceptError(f"{path} declares {width}x{height} pixels, {TOO_MANY}")
                rgb = picture.convert("RGB")
        except FileNotFoundError:
            raise ConceptError(f"no image at {path}") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise ConceptError(f"{path} declares more pixels than a decompression-bomb check allows, {TOO_MANY}") \
                from None
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
            raise ConceptError(f"{path} is not an image this tool can read ({exc.__class__.__name__})") from None
        if rgb.size != (size, size):
            rgb = rgb.resize((size, size), Image.BILINEAR)
        images.append(np.asarray(rgb, dtype=np.uint8))
    return np.stack(images)
