"""Files that let anyone inspect and reproduce results: per-sample PNGs with sidecars, source samples.

Each file is written whole or not at all (:func:`conceptlib.files.atomic_write`), and the ``check_*``
functions refuse, before a job starts, output names that are links, directories or the registry.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from conceptlib.files import check_output, check_outputs, make_directory, write_bytes
from conceptlib.imaging import image_format, save_grid, save_png
from conceptlib.sources import Dataset

MANIFEST = "manifest.json"
LABELS = "labels.jsonl"
SOURCE = "source.json"
CONTACT = "contact.png"


def check_compose_outputs(output: Path | None, out_dir: Path | None, n: int, protected: list[Path]) -> None:
    """Refuse, before sampling, a grid path without an image extension and any output name that is a link,
    a directory or one of the registry's files (``protected``)."""
    if output is not None:
        image_format(output)
        check_output(output, protected)
    if out_dir is not None:
        check_outputs(out_dir, lambda name: name == MANIFEST or _numbered(name, "sample_", (".png", ".json"), n),
                      protected)


def check_source_outputs(out_dir: Path, source: str, count: int, protected: list[Path]) -> None:
    """Refuse, before rendering, output names of ``write_source_samples`` that must not be written."""
    check_outputs(out_dir, lambda name: (name in (LABELS, SOURCE, CONTACT)
                                         or _numbered(name, f"{source}_", (".png",), count)), protected)


def _numbered(name: str, prefix: str, suffixes: tuple[str, ...], count: int) -> bool:
    """Whether ``name`` is ``PREFIX<index><suffix>`` with an index below ``count`` (as the writers spell it)."""
    stem, dot, suffix = name.rpartition(".")
    digits = stem[len(prefix):]
    return (stem.startswith(prefix) and f"{dot}{suffix}" in suffixes and digits.isascii() and digits.isdigit()
            and int(digits) < count and digits == f"{int(digits):05d}")


def write_samples(images: np.ndarray, provenance: dict[str, Any], out_dir: Path, first: int = 0) -> np.ndarray:
    """``sample_00000.png`` + ``sample_00000.json`` (expression, versions, sampler, seed, index).

    ``first`` is the index of ``images[0]``: ranks that write shards of one run never share a file name.
    Returns the sha256 of each sample's PNG and JSON, ``uint8 (N, 2, 32)``, for a manifest.
    """
    make_directory(out_dir)
    digests = np.zeros((len(images), 2, 32), np.uint8)
    for offset, image in enumerate(images):
        index = first + offset
        stem = out_dir / sample_stem(index)
        save_png(image, stem.with_suffix(".png"))
        sidecar = (json.dumps({**provenance, "index": index}, indent=2) + "\n").encode()
        write_bytes(stem.with_suffix(".json"), sidecar)
        digests[offset, 0] = np.frombuffer(hashlib.sha256(stem.with_suffix(".png").read_bytes()).digest(), np.uint8)
        digests[offset, 1] = np.frombuffer(hashlib.sha256(sidecar).digest(), np.uint8)
    return digests


def sample_stem(index: int) -> str:
    return f"sample_{index:05d}"


def write_manifest(out_dir: Path, digests: np.ndarray, provenance: dict[str, Any], ranks: int) -> Path:
    """``manifest.json``: every sample file of a sharded run with its sha256, written once (by rank 0)."""
    files = [{"file": sample_stem(index) + suffix, "sha256": digests[index, column].tobytes().hex()}
             for index in range(len(digests)) for column, suffix in enumerate((".png", ".json"))]
    document = {"expression": provenance["expression"], "seed": provenance["seed"], "n": len(digests),
                "ranks": ranks, "files": files}
    path = out_dir / MANIFEST
    write_bytes(path, (json.dumps(document, indent=2) + "\n").encode())
    return path


def write_source_samples(
    dataset: Dataset, count: int, out_dir: Path, source: str, params: dict[str, Any]
) -> int:
    """The first ``count`` images as PNGs plus ``labels.jsonl`` (one JSON record of attributes per image) and
    ``contact.png``: the first :data:`CONTACT_SHEET` images in one picture, each captioned with its labels."""
    make_directory(out_dir)
    labels, captions = [], []
    for index in range(count):
        name = source_image(source, index)
        save_png(dataset.images[index], out_dir / name)
        record = dataset.label_record(index)
        labels.append(json.dumps({"file": name, **record}) + "\n")
        captions.append(" ".join(_label_text(key, value) for key, value in record.items()))
    write_bytes(out_dir / LABELS, "".join(labels).encode())
    shown = min(count, CONTACT_SHEET)
    save_grid(dataset.images[:shown], out_dir / CONTACT, columns=min(shown, 8), captions=captions[:shown])
    document = {"source": source, "params": params, "dataset_hash": dataset.hash}
    write_bytes(out_dir / SOURCE, (json.dumps(document, indent=2) + "\n").encode())
    return count


def source_image(source: str, index: int) -> str:
    return f"{source}_{index:05d}.png"


CONTACT_SHEET = 64
"""Images on ``contact.png`` at most (8 per row): enough to see a source's variety, small enough to open."""


def _label_text(attribute: str, value: Any) -> str:
    """A label for a caption: a name as it is (``red``), a number as its attribute's condition, to two
    decimals (``size=0.12``, ``position=(0.41,0.55)``), as an expression would ask for it."""
    if isinstance(value, list):
        return f"{attribute}=(" + ",".join(f"{v:.2f}" for v in value) + ")"
    return f"{attribute}={value:.2f}" if isinstance(value, float) else str(value)
