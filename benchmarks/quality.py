"""The learning-quality benchmark: train the default concepts continually, then grade every protocol.

Run: ``.venv/bin/python benchmarks/quality.py [--split tune|report] [--registry PATH] [--train] [-n 500]``.
By default it grades the shipped ``registry.db`` on the ``report`` split. With ``--train`` it first builds
``--registry`` (a fresh file) with ``scripts/build_registry.sh``, the recipe of the shipped registry (the
paper's continual protocol: each concept on its own restricted data, each later one a residual with the
earlier ones frozen); then it runs ``concept eval``'s protocols on ``-n`` samples each with an independent
judge and a two-sample realism test, and writes ``benchmarks/results/quality.md`` and ``quality.json`` plus
sample and real grids under ``benchmarks/results/quality/``.

Splits: settings are tried on ``--split tune`` (seed 0, one half of the asked conditions; results go to
``benchmarks/results/tuning/``) and the figures quoted are ``--split report`` (seed 7, the other half).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from conceptlib.cli import option_defaults
from conceptlib.evaluation import PROTOCOLS, SPLITS, evaluate_registry
from conceptlib.plugins import PluginManager
from conceptlib.registry import Registry
from conceptlib.report import write_report, write_samples
from conceptlib.settings import SamplerSettings

RESULTS = Path(__file__).parent / "results"
CONCEPTS = ["position", "shape", "color", "size"]
ROOT = Path(__file__).resolve().parent.parent


def train(registry: Path) -> float:
    """The shipped registry's recipe into ``registry``; wall seconds for all of it."""
    started = time.perf_counter()
    subprocess.run(["bash", str(ROOT / "scripts" / "build_registry.sh"), str(registry)], check=True,
                   env={**os.environ, "CONCEPT": str(Path(sys.executable).parent / "concept")})
    return round(time.perf_counter() - started, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--registry", type=Path, default=ROOT / "registry.db")
    parser.add_argument("--train", action="store_true",
                        help="build --registry afresh first (scripts/build_registry.sh; by default that replaces "
                             "registry.db, as `make registry` does)")
    parser.add_argument("-n", type=int, default=500)
    parser.add_argument("--inference", type=int, default=200)
    parser.add_argument("--protocol", action="append", help="default: all")
    sampler = option_defaults("eval")  # the table grades what `concept eval` users get
    parser.add_argument("--levels", type=int, default=sampler["levels"])
    parser.add_argument("--corrector", default=sampler["corrector"])
    parser.add_argument("--corrector-steps", type=int, default=sampler["corrector_steps"])
    parser.add_argument("--corrector-step", type=float, default=sampler["corrector_step"])
    parser.add_argument("--eta", type=float, default=sampler["eta"])
    parser.add_argument("--sigma-min", type=float, default=sampler["sigma_min"])
    parser.add_argument("--guidance", type=float, default=sampler["guidance"])
    parser.add_argument("--classifier-guidance", type=float, default=sampler["classifier_guidance"])
    parser.add_argument("--prior-guidance", type=float, default=sampler["prior_guidance"])
    parser.add_argument("--classifier-boost-below", type=float, default=sampler["classifier_boost_below"])
    parser.add_argument("--classifier-boost-max", type=float, default=sampler["classifier_boost_max"])
    parser.add_argument("--classifier-temperature", type=float, default=sampler["classifier_temperature"])
    parser.add_argument("--split", choices=["tune", "report"], default="report",
                        help="tune: where settings are chosen (seed 0); report: the figures quoted (seed 7); "
                             "they ask disjoint halves of the conditions")
    parser.add_argument("--out", type=Path, help="grids [default: results/quality/, or results/tuning/NAME/]")
    parser.add_argument("--samples", type=Path,
                        help="where each row's images go as NPZ (benchmarks/regrade.py grades them again) "
                             "[default: results/REPORT-samples/SPLIT/ (REPORT: --report's last part, so another "
                             "registry's run never overwrites the shipped one's rows), not committed]")
    parser.add_argument("--report",
                        help="name of the copies written to benchmarks/results/ (NAME.md, NAME.json) "
                             "[default: quality, or tuning/quality-tune with --split tune]")
    args = parser.parse_args()
    split = SPLITS[args.split]
    args.report = args.report or ("quality" if args.split == "report" else "tuning/quality-tune")
    args.out = args.out or (RESULTS / "quality" if args.split == "report" else RESULTS / args.report)
    args.samples = args.samples or RESULTS / f"{Path(args.report).name}-samples" / args.split

    build_seconds = None
    if args.train:
        build_seconds = train(args.registry)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    registry = Registry.open(str(args.registry))
    settings = SamplerSettings.from_options(vars(args))
    names = args.protocol or list(PROTOCOLS)
    present = [c for c in CONCEPTS if c in {concept.name for concept in registry.concepts()}]  # a CD registry: two
    started = time.perf_counter()
    results: list = []
    extra: dict = {}
    # One protocol at a time, the report rewritten after each: a long run stopped part way keeps what it measured.
    for index, name in enumerate([*names, None]):
        last = name is None
        run = evaluate_registry(registry, PluginManager(), [] if last else [name], args.n, settings,
                                seed=split.seed, device=device, inference_n=args.inference if last else 0,
                                split=split)
        results += run.results
        for result in run.results:
            write_samples(result, args.samples)
        extra.update(run.extra)
        extra.update({
            "training_seconds": {c: registry.resolve(c).metrics.get("seconds") for c in present},
            "build_seconds": build_seconds,
            "versions": {c: {key: registry.resolve(c).to_json()[key]
                             for key in ("hyperparameters", "source_params", "lineage", "weights_sha256")}
                         for c in present},
            "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                        "device": str(device)},
            "evaluation_seconds": round(time.perf_counter() - started, 1),
            "protocols_done": f"{min(index + 1, len(names))} of {len(names)}" + ("" if last else ", running"),
            "command": " ".join(sys.argv),
        })
        markdown, data = write_report(results, extra, args.out)
        (RESULTS / args.report).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(markdown, RESULTS / f"{args.report}.md")
        shutil.copy(data, RESULTS / f"{args.report}.json")
    print(markdown.read_text())
    print(json.dumps(extra.get("position_inference", {}), indent=2))


if __name__ == "__main__":
    main()
