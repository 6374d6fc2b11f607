"""Measure the judge on the default scenes dataset: training time, held-out accuracy, realism.

Run: ``.venv/bin/python benchmarks/judge.py [--n 20000] [--epochs 4] [--threads 1]``. Writes
``benchmarks/results/judge.json`` and prints it. Realism pass rates are reported for held-out real
images (the test split, and fresh renders from another seed) against inputs a judge must not trust:
uniform noise, blank gray, object-less backgrounds, checkerboards and real images with added noise
(the last shows how much pixel noise a generated image may carry and still pass).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from conceptlib.judge import DEFAULT_EPOCHS, REALISM_CHECKS, evaluate, load_judge, save_judge, train_judge
from conceptlib.plugins import PluginManager
from conceptlib_scenes import COLORS

RESULTS = Path(__file__).parent / "results" / "judge.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000, help="renders (10%% test, 10%% calibration, 80%% train)")
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    source = PluginManager().source("scenes")
    params = source.resolve_params({"n": args.n})

    started = time.perf_counter()
    dataset = source.load(params)
    render_seconds = time.perf_counter() - started
    epochs: list[dict[str, float]] = []

    def on_epoch(epoch: int, record: dict[str, float]) -> None:
        epochs.append({"epoch": epoch, "seconds": round(time.perf_counter() - started - render_seconds, 1), **record})
        print(f"epoch {epoch}: {epochs[-1]}", flush=True)

    judge, report = train_judge(dataset, epochs=args.epochs, seed=args.seed, device="cpu", on_epoch=on_epoch)

    rng = np.random.default_rng(12345)
    size = dataset.image_size
    fresh = source.load(source.resolve_params({"n": 2000, "seed": args.seed + 1}))
    backgrounds = source.load(source.resolve_params({"n": 500, "seed": 7, "size_low": 0.005, "size_high": 0.005}))
    checker = np.indices((size, size)).sum(axis=0) % 2
    probes: dict[str, np.ndarray] = {
        "fresh real renders (another seed)": fresh.images,
        "uniform noise": rng.integers(0, 256, size=(1000, size, size, 3), dtype=np.uint8),
        "blank gray (128)": np.full((1, size, size, 3), 128, dtype=np.uint8),
        "blank grays (levels 0.2..0.8)": np.broadcast_to(
            np.linspace(51, 204, 31).astype(np.uint8)[:, None, None, None], (31, size, size, 3)
        ).copy(),
        "object-less backgrounds (radius 0.005)": backgrounds.images,
        "checkerboards": (np.stack([checker] * 3, axis=-1)[None] * rng.integers(40, 220, (100, 1, 1, 3))).astype(
            np.uint8
        ),
    }
    for sigma in (0.005, 0.01, 0.02, 0.05, 0.1):
        noisy = fresh.images[:500] / 255.0 + rng.normal(0.0, sigma, size=fresh.images[:500].shape)
        probes[f"real + gaussian noise sigma={sigma}"] = (np.clip(noisy, 0, 1) * 255 + 0.5).astype(np.uint8)

    realism: dict[str, Any] = {
        "held-out test split": {f"pass_{c}": report["realism"][f"test_pass_rate_{c}"] for c in REALISM_CHECKS}
    }
    for name, images in probes.items():
        scores = judge.realism_scores(images)
        realism[name] = {
            **{f"pass_{c}": float((scores[c] <= report["realism"][f"threshold_{c}"]).mean()) for c in REALISM_CHECKS},
            "median_knn": float(np.median(scores["knn"])),
            "median_high_frequency": float(np.median(scores["high_frequency"])),
        }
    noise_colors = np.bincount(judge.predict(probes["uniform noise"])["color"], minlength=len(COLORS))

    started = time.perf_counter()
    judge.predict(fresh.images)
    predict_per_second = len(fresh) / (time.perf_counter() - started)
    with tempfile.TemporaryDirectory() as directory:
        stem = Path(directory) / "judge"
        save_judge(judge, report, stem)
        started = time.perf_counter()
        loaded = load_judge(stem)
        load_seconds = time.perf_counter() - started
        weights_bytes = stem.with_suffix(".safetensors").stat().st_size
    assert loaded is not None

    results = {
        "command": f".venv/bin/python benchmarks/judge.py --n {args.n} --epochs {args.epochs} --seed {args.seed} "
        f"--threads {args.threads}",
        "params": params,
        "torch_threads": torch.get_num_threads(),
        "render_seconds": round(render_seconds, 2),
        "train_seconds": round(report["seconds"], 1),
        "epochs": epochs,
        "held_out_test": report["attributes"],
        "fresh_renders": evaluate(judge, fresh, np.arange(len(fresh))),
        "splits": {k: report[k] for k in ("n_train", "n_calibration", "n_test")},
        "realism_calibration": report["realism"],
        "realism_pass_rate": realism,
        "uniform_noise_read_as_color": dict(zip(COLORS, (noise_colors / noise_colors.sum()).round(3).tolist())),
        "predict_images_per_second": round(predict_per_second),
        "cache_load_seconds": round(load_seconds, 3),
        "weights_bytes": weights_bytes,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
