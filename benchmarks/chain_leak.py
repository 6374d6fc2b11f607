"""How much input noise a residual chain's denoiser leaves inside objects: the source of the samples' speckle.

Run: ``.venv/bin/python benchmarks/chain_leak.py LABEL=REGISTRY [LABEL=REGISTRY ...] [--out NAME]``. Writes
``benchmarks/results/NAME.md`` and ``.json`` (default ``chain_leak``).

A real object is flat inside; the two-sample critic fails every row whose chain reads the ``color`` residual
for the texture inside its objects. This asks each chain ``D(x0 + sigma eps | c)`` at the true labels of fresh
renders (another seed than training) and reports, on object interiors (channel spread above 30/255, two pixels
in from the outline):

- ``leak``: the regression coefficient of the estimate's error on the noise put in (0: the noise is removed,
  1: it passes through); at the noise levels where the sampler settles the objects, what leaks becomes part
  of the sample;
- ``rmse``: the interior error, in 1/255.

Chains: ``position+shape`` on magenta shapes (its own data), ``position+shape+color`` on every scene and on
magenta shapes alone (data its frozen members know), each from the registry's current versions.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from denoiser_error import measure_registries, registry_arguments
from torch.nn import functional as F

from conceptlib.concepts import load_concept
from conceptlib.errors import ConceptError
from conceptlib.imaging import images_to_tensor
from conceptlib.plugins import PluginManager
from conceptlib.registry import Registry
from conceptlib.residual import ChainReader, load_chain

RESULTS = Path(__file__).parent / "results"
SIGMAS = (0.2, 0.1, 0.05, 0.02)
CHAINS = (("position+shape", ("position", "shape"), "magenta"),
          ("position+shape+color", ("position", "shape", "color"), None),
          ("position+shape+color", ("position", "shape", "color"), "magenta"))


def interior(x0: torch.Tensor) -> torch.Tensor:
    """Object pixels at least two pixels in from the outline (the scenes source: saturated objects on gray)."""
    chroma = ((x0.max(1).values - x0.min(1).values) > 30 / 255).float()[:, None]
    return (-F.max_pool2d(-chroma, 5, 1, 2) > 0).expand_as(x0)


def leaks(registry_path: Path, plugins: PluginManager, n: int, seed: int) -> list[dict[str, Any]]:
    registry = Registry.open(str(registry_path))
    device = torch.device("cpu")
    rows = []
    for label, names, colors in CHAINS:
        concepts = [load_concept(registry, plugins, registry.resolve(name), device) for name in names]
        chain = load_chain(registry, plugins, concepts, device)
        if chain is None:
            raise ConceptError(f"{'+'.join(names)} is not a residual chain in {registry_path}")
        last = concepts[-1].version
        params = {**last.source_params, "n": n, "seed": seed, **({"colors": colors} if colors else {})}
        source = plugins.source(last.source)
        dataset = source.load(source.resolve_params(params))
        x0 = images_to_tensor(dataset.images, device)
        assigned = {name: torch.from_numpy(dataset.condition_vectors(name, np.arange(n))) for name in names}
        inside = interior(x0)
        generator = torch.Generator().manual_seed(0)
        levels = []
        for sigma in SIGMAS:
            noise = sigma * torch.randn(x0.shape, generator=generator)
            with torch.no_grad():
                estimate = ChainReader.at(chain, x0 + noise, torch.full((n,), sigma)).total(assigned)
            error, put_in = (estimate - x0)[inside], noise[inside]
            levels.append({"sigma": sigma, "leak": float((error * put_in).sum() / (put_in * put_in).sum()),
                           "rmse": float(error.pow(2).mean().sqrt() * 255)})
        versions = {c.version.concept: f"{c.version.ref} {c.version.weights_sha256[:8]}" for c in concepts}
        rows.append({"chain": label, "data": colors or "every scene", "versions": versions,
                     "training": {c.version.concept: {key: c.version.hyperparameters.get(key)
                                                      for key in ("iterations", "seed")} for c in concepts},
                     "architecture": concepts[-1].version.architecture_config.get("channels"),
                     "interior_fraction": float(inside.float().mean()), "levels": levels})
    return rows


def main() -> None:
    parser = registry_arguments(__doc__.splitlines()[0], "fresh renders per chain", seed=999)
    parser.add_argument("--out", default="chain_leak", help="name of the result files under benchmarks/results/")
    args = parser.parse_args()
    data = measure_registries(parser, args, leaks)
    results = data["results"]
    (RESULTS / f"{args.out}.json").write_text(json.dumps(data, indent=2) + "\n")
    header = " | ".join(f"leak / rmse at {s}" for s in SIGMAS)
    lines = ["# Residual chains: input noise left inside objects", "",
             f"`benchmarks/chain_leak.py`, {args.n} fresh renders (seed {args.seed}) per row, each chain at the "
             "true labels; leak = regression of the interior error on the noise put in (0 removed, 1 passed "
             "through), rmse in 1/255.", "",
             f"| registry | chain | data | last member | {header} |", "|---|---|---|---|" + "---|" * len(SIGMAS)]
    for label, rows in results.items():
        for row in rows:
            last = row["versions"][row["chain"].split("+")[-1]]
            cells = " | ".join(f"{level['leak']:.3f} / {level['rmse']:.1f}" for level in row["levels"])
            lines.append(f"| {label} | {row['chain']} | {row['data']} | {last} | {cells} |")
    (RESULTS / f"{args.out}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
