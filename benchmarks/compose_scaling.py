"""What ``concept compose`` costs as ``-n`` grows: seconds for 1, 8, 16 and 64 samples of the triple.

Run: ``.venv/bin/python benchmarks/compose_scaling.py`` on an otherwise idle machine. Times
``jobs.compose_images`` (what the CLI runs, weights loaded once before) on a copy of the shipped registry,
with the CLI's defaults and with the previous default (40 levels, eta 1), median of three runs for
``-n`` up to 16 (one at 64). Also records the network evaluations the sidecars report. Writes
``benchmarks/results/compose_scaling.md`` and ``.json``.
"""

from __future__ import annotations

import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from conceptlib.jobs import compose_images
from conceptlib.plugins import PluginManager
from conceptlib.registry import Registry
from conceptlib.settings import AnnealedConfig, SamplerSettings

ROOT = Path(__file__).parent
EXPRESSION = "position=(0.4,0.6) & shape=circle & color=green"
SIZES = (1, 8, 16, 64)


def main() -> None:
    settings = {"default": SamplerSettings(),
                "previous default (40 levels, eta 1)": SamplerSettings(annealed=AnnealedConfig(levels=40, eta=1.0))}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "registry.db"
        shutil.copyfile(ROOT.parent / "registry.db", copy)
        registry, plugins = Registry.open(f"sqlite:///{copy}"), PluginManager()
        compose_images(registry, plugins, EXPRESSION, 4, SamplerSettings(annealed=AnnealedConfig(levels=2)))  # warm
        for name, sampler in settings.items():
            for n in SIZES:
                times = []
                for seed in range(3 if n <= 16 else 1):
                    started = time.perf_counter()
                    result = compose_images(registry, plugins, EXPRESSION, n, sampler, seed=seed)
                    times.append(time.perf_counter() - started)
                rows.append({"sampler": name, "n": n, "seconds": round(statistics.median(times), 3),
                             "network_evaluations": result.provenance["network_evaluations"]})
                print(rows[-1], flush=True)
    data = {"written": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "expression": EXPRESSION,
            "threads": torch.get_num_threads(), "rows": rows}
    out = ROOT / "results" / "compose_scaling"
    out.with_suffix(".json").write_text(json.dumps(data, indent=2) + "\n")
    lines = ["# compose cost against -n", "",
             f"Written by `benchmarks/compose_scaling.py` ({data['written']}): `{EXPRESSION}` on the shipped "
             f"registry, `jobs.compose_images` timed alone, {data['threads']} threads; median of three runs up to "
             "16 samples. Forward: network passes per sample the sidecars record.", "",
             "| sampler | -n | seconds | seconds per sample | relative to -n 16 | forward per sample |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        base = next(r["seconds"] for r in rows if r["sampler"] == row["sampler"] and r["n"] == 16)
        lines.append(f"| {row['sampler']} | {row['n']} | {row['seconds']:.2f} | {row['seconds'] / row['n']:.3f} | "
                     f"{row['seconds'] / base:.2f} | {row['network_evaluations']['forward']:g} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
