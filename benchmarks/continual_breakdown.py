"""Where stage 3 of the continual benchmark misses shape: its row re-sampled (same seeds) and broken down.

Run after ``benchmarks/continual.py`` (it reads that run's residual registry):
``.venv/bin/python benchmarks/continual_breakdown.py --source mujoco --split report``. Writes
``benchmarks/results/continual-SOURCE-SPLIT-stage3-breakdown.json``: shape accuracy per asked color and per
asked shape, and the shape confusion (rows asked, columns judged).
"""

from __future__ import annotations

import argparse
import json

import continual
import numpy as np
import torch

from conceptlib.judge import load_or_train_judge
from conceptlib.plugins import PluginManager
from conceptlib.registry import Registry
from conceptlib.settings import SamplerSettings

STAGE = 2  # stage 3, counted from 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", choices=sorted(continual.PROTOCOLS_BY_SOURCE), default="mujoco")
    parser.add_argument("--split", choices=sorted(continual.SPLITS), default="report")
    parser.add_argument("-n", type=int, default=200, help="as the continual row it re-samples")
    args = parser.parse_args()
    protocol, split = continual.PROTOCOLS_BY_SOURCE[args.source], continual.SPLITS[args.split]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    plugins = PluginManager()
    judge_params = {**protocol.params(2), "seed": continual.JUDGE_SEED_OFFSET + split["train_seed"]}
    judge, _ = load_or_train_judge(protocol.source, judge_params, device=device, plugins=plugins)
    tag = f"{args.source}-{args.split}"
    registry = Registry.open(str(continual.RESULTS / f"continual-{tag}-residual-registry.db"))
    _, _, asked, images, _ = continual.sample_row(registry, plugins, protocol, STAGE, args.n, split["sample_seed"],
                                                  SamplerSettings(), device)  # the very samples of the row
    judged = judge.predict(images)["shape"]
    right = judged == asked.targets["shape"]
    result = {"source": args.source, "split": args.split, "n": args.n, "shape_acc": float(right.mean()),
              "by_color": {}, "by_shape": {}, "shape_confusion": {"columns": list(protocol.shapes)}}
    for k, name in enumerate(protocol.colors):
        rows = asked.targets["color"] == k
        if rows.any():
            result["by_color"][name] = {"right": int(right[rows].sum()), "asked": int(rows.sum())}
    for k, name in enumerate(protocol.shapes):
        rows = asked.targets["shape"] == k
        result["by_shape"][name] = {"right": int(right[rows].sum()), "asked": int(rows.sum())}
        result["shape_confusion"][name] = np.bincount(judged[rows], minlength=len(protocol.shapes)).tolist()
    out = continual.RESULTS / f"continual-{tag}-stage3-breakdown.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
