"""Grade saved rows again with two-sample critics, without sampling again.

``benchmarks/quality.py`` and ``concept eval --keep-samples`` keep each row's images as NPZ (its samples and the
real renders they were paired with). This trains ``--critics`` critics of other seeds on each row and reports
the mean, least and greatest held-out accuracy: how much of a row's figure is the critic's seed.

Run: ``.venv/bin/python benchmarks/regrade.py DIR [--critics 5] [--first-seed 100] [--plain] [--out FILE]``
(``DIR``: e.g. ``benchmarks/results/quality-samples/report``). Writes ``FILE`` (default ``DIR/regrade.json``)
and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from conceptlib.evaluation import critic_steps
from conceptlib.report import load_samples
from conceptlib.two_sample import repeated_two_sample_accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--critics", type=int, default=5)
    parser.add_argument("--first-seed", type=int, default=100,
                        help="critic seeds first-seed .. first-seed + critics - 1 (the evaluation used the split's)")
    parser.add_argument("--plain", action="store_true", help="critics without the high-pass view")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    rows = sorted(args.directory.glob("*.npz"))
    if not rows:
        sys.exit(f"no saved rows (*.npz) in {args.directory}: run benchmarks/quality.py or concept eval "
                 "--keep-samples first")
    seeds = range(args.first_seed, args.first_seed + args.critics)
    table = ["| row | n | critics | mean | min | max |", "|---|---|---|---|---|---|"]
    out: dict = {"critics": args.critics, "seeds": list(seeds), "high_pass": not args.plain, "rows": {}}
    for path in rows:
        saved = load_samples(path)
        if "real" not in saved:
            print(f"skipped {path.name}: no real renders were paired with it", file=sys.stderr)
            continue
        generated = saved["generated"]
        started = time.perf_counter()
        test = repeated_two_sample_accuracy(generated, saved["real"], seeds, high_pass=not args.plain,
                                            steps=critic_steps(len(generated)))
        name = str(saved.get("protocol", path.stem))
        out["rows"][name] = {**test, "seconds": round(time.perf_counter() - started, 1)}
        cell = name.replace("|", "\\|")
        table.append(f"| `{cell}` | {test['n']} | {test['critics']} | {test['accuracy']:.3f} | "
                     f"{test['accuracy_min']:.3f} | {test['accuracy_max']:.3f} |")
        print(table[-1], flush=True)
    target = args.out or args.directory / "regrade.json"
    target.write_text(json.dumps(out, indent=2) + "\n")
    print("\n".join(table))
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
