"""Cross-product extrapolation (paper 3.4, Fig. 8-9): position and size composed vs one joint model.

Data (``scenes``, 32 px, sizes 0.06-0.20 of the scene): every size appears only in the top-right ``corner``
fraction of the position range, elsewhere only large objects (the upper half of the sizes). Two models:

- **composed**: ``position`` learned on large objects everywhere (``concept add``, objective denoiser), then
  ``size --with position`` on the corner data (objective residual), composed as ``position=p & size=s``;
- **joint** (the holistic baseline): one denoiser conditioned on ``(x, y, size)`` together, the same network
  family with the position drawn as a bump map, its channels widened to the composed pair's parameter count
  and its iterations set so that it trains as long as both composed concepts together.

Each is asked for combinations never seen in training (outside the corner, small sizes) and, as a reference,
small sizes inside the corner (seen by both); an independent judge (trained on another seed of unrestricted
data) reads every sample's size and position. Corner 100 % is the unrestricted control.

Run: ``.venv/bin/python benchmarks/extrapolation.py [--corners 0.01,0.1,1] [-n 100]``. Results:
``benchmarks/results/extrapolation.md`` / ``.json`` / ``.png`` (error against corner, like Fig. 9) and grids
under ``benchmarks/results/extrapolation/``. Registries (not committed): ``benchmarks/results/extrapolation-*``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from conceptlib.concepts import LoadedConcept, load_concept
from conceptlib.evaluation import JUDGE_SEED_OFFSET, Trial, sample_trial
from conceptlib.expr import And, Leaf
from conceptlib.imaging import save_grid
from conceptlib.judge import load_or_train_judge
from conceptlib.plugins import PluginManager
from conceptlib.registry import Registry, VersionInfo
from conceptlib.residual import load_chain
from conceptlib.schema import Continuous
from conceptlib.settings import DenoiserConfig, ResidualConfig, SamplerSettings
from conceptlib.sources import Dataset
from conceptlib.training import train_concept
from conceptlib_scenes.render import in_corner, large_size

RESULTS = Path(__file__).parent / "results"
SIZES = {"size_low": 0.06, "size_high": 0.20}
BASE = {"image_size": 32, **SIZES}
POSITION = {**BASE, "size_low": large_size(BASE)}
"""The position concept sees large objects only, everywhere."""
JOINT = Continuous(names=("x", "y", "size"), low=0.0, high=1.0, spatial=True)


def corner_params(corner: float) -> dict[str, Any]:
    return {**BASE, "corner": corner}


def concept_command(registry: Path, *args: str) -> list[str]:
    return [str(Path(sys.executable).parent / "concept"), "--registry", str(registry), *args]


def budget_args(objective: str, budget: float) -> list[str]:
    """``--iterations`` for a fraction of the CLI's default (none at the full budget)."""
    default = {"denoiser": DenoiserConfig, "residual": ResidualConfig}[objective].iterations
    return [] if budget == 1 else ["--iterations", str(max(100, round(default * budget)))]


def train_composed(base: Path, registry: Path, corner: float, log: Path, budget: float) -> None:
    """``size --with position`` on the corner data, into a copy of the registry holding ``position``."""
    shutil.copy(base, registry)
    params = [arg for k, v in corner_params(corner).items() for arg in ("--param", f"{k}={v}")]
    with log.open("a") as out:
        subprocess.run(concept_command(registry, "add", "size", "--source", "scenes", *params, "--with", "position",
                                       *budget_args("residual", budget),
                                       "--device", "auto"), check=True, stdout=out, stderr=out)


def joint_dataset(corner: float, plugins: PluginManager) -> Dataset:
    """The corner data with one more attribute, ``placement`` = (x, y, size scaled to the size schema's [0, 1]),
    so that the joint model's Fourier features (``condition_frequencies``) see a radius as the size concept's do."""
    source = plugins.source("scenes")
    data = source.load(source.resolve_params(corner_params(corner)))
    placement = np.concatenate([data.labels["position"], data.labels["size"] / data.schemas["size"].high], axis=1)
    labels = {**data.labels, "placement": placement}
    return Dataset(data.images, labels, {**data.schemas, "placement": JOINT}, data.hash)


def parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def joint_config(plugins: PluginManager, target: int) -> dict[str, Any]:
    """The unet config widened (channels scaled together) to the nearest parameter count to ``target``."""
    unet = plugins.architecture("unet")
    best: tuple[int, dict[str, Any]] | None = None
    for scale in np.arange(1.0, 2.01, 0.02):
        channels = [int(round(c * scale / 4) * 4) for c in unet.default_config["channels"]]
        config = unet.config({"channels": channels})
        count = parameters(unet.build(JOINT, 32, config))
        if best is None or abs(count - target) < abs(best[0] - target):
            best = (count, config)
    assert best is not None
    return best[1]


def train_joint(plugins: PluginManager, corner: float, config: dict[str, Any], seconds: float,
                device: torch.device) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The joint denoiser trained for as many iterations as fit in ``seconds`` (timed on a short run)."""
    unet = plugins.architecture("unet")
    dataset = joint_dataset(corner, plugins)
    settings = DenoiserConfig(iterations=30)  # what `concept add` gives a denoiser, but the iterations
    started = time.perf_counter()
    train_concept(unet, config, dataset, "placement", [], settings, device)
    per_iteration = (time.perf_counter() - started) / 30
    iterations = max(100, int(seconds / per_iteration))
    result = train_concept(unet, config, dataset, "placement", [], replace(settings, iterations=iterations), device)
    return result.model, {"iterations": iterations, "seconds": result.metrics["seconds"],
                          "parameters": parameters(result.model), "loss": result.metrics["loss"]}


def joint_concept(model: torch.nn.Module, config: dict[str, Any], corner: float) -> LoadedConcept:
    version = VersionInfo(
        concept="placement", number=1, created_at=None, schema=JOINT, architecture="unet", architecture_config=config,
        source="scenes", source_params=corner_params(corner), attribute="placement", dataset_hash="",
        hyperparameters={"image_size": 32, "objective": "denoiser"}, seed=0, metrics={}, weights_sha256="",
        status="ready", lineage=(), aliases=(), is_current=True,
    )
    return LoadedConcept(version, model.eval().requires_grad_(False))


def asked(corner: float, n: int, unseen: bool, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Positions and small sizes: outside the corner (``unseen``; inside the 10 % corner for the control of
    corner 100 %) or inside it."""
    params = {"position_low": 0.2, "position_high": 0.8, "corner": corner if corner < 1 else 0.1}
    positions = np.empty((n, 2), np.float32)
    filled = 0
    while filled < n:
        p = rng.uniform(0.2, 0.8, (4 * n, 2)).astype(np.float32)
        keep = p[in_corner(p, params) != unseen]
        take = min(n - filled, len(keep))
        positions[filled:filled + take] = keep[:take]
        filled += take
    sizes = rng.uniform(SIZES["size_low"], large_size(BASE), (n, 1)).astype(np.float32)
    return positions, sizes


def grade(images: np.ndarray, positions: np.ndarray, sizes: np.ndarray, judge: Any) -> dict[str, float]:
    predicted = judge.predict(images)
    return {"size_error": float(np.abs(predicted["size"].reshape(-1) - sizes.reshape(-1)).mean()),
            "position_error": float(np.abs(predicted["position"] - positions).mean()),
            "looks_real": float(np.mean(judge.realism(images)))}


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Size error on unseen combinations against the corner fraction (log axis), one line per model."""
    width, height, margin = 480, 320, 50
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    corners = sorted({r["corner"] for r in rows})
    top = max(r["unseen"]["size_error"] for r in rows) * 1.15
    xs = {c: margin + (width - 2 * margin) * i / max(1, len(corners) - 1) for i, c in enumerate(corners)}

    def y(value: float) -> float:
        return height - margin - (height - 2 * margin) * value / top

    draw.line([(margin, height - margin), (width - margin, height - margin)], fill="black")
    draw.line([(margin, margin), (margin, height - margin)], fill="black")
    for c, x in xs.items():
        draw.text((x - 12, height - margin + 6), f"{c:g}", fill="black")
    for tick in np.linspace(0, top, 5):
        draw.text((4, y(tick) - 6), f"{tick:.3f}", fill="black")
    draw.text((width // 2 - 60, height - 20), "corner fraction", fill="black")
    draw.text((margin, 10), "size error on unseen (position, size)", fill="black")
    for model, color in (("composed", (30, 120, 220)), ("joint", (220, 80, 30))):
        points = [(xs[r["corner"]], y(r["unseen"]["size_error"])) for r in rows if r["model"] == model]
        if len(points) > 1:
            draw.line(points, fill=color, width=3)
        for px, py in points:
            draw.ellipse([px - 4, py - 4, px + 4, py + 4], fill=color)
        draw.text((width - margin - 70, margin + (0 if model == "composed" else 16)), model, fill=color)
    image.save(path)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corners", default="0.01,0.1,1")
    parser.add_argument("-n", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1, help="asked combinations and noise (0 is for tuning)")
    parser.add_argument("--budget", type=float, default=1.0,
                        help="fraction of the CLI's default iterations for both composed concepts (the joint model "
                             "still trains as long as they do together); registries are kept per budget")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    plugins = PluginManager()
    settings = SamplerSettings()  # what `concept eval` users get: its options default to these
    out = RESULTS / "extrapolation"
    out.mkdir(parents=True, exist_ok=True)
    log = RESULTS / "extrapolation.log"
    suffix = "" if args.budget == 1 else f"-budget{args.budget:g}"
    base = RESULTS / f"extrapolation-position{suffix}-registry.db"
    if not base.exists():
        params = [arg for k, v in POSITION.items() for arg in ("--param", f"{k}={v}")]
        with log.open("a") as stream:
            subprocess.run(concept_command(base, "add", "position", "--source", "scenes", *params, "--device", "auto",
                                           *budget_args("denoiser", args.budget)),
                           check=True, stdout=stream, stderr=stream)
    judge, _ = load_or_train_judge("scenes", {**BASE, "seed": JUDGE_SEED_OFFSET}, device=device, plugins=plugins)
    corners = [float(c) for c in args.corners.split(",")]
    size_schema_high = plugins.source("scenes").attributes(BASE)["size"].high  # joint_dataset scales by it
    rows = earlier_rows(args, corners)
    for corner in corners:
        registry_path = RESULTS / f"extrapolation-{corner:g}{suffix}-registry.db"
        if not registry_path.exists():
            train_composed(base, registry_path, corner, log, args.budget)
        registry = Registry.open(str(registry_path))
        position = load_concept(registry, plugins, registry.resolve("position"), device)
        size = load_concept(registry, plugins, registry.resolve("size"), device)
        chain = load_chain(registry, plugins, [position, size], device)
        composed_seconds = position.version.metrics["seconds"] + size.version.metrics["seconds"]
        composed_parameters = parameters(position.model) + parameters(size.model)
        config = joint_config(plugins, composed_parameters)
        model, joint_training = train_joint(plugins, corner, config, composed_seconds, device)
        joint = joint_concept(model, config, corner)
        for model_name in ("composed", "joint"):
            row: dict[str, Any] = {"corner": corner, "model": model_name}
            for unseen in (True, False):
                rng = np.random.default_rng(args.seed * 100 + int(unseen))
                positions, sizes = asked(corner, args.n, unseen, rng)
                generator = torch.Generator(device=device).manual_seed(args.seed * 100 + int(unseen))
                if model_name == "composed":
                    pos, siz = Leaf("position", 0.0), Leaf("size", 0.0)
                    trial = Trial(And((pos, siz)), {pos: positions, siz: sizes}, {})
                    images = sample_trial(trial, {"position": position, "size": size}, position, settings, generator,
                                          device, chain=chain)
                else:
                    leaf = Leaf("placement", 0.0)
                    trial = Trial(leaf, {leaf: np.concatenate([positions, sizes / size_schema_high], axis=1)}, {})
                    images = sample_trial(trial, {"placement": joint}, joint, settings, generator, device)
                label = "unseen" if unseen else "seen"
                row[label] = grade(images, positions, sizes, judge)
                save_grid(images[:32], out / f"{model_name}-{corner:g}-{label}.png", columns=8)
            row["training"] = joint_training if model_name == "joint" else {
                "seconds": composed_seconds, "parameters": composed_parameters,
                "iterations": {"position": position.version.hyperparameters["iterations"],
                               "size": size.version.hyperparameters["iterations"]}}
            rows.append(row)
            print(json.dumps(row), flush=True)
        registry.close()
        write(rows, args, argv)
    write(rows, args, argv)


def earlier_rows(args: argparse.Namespace, corners: list[float]) -> list[dict[str, Any]]:
    """Rows of corners measured by an earlier run with the same ``-n`` and ``--seed``, so corners can be run one
    at a time (each costs two trainings) and still land in one table."""
    path = RESULTS / "extrapolation.json"
    if not path.exists():
        return []
    earlier = json.loads(path.read_text())
    if earlier.get("n") != args.n or earlier.get("seed") != args.seed or earlier.get("budget", 1.0) != args.budget:
        return []
    return [row for row in earlier["rows"] if row["corner"] not in corners]


def write(rows: list[dict[str, Any]], args: argparse.Namespace, argv: Sequence[str] | None) -> None:
    command = " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])])
    document = {"rows": rows, "n": args.n, "seed": args.seed, "budget": args.budget, "command": command}
    (RESULTS / "extrapolation.json").write_text(json.dumps(document, indent=2) + "\n")
    rows = sorted(rows, key=lambda r: (r["corner"], r["model"]))
    lines = ["# Cross-product extrapolation: size of small objects where training showed only large ones", "",
             "| corner | model | size error, unseen | size error, seen | position error, unseen | looks real, unseen "
             "| parameters | training s |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        u, s = r["unseen"], r["seen"]
        lines.append(f"| {r['corner']:g} | {r['model']} | {u['size_error']:.4f} | {s['size_error']:.4f} | "
                     f"{u['position_error']:.4f} | {u['looks_real']:.3f} | {r['training']['parameters']:,} | "
                     f"{r['training']['seconds']:.0f} |")
    lines += ["", "Size error: mean absolute difference between the asked radius and the judge's reading (scene "
              f"units; sizes asked {SIZES['size_low']}-{large_size(BASE):.2f}). Target at corner 0.1: composed unseen "
              "<= half the joint model's and <= 1.5x the composed model's seen error.", "",
              f"Training budget: {args.budget:g} of the CLI's default iterations for position and size (the joint "
              "model trains as long as both together).", "", f"Command: `{command}`", ""]
    (RESULTS / "extrapolation.md").write_text("\n".join(lines))
    if len({r["corner"] for r in rows}) > 1:
        plot(rows, RESULTS / "extrapolation.png")


if __name__ == "__main__":
    main()
