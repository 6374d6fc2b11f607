"""Continual learning on different data per stage: the paper's Table 2 protocol (3.3), through `concept add`.

Stage 1 learns position from one shape of one color only; stage 2 learns shape ``--with position`` on every
shape of that color; stage 3 learns color ``--with position --with shape`` on everything. After each stage
the registry's compositions are sampled and graded by an independent judge (trained on another seed of the
*full* data) on what earlier stages never saw: shapes stage 1 never drew, colors no earlier stage drew.

Variants (same data, same stages, each with the CLI's defaults):

- ``residual``: ``concept add`` as users run it (objective auto: a residual trained with the frozen
  concepts composed in its loss);
- ``independent`` (the ablation): the same stages without the frozen concepts in the loss, each concept a
  denoiser of its own stage's data (``--objective denoiser``, no ``--with``), composed with the prior
  counted once;
- ``classifier``: guidance concepts (``--objective classifier --with ...``), the default before residuals.

Run: ``.venv/bin/python benchmarks/continual.py [--source scenes|mujoco] [--split tune|report] [-n 200]``
(``make bench-continual`` runs both sources on the report split). ``tune`` trains with seed 0 and asks
conditions drawn from seed 0; ``report`` trains with seed 1 and asks other conditions (seed 1): settings are
chosen on ``tune`` only. Registries are kept (``benchmarks/results/continual-*-registry.db``, not committed)
and a stage already in one is not trained again unless ``--retrain``. Results:
``benchmarks/results/continual-SOURCE-SPLIT.md`` / ``.json`` and sample grids under
``benchmarks/results/continual/SOURCE-SPLIT/``.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from conceptlib.concepts import load_concept
from conceptlib.errors import ConceptError
from conceptlib.evaluation import JUDGE_SEED_OFFSET, PROTOCOLS, Trial, sample_trial
from conceptlib.expr import And, Leaf
from conceptlib.imaging import save_grid
from conceptlib.judge import load_or_train_judge
from conceptlib.plugins import PluginManager
from conceptlib.registry import Registry
from conceptlib.sampling import sampling_prior
from conceptlib.settings import SamplerSettings

RESULTS = Path(__file__).parent / "results"
SCORE = PROTOCOLS["position & shape & color"].score
"""Accuracy per asked attribute (position within 0.1) and all of them right at once, as ``concept eval``."""
SPLITS = {"tune": {"train_seed": 0, "sample_seed": 0}, "report": {"train_seed": 1, "sample_seed": 1}}
VARIANTS = ("residual", "independent", "classifier")
PAPER = {"stage 3": {"position_acc": 0.781, "shape_acc": 0.703, "color_acc": 0.521}}
"""Table 2 of the paper (its EBM, stage 3); its GAN: position 0.117, shape 0.476 at stage 2 (forgets)."""


@dataclass(frozen=True)
class Protocol:
    """One source's three stages: the data each sees and the values earlier stages never showed."""

    source: str
    base: Mapping[str, Any]
    stages: tuple[tuple[str, Mapping[str, Any]], ...]
    shapes: tuple[str, ...]
    colors: tuple[str, ...]
    first_shape: str
    first_color: str
    judge: Mapping[str, Any] = field(default_factory=dict)

    def params(self, stage: int) -> dict[str, Any]:
        return {**self.base, **self.stages[stage][1]}


SCENES = Protocol(
    source="scenes", base={"image_size": 32},
    stages=(("position", {"shapes": "square", "colors": "magenta"}), ("shape", {"colors": "magenta"}), ("color", {})),
    shapes=("circle", "square", "triangle"), colors=("red", "green", "blue", "yellow", "magenta", "cyan"),
    first_shape="square", first_color="magenta",
)
MUJOCO_COLORS = ("red", "green", "blue", "yellow", "magenta", "cyan", "orange", "purple")
MUJOCO = Protocol(
    source="mujoco", base={"image_size": 32, "colors": ",".join(MUJOCO_COLORS)},
    stages=(("position", {"shapes": "cube", "colors": "purple"}), ("shape", {"colors": "purple"}), ("color", {})),
    shapes=("sphere", "cylinder", "cube"), colors=MUJOCO_COLORS, first_shape="cube", first_color="purple",
)
PROTOCOLS_BY_SOURCE = {"scenes": SCENES, "mujoco": MUJOCO}
TARGETS = {
    "stage 1": {"position_acc": 0.95},
    "stage 2": {"position_acc": 0.95, "shape_acc": 0.90},
    "stage 3": {"position_acc": 0.95, "shape_acc": 0.90, "color_acc": 0.90, "all_right": 0.85},
}
LOOKS_REAL = 0.90
STAGE_SECONDS = 600


def train_stage(registry: Path, protocol: Protocol, stage: int, variant: str, seed: int, log: Path) -> None:
    """One stage through the real CLI with its defaults (the variant picks the objective)."""
    name, _ = protocol.stages[stage]
    command = [str(Path(sys.executable).parent / "concept"), "--registry", str(registry), "add", name,
               "--source", protocol.source, "--seed", str(seed), "--device", "auto"]
    command += [arg for key, value in protocol.params(stage).items() for arg in ("--param", f"{key}={value}")]
    if stage > 0 and variant != "independent":
        command += [arg for earlier, _ in protocol.stages[:stage] for arg in ("--with", earlier)]
    if stage > 0 and variant != "residual":
        command += ["--objective", "denoiser" if variant == "independent" else "classifier"]
    print("$", " ".join(command), flush=True)
    with log.open("a") as out:
        out.write("$ " + " ".join(command) + "\n")
        out.flush()
        subprocess.run(command, check=True, stdout=out, stderr=out)


def trial(protocol: Protocol, stage: int, n: int, rng: np.random.Generator) -> Trial:
    """Stage 1: position. Stage 2: position & shape, shapes stage 1 never saw. Stage 3: position & shape & color,
    colors no earlier stage saw (shapes: all)."""
    low, high = 0.2, 0.8
    position = rng.uniform(low, high, (n, 2)).astype(np.float32)
    leaves = [Leaf("position", 0.0)]
    conditions: dict[Leaf, np.ndarray] = {leaves[0]: position}
    targets: dict[str, np.ndarray] = {"position": position}
    if stage >= 1:
        allowed = [i for i, s in enumerate(protocol.shapes) if s != protocol.first_shape or stage == 2]
        shape = rng.choice(allowed, n)
        leaves.append(Leaf("shape", 0.0))
        conditions[leaves[-1]] = np.eye(len(protocol.shapes), dtype=np.float32)[shape]
        targets["shape"] = shape
    if stage >= 2:
        allowed = [i for i, c in enumerate(protocol.colors) if c != protocol.first_color]
        color = rng.choice(allowed, n)
        leaves.append(Leaf("color", 0.0))
        conditions[leaves[-1]] = np.eye(len(protocol.colors), dtype=np.float32)[color]
        targets["color"] = color
    node = leaves[0] if len(leaves) == 1 else And(tuple(leaves))
    return Trial(node, conditions, targets)


def sample_row(registry: Registry, plugins: PluginManager, protocol: Protocol, stage: int, n: int, seed: int,
               settings: SamplerSettings, device: torch.device) -> tuple[dict[str, Any], Any, Trial, np.ndarray, float]:
    """The stage's row: its concepts, their chain, the asked trial, ``n`` images and the seconds they took."""
    names = [name for name, _ in protocol.stages[: stage + 1]]
    concepts = {name: load_concept(registry, plugins, registry.resolve(name), device) for name in names}
    prior, chain = sampling_prior(registry, plugins, list(concepts.values()), device)
    asked = trial(protocol, stage, n, np.random.default_rng(seed * 1000 + stage))
    generator = torch.Generator(device=device).manual_seed(seed * 1000 + stage)
    started = time.perf_counter()
    images = sample_trial(asked, concepts, prior, settings, generator, device, chain=chain)
    return concepts, chain, asked, images, time.perf_counter() - started


def grade(registry: Registry, plugins: PluginManager, protocol: Protocol, stage: int, n: int, seed: int,
          judge: Any, settings: SamplerSettings, device: torch.device, grids: Path, label: str) -> dict[str, Any]:
    """Sample ``n`` images of the stage's row and judge them: accuracies, looks-real, seconds."""
    concepts, chain, asked, images, seconds = sample_row(registry, plugins, protocol, stage, n, seed, settings,
                                                         device)
    corrector_above = settings.annealed.for_composition(chain is not None).corrector_above
    predicted = judge.predict(images)
    metrics = SCORE(predicted, asked.targets)
    metrics["looks_real"] = float(np.mean(judge.realism(images)))
    for check in ("knn", "high_frequency"):  # which of the two realism checks the failures fail
        metrics[f"looks_real_{check}"] = float(np.mean(judge.realism(images, check)))
    save_grid(images[:64], grids / f"{label}.png", columns=8)
    return {"metrics": metrics, "n": n, "sampling_seconds": round(seconds, 1), "corrector_above": corrector_above,
            "versions": {name: str(c.version.ref) for name, c in concepts.items()},
            "training_seconds": {name: c.version.metrics.get("seconds") for name, c in concepts.items()},
            "objectives": {name: c.version.hyperparameters.get("objective") for name, c in concepts.items()}}


def met(row: Mapping[str, Any], stage_name: str) -> bool:
    metrics = row["metrics"]
    seconds = [s for s in row["training_seconds"].values() if s is not None]
    return (all(metrics.get(k, 0.0) >= v for k, v in TARGETS[stage_name].items())
            and metrics["looks_real"] >= LOOKS_REAL and all(s <= STAGE_SECONDS for s in seconds))


def markdown(results: Mapping[str, Any]) -> str:
    lines = [f"# Continual learning on different data per stage ({results['source']}, split {results['split']})",
             "", results["protocol"], "",
             "| stage | row | variant | position | shape | color | all right | looks real | train s (this stage) "
             "| correctors | met |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for stage_name, rows in results["stages"].items():
        for variant, row in rows.items():
            m = row["metrics"]
            concept = list(row["training_seconds"])[-1]
            cells = [f"{m[k]:.3f}" if k in m else "–" for k in ("position_acc", "shape_acc", "color_acc",
                                                                   "all_right", "looks_real")]
            lines.append(f"| {stage_name} | `{row['expression']}` | {variant} | " + " | ".join(cells)
                         + f" | {row['training_seconds'][concept]} | {_correctors(row.get('corrector_above'))} | "
                         f"{'yes' if met(row, stage_name) else 'no'} |")
    lines += ["", f"Targets: {json.dumps(TARGETS)}; looks real >= {LOOKS_REAL}; each stage <= {STAGE_SECONDS} s "
              "of training. Paper (Table 2, stage 3, its EBM): position 0.781, shape 0.703, color 0.521.", "",
              f"Sampler: `{json.dumps(results['sampler'])}`", "", f"Command: `{results['command']}`", ""]
    return "\n".join(lines)


def _correctors(above: float | None) -> str:
    """Where the row's sampler took Langevin corrector steps (residual chains: only above a noise level)."""
    return "every level" if not above else f"sigma >= {above:g}"


EXPRESSIONS = ("position", "position & shape", "position & shape & color")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", choices=sorted(PROTOCOLS_BY_SOURCE), default="scenes")
    parser.add_argument("--split", choices=sorted(SPLITS), default="tune")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("-n", type=int, default=200, help="samples per row")
    parser.add_argument("--retrain", action="store_true", help="train every stage again into fresh registries")
    parser.add_argument("--stages", type=int, default=3, help="how many stages to run (1-3)")
    args = parser.parse_args(argv)
    protocol = PROTOCOLS_BY_SOURCE[args.source]
    split = SPLITS[args.split]
    variants = [v for v in args.variants.split(",") if v]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        raise SystemExit(f"unknown variant(s): {', '.join(sorted(unknown))}")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    plugins = PluginManager()
    tag = f"{args.source}-{args.split}"
    grids = RESULTS / "continual" / tag
    log = RESULTS / f"continual-{tag}.log"
    RESULTS.mkdir(exist_ok=True)
    first = RESULTS / f"continual-{tag}-stage1-registry.db"
    settings = SamplerSettings()  # what `concept eval` users get: its options default to these
    judge_params = {**protocol.params(2), "seed": JUDGE_SEED_OFFSET + split["train_seed"]}
    judge, judge_report = load_or_train_judge(protocol.source, judge_params, device=device, plugins=plugins)
    results: dict[str, Any] = {
        "source": args.source, "split": args.split, "n": args.n,
        "protocol": "; ".join(f"stage {i + 1}: {name} on {json.dumps(dict(protocol.params(i)))}"
                              for i, (name, _) in enumerate(protocol.stages)),
        "sampler": {**settings.annealed.to_json(), **settings.guidance.to_json()},
        "judge": {"params": judge_params,
                  "held_out": judge_report.get("attributes", judge_report.get("held_out_test"))},
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                    "device": str(device)},
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "stages": earlier_rows(RESULTS / f"continual-{tag}.json", args.n, variants),
    }
    if args.retrain and first.exists():
        first.unlink()
    if not _has(first, protocol.stages[0][0]):
        train_stage(first, protocol, 0, "residual", split["train_seed"], log)
    for variant in variants:
        registry_path = RESULTS / f"continual-{tag}-{variant}-registry.db"
        if args.retrain or not registry_path.exists():
            registry_path.unlink(missing_ok=True)
            shutil.copy(first, registry_path)
        for stage in range(min(args.stages, 3)):
            stage_name = f"stage {stage + 1}"
            if stage > 0 and not _has(registry_path, protocol.stages[stage][0]):
                train_stage(registry_path, protocol, stage, variant, split["train_seed"], log)
            if stage == 0 and stage_name in results["stages"]:  # one stage-1 registry behind every variant
                results["stages"][stage_name][variant] = next(iter(results["stages"][stage_name].values()))
                continue
            registry = Registry.open(str(registry_path))
            try:
                row = grade(registry, plugins, protocol, stage, args.n, split["sample_seed"], judge, settings,
                            device, grids, f"{variant}-stage{stage + 1}")
            finally:
                registry.close()
            row["expression"] = EXPRESSIONS[stage]
            results["stages"].setdefault(stage_name, {})[variant] = row
            print(stage_name, variant, json.dumps(row["metrics"]), flush=True)
            (RESULTS / f"continual-{tag}.json").write_text(json.dumps(results, indent=2) + "\n")
            (RESULTS / f"continual-{tag}.md").write_text(markdown(results))
    print(markdown(results))


def earlier_rows(path: Path, n: int, variants: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Rows of variants an earlier run graded with the same ``-n``, so that a variant can be graded again
    (or trained later) on its own and still land in one table beside the others."""
    if not path.exists():
        return {}
    earlier = json.loads(path.read_text())
    if earlier.get("n") != n:
        return {}
    return {stage: kept for stage, rows in earlier["stages"].items()
            if (kept := {variant: row for variant, row in rows.items() if variant not in variants})}


def _has(registry_path: Path, name: str) -> bool:
    if not registry_path.exists():
        return False
    registry = Registry.open(str(registry_path))
    try:
        registry.resolve(name)
        return True
    except ConceptError:
        return False
    finally:
        registry.close()


if __name__ == "__main__":
    main()
