"""A disk cache of loaded datasets, for sources whose images are slow to make (rendered or decoded).

A dataset is stored under its hash, so a cached copy is found exactly when the source says the data
would be the same. The arrays go in an ``.npz`` read with ``allow_pickle=False`` and the schemas in a
JSON file written last, so a JSON file on disk means its arrays are complete; nothing is ever pickled.
"""

from __future__ import annotations

import json
import os
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from conceptlib.errors import ConditionError
from conceptlib.files import atomic_write
from conceptlib.schema import schema_from_json
from conceptlib.sources import Dataset, Progress

CACHE_ENV = "CONCEPTLIB_CACHE"
DEFAULT_CACHE_DIR = Path("~/.cache/conceptlib/datasets")
FORMAT = 1
"""Bump when the file layout changes: older files are then ignored and rebuilt."""


def dataset_cache_dir() -> Path:
    """``$CONCEPTLIB_CACHE`` if set, else ``~/.cache/conceptlib/datasets``."""
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE_DIR).expanduser()


def cache_stem(source: str, dataset_hash: str, directory: Path | None = None) -> Path:
    """Where the dataset with this hash lives: ``<dir>/<source>-<hash prefix>`` (+ ``.npz`` / ``.json``)."""
    return (directory or dataset_cache_dir()) / f"{source}-{dataset_hash[:24]}"


def cached_dataset(
    source: str, dataset_hash: str, build: Callable[[], Dataset], progress: Progress | None = None
) -> Dataset:
    """The cached dataset with ``dataset_hash``, else ``build()``'s, which is then cached.

    A cache that cannot be written (read-only or full disk) costs a warning, never the data.
    """
    stem = cache_stem(source, dataset_hash)
    found = load_dataset(stem, dataset_hash)
    if found is not None:
        if progress is not None:
            progress(len(found), len(found))
        return found
    dataset = build()
    try:
        save_dataset(dataset, stem, source)
    except OSError as exc:
        warnings.warn(f"could not cache the {source} dataset at {stem}: {exc}", stacklevel=2)
    return dataset


def save_dataset(dataset: Dataset, stem: Path, source: str) -> None:
    """Write ``stem.npz`` (images, labels) then ``stem.json`` (hash, schemas), each atomically."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"images": dataset.images, **{f"label.{k}": v for k, v in dataset.labels.items()}}
    atomic_write(stem.with_suffix(".npz"), lambda path: _save_npz(path, arrays))
    document: dict[str, Any] = {
        "format": FORMAT,
        "source": source,
        "hash": dataset.hash,
        "n": len(dataset),
        "schemas": {name: schema.to_json() for name, schema in dataset.schemas.items()},
    }
    atomic_write(stem.with_suffix(".json"), lambda path: path.write_text(json.dumps(document, indent=2)))


def load_dataset(stem: Path, dataset_hash: str) -> Dataset | None:
    """The dataset cached at ``stem``, or None if absent, from another format or hash, or damaged."""
    try:
        document = json.loads(stem.with_suffix(".json").read_text())
        if document.get("format") != FORMAT or document.get("hash") != dataset_hash:
            return None
        with np.load(stem.with_suffix(".npz"), allow_pickle=False) as archive:
            images = archive["images"]
            labels = {name: archive[f"label.{name}"] for name in document["schemas"]}
        schemas = {name: schema_from_json(data) for name, data in document["schemas"].items()}
    except (OSError, EOFError, ValueError, KeyError, TypeError, AttributeError, zipfile.BadZipFile, ConditionError):
        # absent, truncated (zip CRC), altered or from a newer release: rebuild
        return None
    if images.dtype != np.uint8 or images.ndim != 4 or any(len(v) != len(images) for v in labels.values()):
        return None
    return Dataset(images, labels, schemas, dataset_hash)


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with path.open("wb") as handle:
        np.savez(handle, **arrays)
