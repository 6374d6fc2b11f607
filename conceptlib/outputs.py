"""Files that let anyone inspect and reproduce results: per-sample PNGs with sidecars, source samples."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from conceptlib.imaging import save_png
from conceptlib.sources import Dataset


def write_samples(images: np.ndarray, provenance: dict[str, Any], out_dir: Path) -> None:
    """``sample_00000.png`` + ``sample_00000.json`` (expression, versions, sampler, seed, index)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for index, image in enumerate(images):
        stem = out_dir / f"sample_{index:05d}"
        save_png(image, stem.with_suffix(".png"))
        stem.with_suffix(".json").write_text(json.dumps({**provenance, "index": index}, indent=2) + "\n")


def write_source_samples(
    dataset: Dataset, count: int, out_dir: Path, source: str, params: dict[str, Any]
) -> int:
    """The first ``count`` images as PNGs plus ``labels.jsonl``: one JSON record of attributes per image."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / "labels.jsonl").open("w") as labels:
        for index in range(count):
            name = f"{source}_{index:05d}.png"
            save_png(dataset.images[index], out_dir / name)
            labels.write(json.dumps({"file": name, **dataset.label_record(index)}) + "\n")
    (out_dir / "source.json").write_text(
        json.dumps({"source": source, "params": params, "dataset_hash": dataset.hash}, indent=2) + "\n"
    )
    return count
