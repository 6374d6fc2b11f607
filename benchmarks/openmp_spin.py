"""What the chain update on one thread is worth: chunk-thread start latency and step time, on and off.

Between two energy evaluations a sampler updates its chain (noise, step, clamp). Run on OpenMP's
intra-op threads, that update leaves libgomp's worker spinning for its next task (a few ms by default) on
one of the cores, and the next evaluation's second chunk thread waits for it. ``conceptlib.batched``
runs the update on one thread (``one_thread``) and lets the chunk threads write the gradient into place,
so no parallel region comes between two evaluations. This script times ``compose`` + ``langevin`` on the
speed benchmark's concepts with ``batched.UPDATE_ON_ONE_THREAD`` on and off, chains taking turns, and
records per step: the wall time, and how long after the evaluation began the last of its threads started.

Run ``.venv/bin/python benchmarks/openmp_spin.py``; results go to ``benchmarks/results/openmp_spin.md``
and ``.json``. Nothing here is asserted in tests.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from speed import CONCEPTS, SAMPLER, cd_concepts  # this script's own folder is first on sys.path

from conceptlib import batched, expr
from conceptlib.energy import Term, compose
from conceptlib.langevin import langevin
from conceptlib.plugins import PluginManager
from conceptlib.settings import LangevinConfig

ROOT = Path(__file__).resolve().parent


def timed_chain(energy: Callable[[torch.Tensor], torch.Tensor], x0: torch.Tensor, steps: int,
                on: bool) -> tuple[float, list[float]]:
    """Seconds per step of one chain, and how long after each evaluation began its last thread began (s)."""
    latencies: list[float] = []
    run_parallel = batched.run_parallel

    def instrumented(work: Callable[[slice], Any], chunks: Sequence[slice], device: torch.device) -> list[Any]:
        began = time.perf_counter()
        starts: dict[int, float] = {}

        def recorded(rows: slice) -> Any:
            starts.setdefault(threading.get_ident(), time.perf_counter() - began)
            return work(rows)

        out = run_parallel(recorded, chunks, device)
        latencies.append(max(starts.values()))  # the thread that began last
        return out

    batched.run_parallel, batched.UPDATE_ON_ONE_THREAD = instrumented, on
    try:
        config = LangevinConfig(steps=steps, step_size=SAMPLER.step_size, noise=SAMPLER.noise)
        started = time.perf_counter()
        langevin(energy, x0, config, torch.Generator().manual_seed(4))
        return (time.perf_counter() - started) / steps, latencies[1:]  # the first follows no update
    finally:
        batched.run_parallel, batched.UPDATE_ON_ONE_THREAD = run_parallel, True


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10, help="Langevin steps per timed chain.")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--concepts", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--out", type=Path, default=ROOT / "results")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    data: dict[str, Any] = {
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "threads": args.threads,
        "torch": torch.__version__, "load_average_at_start": Path("/proc/loadavg").read_text().split()[:3],
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset"), "settings": vars(args) | {"out": str(args.out)},
        "rows": [],
    }
    plugins = PluginManager(None)
    with tempfile.TemporaryDirectory() as tmp:
        _, concepts = cd_concepts(Path(tmp) / "registry.db", plugins, device)
        for batch in args.batches:
            for k in args.concepts:
                node = expr.parse(" & ".join(f"{c.version.concept}={v}" for c, (_, v) in zip(concepts, CONCEPTS[:k])))
                terms = {leaf: Term(c, c.condition(leaf.value, device))
                         for leaf, c in zip(expr.leaves(node), concepts[:k])}
                energy = compose(node, terms)
                x0 = torch.rand((batch, 3, 32, 32), generator=torch.Generator().manual_seed(3))
                step: dict[bool, list[float]] = {True: [], False: []}
                latency: dict[bool, list[float]] = {True: [], False: []}
                timed_chain(energy, x0, 2, True)  # warm-up
                for round_ in range(args.rounds):
                    for on in ((True, False) if round_ % 2 == 0 else (False, True)):
                        seconds, latencies = timed_chain(energy, x0, args.steps, on)
                        step[on].append(seconds)
                        latency[on] += latencies
                row = {"batch": batch, "concepts": k}
                for on, name in ((True, "one_thread"), (False, "openmp")):
                    row[name] = {"images_per_s": batch / (SAMPLER.steps * statistics.median(step[on])),
                                 "ms_per_step": 1000 * statistics.median(step[on]),
                                 "start_latency_ms": 1000 * statistics.median(latency[on])}
                row["speedup"] = row["one_thread"]["images_per_s"] / row["openmp"]["images_per_s"]
                print(json.dumps(row), flush=True)
                data["rows"].append(row)
    data["load_average_at_end"] = Path("/proc/loadavg").read_text().split()[:3]
    write_report(data, args.out)


def write_report(data: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "openmp_spin.json").write_text(json.dumps(data, indent=2) + "\n")
    s = data["settings"]
    lines = [
        "# The chain update on one thread: chunk-thread start latency and step time", "",
        f"Written by `benchmarks/openmp_spin.py` ({data['started']}), torch {data['torch']}, "
        f"{data['threads']} threads, OMP_WAIT_POLICY {data['omp_wait_policy']}; load average "
        f"{' / '.join(data['load_average_at_start'])} at start, {' / '.join(data['load_average_at_end'])} at end. "
        f"`compose` + `langevin` on the speed benchmark's `small` concepts (AND of the first k), chains of "
        f"{s['steps']} steps, {s['rounds']} rounds taking turns; medians. Start latency: how long after an "
        "evaluation began the last of its threads took its first chunk (the first evaluation of a chain, which "
        "follows no update, "
        "is left out). 'OpenMP update': `batched.UPDATE_ON_ONE_THREAD = False`.", "",
        "| batch | k | images/s, one-thread update | images/s, OpenMP update | speed-up "
        "| start latency ms (one thread / OpenMP) |",
        "|---|---|---|---|---|---|",
    ]
    for r in data["rows"]:
        lines.append(f"| {r['batch']} | {r['concepts']} | {r['one_thread']['images_per_s']:.2f} "
                     f"| {r['openmp']['images_per_s']:.2f} | **{r['speedup']:.2f}x** "
                     f"| {r['one_thread']['start_latency_ms']:.2f} / {r['openmp']['start_latency_ms']:.2f} |")
    (out / "openmp_spin.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
