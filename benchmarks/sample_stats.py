"""What tells a row's samples from the data: object statistics of saved rows, and which of them the critic reads.

``benchmarks/quality.py`` and ``concept eval --keep-samples`` keep each row's images as NPZ. For the scenes
source (one flat, saturated object on a gray background) this measures, for the samples and for the real
renders they were paired with:

- ``area``: object pixels (chroma ``max - min`` over RGB above 0.3);
- ``outline``: partly covered pixels (chroma 0.08-0.3), the width of the object's edge: a soft or ragged
  outline has more of them than the renderer's anti-aliasing;
- ``interior_sd``: the spread of color inside the object (pixels whose four neighbours are object too), in
  1/255: the renderer draws flat colors, so real renders give 0;
- ``off_hue``: how far the outline's pixels lie from the object's own hue, in 1/255: the renderer mixes the
  object's color with the gray background, so each outline pixel lies in the plane of RGB spanned by the gray
  axis and the object's (median interior) color; the distance to that plane is hue the data never has. Also
  ``magenta_lean``, the part of that distance towards magenta (the only color a chain's first stages saw).

``--critics N`` also grades each row three times: as sampled, with every interior set to its median color
(an ideal interior, outline untouched), and with every background pixel set to a gray plane fitted to the
sample's own background (an ideal background, the renderer's lighting model): each drop says how much of the
critic's figure that part is.

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
          "pixels per image; off-hue outline (its part towards magenta) and interior sd in 1/255; critics: mean "
          "held-out accuracy of the two-sample critics, as sampled and with ideal interiors or backgrounds.")
OBJECT_CHROMA = 0.3
OUTLINE_CHROMA = 0.08
MAGENTA = np.array([1.0, 0.0, 1.0]) / np.sqrt(2)


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
            "interior_sd": float(np.mean(spread)) if spread else float("nan"), **off_hue(images)}


def off_hue(images: np.ndarray) -> dict[str, float]:
    """Mean distance of outline pixels from the plane of gray and the object's color, and its magenta part."""
    _, interior, outline = masks(images)
    distances, leans = [], []
    for i in range(len(images)):
        if interior[i].sum() <= 3 or not outline[i].any():
            continue
        pixels = images[i].astype(np.float64)
        plane, _ = np.linalg.qr(np.stack([np.ones(3), np.median(pixels[interior[i]], 0)], 1))
        edge = pixels[outline[i]]
        off = edge - (edge @ plane) @ plane.T
        distances.append(np.linalg.norm(off, axis=1).mean())
        towards = MAGENTA - plane @ (plane.T @ MAGENTA)
        if np.linalg.norm(towards) > 1e-6:  # a magenta object has no direction off its own plane towards it
            leans.append((off @ (towards / np.linalg.norm(towards))).mean())
    nan = float("nan")
    return {"off_hue": float(np.mean(distances)) if distances else nan,
            "magenta_lean": float(np.mean(leans)) if leans else nan}


def ideal_interiors(images: np.ndarray) -> np.ndarray:
    """``images`` with each object's interior set to its median color (the outline left as it is)."""
    _, interior, _ = masks(images)
    flat = images.copy()
    for i in range(len(images)):
        if interior[i].sum() > 3:
            flat[i][interior[i]] = np.median(images[i][interior[i]], 0).round().astype(images.dtype)
    return flat


def ideal_backgrounds(images: np.ndarray) -> np.ndarray:
    """``images`` with each background pixel (neither object nor outline) set to a gray plane fitted to them."""
    inside, _, outline = masks(images)
    background = ~(inside | outline)
    size = images.shape[1]
    ys, xs = np.mgrid[0:size, 0:size]
    design = np.stack([np.ones(size * size), xs.ravel(), ys.ravel()], 1)
    ideal = images.copy()
    for i in range(len(images)):
        kept = background[i].ravel()
        gray = images[i].reshape(-1, 3).astype(np.float64).mean(1)
        coefficients, *_ = np.linalg.lstsq(design[kept], gray[kept], rcond=None)
        plane = (design @ coefficients).reshape(size, size).clip(0, 255).round().astype(images.dtype)
        ideal[i][background[i]] = plane[background[i], None]
    return ideal


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--critics", type=int, default=0,
                        help="also grade as sampled, with ideal interiors and with ideal backgrounds")
    parser.add_argument("--first-seed", type=int, default=7, help="critic seeds first-seed .. + critics - 1")
    parser.add_argument("--only", action="append", default=[], metavar="FILE_STEM",
                        help="only these saved rows (e.g. color, shape); every row by default")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    rows = sorted(path for path in args.directory.glob("*.npz") if not args.only or path.stem in args.only)
    if not rows:
        sys.exit(f"no saved rows (*.npz) in {args.directory}: run benchmarks/quality.py or concept eval "
                 "--keep-samples first")
    header = "| row | area | outline | off-hue outline (magenta part) | interior sd (1/255) |"
    if args.critics:
        header += " critic as sampled | critic, ideal interiors | critic, ideal backgrounds |"
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
                 f"{g['off_hue']:.1f}, {g['magenta_lean']:.1f} ({r['off_hue']:.1f}, {r['magenta_lean']:.1f})",
                 f"{g['interior_sd']:.1f} ({r['interior_sd']:.1f})"]
        if args.critics:
            seeds = range(args.first_seed, args.first_seed + args.critics)
            variants = (("critic", generated), ("critic_ideal_interiors", ideal_interiors(generated)),
                        ("critic_ideal_backgrounds", ideal_backgrounds(generated)))
            for key, images in variants:
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
