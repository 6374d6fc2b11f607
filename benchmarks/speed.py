"""Speed of composed sampling and training, side by side with ebmkit and torchebm, against the machine's peak.

Run ``make bench-speed``: it builds ``benchmarks/.venv-peers`` (torch 2.13.0 CPU, ebmkit 0.16.0, torchebm
0.8.9 and this project, none of them project dependencies) and runs this script there. One run measures,
on one machine and thread count:

1. the same chain (same energy, start and noise) under conceptlib, ebmkit and torchebm: max abs difference;
2. composed sampling, images/s and peak memory: 1, 2, 3, 5 concepts, K Langevin steps, batch 64 and 256,
   each library (and conceptlib with malloc left as it is) in a process of its own;
3. training iterations/s (contrastive divergence, batch 64) with 0, 2 and 4 frozen concepts;
4. FLOPs of one Langevin step of each network and the FLOP/s achieved, against a measured matmul/conv peak;
5. the techniques tried, each measured on its own;
6. noise-conditioned composition (prior + classifier concepts, the annealed sampler of ``concept compose``);
7. ``concept compose`` on the shipped ``registry.db`` (trained concepts, the CLI's default sampler), 1-3 concepts;
8. ``concept --help`` and ``concept list`` cold start.

Concepts are registered in a temporary registry with seeded random weights (the zero-initialised layers
drawn small and non-zero, so energies and gradients are not trivially zero) and loaded by ``load_concept``,
as ``concept compose`` loads them: speed does not depend on what the weights learned. The peers get the
same weights in the network as the architecture builds it, composed the way their documentation shows.
Results go to ``benchmarks/results/speed.md`` and ``speed.json``; nothing here is asserted in tests.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import itertools
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from functools import partial
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.flop_counter import FlopCounterMode

from conceptlib import batched, expr
from conceptlib.annealed import annealed_sample, energy_scores, evaluations
from conceptlib.concepts import LoadedConcept, load_concept, state_to_numpy
from conceptlib.energy import Term, compose, compose_noisy
from conceptlib.langevin import langevin
from conceptlib.memory import MALLOC_ENV
from conceptlib.plugins import PluginManager
from conceptlib.registry import NewVersion, Registry
from conceptlib.settings import AnnealedConfig, CdConfig, LangevinConfig, SamplerSettings
from conceptlib.training import train_concept

ROOT = Path(__file__).resolve().parent
# (attribute, value in the expression): concept k of a k-concept expression is the k-th of these.
CONCEPTS = [("position", "(0.3,0.7)"), ("color", "red"), ("shape", "square"), ("size", "0.12"), ("color", "blue")]
SAMPLER = LangevinConfig(steps=40, step_size=100.0, noise=0.005)


# ----------------------------------------------------------------------------------------------- setup
def machine(device: torch.device) -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    info = {
        "device": "cuda" if device.type == "cuda" else "cpu",
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU: {cpu}",
        "cpu": cpu, "cores": os.cpu_count(), "threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (no GPU lent to this run)",
        "torch": torch.__version__, "python": platform.python_version(),
        "load_average_at_start": Path("/proc/loadavg").read_text().split()[:3],
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    for package in ("ebmkit", "torchebm"):
        info[package] = metadata.version(package)
    return info


def perturb(model: nn.Module, generator: torch.Generator) -> nn.Module:
    """Give zero-initialised layers (the output layer, FiLM) small random values: non-trivial energies."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=generator) * (2e-4 if name.startswith("out") else 0.05))
    return model


def make_registry(path: Path, plugins: PluginManager, image_size: int = 32) -> Registry:
    """A registry with the benchmark's concepts: five cd concepts (small) and a dsm prior plus classifiers."""
    registry = Registry.open(f"sqlite:///{path}", create=True)
    schemas = plugins.source("scenes").attributes({})
    generator = torch.Generator().manual_seed(0)
    wanted = [(f"cd_{i}", attribute, "small") for i, (attribute, _) in enumerate(CONCEPTS)]
    wanted += [("dsm_position", "position", "unet"), ("cls_color", "color", "classifier"),
               ("cls_shape", "shape", "classifier")]
    for name, attribute, arch_name in wanted:
        architecture = plugins.architecture(arch_name)
        torch.manual_seed(len(name) + sum(map(ord, name)))
        model = perturb(architecture.build(schemas[attribute], image_size, architecture.config()), generator)
        registry.add_version(NewVersion(
            concept=name, schema=schemas[attribute], architecture=arch_name, architecture_config=architecture.config(),
            source="scenes", source_params={}, attribute=attribute, dataset_hash="benchmark",
            hyperparameters={"image_size": image_size}, seed=0, metrics={},
        ), state_to_numpy(model))
    return registry


def cd_concepts(path: Path, plugins: PluginManager,
                device: torch.device) -> tuple[Registry, list[LoadedConcept]]:
    """The benchmark's registry at ``path`` and its five cd concepts, loaded as ``concept compose`` loads them."""
    registry = make_registry(path, plugins)
    return registry, [load_concept(registry, plugins, registry.resolve(f"cd_{i}", None), device) for i in range(5)]


def plain_copy(concept: LoadedConcept) -> nn.Module:
    """The network as its architecture builds it (contiguous layout), same weights: what a peer is handed.

    Its weights are marked trainable so that FiLM blocks take their plain path (frozen ones fold FiLM
    into the convolutions); only input gradients are asked for, so no weight gradient is computed.
    """
    return copy.deepcopy(concept.model).to(memory_format=torch.contiguous_format).requires_grad_(True)


class Bound(nn.Module):
    """``x -> model(x, c)``: a conditional network as a peer library's unconditional energy."""

    def __init__(self, model: nn.Module, condition: torch.Tensor) -> None:
        super().__init__()
        self.model, self.condition = model, condition

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x, self.condition.expand(x.shape[0], -1))


def torchebm_sum(parts: Sequence[nn.Module]) -> nn.Module:
    """torchebm needs its BaseModel; a sum of experts is written in ``forward`` (it has no composition)."""
    from torchebm.core import BaseModel

    class Sum(BaseModel):
        def __init__(self) -> None:
            super().__init__()
            self.parts = nn.ModuleList(parts)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.stack([p(x) for p in self.parts]).sum(0)

    return Sum()


class Samplers:
    """The same composed energy (AND of the first k concepts) and Langevin rule under the three libraries."""

    def __init__(self, concepts: Sequence[LoadedConcept], values: Sequence[str], device: torch.device,
                 steps: int) -> None:
        self.device, self.steps = device, steps
        self.node = expr.parse(" & ".join(f"{c.version.concept}={v}" for c, v in zip(concepts, values)))
        leaves = expr.leaves(self.node)
        self.conditions = [c.condition(leaf.value, device) for c, leaf in zip(concepts, leaves)]
        self.terms = {leaf: Term(c, cond) for leaf, c, cond in zip(leaves, concepts, self.conditions)}
        self.plain_terms = {leaf: Term(LoadedConcept(c.version, plain_copy(c)), cond, fast=False)
                            for leaf, c, cond in zip(leaves, concepts, self.conditions)}
        self.bound = [Bound(plain_copy(c), cond) for c, cond in zip(concepts, self.conditions)]

    def run(self, library: str, x0: torch.Tensor, seed: int) -> torch.Tensor:
        generator = torch.Generator(device=self.device).manual_seed(seed)
        config = LangevinConfig(steps=self.steps, step_size=SAMPLER.step_size, noise=SAMPLER.noise)
        if library == "conceptlib":
            return langevin(compose(self.node, self.terms), x0, config, generator)
        if library == "conceptlib-plain":
            return langevin(compose(self.node, self.plain_terms), x0, config, generator)
        if library == "ebmkit":
            import ebm

            torch.manual_seed(seed)  # ebmkit draws its noise from the global generator
            energy = ebm.SumEnergy(*self.bound)
            sampler = ebm.LangevinDynamics(step_size=SAMPLER.step_size, steps=self.steps,
                                           noise_scale=SAMPLER.noise, clamp=(0.0, 1.0))
            return sampler.sample(energy, x0)
        if library == "torchebm":
            from torchebm.samplers import LangevinDynamics

            model = torchebm_sum(self.bound).to(self.device)
            # torchebm's noise is noise_scale * sqrt(2 * step_size)
            sampler = LangevinDynamics(model, step_size=SAMPLER.step_size,
                                       noise_scale=SAMPLER.noise / math.sqrt(2 * SAMPLER.step_size),
                                       clamp=(0.0, 1.0)).to(self.device)
            return sampler.sample(x=x0.clone(), n_steps=self.steps, generator=generator)
        raise ValueError(library)

    def energy(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return compose(self.node, self.plain_terms)(x)


# -------------------------------------------------------------------------------------------- measuring
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory(run: Callable[[], Any], device: torch.device) -> int:
    """Bytes the run needs at its peak above what was in use before it (also its warm-up).

    CPU: freed heap memory is first handed back to the system (glibc ``malloc_trim``), then the process's
    peak resident size is reset (``/proc/self/clear_refs``) and read after the run (VmHWM).
    """
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        baseline = torch.cuda.memory_allocated(device)
        run()
        sync(device)
        return torch.cuda.max_memory_allocated(device) - baseline
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")
    baseline = _status_kib("VmRSS")
    run()
    return (_status_kib("VmHWM") - baseline) * 1024


def _status_kib(key: str) -> int:
    line = next(row for row in Path("/proc/self/status").read_text().splitlines() if row.startswith(key))
    return int(line.split()[1])


def timed(fn: Callable[[], Any], device: torch.device, repeats: int = 1) -> float:
    """Best wall time of ``repeats`` calls."""
    best = math.inf
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def mib(n: int) -> float:
    return round(n / 2**20, 1)


def interleaved(runs: dict[str, Callable[[], Any]], rounds: int, device: torch.device) -> dict[str, dict[str, float]]:
    """Each run once to warm up (and measure its peak memory), then ``rounds`` turns of all runs in order,
    so that load from other processes falls on all alike: median and best seconds, and peak MiB of each."""
    peaks = {name: peak_memory(run, device) for name, run in runs.items()}
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            seconds[name].append(timed(run, device))
    return {name: {"median_s": statistics.median(t), "best_s": min(t), "peak_mib": mib(peaks[name])}
            for name, t in seconds.items()}


def one_thread(run: Callable[[], Any]) -> Callable[[], Any]:
    def single() -> Any:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return run()
        finally:
            torch.set_num_threads(threads)

    return single


# --------------------------------------------------------------------------------------------- sections
LIBRARIES = ("conceptlib", "ebmkit", "torchebm")
UNTUNED = "conceptlib, malloc as is"
"""conceptlib with ``CONCEPTLIB_MALLOC=system``: what keeping freed memory for reuse is worth."""
TIMED = (LIBRARIES[0], UNTUNED, *LIBRARIES[1:])
SECTIONS = ("chain", "sampling", "training", "flops", "techniques", "noisy", "shipped", "cold")
SHIPPED = ROOT.parent / "registry.db"
SHIPPED_EXPRESSIONS = ("position=(0.3,0.7)", "position=(0.7,0.3) & color=blue",
                       "position=(0.3,0.3) & shape=square & color=green")


def same_chain(concepts: Sequence[LoadedConcept], device: torch.device, n: int, steps: int) -> dict[str, Any]:
    """One chain from one start and one noise stream under every library; differences to plain conceptlib."""
    samplers = Samplers(concepts, [v for _, v in CONCEPTS[: len(concepts)]], device, steps)
    x0 = torch.rand((n, 3, 32, 32), generator=torch.Generator(device=device).manual_seed(1), device=device)
    reference = samplers.run("conceptlib-plain", x0, seed=2)
    result: dict[str, Any] = {"concepts": len(concepts), "batch": n, "steps": steps,
                              "mean_abs_move": float((reference - x0).abs().mean()),
                              "energy_plain": float(samplers.energy(reference).mean())}
    for library in LIBRARIES:
        x = samplers.run(library, x0, seed=2)
        result[library] = {"max_abs_diff": float((x - reference).abs().max()),
                           "mean_energy": float(samplers.energy(x).mean())}
    return result


class Worker:
    """One library's sampling chains in a process of its own, started as a user of that library starts one:
    malloc as that library leaves it (conceptlib tunes it on first use, ``conceptlib.memory``; a peer
    measured in the same process would inherit that), and its own peak resident memory."""

    def __init__(self, library: str, device: torch.device, threads: int) -> None:
        self.library = library
        env = {**os.environ, **({MALLOC_ENV: "system"} if library == UNTUNED else {})}
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--worker", library, "--device", str(device), "--threads", str(threads)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.ask(op="ready")

    def ask(self, **request: Any) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the {self.library} worker stopped (exit {self.process.wait()}); see its stderr above")
        return json.loads(line)

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait()


def serve(library: str, device: torch.device) -> None:
    """The worker's side: requests as JSON lines on stdin, replies on the original stdout (prints go to stderr)."""
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    sys.stdout = sys.stderr
    name = "conceptlib" if library == UNTUNED else library
    with tempfile.TemporaryDirectory() as tmp:
        plugins = PluginManager(None)
        _, concepts = cd_concepts(Path(tmp) / "registry.db", plugins, device)
        chains: dict[tuple[int, int, int], Samplers] = {}
        for line in sys.stdin:
            request = json.loads(line)
            reply: dict[str, Any] = {}
            if request["op"] != "ready":
                batch, k, steps = request["batch"], request["k"], request["steps"]
                if (batch, k, steps) not in chains:
                    chains[batch, k, steps] = Samplers(concepts[:k], [v for _, v in CONCEPTS[:k]], device, steps)
                x0 = torch.rand((batch, 3, 32, 32), generator=torch.Generator(device=device).manual_seed(3),
                                device=device)
                run = partial(chains[batch, k, steps].run, name, x0, seed=4)
                if request["op"] == "peak":
                    run()  # warm: one-time allocations (threads, kernels, constants) are not a chain's peak
                    reply = {"bytes": peak_memory(run, device)}
                else:
                    reply = {"seconds": timed(run, device)}
            replies.write(json.dumps(reply) + "\n")
            replies.flush()


def sampling(device: torch.device, batches: Sequence[int], counts: Sequence[int], timed_steps: int, rounds: int,
             log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Images/s at K = SAMPLER.steps from the median time per step over ``rounds`` short chains per library,
    each library in its own process (:class:`Worker`).

    Libraries take turns round by round, so a load from other processes falls on all of them alike; a
    Langevin step costs the same at every step, so K steps take K times one step.
    """
    rows = []
    per_round = max(1, timed_steps // rounds)
    workers = {library: Worker(library, device, torch.get_num_threads()) for library in TIMED}
    try:
        for batch in batches:
            for k in counts:
                peaks = {lib: w.ask(op="peak", batch=batch, k=k, steps=1)["bytes"] for lib, w in workers.items()}
                per_step: dict[str, list[float]] = {library: [] for library in TIMED}
                for _ in range(rounds):
                    for library, worker in workers.items():
                        seconds = worker.ask(op="time", batch=batch, k=k, steps=per_round)["seconds"]
                        per_step[library].append(seconds / per_round)
                row: dict[str, Any] = {"batch": batch, "concepts": k, "steps": SAMPLER.steps,
                                       "timed_steps": per_round * rounds}
                for library in TIMED:
                    step = statistics.median(per_step[library])
                    row[library] = {"images_per_s": batch / (SAMPLER.steps * step),
                                    "best_images_per_s": batch / (SAMPLER.steps * min(per_step[library])),
                                    "seconds_per_step": step, "peak_mib": mib(peaks[library])}
                for peer in ("ebmkit", "torchebm"):
                    row[f"speedup_vs_{peer}"] = row["conceptlib"]["images_per_s"] / row[peer]["images_per_s"]
                log(f"sampling B={batch} k={k}: " + ", ".join(f"{lib} {row[lib]['images_per_s']:.2f}" for lib in TIMED))
                rows.append(row)
    finally:
        for worker in workers.values():
            worker.close()
    return rows


def training(plugins: PluginManager, concepts: Sequence[LoadedConcept], device: torch.device,
             frozen_counts: Sequence[int], iterations: int, langevin_steps: int,
             log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Contrastive divergence of a new position concept against 0, 2, 4 frozen ones (as loaded)."""
    source = plugins.source("scenes")
    dataset = source.load(source.resolve_params({"n": 512, "image_size": 32, "seed": 5}))
    architecture = plugins.architecture("small")
    rows = []
    for k in frozen_counts:
        frozen = list(concepts[1 : 1 + k])
        stamps: list[float] = []  # one per iteration; the first interval includes warming up
        config = CdConfig(iterations=iterations, batch_size=64, seed=0, langevin=LangevinConfig(steps=langevin_steps))
        peak = peak_memory(partial(
            train_concept, architecture, architecture.config(), dataset, "position", frozen, config, device,
            on_iteration=lambda i, record, stamps=stamps: stamps.append(time.perf_counter())), device)
        per_iteration = statistics.median(b - a for a, b in itertools.pairwise(stamps))
        rows.append({"frozen": k, "batch": 64, "langevin_steps": langevin_steps,
                     "iterations_per_s": 1 / per_iteration, "peak_mib": mib(peak)})
        log(f"training frozen={k}: {1 / per_iteration:.3f} it/s")
    return rows


def peak_flops(device: torch.device) -> dict[str, float]:
    """fp32 matmul and convolution throughput at sizes large enough to run at the machine's best."""
    a = torch.randn(4096, 4096, device=device)
    b = torch.randn(4096, 4096, device=device)
    matmul = timed(lambda: a @ b, device, repeats=3)
    x = torch.randn(32, 256, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
    w = torch.randn(256, 256, 3, 3, device=device).contiguous(memory_format=torch.channels_last)
    conv = timed(lambda: F.conv2d(x, w, padding=1), device, repeats=3)
    return {"matmul_gflops": 2 * 4096**3 / matmul / 1e9, "conv_gflops": 2 * 32 * 256 * 256 * 9 * 32 * 32 / conv / 1e9}


def step_flops(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> int:
    """FLOPs of one Langevin step's network work: the forward and the input gradient."""
    leaf = x.clone().requires_grad_(True)
    with FlopCounterMode(display=False) as counter:
        z = leaf * 1  # FlopCounterMode cannot watch autograd.grad on a leaf
        torch.autograd.grad(fn(z).sum(), z)  # the input gradient only, as a sampler asks
    return counter.get_total_flops()


def flops(registry: Registry, plugins: PluginManager, device: torch.device, batch: int,
          peak: dict[str, float], rounds: int) -> list[dict[str, Any]]:
    """Achieved FLOP/s of one Langevin step per network, plain and through conceptlib's sampling path."""
    rows = []
    x = torch.rand((batch, 3, 32, 32), generator=torch.Generator(device=device).manual_seed(6), device=device)
    sigma = torch.full((batch,), 0.1, device=device)
    best_peak = max(peak.values())
    for name, label in (("cd_0", "small (cd, position)"), ("cd_1", "small (cd, color)"),
                        ("dsm_position", "unet (dsm prior)"), ("cls_color", "classifier")):
        concept = load_concept(registry, plugins, registry.resolve(name, None), device)
        condition = concept.condition({"cd_0": (0.3, 0.7), "dsm_position": (0.3, 0.7)}.get(name, "red"), device)
        plain = plain_copy(concept)
        args = (sigma,) if name.startswith(("dsm", "cls")) else ()
        term = Term(concept, condition)

        def fast(z: torch.Tensor, term: Term = term, args: tuple = args) -> torch.Tensor:
            return term(z) if not args else term._model(z, term._conditions(z.shape[0]), *args)

        def reference(z: torch.Tensor, plain: nn.Module = plain, c: torch.Tensor = condition,
                      args: tuple = args) -> torch.Tensor:
            return plain(z, c.expand(z.shape[0], -1), *args)

        def step(fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
            z = x.detach().requires_grad_(True)
            torch.autograd.grad(fn(z).sum(), z)

        count = step_flops(reference, x)
        times = interleaved({"plain": partial(step, reference), "conceptlib": partial(step, fast)}, rounds, device)
        row: dict[str, Any] = {"network": label, "batch": batch, "gflop_per_step": count / 1e9}
        for path, t in times.items():
            gflops = count / t["median_s"] / 1e9
            best = count / t["best_s"] / 1e9
            row[path] = {"gflops": gflops, "of_peak": gflops / best_peak, "best_gflops": best,
                         "best_of_peak": best / best_peak}
        rows.append(row)
    return rows


def techniques(concepts: Sequence[LoadedConcept], device: torch.device, batches: Sequence[int], steps: int,
               rounds: int, log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Each technique on its own: 3 concepts, images/s at K = SAMPLER.steps from the median of ``rounds``
    chains of ``steps`` steps, variants taking turns."""
    rows = []
    k = 3
    values = [v for _, v in CONCEPTS[:k]]
    node = expr.parse(" & ".join(f"{c.version.concept}={v}" for c, v in zip(concepts[:k], values)))
    leaves = expr.leaves(node)
    conditions = [c.condition(leaf.value, device) for c, leaf in zip(concepts[:k], leaves)]

    def terms(layout: torch.memory_format, fast: bool, trainable: bool = False) -> dict[expr.Leaf, Term]:
        out = {}
        for leaf, c, cond in zip(leaves, concepts[:k], conditions):
            model = plain_copy(c).to(memory_format=layout).requires_grad_(trainable)
            out[leaf] = Term(LoadedConcept(c.version, model), cond, fast=fast)
        return out

    def fast() -> Callable[[torch.Tensor], torch.Tensor]:
        return compose(node, terms(torch.channels_last, True))

    variants: dict[str, Callable[[], Callable[[torch.Tensor], torch.Tensor]]] = {
        "plain network (what the peers run)": lambda: compose(node, terms(torch.contiguous_format, False)),
        "parameters requiring grad": lambda: compose(node, terms(torch.contiguous_format, False, True)),
        "+ channels-last weights": lambda: compose(node, terms(torch.channels_last, False)),
        "+ for_condition (FiLM folded, constants once)": lambda: _patched(fast(), evaluate=_plain_call),
        "+ chunks of 32, one after another (intra-op threads)": lambda: _patched(fast(), run_parallel=_serial),
        "stacked: shared first conv + grouped convs": lambda: _stacked(terms(torch.channels_last, True), leaves),
        "torch.func.vmap over stacked weights (3 color concepts)": lambda: _vmapped(concepts, device),
    }
    variants["+ chunks of 32 in parallel, one per thread, one pass per concept"] = lambda: compose(
        node, terms(torch.channels_last, True), fuse=False)
    for chunk in (16, 32, 64):
        variants[f"+ chunks of {chunk} in parallel, one per thread, whole expression per chunk"] = partial(
            lambda c: _patched(fast(), CPU_CHUNK=c), chunk)
    # the last two techniques are off in every row above them
    variants[HAND_WRITTEN] = fast
    variants[ONE_THREAD_UPDATE] = fast
    variants["conceptlib, 1 thread"] = fast
    for batch in batches:
        x0 = torch.rand((batch, 3, 32, 32), generator=torch.Generator(device=device).manual_seed(7), device=device)
        config = LangevinConfig(steps=steps, step_size=SAMPLER.step_size, noise=SAMPLER.noise)
        runs = {name: partial(_chain, build(), x0, config, device, hand_written=name in LATEST,
                              one_thread_update=name in LATEST[1:]) for name, build in variants.items()}
        runs["conceptlib, 1 thread"] = one_thread(runs["conceptlib, 1 thread"])
        times = interleaved(runs, rounds, device)
        reference = times["plain network (what the peers run)"]["median_s"]
        for name, t in times.items():
            images = batch / (t["median_s"] * SAMPLER.steps / steps)
            rows.append({"technique": name, "batch": batch, "images_per_s": images,
                         "vs_plain": reference / t["median_s"], "peak_mib": t["peak_mib"]})
            if name in PREVIOUS:
                rows[-1]["vs_previous"] = times[PREVIOUS[name]]["median_s"] / t["median_s"]
            log(f"technique B={batch} {name}: {images:.2f} img/s ({reference / t['median_s']:.2f}x)")
    return rows


HAND_WRITTEN = "+ hand-written input gradient (chunks of 32, whole expression)"
ONE_THREAD_UPDATE = "+ chain update on one thread between evaluations (conceptlib)"
LATEST = (HAND_WRITTEN, ONE_THREAD_UPDATE, "conceptlib, 1 thread")
PREVIOUS = {HAND_WRITTEN: "+ chunks of 32 in parallel, one per thread, whole expression per chunk",
            ONE_THREAD_UPDATE: HAND_WRITTEN}


def _chain(energy: Callable[[torch.Tensor], torch.Tensor], x0: torch.Tensor, config: LangevinConfig,
           device: torch.device, hand_written: bool, one_thread_update: bool) -> torch.Tensor:
    """One chain with the specialised small nets' hand-written gradient and the one-thread update on or off."""
    from conceptlib_nets.small import SharedConditionEnergy

    SharedConditionEnergy.hand_written_gradient = hand_written
    batched.UPDATE_ON_ONE_THREAD = one_thread_update
    try:
        return langevin(energy, x0, config, torch.Generator(device=device).manual_seed(8))
    finally:
        SharedConditionEnergy.hand_written_gradient = batched.UPDATE_ON_ONE_THREAD = True


def _patched(energy: Callable[[torch.Tensor], torch.Tensor], **settings: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """``energy`` with some of :mod:`conceptlib.batched` replaced while it runs (to measure one technique)."""

    def run(x: torch.Tensor) -> torch.Tensor:
        saved = {name: getattr(batched, name) for name in settings}
        for name, value in settings.items():
            setattr(batched, name, value)
        try:
            return energy(x)
        finally:
            for name, value in saved.items():
                setattr(batched, name, value)

    return run


def _plain_call(fn: Callable[..., torch.Tensor], x: torch.Tensor, *per_sample: torch.Tensor) -> torch.Tensor:
    return fn(x, *per_sample)


def _serial(work: Callable[[slice], Any], chunks: Sequence[slice], device: torch.device) -> list[Any]:
    return [work(rows) for rows in chunks]


def _stacked(terms: dict[expr.Leaf, Term], leaves: Sequence[expr.Leaf]) -> Callable[[torch.Tensor], torch.Tensor]:
    """The concepts' specialised networks as one: the first convolution (shared input) with all their
    output channels, then grouped convolutions (one group per concept)."""
    parts = [terms[leaf].specialised for leaf in leaves]
    k = len(parts)
    first_bias = torch.cat([p.biases[0] for p in parts])  # type: ignore[union-attr]
    bump = next((p.bump for p in parts if p.bump is not None), None)  # type: ignore[union-attr]
    width = 4 if bump is not None else 3  # a bump channel's weights are zero for concepts without one
    first = torch.cat([F.pad(p.weights[0], (0, 0, 0, 0, 0, width - p.weights[0].shape[1]))  # type: ignore[union-attr]
                       for p in parts]).contiguous(memory_format=torch.channels_last)
    layers = [(torch.cat([p.weights[i] for p in parts]).contiguous(memory_format=torch.channels_last),  # type: ignore[union-attr]
               torch.cat([p.biases[i] for p in parts]), parts[0].strides[i]) for i in range(1, len(parts[0].weights))]  # type: ignore[union-attr]
    out = torch.stack([p.out for p in parts])  # type: ignore[union-attr]
    out_bias = torch.cat([p.out_bias for p in parts])  # type: ignore[union-attr]

    def energy(x: torch.Tensor) -> torch.Tensor:
        h = F.pad(x.contiguous(memory_format=torch.channels_last), (1, 1, 1, 1), value=0.5)
        if bump is not None:
            h = torch.cat([h, bump.expand(h.shape[0], -1, -1, -1)], dim=1)
        h = F.silu(F.conv2d(h, first, first_bias))
        for weight, bias, stride in layers:
            h = F.silu(F.conv2d(h, weight, bias, stride=stride, padding=1, groups=k))
        b, c, height, width = h.shape  # each concept's output weights read its channels in (H, W, C) order
        h = h.permute(0, 2, 3, 1).reshape(b, height, width, k, c // k).permute(0, 3, 1, 2, 4).reshape(b, k, -1)
        return (torch.einsum("bkn,kn->bk", h, out) + out_bias).sum(1)

    return energy


def _vmapped(concepts: Sequence[LoadedConcept], device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """Three networks of one architecture and schema (color) evaluated by torch.func.vmap over stacked weights."""
    from torch.func import functional_call, stack_module_state, vmap

    models = [plain_copy(concepts[i]).to(memory_format=torch.channels_last) for i in (1, 4, 1)]
    params, buffers = stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")
    condition = torch.eye(6, device=device)[:3]

    def one(p: dict, b: dict, c: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return functional_call(base, (p, b), (x, c.expand(x.shape[0], -1)))

    return lambda x: vmap(one, in_dims=(0, 0, 0, None))(params, buffers, condition[:, None, :], x).sum(0)


def noisy(registry: Registry, plugins: PluginManager, device: torch.device, batch: int, levels: int,
          rounds: int, log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Noise-conditioned composition: prior counted once, the CLI's guidance and annealed corrector settings.

    Timed on chains of 2 levels (10 network evaluations with the default corrector), plain and conceptlib
    taking turns; images/s are for ``levels`` levels (every evaluation costs the same).
    """
    loaded = {name: load_concept(registry, plugins, registry.resolve(name, None), device)
              for name in ("dsm_position", "cls_color", "cls_shape")}
    node = expr.parse("dsm_position=(0.3,0.7) & cls_color=red & cls_shape=square")
    short, full = AnnealedConfig(levels=2), AnnealedConfig(levels=levels)
    guidance = SamplerSettings().guidance.scale  # the CLI's
    runs = {}
    for fast in (False, True):
        terms = {}
        for leaf in expr.leaves(node):
            concept = loaded[leaf.concept]
            model = concept.model if fast else plain_copy(concept)
            terms[leaf] = Term(LoadedConcept(concept.version, model), concept.condition(leaf.value, device), fast=fast)
        energy = compose_noisy(node, terms, loaded["dsm_position"], guidance=guidance)
        runs["conceptlib" if fast else "plain networks"] = partial(
            annealed_sample, energy_scores(energy), batch, 32, short, torch.Generator(device=device).manual_seed(9),
            device)
    rows = []
    for path, t in interleaved(runs, rounds, device).items():
        images = batch / (t["median_s"] / evaluations(short) * evaluations(full))
        rows.append({"path": path, "batch": batch, "levels": levels, "evaluations": evaluations(full),
                     "guidance": guidance,
                     "corrector_steps": full.corrector_steps,
                     "images_per_s": images, "peak_mib": t["peak_mib"]})
        log(f"noise-conditioned {path}: {images:.2f} img/s")
    rows[1]["vs_plain"] = rows[1]["images_per_s"] / rows[0]["images_per_s"]
    return rows


def shipped(plugins: PluginManager, device: torch.device, n: int, levels: int | None,
            log: Callable[[str], None]) -> list[dict[str, Any]]:
    """``concept compose`` as a user runs it: the shipped registry's trained concepts, the CLI's defaults.

    One batch of ``n`` per expression through ``jobs.compose_images``, timed from its own clock (loading the
    weights excluded); a copy of the registry is opened, the shipped file is never touched.
    """
    from conceptlib.jobs import compose_images

    annealed = AnnealedConfig(levels=levels) if levels else AnnealedConfig()  # = the CLI's (tests/test_cli.py)
    settings = SamplerSettings(annealed=annealed, batch_size=n)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        copy_path = Path(tmp) / "registry.db"
        copy_path.write_bytes(SHIPPED.read_bytes())
        registry = Registry.open(f"sqlite:///{copy_path}")
        for expression in SHIPPED_EXPRESSIONS:
            result = compose_images(registry, plugins, expression, n, settings, seed=0, device=device)
            seconds = result.provenance["seconds"]
            rows.append({"expression": expression, "concepts": len(expr.leaves(expr.parse(expression))),
                         "batch": n, "levels": annealed.levels, "evaluations": evaluations(annealed),
                         "seconds": seconds, "images_per_s": n / seconds,
                         "sampler": result.provenance["sampler"]})
            log(f"shipped {expression}: {n / seconds:.2f} img/s")
    return rows


def cold_start(registry_path: Path, runs: int) -> dict[str, Any]:
    """Median wall time of ``concept --help`` and ``concept list`` in fresh processes (timed as
    ``benchmarks/cold_start.py`` times them)."""
    from cold_start import median_seconds  # this script's own folder is first on sys.path

    result = {"concept --help": median_seconds(["--help"], runs),
              "concept list": median_seconds(["--registry", str(registry_path), "list"], runs)}
    check = subprocess.run([sys.executable, "-c", "import sys, conceptlib.cli; print('torch' in sys.modules)"],
                           check=True, capture_output=True, text=True)
    result["torch_imported_by_cli"] = check.stdout.strip() == "True"
    return result


# ------------------------------------------------------------------------------------------------ report
def write_report(data: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "speed.json").write_text(json.dumps(data, indent=2) + "\n")
    m = data["machine"]
    lines = [
        "# Speed: composed sampling and training, side by side with ebmkit and torchebm",
        "",
        f"Written by `benchmarks/speed.py` ({m['started']}). Device: **{m['device_name']}**, {m['cores']} cores, "
        f"torch {m['torch']}, `torch.set_num_threads({m['threads']})` for every library; GPU: {m['gpu']}. "
        f"ebmkit {m['ebmkit']}, torchebm {m['torchebm']}. Load average at start "
        f"{' / '.join(m['load_average_at_start'])} (1 / 5 / 15 min), at end {' / '.join(m['load_average_at_end'])}: "
        "the machine is shared, so figures carry that noise. Concepts have seeded random weights (speed does not "
        "depend on what they learned); networks and conditions are the same for every library.",
        "",
    ]
    chain = data["same_chain"]
    lines += [
        "## Same energy, same step rule",
        "",
        f"One chain, {chain['concepts']} concepts, batch {chain['batch']}, {chain['steps']} steps of "
        f"`x <- clamp(x - {SAMPLER.step_size:g} grad E + {SAMPLER.noise:g} N(0, I), 0, 1)`, from one start and one "
        f"noise stream (mean |x_K - x_0| = {chain['mean_abs_move']:.3f}); difference to conceptlib calling the "
        "plain networks:",
        "",
        "| library | max abs diff of x_K | mean energy of x_K |",
        "|---|---|---|",
        f"| conceptlib, plain networks | 0 | {chain['energy_plain']:.5f} |",
        *(f"| {lib} | {chain[lib]['max_abs_diff']:.2e} | {chain[lib]['mean_energy']:.5f} |" for lib in LIBRARIES),
        "",
        "## Composed sampling (AND of k concepts, K = 40 Langevin steps): images/s and peak memory",
        "",
        f"Images/s at K = {SAMPLER.steps} from the median seconds per step over {data['sampling'][0]['timed_steps']} "
        "timed steps per library and setting, in rounds the libraries take in turn, each round one chain of "
        f"{data['sampling'][0]['timed_steps'] // int(data['settings'].get('rounds', 6))} steps whose setup is "
        "timed with it (a step costs the same at every step of a chain; the best round is in speed.json). "
        "conceptlib runs `compose` + `langevin` on "
        "concepts loaded by `load_concept`; ebmkit its `SumEnergy` + `LangevinDynamics`; torchebm its "
        "`LangevinDynamics` on a `BaseModel` summing the networks. Each library runs in a process of its own, "
        "as its users run it: conceptlib keeps freed memory for reuse (`conceptlib/memory.py`, process-wide), "
        f"which a peer sharing its process would inherit; '{UNTUNED}' is conceptlib with "
        f"`{MALLOC_ENV}=system`, what that is worth. Peak memory: the process's peak resident memory above its "
        "level before the chain (VmHWM), MiB, of a chain run once before (one-time allocations left out).",
        "",
        f"| batch | k | conceptlib | {UNTUNED} | ebmkit | torchebm | vs ebmkit | vs torchebm "
        "| peak MiB (cl / ebmkit / torchebm) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in data["sampling"]:
        speed = " | ".join(f"{r[lib]['images_per_s']:.2f}" if lib in r else "–" for lib in TIMED)
        memory = " / ".join(str(r[lib]["peak_mib"]) for lib in LIBRARIES)
        lines.append(f"| {r['batch']} | {r['concepts']} | {speed} | **{r['speedup_vs_ebmkit']:.2f}x** "
                     f"| **{r['speedup_vs_torchebm']:.2f}x** | {memory} |")
    lines += ["", "## Training (contrastive divergence, batch 64): iterations/s", "",
              "| frozen concepts | Langevin steps per iteration | iterations/s | peak MiB |", "|---|---|---|---|"]
    lines += [f"| {r['frozen']} | {r['langevin_steps']} | {r['iterations_per_s']:.3f} | {r['peak_mib']} |"
              for r in data["training"]]
    peak = data["peak"]
    lines += ["", "## The limit: FLOP/s of one Langevin step against the machine's peak", "",
              f"Peak measured in this run, fp32, {m['threads']} threads: matmul 4096² **{peak['matmul_gflops']:.1f}** "
              f"GFLOP/s, convolution 256→256 3x3 at 32x32 (batch 32, channels-last) **{peak['conv_gflops']:.1f}** "
              "GFLOP/s; the larger is the reference. FLOPs counted by `torch.utils.flop_counter.FlopCounterMode` "
              "on the plain network (forward + input gradient); both paths do the same convolutions. Median of "
              "the timed rounds (best round in brackets).", "",
              "| network | batch | GFLOP per step | plain GFLOP/s, of peak | conceptlib GFLOP/s, of peak |",
              "|---|---|---|---|---|"]
    lines += [f"| {r['network']} | {r['batch']} | {r['gflop_per_step']:.2f} | {r['plain']['gflops']:.1f}, "
              f"{r['plain']['of_peak']:.0%} ({r['plain']['best_of_peak']:.0%}) | {r['conceptlib']['gflops']:.1f}, "
              f"{r['conceptlib']['of_peak']:.0%} ({r['conceptlib']['best_of_peak']:.0%}) |" for r in data["flops"]]
    lines += ["", "## Techniques, each measured (3 concepts; images/s at K = 40)", "",
              "Each row adds one technique to the row above it, except the stacked, vmap and 1-thread rows (the "
              "stacked row stacks the for_condition networks; vmap runs three color networks). Up to the "
              "'one pass per concept' row each concept is evaluated on its own, chunk by chunk; from there each "
              "thread takes its chunk through all three (what `compose` does); the hand-written gradient and the "
              "one-thread update are off in every row above their own. Median of rounds the variants "
              "take in turn, all in this process, so every row runs with freed memory kept for reuse (the "
              "sampling table measures that one).", "",
              "| technique | batch | images/s | vs plain | peak MiB |", "|---|---|---|---|---|"]
    lines += [f"| {r['technique']} | {r['batch']} | {r['images_per_s']:.2f} | {r['vs_plain']:.2f}x | {r['peak_mib']} |"
              for r in data["techniques"]]
    first = data["noisy"][0]
    lines += ["", "## Noise-conditioned composition, plain networks against conceptlib's (prior once, annealed)", "",
              "`dsm_position=(0.3,0.7) & cls_color=red & cls_shape=square`: a U-Net energy prior (conditioned and "
              "null energy) and two classifier energies per evaluation, one Euler step and "
              f"{first.get('corrector_steps', 1)} ULA corrector steps per level, guidance "
              f"{first.get('guidance', 2.0)}. "
              "Timed on short chains taking turns, scaled to the levels shown.", "",
              "| path | batch | levels (network evaluations) | images/s | peak MiB |", "|---|---|---|---|---|"]
    lines += [f"| {r['path']} | {r['batch']} | {r['levels']} ({r['evaluations']}) | {r['images_per_s']:.2f} "
              f"| {r['peak_mib']} |" for r in data["noisy"]]
    if "shipped" in data:
        sampler = data["shipped"][0]["sampler"]
        most, below = sampler.get("classifier_boost_max", 1), sampler.get("classifier_boost_below")
        boost = f" (boosted up to {most:g}x below noise {below:g})" if most > 1 else ""
        warmth = sampler.get("classifier_temperature", 1)
        boost += f", read at softmax temperature {warmth:g}" if warmth != 1 else ""
        lines += ["", "## `concept compose` on the shipped registry (trained concepts, the CLI's defaults)", "",
                  f"`registry.db`'s position (a U-Net denoiser prior), shape and color (classifiers); one batch of "
                  f"{data['shipped'][0]['batch']} per expression, {sampler['levels']} levels with "
                  f"{sampler['corrector_steps']} {sampler['corrector']} corrector steps each, guidance "
                  f"{sampler['guidance']}, classifier guidance {sampler['classifier_guidance']}{boost}; seconds from "
                  "`compose_images`' own clock (loading excluded).", "",
                  "| expression | concepts | network evaluations per chain | seconds | images/s |",
                  "|---|---|---|---|---|"]
        lines += [f"| `{r['expression']}` | {r['concepts']} | {r['evaluations']} | {r['seconds']:.1f} "
                  f"| {r['images_per_s']:.2f} |" for r in data["shipped"]]
    cold = data["cold_start"]
    lines += ["", "## CLI cold start (median of fresh processes)", "",
              "| command | seconds |", "|---|---|",
              *(f"| `{k}` | {v['median_s']:.2f} |" for k, v in cold.items() if isinstance(v, dict)),
              "", f"`import conceptlib.cli` imports torch: {cold['torch_imported_by_cli']}.", ""]
    lines += ["## Reading the figures", "", *notes(data), ""]
    (out / "speed.md").write_text("\n".join(lines))


def notes(data: dict[str, Any]) -> list[str]:
    """What the figures say against the targets (1.5x the peers, 50 % of peak, 0.5 s cold start)."""
    rows = data["sampling"]
    met = {peer: sum(r[f"speedup_vs_{peer}"] >= 1.5 for r in rows) for peer in ("ebmkit", "torchebm")}
    low = min(min(r["speedup_vs_ebmkit"], r["speedup_vs_torchebm"]) for r in rows)
    half = [r["network"] for r in data["flops"] if r["conceptlib"]["of_peak"] >= 0.5]
    cold = data["cold_start"]
    grad_cost = " / ".join(f"{r['vs_plain']:.2f}x" for r in data["techniques"]
                           if r["technique"] == "parameters requiring grad")
    kept = [r["conceptlib"]["images_per_s"] / r[UNTUNED]["images_per_s"] for r in rows if UNTUNED in r]
    hand, update = (" / ".join(f"{r['vs_previous']:.2f}x" for r in data["techniques"] if r["technique"] == name)
                    for name in (HAND_WRITTEN, ONE_THREAD_UPDATE))
    return [
        f"- Sampling: conceptlib is at least 1.5x ebmkit in {met['ebmkit']} of {len(rows)} settings and torchebm in "
        f"{met['torchebm']} of {len(rows)}; the lowest ratio is {low:.2f}x. The gain is the same convolutions "
        "done better: FiLM folded and constants computed once per chain (`for_condition`), channels-last "
        "weights, and cache-sized chunks run one per thread, each thread taking its chunk through every "
        "concept of the expression in one pass per step, which also keeps peak memory flat in the batch. "
        "At batch 64 a chain is only two chunks, so less of that applies than at 256.",
        (f"- Freed memory kept for reuse (`conceptlib/memory.py`: glibc's mmap and trim thresholds raised once, "
         f"process-wide): {min(kept):.2f}-{max(kept):.2f}x against the same code with `{MALLOC_ENV}=system` "
         "(the sampling table's second column). Without it a step page-faults its activations back in "
         "(thousands of minor faults per step, the chunk threads contending for the kernel's lock while they "
         "fault). The peers are timed in processes of their own, so they do not inherit it." if kept else
         "- Freed memory kept for reuse: not measured in this run."),
        f"- The specialised `small` net's input gradient is written by hand (the first layer's as one matmul "
        f"and a `fold` onto the image's three channels, the strided layers' as transposed convolutions, where "
        f"autograd asks oneDNN for a convolution backward at every layer): {hand or 'not measured'} against "
        "autograd's (techniques table, batch 64 / 256, each against the row above it).",
        f"- The chain's update between evaluations (noise, step, clamp) runs on one thread, and the chunk "
        "threads write the gradient into place instead of a concatenation after them: no OpenMP parallel "
        "region between two evaluations, so libgomp's worker is not left spinning (about 3 ms by default) on "
        f"a core the next evaluation's chunk threads need: {update or 'not measured'} (batch 64 / 256) in the "
        "techniques table, whose chains of a few steps dilute it (their first evaluation follows no update); "
        "`benchmarks/openmp_spin.py` (`benchmarks/results/openmp_spin.md`) times it on its own.",
        "- Stacked weights (one first convolution for all concepts, then grouped convolutions) and "
        "`torch.func.vmap` over stacked parameters (which lowers to the same grouped convolutions) measured "
        "slower than separate calls here; they are not used. Parameters that require grad ran at "
        f"{grad_cost} of the plain network (batch 64 / 256): only input gradients are asked for either way, "
        "so frozen concepts never require it. Inference mode cannot be used: the sampler needs the input "
        "gradient.",
        f"- FLOP/s: {', '.join(half) if half else 'no network'} reached 50 % of the measured peak (median). The small "
        "networks' convolutions are narrow (3 -> 32 channels at 32x32, whose input gradient has 3 output "
        "channels, then 32 -> 64 -> 64) and each is followed by a SiLU and its derivative, passes over memory "
        "that count no FLOPs; the peak is a 256-channel convolution.",
        "- Training goes through `conceptlib/training.py`, which calls the networks directly: of this work only "
        "channels-last frozen concepts (`load_concept`), freed memory kept for reuse and the one-thread chain "
        "update reach it.",
        f"- Cold start: `concept --help` {cold['concept --help']['median_s']:.2f} s, `concept list` "
        f"{cold['concept list']['median_s']:.2f} s. torch is not imported by either; `list` reads a SQLite "
        "registry with the stdlib `sqlite3` (`conceptlib/listing.py`; `benchmarks/cold_start.py` has the detail).",
        f"- GPU: {data['machine']['gpu']}. `--device auto` picks CUDA when present; there chunks and threads are "
        "left to the GPU (one chunk, no channels-last conversion) and peak memory is torch's CUDA peak.",
    ]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--chain-steps", type=int, default=SAMPLER.steps, help="Steps of the same-chain check.")
    parser.add_argument("--timed-steps", type=int, default=24, help="Langevin steps timed per library and setting.")
    parser.add_argument("--rounds", type=int, default=8, help="Turns the libraries take over the timed steps "
                        "(a chain of timed-steps / rounds steps each: a library's per-chain setup is timed too).")
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--concepts", type=int, nargs="+", default=[1, 2, 3, 5])
    parser.add_argument("--technique-steps", type=int, default=3, help="Steps per timed technique chain.")
    parser.add_argument("--train-iterations", type=int, default=3)
    parser.add_argument("--train-steps", type=int, default=20, help="Langevin steps per training iteration.")
    parser.add_argument("--noisy-levels", type=int, default=20)
    parser.add_argument("--noisy-batch", type=int, default=32)
    parser.add_argument("--shipped-batch", type=int, default=64, help="Images per expression on registry.db.")
    parser.add_argument("--quick", action="store_true", help="Tiny settings, to check the script.")
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS,
                        help="What to measure [default: all; the report is written only for all].")
    parser.add_argument("--report-only", action="store_true", help="Rewrite speed.md from speed.json.")
    parser.add_argument("--worker", choices=TIMED, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=ROOT / "results")
    args = parser.parse_args(argv)
    if args.quick:
        args.chain_steps, args.timed_steps, args.rounds, args.batches, args.concepts = 2, 2, 2, [8], [1, 2]
        args.technique_steps = 1
        args.train_iterations, args.train_steps, args.noisy_levels, args.noisy_batch = 2, 1, 2, 4
        args.shipped_batch = 2
    if args.report_only:
        write_report(json.loads((args.out / "speed.json").read_text()), args.out)
        return
    from conceptlib.devices import resolve_device

    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    if args.worker:
        serve(args.worker, device)
        return
    started = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f}s] {message}", flush=True)

    data: dict[str, Any] = {"machine": machine(device), "settings": {k: str(v) for k, v in vars(args).items()}}
    plugins = PluginManager(None)
    wanted = set(args.sections)
    with tempfile.TemporaryDirectory() as tmp:
        registry, concepts = cd_concepts(Path(tmp) / "registry.db", plugins, device)
        if "chain" in wanted:
            data["same_chain"] = same_chain(concepts[:3], device, n=8, steps=args.chain_steps)
            log(f"same chain: {json.dumps(data['same_chain'])}")
        if "sampling" in wanted:
            data["sampling"] = sampling(device, args.batches, args.concepts, args.timed_steps, args.rounds, log)
        if "training" in wanted:
            data["training"] = training(plugins, concepts, device, [0, 2, 4], args.train_iterations,
                                        args.train_steps, log)
        if "flops" in wanted:
            data["peak"] = peak_flops(device)
            log(f"peak: {data['peak']}")
            data["flops"] = flops(registry, plugins, device, max(args.batches), data["peak"], args.rounds - 1)
            log(f"flops: {json.dumps(data['flops'])}")
        if "techniques" in wanted:
            data["techniques"] = techniques(concepts, device, args.batches, args.technique_steps, args.rounds - 1,
                                            log)
        if "noisy" in wanted:
            data["noisy"] = noisy(registry, plugins, device, args.noisy_batch, args.noisy_levels, args.rounds - 1,
                                  log)
        if "shipped" in wanted:
            data["shipped"] = shipped(plugins, device, args.shipped_batch, 2 if args.quick else None, log)
        if "cold" in wanted:
            data["cold_start"] = cold_start(Path(tmp) / "registry.db", runs=3 if args.quick else 7)
            log(f"cold start: {data['cold_start']}")
    data["machine"]["load_average_at_end"] = Path("/proc/loadavg").read_text().split()[:3]
    data["machine"]["seconds"] = round(time.perf_counter() - started, 1)
    if wanted != set(SECTIONS):
        print(json.dumps(data, indent=2))
        return
    write_report(data, args.out)
    log(f"wrote {args.out / 'speed.md'} and speed.json")


if __name__ == "__main__":
    main()
