"""Multi-object scenes from one position concept (paper Fig. 6): ``position=A & position=B [& position=C]``.

The concept only ever saw one object per image; the AND of its factors at several well-separated positions
asks for an image where every factor holds, i.e. an object at each. Each sample is graded by connected
components of its object pixels (the scenes background is exactly gray and its objects saturated; the mujoco
``cube`` variant's asked object is the only green one): a sample succeeds when every asked position has a
component whose centre lies within 0.1 of it. No judge is involved: the judges were trained on one-object
images and would read one position.

Run: ``.venv/bin/python benchmarks/multi_object.py --registry REG [--source scenes|mujoco] [-n 100]
[--guidance G]``.
Results: ``benchmarks/results/multi_object-SOURCE.md`` / ``.json`` and grids under
``benchmarks/results/multi_object/``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from conceptlib.concepts import load_concept
from conceptlib.evaluation import WITHIN, Trial, sample_trial
from conceptlib.expr import And, Leaf
from conceptlib.imaging import save_grid
from conceptlib.plugins import PluginManager
from conceptlib.registry import Registry
from conceptlib.sampling import sampling_prior
from conceptlib.settings import SamplerSettings

RESULTS = Path(__file__).parent / "results"
TARGETS = {2: 0.90, 3: 0.75}
APART = 0.35
"""Least distance between two asked positions (scene units): objects of radius <= 0.15 do not touch."""
MIN_PIXELS = 4
"""Smallest component counted as an object (at 32 px an object of radius 0.1 covers ~30 pixels)."""


def separated_positions(rng: np.random.Generator, n: int, k: int, low: float = 0.2, high: float = 0.8) -> np.ndarray:
    """``(n, k, 2)`` positions, every pair of a sample at least :data:`APART` apart (rejection sampling)."""
    out = np.empty((n, k, 2), np.float32)
    for i in range(n):
        while True:
            p = rng.uniform(low, high, (k, 2))
            gaps = np.linalg.norm(p[:, None] - p[None], axis=-1) + np.eye(k) * 9
            if gaps.min() >= APART:
                out[i] = p
                break
    return out


def object_mask(images: np.ndarray, source: str) -> np.ndarray:
    """Pixels of the asked objects: saturated ones on scenes' gray, green-dominant ones on mujoco ``cube``."""
    x = images.astype(np.float32) / 255.0
    if source == "mujoco":
        r, g, b = x[..., 0], x[..., 1], x[..., 2]
        return (g - np.maximum(r, b)) > 0.12
    return (x.max(-1) - x.min(-1)) > 0.25


def components(mask: np.ndarray) -> list[tuple[float, float, int]]:
    """Centres ``(x, y)`` in scene units and pixel counts of the 4-connected components of one 2-D mask."""
    height, width = mask.shape
    seen = np.zeros_like(mask, dtype=bool)
    found = []
    for start in zip(*np.nonzero(mask)):
        if seen[start]:
            continue
        stack, pixels = [start], []
        seen[start] = True
        while stack:
            y, x = stack.pop()
            pixels.append((y, x))
            for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                ny, nx = y + dy, x + dx
                if 0 <= ny < height and 0 <= nx < width and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    stack.append((ny, nx))
        ys, xs = np.array(pixels).T
        found.append(((xs.mean() + 0.5) / width, (ys.mean() + 0.5) / height, len(pixels)))
    return found


def all_present(mask: np.ndarray, asked: np.ndarray) -> tuple[bool, int]:
    """Does every asked position have an object component within :data:`WITHIN`? Also the object count."""
    objects = [(x, y) for x, y, size in components(mask) if size >= MIN_PIXELS]
    if not objects:
        return False, 0
    centres = np.array(objects)
    distance = np.linalg.norm(asked[:, None] - centres[None], axis=-1)
    return bool((distance.min(1) < WITHIN).all()), len(objects)


def run_row(registry: Registry, plugins: PluginManager, concept: str, k: int, n: int, seed: int,
            settings: SamplerSettings, device: torch.device, source: str) -> tuple[dict[str, Any], np.ndarray]:
    loaded = load_concept(registry, plugins, registry.resolve(concept), device)
    prior, chain = sampling_prior(registry, plugins, [loaded], device)
    rng = np.random.default_rng(seed + k)
    positions = separated_positions(rng, n, k)
    leaves = tuple(Leaf(concept, float(i)) for i in range(k))
    trial = Trial(And(leaves), {leaf: positions[:, i] for i, leaf in enumerate(leaves)}, {})
    generator = torch.Generator(device=device).manual_seed(seed + k)
    started = time.perf_counter()
    images = sample_trial(trial, {concept: loaded}, prior, settings, generator, device, chain=chain)
    seconds = time.perf_counter() - started
    masks = object_mask(images, source)
    graded = [all_present(mask, asked) for mask, asked in zip(masks, positions)]
    counts = np.array([count for _, count in graded])
    return {"objects": k, "n": n, "all_present": float(np.mean([ok for ok, _ in graded])),
            "objects_drawn": {str(c): int((counts == c).sum()) for c in sorted(set(counts.tolist()))},
            "seconds": round(seconds, 1), "version": str(loaded.version.ref)}, images


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--registry", type=Path, default=Path(__file__).parent.parent / "registry.db",
                        help="read only: a copy is sampled from")
    parser.add_argument("--concept", default="position")
    parser.add_argument("--source", choices=("scenes", "mujoco"), default="scenes",
                        help="how object pixels are found (mujoco: its green-cube variant)")
    parser.add_argument("-n", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1, help="conditions and noise (0 was used to tune)")
    parser.add_argument("--tag", default=None, help="results name [default: the source]")
    parser.add_argument("--guidance", type=float, default=None,
                        help="the sampler's --guidance (each factor's weight) [default: the CLI's]; choose it on "
                             "--seed 0")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    # what `concept eval` users get (its options default to these), but the asked guidance
    settings = SamplerSettings.from_options({} if args.guidance is None else {"guidance": args.guidance})
    plugins = PluginManager()
    tag = args.tag or args.source
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        copy = Path(scratch) / "registry.db"
        shutil.copy(args.registry, copy)
        registry = Registry.open(str(copy))
        try:
            for k in (2, 3):
                row, images = run_row(registry, plugins, args.concept, k, args.n, args.seed, settings, device,
                                      args.source)
                row["target"] = TARGETS[k]
                rows.append(row)
                save_grid(images[:32], RESULTS / "multi_object" / f"{tag}-{k}.png", columns=8)
                print(json.dumps(row), flush=True)
        finally:
            registry.close()
    payload = {"rows": rows, "registry": str(args.registry), "concept": args.concept, "source": args.source,
               "seed": args.seed, "apart": APART, "within": WITHIN, "guidance": settings.guidance.scale,
               "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])])}
    (RESULTS / f"multi_object-{tag}.json").write_text(json.dumps(payload, indent=2) + "\n")
    lines = [f"# Multi-object scenes from one position concept ({args.source})", "",
             "| objects asked | n | every object where asked | target | met | objects drawn (count: samples) | s |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['objects']} | {row['n']} | {row['all_present']:.3f} | >= {row['target']} | "
                     f"{'yes' if row['all_present'] >= row['target'] else 'no'} | {row['objects_drawn']} | "
                     f"{row['seconds']} |")
    lines += ["", f"Sampler guidance {settings.guidance.scale:g}. "
              f"Positions at least {APART} apart; an object is a connected component of >= {MIN_PIXELS} object "
              f"pixels whose centre lies within {WITHIN} of the asked position. Command: `{payload['command']}`", ""]
    (RESULTS / f"multi_object-{tag}.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
