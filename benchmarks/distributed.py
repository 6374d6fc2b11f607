"""Training speed of one concept on 1 and 2 ranks (``torchrun``), against a plain single process.

Each run is the real command, ``torchrun --standalone --nproc-per-node R -m conceptlib add position
--source scenes ...`` (objective dsm, the default unet, ``--batch-size 48`` per rank, so R ranks see 48 R
images per iteration), on the CPU with gloo, into a temporary registry. Iterations/s is the registered
version's own figure (rank 0's training loop, start-up and dataset loading excluded). The load average
at start is recorded: on a shared machine it says how far the figures can be trusted.

Run ``.venv/bin/python benchmarks/distributed.py [--iterations 30]``; results go to
``benchmarks/results/distributed.md`` and ``distributed.json``. Nothing here is asserted in tests.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from conceptlib.registry import Registry

ROOT = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
BATCH = 48
SOURCE = ["--source", "scenes", "--param", "n=2000"]


def train(ranks: int | None, iterations: int, workdir: Path) -> dict[str, Any]:
    """One ``concept add``: ``ranks=None`` is a plain process, otherwise torchrun with that many ranks."""
    registry = workdir / f"registry-{ranks}.db"
    args = ["--registry", str(registry), "add", "position", *SOURCE, "--iterations", str(iterations),
            "--batch-size", str(BATCH), "--device", "cpu", "--checkpoint-every", str(iterations + 1)]
    if ranks is None:
        command = [str(BIN / "concept"), *args]
    else:
        command = [str(BIN / "torchrun"), "--standalone", "--nproc-per-node", str(ranks), "-m", "conceptlib", *args]
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env.update({"CONCEPTLIB_CHECKPOINTS": str(workdir / "checkpoints"), "OMP_NUM_THREADS": "1",
                "CONCEPTLIB_CACHE": str(workdir / "cache")})
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    (version,) = Registry.open(str(registry)).history("position")
    per_second = float(version.metrics["iterations_per_second"])
    world = ranks or 1
    return {"launcher": "plain process" if ranks is None else f"torchrun, {ranks} rank(s)", "ranks": world,
            "iterations": iterations, "batch_per_rank": BATCH,
            "iterations_per_second": round(per_second, 3),
            "images_per_second": round(per_second * BATCH * world, 1),
            "loop_seconds": version.metrics["seconds"], "command_seconds": round(wall, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=30)
    args = parser.parse_args()
    load = os.getloadavg()
    report: dict[str, Any] = {
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                    "load_average_at_start": [round(x, 2) for x in load]},
        "gpu": "not measured: no GPU machine was lent to this task",
        "runs": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        for ranks in (None, 1, 2):
            report["runs"].append(train(ranks, args.iterations, Path(tmp)))
    report["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    out = ROOT / "results"
    out.mkdir(exist_ok=True)
    (out / "distributed.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "distributed.md").write_text(markdown(report))
    print(markdown(report))


def markdown(report: dict[str, Any]) -> str:
    machine = report["machine"]
    lines = [
        "# Distributed training speed (benchmarks/distributed.py)",
        "",
        f"{report['when']}; {machine['cpus']} CPUs, {machine['platform']}, torch {machine['torch']}; load average "
        f"at start {machine['load_average_at_start']}, at end {machine['load_average_at_end']} (a shared machine).",
        f"concept add position, objective dsm, default unet, batch {BATCH} per rank, gloo on the CPU, "
        "1 thread per rank. GPU: " + report["gpu"] + ".",
        "",
        "| launcher | ranks | iterations | it/s | images/s | loop s | command s |",
        "|---|---|---|---|---|---|---|",
    ]
    for run in report["runs"]:
        lines.append(f"| {run['launcher']} | {run['ranks']} | {run['iterations']} | {run['iterations_per_second']} "
                     f"| {run['images_per_second']} | {run['loop_seconds']} | {run['command_seconds']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
