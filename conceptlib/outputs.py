"""Files that let anyone inspect and reproduce results: per-sample PNGs with sidecars, source samples."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from conceptlib.imaging import save_grid, save_png
from conceptlib.sources import Dataset


def write_samples(images: np.ndarray, provenance: dict[str, Any], out_dir: Path, first: int = 0) -> np.ndarray:
    """``sample_00000.png`` + ``sample_00000.json`` (expression, versions, sampler, seed, index).

    ``first`` is the index of ``images[0]``: ranks that write shards of one run never share a file name.
    Returns the sha256 of each sample's PNG and JSON, ``uint8 (N, 2, 32)``, for a manifest.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    digests = np.zeros((len(images), 2, 32), np.uint8)
    for offset, image in enumerate(images):
        index = first + offset
        stem = out_dir / sample_stem(index)
        save_png(image, stem.with_suffix(".png"))
        stem.with_suffix(".json").write_text(json.dumps({**provenance, "index": index}, indent=2) + "\n")
        for column, suffix in enumerate((".png", ".json")):
            digest = hashlib.sha256(stem.with_suffix(suffix).read_bytes()).digest()
            digests[offset, column] = np.frombuffer(digest, np.uint8)
    return digests


def sample_stem(index: int) -> str:
    return f"sample_{index:05d}"


def write_manifest(out_dir: Path, digests: np.ndarray, provenance: dict[str, Any], ranks: int) -> Path:
    """``manifest.json``: every sample file of a sharded run with its sha256, written once (by rank 0)."""
    files = [{"file": sample_stem(index) + suffix, "sha256": digests[index, column].tobytes().hex()}
             for index in range(len(digests)) for column, suffix in enumerate((".png", ".json"))]
    document = {"expression": provenance["expression"], "seed": provenance["seed"], "n": len(digests),
                "ranks": ranks, "files": files}
    path = out_dir / "manifest.json"
    path.write_text(json.dumps(document, indent=2) + "\n")
    return path


def write_source_samples(
    dataset: Dataset, count: int, out_dir: Path, source: str, params: dict[str, Any]
) -> int:
    """The first ``count`` images as PNGs plus ``labels.jsonl`` (one JSON record of attributes per image) and
    ``contact.png``: the first :data:`CONTACT_SHEET` images in one picture, each captioned with its labels."""
    out_dir.mkdir(parents=True, exist_ok=True)
    captions = []
    with (out_dir / "labels.jsonl").open("w") as labels:
        for index in range(count):
            name = f"{source}_{index:05d}.png"
            save_png(dataset.images[index], out_dir / name)
            record = dataset.label_record(index)
            labels.write(json.dumps({"file": name, **record}) + "\n")
            captions.append(" ".join(_label_text(key, value) for key, value in record.items()))
    shown = min(count, CONTACT_SHEET)
    save_grid(dataset.images[:shown], out_dir / "contact.png", columns=min(shown, 8), captions=captions[:shown])
    (out_dir / "source.json").write_text(
        json.dumps({"source": source, "params": params, "dataset_hash": dataset.hash}, indent=2) + "\n"
    )
    return count


CONTACT_SHEET = 64
"""Images on ``contact.png`` at most (8 per row): enough to see a source's variety, small enough to open."""


def _label_text(attribute: str, value: Any) -> str:
    """A label for a caption: a name as it is (``red``), a number as its attribute's condition, to two
    decimals (``size=0.12``, ``position=(0.41,0.55)``), as an expression would ask for it."""
    if isinstance(value, list):
        return f"{attribute}=(" + ",".join(f"{v:.2f}" for v in value) + ")"
    return f"{attribute}={value:.2f}" if isinstance(value, float) else str(value)
