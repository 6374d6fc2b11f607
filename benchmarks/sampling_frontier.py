"""The sampling frontier: judged accuracy against network evaluations and wall time, per sampler.

Every sampler drives the *same* composed model: conceptlib's composed score of an expression
(:func:`conceptlib.sampling.score_field`, the score ``concept compose`` follows), handed to other libraries as
a denoiser ``D(x, sigma) = x + sigma^2 * score``. Same registry, expression, asked conditions (the split's),
per-sample draws and starting noise (each sampler's generator seeded alike), same judge. Compared:

- conceptlib's annealed sampler at several budgets (levels and corrector steps), the CLI's default among them;
- diffusers' schedulers and k-diffusion's sampling functions (``benchmarks/peer_samplers.py``, which says how
  each is configured), at step counts that spend about 10, 20, 34 and 50 evaluations per sample.

An *evaluation* is one call of the composed model per sample (every concept network of the expression run
once on that sample), counted as the samplers call it; the networks' own forward and backward counts
(:mod:`conceptlib.network_calls`) are recorded beside. Seconds are sampling alone, one process, this machine.

Run: ``make bench-frontier`` (the peer venv, report split). Settings are chosen on ``--split tune`` only
(``benchmarks/results/tuning/``); the reported frontier is the report split. Writes
``benchmarks/results/sampling_frontier.md``, ``.json`` and ``.png`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).parent))

import peer_samplers
from speed import peak_memory

from conceptlib.annealed import ScoreFn, annealed_sample
from conceptlib.concepts import load_concept
from conceptlib.energy import Term
from conceptlib.evaluation import PROTOCOLS, SPLITS, Conditions, judge_params
from conceptlib.imaging import to_uint8
from conceptlib.judge import load_or_train_judge
from conceptlib.network_calls import counting
from conceptlib.plots import PANEL, PAPER, Panel
from conceptlib.plugins import PluginManager
from conceptlib.registry import Registry
from conceptlib.sampling import sampling_networks, sampling_prior, score_field
from conceptlib.settings import AnnealedConfig, SamplerSettings

ROOT = Path(__file__).parent
RESULTS = ROOT / "results"
BUDGETS = (10, 20, 34, 50)
"""Evaluations per sample each peer sampler is run at (the most steps that spend no more)."""
OURS: dict[str, dict[str, Any]] = {
    "40 levels, ULA x4, eta 1 (previous default)": {"levels": 40, "eta": 1.0},
    "20 levels, ULA x4": {"levels": 20},
    "14 levels, ULA x4": {"levels": 14},
    "10 levels, ULA x4 (default)": {},
    "10 levels, ULA x4, eta 1": {"levels": 10, "eta": 1.0},
    "8 levels, ULA x4": {"levels": 8},
    "6 levels, ULA x4": {"levels": 6},
    "4 levels, ULA x4": {"levels": 4},
    "10 levels, ULA x2": {"levels": 10, "corrector_steps": 2},
    "8 levels, ULA x2": {"levels": 8, "corrector_steps": 2},
    "6 levels, ULA x2": {"levels": 6, "corrector_steps": 2},
    "6 levels, ULA x1": {"levels": 6, "corrector_steps": 1},
    "6 levels, ULA x1, eta 1": {"levels": 6, "corrector_steps": 1, "eta": 1.0},
    "4 levels, ULA x2": {"levels": 4, "corrector_steps": 2},
    "10 levels, no corrector, eta 1": {"levels": 10, "corrector": "none", "eta": 1.0},
    "20 levels, no corrector": {"levels": 20, "corrector": "none"},
    "10 levels, no corrector": {"levels": 10, "corrector": "none"},
}
"""conceptlib's annealed sampler, each a change from the CLI's defaults on a residual chain (10 levels, eta 0.5,
four ULA corrector steps of 0.3 sigma^2 at noise levels >= 0.05)."""

Sampler = Callable[[ScoreFn, int, int, torch.Generator, torch.device], torch.Tensor]


@dataclasses.dataclass
class Counted:
    """A score field that counts the rows it is evaluated on."""

    scores: ScoreFn
    rows: int = 0

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        self.rows += x.shape[0]
        return self.scores(x, sigma)


def ours(config: AnnealedConfig) -> Sampler:
    def run(scores: ScoreFn, n: int, size: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
        return annealed_sample(scores, n, size, config, generator, device)
    return run


def peer(sampler: peer_samplers.PeerSampler, steps: int) -> Sampler:
    def run(scores: ScoreFn, n: int, size: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
        def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            with torch.enable_grad():  # a classifier read on the prior's estimate needs its gradient
                s, _ = scores(x, sigma.expand(x.shape[0]).to(x))
            return (x + sigma.reshape(-1, 1, 1, 1) ** 2 * s).detach()
        return sampler.run(denoise, n, size, steps, generator, device)
    return run


def most_steps(evaluations: Callable[[int], int], budget: int) -> int | None:
    fitting = [steps for steps in range(1, budget + 1) if evaluations(steps) <= budget]
    return max(fitting) if fitting else None


class Bench:
    """One registry, protocol and split: the asked conditions, the judge, and a way to grade any sampler."""

    def __init__(self, registry: Registry, protocol: str, n: int, split: str, device: torch.device) -> None:
        plugins = PluginManager()
        self.protocol, self.device, self.split = PROTOCOLS[protocol], device, SPLITS[split]
        self.concepts = {c: load_concept(registry, plugins, registry.resolve(c), device)
                         for c in self.protocol.concepts}
        self.prior, self.chain = sampling_prior(registry, plugins, list(self.concepts.values()), device)
        first = self.concepts[self.protocol.concepts[0]].version
        self.size = int(first.hyperparameters["image_size"])
        self.trial = self.protocol.make(Conditions(np.random.default_rng(self.split.seed), first.source_params,
                                                   self.split), n)
        self.n = n
        params = judge_params([c.version for c in self.concepts.values()], first,
                              plugins.source(first.source).default_params)
        self.judge, _ = load_or_train_judge(first.source, params, None, device, plugins=plugins)
        self.networks = sampling_networks(self.concepts.values(), self.prior, self.chain)

    def grade(self, sampler: Sampler, batch_size: int = 64, count: int | None = None) -> dict[str, Any]:
        """``sampler``'s samples of the first ``count`` (default all) asked conditions, judged and timed."""
        settings, n = SamplerSettings(), count or self.n
        generator = torch.Generator(device=self.device).manual_seed(self.split.seed)
        parts: list[np.ndarray] = []
        rows, seconds = 0, 0.0

        def run() -> None:
            nonlocal rows, seconds
            started = time.perf_counter()
            for start in range(0, n, batch_size):
                part = slice(start, min(n, start + batch_size))
                count = part.stop - part.start
                terms = {leaf: Term(self.concepts[leaf.concept], torch.from_numpy(values[part]).to(self.device))
                         for leaf, values in self.trial.conditions.items()}
                scores = Counted(score_field(self.trial.node, terms, self.prior, count, settings, generator,
                                             self.device, self.chain))
                parts.append(to_uint8(sampler(scores, count, self.size, generator, self.device)))
                rows += scores.rows
            seconds = time.perf_counter() - started

        with counting(self.networks) as calls:
            peak = peak_memory(run, self.device)
        images = np.concatenate(parts)
        targets = {key: value[:n] for key, value in self.trial.targets.items()}
        metrics = self.protocol.score(self.judge.predict(images), targets)
        metrics["looks_real"] = float(np.mean(self.judge.realism(images)))
        return {"evaluations": round(rows / n, 2), "networks": calls.per_sample(n),
                "seconds": round(seconds, 2), "images_per_second": round(n / seconds, 2),
                "peak_mib": round(peak / 2**20, 1),
                "metrics": {k: round(float(v), 4) for k, v in metrics.items()}, "images": images}


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """All three right against evaluations per sample (left) and seconds per 100 samples (right): every
    point, conceptlib's upper frontier as a line (its variants differ in more than budget), each peer sampler
    as a line over its budgets; squares are diffusers, circles k-diffusion, diamonds conceptlib."""
    image = Image.new("RGB", (2 * PANEL[0], PANEL[1] + 90), PAPER)
    draw = ImageDraw.Draw(image)
    families = sorted({r["family"] for r in rows}, key=lambda f: (f != "conceptlib", f))
    palette = [(0, 0, 0), (230, 25, 75), (60, 180, 75), (255, 180, 0), (0, 130, 200), (245, 130, 48),
               (145, 30, 180), (70, 200, 220), (240, 50, 230), (150, 150, 0), (0, 128, 128), (170, 110, 40),
               (128, 0, 0), (128, 128, 255), (100, 100, 100)]
    colors = {family: palette[i % len(palette)] for i, family in enumerate(families)}
    accuracy = [r["metrics"]["all_right"] for r in rows]
    low = max(0.0, min(accuracy) - 0.05)

    def mark(panel: Panel, x: float, y: float, family: str) -> None:
        box = [panel.x(x) - 3, panel.y(y) - 3, panel.x(x) + 3, panel.y(y) + 3]
        if family == "conceptlib":
            cx, cy = panel.x(x), panel.y(y)
            draw.polygon([(cx, cy - 5), (cx + 5, cy), (cx, cy + 5), (cx - 5, cy)], fill=colors[family])
        elif family.startswith("diffusers"):
            draw.rectangle(box, fill=colors[family])
        else:
            draw.ellipse(box, fill=colors[family])

    for column, (key, label) in enumerate((("evaluations", "network evaluations per sample"),
                                           ("seconds_per_100", "seconds per 100 samples"))):
        top = max(r[key] for r in rows) * 1.05
        panel = Panel(image, column * PANEL[0], 0, (0.0, top), (low, 1.0))
        panel.frame("all three right (judge)", label, "")
        for family in families:
            points = sorted((r[key], r["metrics"]["all_right"]) for r in rows if r["family"] == family)
            line = points
            if family == "conceptlib":
                line = []
                for x, y in points:
                    if not line or y > line[-1][1]:
                        line.append((x, y))
            panel.line([p[0] for p in line], [p[1] for p in line], colors[family])
            for x, y in points:
                mark(panel, x, y, family)
    x, y = 70, PANEL[1] + 10
    for family in families:
        draw.rectangle((x, y, x + 10, y + 10), fill=colors[family])
        draw.text((x + 14, y - 1), family, fill=(30, 30, 30))
        x += 30 + int(draw.textlength(family))
        if x > 2 * PANEL[0] - 200:
            x, y = 70, y + 18
    image.save(path)


def write_report(data: dict[str, Any], out: Path) -> None:
    out.with_suffix(".json").write_text(json.dumps(data, indent=2) + "\n")
    rows = sorted(data["rows"], key=lambda r: (r["evaluations"], -r["metrics"]["all_right"]))
    lines = ["# Sampling frontier", "",
             f"Written by `benchmarks/sampling_frontier.py` ({data['written']}): `{data['protocol']}` on the "
             f"{data['split']} split, {data['n']} samples per sampler, {data['registry']}, judged by `concept eval`'s "
             f"independent judge; device {data['device']}, {data['threads']} threads, torch {data['torch']}. "
             "Every sampler drives the same composed model with the same asked conditions, per-sample draws "
             "and generator seed. Evaluations: calls of the composed model per sample, counted; seconds: sampling "
             "alone; peak MiB: resident memory the sampling added at its peak (VmHWM).", "",
             "| sampler | library | steps | evaluations | all right | position | shape | color | looks real | "
             "s / 100 samples | images/s | peak MiB |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        m = r["metrics"]
        lines.append(f"| {r['sampler']} | {r['library']} | {r['steps']} | {r['evaluations']:g} | "
                     f"{m['all_right']:.3f} | {m['position_acc']:.3f} | {m['shape_acc']:.3f} | {m['color_acc']:.3f} | "
                     f"{m['looks_real']:.3f} | {r['seconds_per_100']:.1f} | {r['images_per_second']:.2f} | "
                     f"{r['peak_mib']:.0f} |")
    if data.get("skipped"):
        lines += ["", "Skipped: " + "; ".join(f"{k} ({v})" for k, v in data["skipped"].items())]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", choices=["tune", "report"], default="report")
    parser.add_argument("-n", type=int, default=200)
    parser.add_argument("--protocol", default="position & shape & color")
    parser.add_argument("--registry", type=Path, default=ROOT.parent / "registry.db")
    parser.add_argument("--budgets", default=",".join(map(str, BUDGETS)))
    parser.add_argument("--only", default="",
                        help="run only samplers whose name contains one of these (comma-separated)")
    parser.add_argument("--out", type=Path, default=None,
                        help="results path without suffix [default: results/sampling_frontier, tuning/ for tune]")
    args = parser.parse_args()
    out = args.out or (RESULTS / ("sampling_frontier" if args.split == "report" else "tuning/sampling_frontier-tune"))
    out.parent.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    budgets = [int(b) for b in args.budgets.split(",")]
    points: list[tuple[str, str, str, str, Sampler]] = []  # sampler, family, library, steps, run
    defaults = AnnealedConfig()
    for name, change in OURS.items():
        config = dataclasses.replace(defaults, **change).for_composition(True)
        points.append((name, "conceptlib", "conceptlib", f"{config.levels} levels", ours(config)))
    peers, skipped = peer_samplers.load()
    for sampler in peers:
        for budget in budgets:
            steps = most_steps(sampler.evaluations, budget)
            if steps is not None:
                points.append((sampler.name, sampler.name, sampler.library, str(steps), peer(sampler, steps)))
    wanted = args.only.split(",")
    points = [p for p in points if any(part in p[0] for part in wanted)]
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "registry.db"
        shutil.copyfile(args.registry, copy)
        bench = Bench(Registry.open(f"sqlite:///{copy}"), args.protocol, args.n, args.split, device)
        data: dict[str, Any] = {"written": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "protocol": args.protocol,
                                "split": args.split, "n": args.n, "registry": args.registry.name,
                                "device": str(device), "threads": torch.get_num_threads(),
                                "torch": torch.__version__, "skipped": skipped, "rows": []}
        bench.grade(ours(dataclasses.replace(defaults, levels=2)), count=8)  # warm up: the first run pays for setup
        grids = out.parent / (out.name + "-grids")
        grids.mkdir(exist_ok=True)
        for index, (name, family, library, steps, run) in enumerate(points):
            result = bench.grade(run)
            images = result.pop("images")
            row = {"sampler": name, "family": family, "library": library, "steps": steps, **result,
                   "seconds_per_100": round(100 * result["seconds"] / args.n, 2)}
            data["rows"].append(row)
            shown = images[:32] if len(images) >= 32 else images[: len(images) // 8 * 8 or len(images)]
            grid = np.concatenate([np.concatenate(list(shown[r:r + 8]), 1) for r in range(0, len(shown), 8)], 0)
            Image.fromarray(grid).save(grids / f"{index:02d}.png")
            row["grid"] = f"{grids.name}/{index:02d}.png"
            print(f"[{index + 1}/{len(points)}] {name} ({steps}): {row['evaluations']:g} evaluations, "
                  f"all right {row['metrics']['all_right']:.3f}, looks real {row['metrics']['looks_real']:.3f}, "
                  f"{row['seconds']:.1f} s", flush=True)
            write_report(data, out)
        plot(data["rows"], out.with_suffix(".png"))
    print(f"wrote {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
