"""Cold start of the ``concept`` command: ``--help`` and ``list`` in fresh processes (target: 0.5 s each).

Each command runs as its own process, as a user types it, once untimed (so the files are in the page
cache) and then ``--runs`` times; the median wall time is reported. ``list`` runs on a temporary copy of
``--registry`` (default: a registry built here with four concepts, several versions, aliases and a
rollback, seeded weights that nobody loads), never on the original. ``list`` of a bare path reads a SQLite
registry with the stdlib alone (``conceptlib/listing.py``); the same registry given as a ``sqlite:///``
URL takes the SQLAlchemy path that every ``list`` took before, so both are timed side by side. The load
average is recorded: on a shared machine it says how far the figures can be trusted.

Run ``.venv/bin/python benchmarks/cold_start.py [--registry registry.db]``; results go to
``benchmarks/results/cold_start.md`` and ``cold_start.json``. Nothing here is asserted in tests.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from conceptlib.registry import NewVersion, Registry
from conceptlib.schema import Categorical, Continuous

ROOT = Path(__file__).resolve().parent
CONCEPT = Path(sys.executable).with_name("concept")
TARGET_S = 0.5
BUILT = "built by build_registry (4 concepts, 10 versions, 2 aliases, a rollback)"


def build_registry(path: Path) -> None:
    """Four concepts, 1-3 versions each, two aliases and one rollback: what ``list`` shows in a real registry."""
    registry = Registry.open(str(path), create=True)
    schemas = {"color": Categorical(("red", "green", "blue")), "position": Continuous(("x", "y"), spatial=True),
               "shape": Categorical(("circle", "square", "triangle")), "size": Continuous(("size",), 0.05, 0.3)}
    rng = np.random.default_rng(0)
    for name, schema in schemas.items():
        for seed in range(1 if name == "size" else 3):
            registry.add_version(NewVersion(
                concept=name, schema=schema, architecture="small", architecture_config={"channels": [8]},
                source="scenes", source_params={"n": 256}, attribute=name, dataset_hash="benchmark",
                hyperparameters={"image_size": 16}, seed=seed, metrics={}, description=f"the {name}",
            ), {"w": rng.standard_normal((8, 8)).astype(np.float32)})
    registry.set_alias("shape", "stable", 2)
    registry.set_alias("color", "champion", 1)
    registry.rollback("color")
    registry.close()


def median_seconds(args: list[str], runs: int) -> dict[str, Any]:
    """Median wall time of ``concept ARGS`` over ``runs`` fresh processes, after one untimed run."""
    subprocess.run([str(CONCEPT), *args], check=True, capture_output=True)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([str(CONCEPT), *args], check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return {"median_s": round(statistics.median(times), 3), "runs_s": [round(t, 3) for t in times]}


def measure(registry: Path, runs: int) -> dict[str, dict[str, Any]]:
    commands = {
        "concept --help": ["--help"],
        "concept list": ["--registry", str(registry), "list"],
        "concept list --json": ["--registry", str(registry), "list", "--json"],
        "concept list (SQLAlchemy path: sqlite:/// URL)": ["--registry", f"sqlite:///{registry}", "list"],
    }
    return {label: median_seconds(args, runs) for label, args in commands.items()}


def write_report(data: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "cold_start.json").write_text(json.dumps(data, indent=2) + "\n")
    m = data["machine"]
    lines = [
        "# CLI cold start (benchmarks/cold_start.py)", "",
        f"{m['started']}; {m['cores']} CPUs, {m['platform']}, Python {m['python']}; load average at start "
        f"{m['load_average_at_start']}, at end {m['load_average_at_end']} (a shared machine).",
        f"Registry: {data['registry']}. Median of {data['runs']} fresh processes after one untimed run; "
        f"target {TARGET_S} s.", "",
        "| command | median s | runs s | within target |", "|---|---|---|---|",
        *(f"| `{label}` | {r['median_s']:.3f} | {', '.join(f'{t:.3f}' for t in r['runs_s'])} "
          f"| {'yes' if r['median_s'] <= TARGET_S else 'no'} |" for label, r in data["commands"].items()),
        "",
    ]
    (out / "cold_start.md").write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--registry", type=Path, help="Registry file to copy and list [default: build one].")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "results")
    args = parser.parse_args()
    machine = {
        "cores": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
        "load_average_at_start": Path("/proc/loadavg").read_text().split()[:3],
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    with tempfile.TemporaryDirectory() as tmp:
        registry = Path(tmp) / "registry.db"
        if args.registry is None:
            build_registry(registry)
        else:
            shutil.copyfile(args.registry, registry)
        commands = measure(registry, args.runs)
    machine["load_average_at_end"] = Path("/proc/loadavg").read_text().split()[:3]
    described = f"a copy of {args.registry}" if args.registry else BUILT
    write_report({"machine": machine, "registry": described, "runs": args.runs, "commands": commands}, args.out)
    for label, result in commands.items():
        print(f"{label}: {result['median_s']:.3f} s")
    print(f"wrote {args.out / 'cold_start.md'} and cold_start.json")


if __name__ == "__main__":
    main()
