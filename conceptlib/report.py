"""The evaluation report: ``results.md`` (a table and confusion matrices), ``results.json``, sample grids and,
beside each, the grid of real renders its samples were told apart from; and every row's images themselves,
so a critic can grade them again without sampling again (:func:`load_samples`)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from conceptlib.evaluation import ProtocolResult
from conceptlib.imaging import save_grid


def grid_name(protocol: str) -> str:
    """A file name that keeps the logic: ``!position & color`` -> ``not-position-and-color``."""
    words = {"&": " and ", "|": " or ", "!": " not "}
    text = "".join(words.get(ch, ch if ch.isalnum() else " ") for ch in protocol)
    return "-".join(text.split())


def write_report(results: Sequence[ProtocolResult], extra: Mapping[str, Any], out_dir: Path,
                 samples_dir: Path | None = None) -> tuple[Path, Path]:
    """``results.md`` (a table), ``results.json`` and one sample grid per protocol under ``out_dir``; with
    ``samples_dir``, each protocol's images too (:func:`write_samples`)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if samples_dir is not None:
        for r in results:
            write_samples(r, samples_dir)
    rows = ["| protocol | n | metrics | target | met | s |", "|---|---|---|---|---|---|"]
    for r in results:
        shown = ", ".join(f"{k} {v:.3f}" for k, v in r.metrics.items())
        wanted = ", ".join(f"{k} {op} {v:g}" for k, (op, v) in r.targets.items())
        name = r.name.replace("|", "\\|")  # a bare | would split the Markdown cell
        rows.append(f"| `{name}` | {r.n} | {shown} | {wanted} | {'yes' if r.passed else 'no'} | {r.seconds:.0f} |")
        save_grid(r.images[:64], out_dir / f"{grid_name(r.name)}.png", columns=8, captions=r.asked[:64] or None)
        if r.real is not None:  # the same captions: each real tile shows what its sample was asked for
            save_grid(r.real[:64], out_dir / f"{grid_name(r.name)}-real.png", columns=8,
                      captions=r.asked[:64] or None)
    for r in results:
        for key, table in r.confusion.items():
            rows.extend(_confusion_markdown(r.name, key, table))
    for key, value in extra.items():
        rows.append(f"\n{key}: {json.dumps(value)}")
    markdown = out_dir / "results.md"
    markdown.write_text("\n".join(rows) + "\n")
    payload = {"protocols": [r.to_json() for r in results], **extra}
    data = out_dir / "results.json"
    data.write_text(json.dumps(payload, indent=2) + "\n")
    return markdown, data


def _confusion_markdown(protocol: str, key: str, table: Mapping[str, Any]) -> list[str]:
    asked = "forbidden" if key.startswith("not_") else "asked"
    values = table["values"]
    lines = [f"\n`{protocol}`, {key.removeprefix('not_')}: rows {asked}, columns judged\n",
             "| | " + " | ".join(values) + " |", "|---" * (len(values) + 1) + "|"]
    lines += [f"| {value} | " + " | ".join(str(count) for count in row) + " |"
              for value, row in zip(values, table["matrix"])]
    return lines


def write_samples(result: ProtocolResult, samples_dir: Path) -> Path:
    """``samples_dir/<protocol>.npz``: the row's samples (``generated``), the real renders they were paired
    with (``real``, when the row had a two-sample test) and what each was asked (``asked``), all plain arrays
    (no pickle)."""
    samples_dir.mkdir(parents=True, exist_ok=True)
    path = samples_dir / f"{grid_name(result.name)}.npz"
    arrays = {"generated": result.images, "asked": np.array(result.asked, dtype=str),
              "protocol": np.array(result.name)}
    if result.real is not None:
        arrays["real"] = result.real
    partial = path.with_name(path.name + ".part")  # not *.npz: what reads saved rows never takes a half file
    with partial.open("wb") as file:
        np.savez_compressed(file, **arrays)
    partial.replace(path)  # whole or absent: an interrupted write leaves no half file under the real name
    return path


def load_samples(path: Path) -> dict[str, np.ndarray]:
    """A row written by :func:`write_samples` (read without pickle)."""
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}
