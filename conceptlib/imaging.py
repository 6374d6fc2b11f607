"""Images in and out: tensors to uint8, PNG files and grids."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from conceptlib.errors import ConceptError


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


def save_grid(images: np.ndarray, path: Path, columns: int | None = None, scale: int = 2) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    grid(images, columns, scale).save(path)


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
