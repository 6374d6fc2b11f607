"""How well a registry's scene model (its `position` denoiser) cleans real noisy renders, inside objects and out.

Run: ``.venv/bin/python benchmarks/denoiser_error.py LABEL=REGISTRY [LABEL=REGISTRY ...]``. Writes
``benchmarks/results/denoiser_error.md`` and ``.json``.

Shape is decided by a few pixels of a small object, and the samples' objects came out speckled; this asks
the denoiser ``D(x0 + sigma eps | c)`` for fresh renders (another seed than training) and reports the RMSE
to ``x0`` separately on object pixels (channel spread max - min above 0.3: the scenes source's saturated
objects on a gray background) and on the background, at noise levels where the chain decides the shape.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from conceptlib.concepts import load_concept
from conceptlib.errors import ConceptError
from conceptlib.imaging import images_to_tensor
from conceptlib.plugins import PluginManager
from conceptlib.registry import Registry

RESULTS = Path(__file__).parent / "results"
SIGMAS = (0.36, 0.2, 0.1, 0.05, 0.02)


def errors(registry_path: Path, plugins: PluginManager, n: int, seed: int) -> dict[str, Any]:
    registry = Registry.open(str(registry_path))
    version = registry.resolve("position")
    model = load_concept(registry, plugins, version, torch.device("cpu")).model
    dataset = plugins.source(version.source).load({**version.source_params, "n": n, "seed": seed})
    x0 = images_to_tensor(dataset.images, torch.device("cpu"))
    c = torch.from_numpy(dataset.condition_vectors("position", np.arange(n)))
    spread = x0.max(1).values - x0.min(1).values
    inside = (spread > 0.3)[:, None].expand_as(x0)
    generator = torch.Generator().manual_seed(0)
    rows = []
    for sigma in SIGMAS:
        noisy = x0 + sigma * torch.randn(x0.shape, generator=generator)
        with torch.no_grad():
            squared = (model.denoise(noisy, c, torch.full((n,), sigma), torch.ones(n)) - x0) ** 2
        rows.append({"sigma": sigma, "object_rmse": float(squared[inside].mean().sqrt()),
                     "background_rmse": float(squared[~inside].mean().sqrt())})
    return {"version": str(version.ref), "weights_sha256": version.weights_sha256,
            "architecture_config": version.architecture_config, "object_pixel_fraction": float(inside.float().mean()),
            "levels": rows}


def per_registry(parser: argparse.ArgumentParser, items: list[str], measure: Callable[[Path], Any]) -> dict[str, Any]:
    """``measure(REGISTRY)`` for each ``LABEL=REGISTRY`` argument, by label; a malformed item, a missing file
    or a :class:`ConceptError` (e.g. no position concept) ends the run in one line, not a traceback."""
    results = {}
    for item in items:
        label, _, path = item.partition("=")
        if not path:
            parser.error(f"{item!r}: give LABEL=REGISTRY, e.g. shipped=registry.db")
        if not Path(path).is_file():
            parser.error(f"{path}: no such registry file")
        try:
            results[label] = measure(Path(path))
        except ConceptError as error:
            parser.error(f"{path}: {error}")
    return results


def registry_arguments(description: str, n_help: str, seed: int) -> argparse.ArgumentParser:
    """The arguments of a benchmark run over ``LABEL=REGISTRY`` items: fresh renders ``-n`` of ``--seed``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("registries", nargs="+", metavar="LABEL=REGISTRY")
    parser.add_argument("-n", type=int, default=256, help=n_help)
    parser.add_argument("--seed", type=int, default=seed, help="render seed (training used the version's own)")
    return parser


def measure_registries(parser: argparse.ArgumentParser, args: argparse.Namespace,
                       measure: Callable[[Path, PluginManager, int, int], Any]) -> dict[str, Any]:
    """``measure(registry, plugins, n, seed)`` of every registry on two threads, timed: the results file."""
    torch.set_num_threads(2)
    plugins = PluginManager()
    started = time.perf_counter()
    results = per_registry(parser, args.registries, lambda path: measure(path, plugins, args.n, args.seed))
    return {"n": args.n, "seed": args.seed, "seconds": round(time.perf_counter() - started, 1), "results": results}


def main() -> None:
    parser = registry_arguments(__doc__.splitlines()[0], "fresh renders", seed=99)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    data = measure_registries(parser, args, errors)
    results = data["results"]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "denoiser_error.json").write_text(json.dumps(data, indent=2) + "\n")
    lines = ["# Scene model: denoising error on fresh renders, inside objects and out", "",
             f"`benchmarks/denoiser_error.py`, {args.n} renders (seed {args.seed}), RMSE of `D(x0 + sigma eps | c)` "
             "to `x0`; object pixels are those with channel spread above 0.3.", "",
             "| registry | position version | sigma | object RMSE | background RMSE |", "|---|---|---|---|---|"]
    for label, result in results.items():
        for row in result["levels"]:
            lines.append(f"| {label} | {result['version']} {result['weights_sha256'][:8]} | {row['sigma']} | "
                         f"{row['object_rmse']:.4f} | {row['background_rmse']:.4f} |")
    (args.out / "denoiser_error.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
