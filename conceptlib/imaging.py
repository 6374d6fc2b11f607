"""Images in and out: tensors to uint8, PNG files and grids.

Image files a user hands in are checked from their header before they are decoded (a PNG of a few kB can
declare billions of pixels); image files written go through :func:`conceptlib.files.atomic_write`.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont, UnidentifiedImageError

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


def save_grid(images: np.ndarray, path: Path, columns: int | None = None, scale: int = 2,
              captions: Sequence[str] | None = None) -> None:
    """The images as one grid picture at ``path`` (its parent directories created), written atomically; with
    ``captions``, each tile has its caption under it (what was asked, or its labels)."""
    kind = image_format(path)
    picture = grid(images, columns, scale) if captions is None else captioned_grid(images, captions, columns)
    make_directory(path.parent)
    atomic_write(path, lambda temporary: picture.save(temporary, format=kind))


@functools.lru_cache(maxsize=8)
def font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's own font at ``size`` px: no font file needed on the machine (the bitmap one without FreeType)."""
    try:
        return ImageFont.load_default(size=size)
    except ImportError:  # a Pillow built without FreeType has only its fixed bitmap font
        return ImageFont.load_default()


CAPTION_SIZE = 10


def captioned_grid(images: np.ndarray, captions: Sequence[str], columns: int | None = None,
                   scale: int = 4) -> Image.Image:
    """Tiles scaled ``scale`` times, each with its caption wrapped at spaces under it in small type."""
    n, h, w, _ = images.shape
    columns = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    tile_w, pad, small = w * scale, 6, font(CAPTION_SIZE)
    wrapped = [_wrap(str(caption), small, tile_w) for caption in captions]
    line_h = CAPTION_SIZE + 3
    cell_h = h * scale + 4 + line_h * max((len(lines) for lines in wrapped), default=0)
    canvas = Image.new("RGB", (columns * (tile_w + pad) + pad, rows * (cell_h + pad) + pad), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        left, top = pad + c * (tile_w + pad), pad + r * (cell_h + pad)
        canvas.paste(Image.fromarray(image).resize((tile_w, h * scale), Image.NEAREST), (left, top))
        for k, line in enumerate(wrapped[i] if i < len(wrapped) else []):
            draw.text((left, top + h * scale + 3 + k * line_h), line, fill=(30, 30, 30), font=small)
    return canvas


def _wrap(text: str, face: ImageFont.FreeTypeFont | ImageFont.ImageFont, width: int) -> list[str]:
    """Greedy line breaks at spaces so each line fits ``width`` pixels (a longer word stands alone)."""
    lines: list[str] = []
    for word in text.split():
        if lines and face.getlength(f"{lines[-1]} {word}") <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines


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
