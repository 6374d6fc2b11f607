"""Images in and out: tensors to uint8, PNG files and grids."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont, UnidentifiedImageError

from conceptlib.errors import ConceptError


def to_uint8(images: np.ndarray | object) -> np.ndarray:
    """float ``(B, 3, H, W)`` in [0, 1] (tensor or array) -> uint8 ``(B, H, W, 3)``."""
    array = images.detach().cpu().numpy() if hasattr(images, "detach") else np.asarray(images)
    return (np.clip(array, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8).transpose(0, 2, 3, 1)


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


def save_grid(images: np.ndarray, path: Path, columns: int | None = None, scale: int = 2,
              captions: Sequence[str] | None = None) -> None:
    """A grid PNG; with ``captions``, each tile has its caption under it (what was asked, or its labels)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    picture = grid(images, columns, scale) if captions is None else captioned_grid(images, captions, columns)
    picture.save(path)


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
    Image.fromarray(image).save(path)


def load_images(paths: list[Path] | tuple[Path, ...], size: int) -> np.ndarray:
    """uint8 ``(N, size, size, 3)`` from image files, resized; a file that is not an image is a clear error."""
    images = []
    for path in paths:
        try:
            with Image.open(path) as picture:
                rgb = picture.convert("RGB")
        except FileNotFoundError:
            raise ConceptError(f"no image at {path}") from None
        except (UnidentifiedImageError, OSError) as exc:
            raise ConceptError(f"{path} is not an image this tool can read ({exc.__class__.__name__})") from None
        if rgb.size != (size, size):
            rgb = rgb.resize((size, size), Image.BILINEAR)
        images.append(np.asarray(rgb, dtype=np.uint8))
    return np.stack(images)
