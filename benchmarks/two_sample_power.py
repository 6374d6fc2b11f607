"""How much the two-sample realism critic sees, on artifacts made on purpose.

Run: ``.venv/bin/python benchmarks/two_sample_power.py [--steps 300] [--no-crop] [--plain]``; writes
``benchmarks/results/two_sample_power.json`` (``two_sample_power-steps1000.json`` etc. off the defaults).
500 real renders (scenes, 32 px, seed 11) against 500 others (seed 12): as they are, with speckle over the
whole image (uniform +-4, +-8 of 255), on the object only (+-8, +-16, +-32), and blurred by a 3x3 binomial
filter (soft outlines). Held-out
accuracy near 0.5 means the critic cannot tell; the eval's rows must stay at or below 0.75.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from conceptlib.plugins import PluginManager
from conceptlib.two_sample import two_sample_accuracy

RESULTS = Path(__file__).parent / "results"


def renders(seed: int, n: int = 500, size: int = 32) -> np.ndarray:
    source = PluginManager().source("scenes")
    return source.load(source.resolve_params({"n": n, "seed": seed, "image_size": size})).images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="Adam steps per critic (the eval's: 300)")
    parser.add_argument("--no-crop", action="store_true", help="train on whole images, not random windows")
    parser.add_argument("--plain", action="store_true",
                        help="critics see the images alone, not also x - blur(x) (the critic before 2026-12)")
    args = parser.parse_args()
    critic = {"steps": args.steps, "crop": not args.no_crop, "high_pass": not args.plain}
    a, b = renders(11), renders(12)
    mask = ((a.max(axis=3).astype(np.int16) - a.min(axis=3)) > 30)[..., None]  # the object: chroma on gray
    rng = np.random.default_rng(0)
    out: dict[str, dict] = {}

    def add(name: str, images: np.ndarray) -> None:
        started = time.perf_counter()
        out[name] = {**two_sample_accuracy(images, b, seed=0, **critic),
                     "seconds": round(time.perf_counter() - started, 1)}
        print(name, out[name], flush=True)

    add("real vs real", a)
    for amp in (4, 8):
        noise = rng.integers(-amp, amp + 1, a.shape)
        add(f"image speckle +-{amp}", np.clip(a.astype(np.int16) + noise, 0, 255).astype(np.uint8))
    for amp in (8, 16, 32):
        noise = rng.integers(-amp, amp + 1, a.shape) * mask
        add(f"object speckle +-{amp}", np.clip(a.astype(np.int16) + noise, 0, 255).astype(np.uint8))
    x = torch.from_numpy(a).permute(0, 3, 1, 2).float()
    k = torch.tensor([0.25, 0.5, 0.25])
    kernel = (k[:, None] * k[None, :])[None, None].repeat(3, 1, 1, 1)
    soft = torch.nn.functional.conv2d(torch.nn.functional.pad(x, (1, 1, 1, 1), mode="replicate"), kernel, groups=3)
    add("blurred 3x3 binomial", soft.round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy())
    RESULTS.mkdir(exist_ok=True)
    suffix = (("" if args.steps == 300 else f"-steps{args.steps}") + ("-nocrop" if args.no_crop else "")
              + ("-plain" if args.plain else ""))
    (RESULTS / f"two_sample_power{suffix}.json").write_text(json.dumps({"critic": critic, **out}, indent=2) + "\n")


if __name__ == "__main__":
    main()
