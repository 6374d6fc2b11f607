"""Samplers compared: what each annealed-sampler choice buys in judged quality and costs in time.

Run: ``.venv/bin/python benchmarks/samplers.py [-n 150] [--dsm-registry PATH]``. Two parts, each variant
graded by ``concept eval``'s protocols and independent judge on the same seeds, one change from the CLI's
defaults at a time:

- the shipped ``registry.db`` (a denoiser prior, classifier concepts): no corrector, one ULA corrector
  step per level, four (the default), deterministic steps down (``eta`` 0) and half the levels, on
  ``shape`` and ``position & shape & color``;
- a ``dsm`` position concept (an energy, so MALA's Metropolis accept applies), trained into
  ``--dsm-registry`` first when that file does not exist: no corrector, ULA and MALA, on ``position``.

Writes ``benchmarks/results/samplers.md`` and ``samplers.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from conceptlib.annealed import evaluations
from conceptlib.evaluation import evaluate_registry
from conceptlib.plugins import PluginManager
from conceptlib.registry import Registry
from conceptlib.settings import SamplerSettings

ROOT = Path(__file__).parent
RESULTS = ROOT / "results"
SHIPPED = ROOT.parent / "registry.db"
SHIPPED_PROTOCOLS = ("shape", "position & shape & color")
DSM_PROTOCOLS = ("position",)


def variant(base: SamplerSettings, **annealed: Any) -> SamplerSettings:
    return dataclasses.replace(base, annealed=dataclasses.replace(base.annealed, **annealed))


def grade(registry_path: Path, protocols: tuple[str, ...], variants: dict[str, SamplerSettings], n: int,
          device: torch.device) -> list[dict[str, Any]]:
    """Every variant on every protocol, from a copy of the registry (the file itself is never opened)."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "registry.db"
        shutil.copyfile(registry_path, copy)
        registry = Registry.open(f"sqlite:///{copy}")
        for name, settings in variants.items():
            for protocol in protocols:
                run = evaluate_registry(registry, PluginManager(), [protocol], n, settings, seed=0, device=device)
                result = run.results[0]
                rows.append({"variant": name, "protocol": protocol, "n": result.n, "seconds": round(result.seconds, 1),
                             "network_evaluations": evaluations(settings.annealed),
                             "metrics": {k: round(v, 4) for k, v in result.metrics.items()},
                             "sampler": settings.annealed.to_json()})
                print(f"{name} | {protocol}: {rows[-1]['metrics']} in {result.seconds:.0f} s", flush=True)
    return rows


def train_dsm(path: Path) -> float:
    """A position concept by denoising score matching of an energy, through the real CLI; wall seconds."""
    concept = Path(sys.executable).parent / "concept"
    started = time.perf_counter()
    subprocess.run([str(concept), "--registry", str(path), "add", "position", "--source", "scenes",
                    "--objective", "dsm", "--device", "auto"], check=True)
    return round(time.perf_counter() - started, 1)


def write_report(data: dict[str, Any], out: Path) -> None:
    (out / "samplers.json").write_text(json.dumps(data, indent=2))
    lines = ["# Samplers compared", "", f"Written by `benchmarks/samplers.py` ({data['written']}); {data['n']} samples "
             f"per protocol and variant, seed 0, judged by `concept eval`'s independent judge; device "
             f"{data['device']}, {data['threads']} threads. Each variant changes one thing from the CLI's defaults "
             "({levels} levels, {corrector_steps} {corrector} corrector steps of {corrector_step} sigma^2 per level, "
             "eta {eta}). Seconds are sampling and judging the protocol's samples; network evaluations are per "
             "chain.".format(**data["defaults"]), ""]
    for title, part in (("Shipped registry (denoiser prior, classifier concepts)", "shipped"),
                        ("A dsm position concept (energy prior; trained in "
                         f"{float(data.get('dsm_training_seconds') or 0):.0f} s wall, as its metrics record)", "dsm")):
        lines += [f"## {title}", "", "| variant | protocol | network evaluations | metrics | seconds |",
                  "|---|---|---|---|---|"]
        lines += [f"| {r['variant']} | `{r['protocol']}` | {r['network_evaluations']} | "
                  + ", ".join(f"{k} {v:.3f}" for k, v in r["metrics"].items()) + f" | {r['seconds']:.0f} |"
                  for r in data[part]]
        lines.append("")
    (out / "samplers.md").write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=150)
    parser.add_argument("--dsm-registry", type=Path, default=RESULTS / "samplers-dsm-registry.db",
                        help="registry holding a dsm position concept; trained into it when missing")
    parser.add_argument("--parts", nargs="+", default=["shipped", "dsm"], choices=["shipped", "dsm"])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    base = SamplerSettings()  # what `concept eval` users get: its options default to these
    data: dict[str, Any] = {"written": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "n": args.n, "device": str(device),
                            "threads": torch.get_num_threads(), "defaults": base.annealed.to_json(),
                            "shipped": [], "dsm": []}
    if "shipped" in args.parts:
        data["shipped"] = grade(SHIPPED, SHIPPED_PROTOCOLS, {
            "default (ULA x4)": base,
            "no corrector": variant(base, corrector="none"),
            "ULA x1": variant(base, corrector_steps=1),
            "eta 0 (deterministic steps down)": variant(base, eta=0.0),
            "20 levels": variant(base, levels=20),
        }, args.n, device)
    if "dsm" in args.parts:
        if not args.dsm_registry.exists():
            data["dsm_training_seconds"] = train_dsm(args.dsm_registry)
        else:
            version = Registry.open(f"sqlite:///{args.dsm_registry}").resolve("position")
            data["dsm_training_seconds"] = version.metrics.get("seconds")
        data["dsm"] = grade(args.dsm_registry, DSM_PROTOCOLS, {
            "ULA x4 (default)": base,
            "no corrector": variant(base, corrector="none"),
            "MALA x4 (per-sample accept)": variant(base, corrector="mala"),
        }, args.n, device)
    write_report(data, args.out)
    print(f"wrote {args.out / 'samplers.md'}")


if __name__ == "__main__":
    main()
