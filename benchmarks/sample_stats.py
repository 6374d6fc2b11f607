"""What tells a row's samples from the data: object statistics of saved rows, and which of them the critic reads.

``benchmarks/quality.py`` and ``concept eval --keep-samples`` keep each row's images as NPZ. For the scenes
source (one flat, saturated object on a gray background) this measures, for the samples and for the real
renders they were paired with:

- ``area``: object pixels (chroma ``max - min`` over RGB above 0.3);
- ``outline``: partly covered pixels (chroma 0.08-0.3), the width of the object's edge: a soft or ragged
  outline has more of them than the renderer's anti-aliasing;
- ``interior_sd``: the spread of color inside the object (pixels whose four neighbours are object too), in
  1/255: the renderer draws flat colors, so real renders give 0.

``--critics N`` also grades each row twice, as sampled and with every interior set to its median color (an
ideal interior, outline untouched): the drop says how much of the critic's figure the interior texture is.

Run: ``.venv/bin/python benchmarks/sample_stats.py DIR [--critics 3] [--first-seed 7] [--only STEM] [--out FILE]``
(``DIR``: e.g. ``benchmarks/results/quality-samples/report``). Writes ``FILE`` (default
``DIR/sample_stats.json``) and the same table as Markdown beside it (``.md``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from conceptlib.evaluation import critic_steps
from conceptlib.report import load_samples
from conceptlib.two_sample import repeated_two_sample_accuracy

LEGEND = ("`benchmarks/sample_stats.py`: per saved row, samples (real renders in brackets); area and outline in "
          "pixels per image, interior sd in 1/255; critics: mean held-out accuracy of the two-sample critics.")
OBJECT_CHROMA = 0.3
OUTLINE_CHROMA = 0.08


def masks(images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Object, interior and outline masks ``(N, H, W)`` of uint8 ``(N, H, W, 3)`` scenes."""
    chroma = (images.max(-1).astype(np.float32) - images.min(-1)) / 255
    inside = chroma > OBJECT_CHROMA
    interior = inside.copy()
    interior[:, 1:-1, 1:-1] &= inside[:, :-2, 1:-1] & inside[:, 2:, 1:-1] & inside[:, 1:-1, :-2] & inside[:, 1:-1, 2:]
    interior[:, [0, -1], :] = False
    interior[:, :, [0, -1]] = False
    return inside, interior, (chroma > OUTLINE_CHROMA) & ~inside


def statistics(images: np.ndarray) -> dict[str, float]:
    inside, interior, outline = masks(images)
    spread = [images[i][interior[i]].astype(np.float32).std(0).mean() for i in range(len(images))
              if interior[i].sum() > 3]
    return {"area": float(inside.sum((1, 2)).mean()), "outline": float(outline.sum((1, 2)).mean()),
            "interior_sd": float(np.mean(spread)) if spread else float("nan")}


def ideal_interiors(images: np.ndarray) -> np.ndarray:
    """``images`` with each object's interior set to its median color (the outline left as it is)."""
    _, interior, _ = masks(images)
    flat = images.copy()
    for i in range(len(images)):
        if interior[i].sum() > 3:
            flat[i][interior[i]] = np.median(images[i][interior[i]], 0).round().astype(images.dtype)
    return flat


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--critics", type=int, default=0, help="also grade as sampled and with ideal interiors")
    parser.add_argument("--first-seed", type=int, default=7, help="critic seeds first-seed .. + critics - 1")
    parser.add_argument("--only", action="append", default=[], metavar="FILE_STEM",
                        help="only these saved rows (e.g. color, shape); every row by default")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    rows = sorted(path for path in args.directory.glob("*.npz") if not args.only or path.stem in args.only)
    if not rows:
        sys.exit(f"no saved rows (*.npz) in {args.directory}: run benchmarks/quality.py or concept eval "
                 "--keep-samples first")
    header = "| row | area | outline | interior sd (1/255) |"
    if args.critics:
        header += " critic as sampled | critic, ideal interiors |"
    table = [header, "|" + "---|" * (header.count("|") - 1)]
    out: dict[str, Any] = {"critics": args.critics, "first_seed": args.first_seed, "rows": {}}
    for path in rows:
        saved = load_samples(path)
        if "real" not in saved:
            print(f"skipped {path.name}: no real renders were paired with it", file=sys.stderr)
            continue
        name = str(saved.get("protocol", path.stem))
        generated, real = saved["generated"], saved["real"]
        row: dict[str, Any] = {"generated": statistics(generated), "real": statistics(real)}
        g, r = row["generated"], row["real"]
        cells = [f"{g['area']:.1f} ({r['area']:.1f})", f"{g['outline']:.1f} ({r['outline']:.1f})",
                 f"{g['interior_sd']:.1f} ({r['interior_sd']:.1f})"]
        if args.critics:
            seeds = range(args.first_seed, args.first_seed + args.critics)
            for key, images in (("critic", generated), ("critic_ideal_interiors", ideal_interiors(generated))):
                row[key] = repeated_two_sample_accuracy(images, real, seeds, steps=critic_steps(len(images)))
                cells.append(f"{row[key]['accuracy']:.3f}")
        out["rows"][name] = row
        cell = name.replace("|", "\\|")
        table.append(f"| `{cell}` | " + " | ".join(cells) + " |")
        print(table[-1], flush=True)
    target = args.out or args.directory / "sample_stats.json"
    target.write_text(json.dumps(out, indent=2) + "\n")
    target.with_suffix(".md").write_text("\n".join([LEGEND, "", *table]) + "\n")
    print("\n".join(table))
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
