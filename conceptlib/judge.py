"""An independent judge: a classifier trained on a source's own labelled images, to score generated ones.

A concept's samples are graded by asking a separately trained network what it sees: the shape, the
color, where the object is and how large. The judge never sees the energy models, so it cannot share
their blind spots. Two lessons shaped it (measured on the scenes source):

- Small objects vanish under global *average* pooling (shape accuracy 0.61); the judge pools with
  both max and average and normalises every convolution with batch norm.
- A classifier answers for any input, and uniform noise was read as "the right color" in nearly half
  of noise images. So the judge also says whether an image *looks real* (:meth:`Judge.realism`): its
  penultimate features must lie near real images' features, and its high-frequency energy must be
  like real images'. Both statistics are scaled by their median on held-out real images and each
  threshold is set so that ``REALISM_PASS`` of those held-out images pass; images the judge trained
  on are never used for calibration (their features sit at distance zero from themselves).

And one lesson from building it: after a short run, batch norm's running averages lag the weights;
recomputing them with the final weights (:func:`_refresh_batch_norm`) took one tiny judge's held-out
shape accuracy from 0.32 to 0.68 and its position error from 0.074 to 0.009.

Position (a ``spatial`` continuous attribute) is read by a soft-argmax: a per-pixel logit map, merged
from all three resolutions, whose softmax weights give the expected (x, y). With equal logits over the
object that is its centroid, which is its centre for every scenes shape, so errors are sub-pixel.

Judges are cached as safetensors (never pickle) plus a JSON file with the config and the held-out
report, keyed by the dataset hash, the training settings and :data:`JUDGE_VERSION`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from conceptlib.files import atomic_write
from conceptlib.imaging import images_to_tensor
from conceptlib.schema import ConditionSchema, is_image_point, schema_from_json
from conceptlib.sources import Dataset, Progress, canonical_hash

JUDGE_VERSION = 1
"""Bump on any change to the network, training or calibration: it enters every cache key."""

CACHE_ENV = "CONCEPTLIB_CACHE"
DEFAULT_CACHE_DIR = Path("~/.cache/conceptlib/judges")
DEFAULT_CHANNELS = (32, 64, 64)
DEFAULT_EPOCHS = 2
"""Enough on the default scenes (16,000 training renders): held-out 1.00 shape, color, position."""
HOLDOUT_FRACTION = 0.1
"""Fraction of the dataset held out for testing, and again for realism calibration (never trained on)."""
REALISM_PASS = 0.99
"""Fraction of held-out real images that pass :meth:`Judge.realism` at the calibrated threshold."""
BANK_SIZE = 4096
"""Training images whose features form the reference bank for the nearest-neighbour distance."""
KNN = 5
REALISM_CHECKS = ("both", "knn", "high_frequency")
"""The checks :meth:`Judge.realism` can apply, in the order of the stored thresholds."""
BN_REFRESH = 2048
"""Training images passed through after training to recompute batch-norm statistics."""
WITHIN = 0.1
"""Distance (scene units, Euclidean) within which a spatial prediction counts as correct."""

EpochCallback = Callable[[int, dict[str, float]], None]


def _conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class _Regression(nn.Module):
    """A continuous head that predicts the standardised label: every attribute's loss starts near 1.

    (A sigmoid over [low, high] made the size loss start ~75x the others and drown shape and color.)
    """

    def __init__(self, features: int, dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(features, dim)
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.linear(hidden)


class Judge(nn.Module):
    """Heads for every attribute of a source: categorical -> logits, continuous -> values in [low, high].

    Also holds (as buffers, so they travel in the safetensors file) the realism calibration: a bank of
    standardised real features and the scales and threshold fitted on held-out real images.
    """

    def __init__(
        self,
        schemas: Mapping[str, ConditionSchema],
        image_size: int,
        channels: Sequence[int] = DEFAULT_CHANNELS,
        bank_size: int = 0,
        k: int = KNN,
    ) -> None:
        super().__init__()
        c1, c2, c3 = channels
        self.schemas = dict(schemas)
        self.image_size = int(image_size)
        self.channels = tuple(int(c) for c in channels)
        self.k = int(k)
        self.stem = _conv(3, c1)  # full resolution
        self.mid = _conv(c1, c2)  # 1/2
        self.deep = nn.Sequential(_conv(c2, c3), _conv(c3, c3))  # 1/4
        self.feature_dim = 2 * c3  # global max and average pooling
        self.trunk = nn.Sequential(nn.Linear(self.feature_dim, 128), nn.ReLU(inplace=True))
        self.spatial = [a for a, s in self.schemas.items() if is_image_point(s)]
        self.heads = nn.ModuleDict(
            {
                a: nn.Linear(128, s.dim) if s.kind == "categorical" else _Regression(128, s.dim)
                for a, s in self.schemas.items()
                if a not in self.spatial
            }
        )
        n_maps = len(self.spatial)
        self.maps = nn.ModuleList(nn.Conv2d(c, n_maps, 1) for c in (c1, c2, c3)) if n_maps else nn.ModuleList()
        grid = (torch.arange(self.image_size, dtype=torch.float32) + 0.5) / self.image_size
        self.register_buffer("grid", grid, persistent=False)
        # Realism calibration, filled by calibrate_realism.
        self.register_buffer("bank", torch.zeros(bank_size, self.feature_dim))
        self.register_buffer("feature_mean", torch.zeros(self.feature_dim))
        self.register_buffer("feature_std", torch.ones(self.feature_dim))
        self.register_buffer("realism_scales", torch.ones(2))  # knn, high-frequency
        self.register_buffer("realism_thresholds", torch.full((len(REALISM_CHECKS),), math.inf))

    def config(self) -> dict[str, Any]:
        """Everything needed to rebuild this module before loading its weights."""
        return {
            "schemas": {a: s.to_json() for a, s in self.schemas.items()},
            "image_size": self.image_size,
            "channels": list(self.channels),
            "bank_size": int(self.bank.shape[0]),
            "k": self.k,
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Judge:
        schemas = {a: schema_from_json(s) for a, s in config["schemas"].items()}
        return cls(schemas, config["image_size"], config["channels"], config["bank_size"], config["k"])

    def forward(self, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Raw outputs per attribute and the pooled features.

        Raw means logits (categorical), standardised values (continuous) or (x, y) in [0, 1] (spatial).
        """
        f1 = self.stem(x)
        f2 = self.mid(F.max_pool2d(f1, 2))
        f3 = self.deep(F.max_pool2d(f2, 2))
        features = torch.cat([f3.amax(dim=(2, 3)), f3.mean(dim=(2, 3))], dim=1)
        hidden = self.trunk(features)
        out: dict[str, torch.Tensor] = {}
        for attribute, head in self.heads.items():
            out[attribute] = head(hidden)
        if self.spatial:
            size = f1.shape[-2:]
            logits = self.maps[0](f1)
            for conv, f in zip(self.maps[1:], (f2, f3)):
                logits = logits + F.interpolate(conv(f), size=size, mode="bilinear", align_corners=False)
            b, m, h, w = logits.shape
            weights = torch.softmax(logits.reshape(b, m, h * w), dim=-1).reshape(b, m, h, w)
            x_hat = (weights.sum(dim=2) * self.grid[:w]).sum(dim=-1)
            y_hat = (weights.sum(dim=3) * self.grid[:h]).sum(dim=-1)
            for i, attribute in enumerate(self.spatial):
                out[attribute] = torch.stack([x_hat[:, i], y_hat[:, i]], dim=1)
        return out, features

    def _scaled(self, attribute: str, raw: torch.Tensor) -> np.ndarray:
        schema = self.schemas[attribute]
        if schema.kind == "categorical":
            return raw.argmax(dim=1).cpu().numpy()
        if attribute in self.spatial:
            value = schema.low + (schema.high - schema.low) * raw
        else:
            head = self.heads[attribute]
            value = (head.mean + head.std * raw).clamp(schema.low, schema.high)
        return value.cpu().numpy()

    def _batches(self, images: torch.Tensor | np.ndarray, batch_size: int = 512):
        """Float ``(B, 3, H, W)`` batches on the judge's device, checked against the size it was trained at."""
        numpy = isinstance(images, np.ndarray)
        if numpy and images.dtype != np.uint8:
            raise TypeError(f"numpy images must be uint8 (N, H, W, 3); got {images.dtype}")
        spatial = tuple(images.shape[1:3] if numpy else images.shape[2:4])
        if len(images) and spatial != (self.image_size, self.image_size):
            raise ValueError(f"this judge reads {self.image_size}x{self.image_size} images; got {spatial}")
        device = self.grid.device
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            if isinstance(chunk, np.ndarray):
                yield images_to_tensor(np.ascontiguousarray(chunk), device)
            else:
                yield chunk.to(device, torch.float32)

    @torch.no_grad()
    def predict(self, images: torch.Tensor | np.ndarray) -> dict[str, np.ndarray]:
        """What the judge sees: categorical -> index ``(N,)``, continuous -> values ``(N, dim)``.

        ``images`` is float ``(N, 3, H, W)`` in [0, 1], or uint8 ``(N, H, W, 3)`` as a source gives them.
        """
        self.eval()
        parts: dict[str, list[np.ndarray]] = {a: [] for a in self.schemas}
        for x in self._batches(images):
            out, _ = self(x)
            for attribute in self.schemas:
                parts[attribute].append(self._scaled(attribute, out[attribute]))
        return {a: np.concatenate(p) if p else np.zeros((0,)) for a, p in parts.items()}

    @torch.no_grad()
    def features(self, images: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Pooled penultimate features ``(N, feature_dim)``, standardised by the bank's statistics."""
        self.eval()
        chunks = [self(x)[1] for x in self._batches(images)]
        raw = torch.cat(chunks) if chunks else torch.zeros(0, self.feature_dim, device=self.grid.device)
        return (raw - self.feature_mean) / self.feature_std

    @torch.no_grad()
    def realism_scores(self, images: torch.Tensor | np.ndarray) -> dict[str, np.ndarray]:
        """Per-image scores, each scaled so that the median held-out real image scores 1.0.

        ``knn``: mean distance to the ``k`` nearest bank features (an image unlike any real one).
        ``high_frequency``: mean squared Laplacian of the pixels, which noise inflates whatever the
        classifier makes of it. ``both``: the larger of the two.
        """
        if self.bank.shape[0] == 0:
            raise RuntimeError("this judge has no realism calibration; train it with train_judge")
        features = self.features(images)
        k = min(self.k, self.bank.shape[0])
        distances = [torch.cdist(f, self.bank).topk(k, largest=False).values.mean(dim=1) for f in features.split(1024)]
        knn = torch.cat(distances) / self.realism_scales[0] if distances else features.new_zeros(0)
        energies = [high_frequency_energy(x) for x in self._batches(images)]
        hf = torch.cat(energies) / self.realism_scales[1] if energies else knn
        scores = {"knn": knn, "high_frequency": hf, "both": torch.maximum(knn, hf)}
        return {name: score.cpu().numpy() for name, score in scores.items()}

    def realism(self, images: torch.Tensor | np.ndarray, check: str = "both") -> np.ndarray:
        """Boolean per image: does it look like the data? ``REALISM_PASS`` of held-out real images do.

        ``check`` picks ``both`` (default), ``knn`` or ``high_frequency``, each with its own threshold
        calibrated on held-out reals. The gate is strict: on scenes, real images plus Gaussian pixel
        noise of sigma 0.01 still pass (~91%), of sigma 0.02 (5/255) fail under either check
        (benchmarks/judge.py), so generated images must be about that clean.
        """
        if check not in REALISM_CHECKS:
            raise ValueError(f"unknown realism check {check!r}; use one of {', '.join(REALISM_CHECKS)}")
        threshold = float(self.realism_thresholds[REALISM_CHECKS.index(check)])
        return self.realism_scores(images)[check] <= threshold

    @torch.no_grad()
    def calibrate_realism(
        self, bank_images: np.ndarray, held_out: np.ndarray, pass_fraction: float = REALISM_PASS
    ) -> dict[str, float]:
        """Fill the bank from training images; fit scales and thresholds on held-out real ones."""
        self.feature_mean.zero_()
        self.feature_std.fill_(1.0)
        raw = self.features(bank_images)
        self.feature_mean.copy_(raw.mean(dim=0))
        std = raw.std(dim=0)
        self.feature_std.copy_(std.clamp_min(0.01 * float(std.median()) + 1e-6))  # dead features: finite
        self.bank = (raw - self.feature_mean) / self.feature_std
        self.realism_scales.fill_(1.0)
        unscaled = self.realism_scores(held_out)
        scales = [max(float(np.median(unscaled[name])), 1e-8) for name in ("knn", "high_frequency")]
        self.realism_scales.copy_(torch.tensor(scales))
        scores = self.realism_scores(held_out)
        thresholds = [float(np.quantile(scores[name], pass_fraction)) for name in REALISM_CHECKS]
        self.realism_thresholds.copy_(torch.tensor(thresholds))
        return {
            **{f"threshold_{name}": value for name, value in zip(REALISM_CHECKS, thresholds)},
            "knn_scale": scales[0],
            "high_frequency_scale": scales[1],
        }


def high_frequency_energy(x: torch.Tensor) -> torch.Tensor:
    """Mean squared 4-neighbour Laplacian per image ``(N,)`` of float ``(N, 3, H, W)`` images in [0, 1].

    Smooth lighting has none; the object's anti-aliased edge a little; pixel noise a lot.
    """
    lap = 4 * x[:, :, 1:-1, 1:-1] - x[:, :, :-2, 1:-1] - x[:, :, 2:, 1:-1] - x[:, :, 1:-1, :-2] - x[:, :, 1:-1, 2:]
    return lap.square().mean(dim=(1, 2, 3))


def split_indices(n: int, seed: int) -> dict[str, np.ndarray]:
    """Disjoint ``train`` / ``calibration`` / ``test`` indices; the last two never reach training."""
    order = np.random.default_rng(seed).permutation(n)
    held = max(1, round(n * HOLDOUT_FRACTION))
    if n < 3 * held + 1:
        raise ValueError(f"a judge needs more images than {n} to hold out a test and a calibration split")
    return {"test": order[:held], "calibration": order[held : 2 * held], "train": order[2 * held :]}


def _targets(dataset: Dataset, judge: Judge, index: np.ndarray, device: torch.device) -> dict[str, torch.Tensor]:
    """Labels in the heads' raw units (see :meth:`Judge.forward`)."""
    targets = {}
    for attribute, schema in judge.schemas.items():
        label = dataset.labels[attribute][index]
        if schema.kind == "categorical":
            targets[attribute] = torch.from_numpy(label.astype(np.int64)).to(device)
            continue
        value = torch.from_numpy(label.reshape(len(index), schema.dim).astype(np.float32)).to(device)
        if attribute in judge.spatial:
            targets[attribute] = (value - schema.low) / (schema.high - schema.low)
        else:
            head = judge.heads[attribute]
            targets[attribute] = (value - head.mean) / head.std
    return targets


def evaluate(judge: Judge, dataset: Dataset, index: np.ndarray) -> dict[str, dict[str, float]]:
    """Held-out metrics: categorical ``accuracy``; continuous ``mae`` (per coordinate), and for spatial
    attributes ``within_0.1``, the fraction within 0.1 (Euclidean) of the truth."""
    predictions = judge.predict(dataset.images[index])
    report: dict[str, dict[str, float]] = {}
    for attribute, schema in judge.schemas.items():
        truth = dataset.labels[attribute][index]
        guess = predictions[attribute]
        if schema.kind == "categorical":
            report[attribute] = {"accuracy": float((guess == truth).mean())}
            continue
        error = guess.reshape(len(index), -1) - truth.reshape(len(index), -1)
        report[attribute] = {"mae": float(np.abs(error).mean())}
        if is_image_point(schema):
            report[attribute][f"within_{WITHIN:g}"] = float((np.linalg.norm(error, axis=1) <= WITHIN).mean())
    return report


@torch.no_grad()
def _refresh_batch_norm(judge: Judge, images: np.ndarray, batch_size: int) -> None:
    """Recompute batch-norm statistics with the final weights (an exact average, not a lagging one).

    Short runs moved the weights faster than the running averages followed: held-out accuracy fell
    far below training accuracy until the statistics were refreshed.
    """
    norms = [m for m in judge.modules() if isinstance(m, nn.BatchNorm2d)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
    judge.train()
    for start in range(0, len(images), batch_size):
        judge(images_to_tensor(images[start : start + batch_size], judge.grid.device))
    for norm in norms:
        norm.momentum = 0.1
    judge.eval()


def train_judge(
    dataset: Dataset,
    *,
    epochs: int = DEFAULT_EPOCHS,
    seed: int = 0,
    device: torch.device | str = "cpu",
    on_epoch: EpochCallback | None = None,
    batch_size: int = 64,
    lr: float = 3e-3,
    channels: Sequence[int] = DEFAULT_CHANNELS,
    on_step: Progress | None = None,
) -> tuple[Judge, dict[str, Any]]:
    """Train a judge on ``dataset``'s train split; report metrics on a test split it never saw.

    ``on_epoch(epoch, record)`` is called after each epoch (1-based) with the mean losses, ``on_step(done,
    total)`` after each optimiser step of the whole run. The report
    holds ``attributes`` (see :func:`evaluate`), ``realism`` (calibration and the test split's pass
    rate), split sizes, ``seconds`` and the settings.
    """
    device = torch.device(device)
    started = time.perf_counter()
    torch.manual_seed(seed)
    splits = split_indices(len(dataset), seed)
    train = splits["train"]
    judge = Judge(dataset.schemas, dataset.image_size, channels).to(device)
    # Continuous losses are in units of the label variance, so each attribute weighs like a classification.
    variance = {}
    for attribute, schema in judge.schemas.items():
        if schema.kind == "continuous":
            value = dataset.labels[attribute][train].astype(np.float64).reshape(len(train), schema.dim)
            std = np.maximum(value.std(axis=0), 1e-6 * (schema.high - schema.low))
            if attribute in judge.spatial:
                variance[attribute] = float(np.square(std / (schema.high - schema.low)).mean())
            else:
                judge.heads[attribute].mean.copy_(torch.from_numpy(value.mean(axis=0)))
                judge.heads[attribute].std.copy_(torch.from_numpy(std))
                variance[attribute] = 1.0
    optimizer = torch.optim.AdamW(judge.parameters(), lr=lr, weight_decay=1e-4)
    steps_per_epoch = math.ceil(len(train) / batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lr, total_steps=max(1, epochs * steps_per_epoch), pct_start=0.15
    )
    rng = np.random.default_rng(seed + 1)
    for epoch in range(1, epochs + 1):
        judge.train()
        totals = {a: 0.0 for a in judge.schemas}
        order = rng.permutation(train)
        for step in range(steps_per_epoch):
            index = order[step * batch_size : (step + 1) * batch_size]
            x = images_to_tensor(dataset.images[index], device)
            targets = _targets(dataset, judge, index, device)
            out, _ = judge(x)
            losses = {}
            for attribute, schema in judge.schemas.items():
                if schema.kind == "categorical":
                    losses[attribute] = F.cross_entropy(out[attribute], targets[attribute])
                else:
                    losses[attribute] = F.mse_loss(out[attribute], targets[attribute]) / variance[attribute]
            loss = sum(losses.values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            for attribute, value in losses.items():
                totals[attribute] += float(value.detach()) / steps_per_epoch
            if on_step is not None:
                on_step((epoch - 1) * steps_per_epoch + step + 1, epochs * steps_per_epoch)
        if on_epoch is not None:
            on_epoch(epoch, {"loss": sum(totals.values()), **{f"loss_{a}": v for a, v in totals.items()}})
    _refresh_batch_norm(judge, dataset.images[np.sort(rng.permutation(train)[:BN_REFRESH])], batch_size)
    bank = np.random.default_rng(seed + 2).permutation(train)[:BANK_SIZE]
    calibration = judge.calibrate_realism(dataset.images[np.sort(bank)], dataset.images[splits["calibration"]])
    test_scores = judge.realism_scores(dataset.images[splits["test"]])
    for i, name in enumerate(REALISM_CHECKS):
        calibration[f"test_pass_rate_{name}"] = float((test_scores[name] <= float(judge.realism_thresholds[i])).mean())
    report = {
        "attributes": evaluate(judge, dataset, splits["test"]),
        "realism": calibration,
        "n_train": len(train),
        "n_calibration": len(splits["calibration"]),
        "n_test": len(splits["test"]),
        "epochs": epochs,
        "seed": seed,
        "batch_size": batch_size,
        "lr": lr,
        "seconds": time.perf_counter() - started,
        "dataset_hash": dataset.hash,
        "judge_version": JUDGE_VERSION,
    }
    return judge, report


def default_cache_dir() -> Path:
    """``$CONCEPTLIB_CACHE`` if set, else ``~/.cache/conceptlib/judges``."""
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE_DIR).expanduser()


def judge_cache_key(dataset_hash: str, epochs: int, seed: int) -> str:
    """The cache key: the data, the training settings and :data:`JUDGE_VERSION`."""
    return canonical_hash({"dataset": dataset_hash, "epochs": epochs, "seed": seed, "judge": JUDGE_VERSION})[:24]


def save_judge(judge: Judge, report: Mapping[str, Any], stem: Path) -> None:
    """Write ``stem.safetensors`` then ``stem.json`` (config, report, weights sha256), each atomically.

    The JSON is written last, so its presence means the pair is complete.
    """
    stem.parent.mkdir(parents=True, exist_ok=True)
    tensors = {name: t.detach().cpu().contiguous() for name, t in judge.state_dict().items()}
    weights = stem.with_suffix(".safetensors")
    atomic_write(weights, lambda path: save_file(tensors, str(path)))
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    document = {"judge_version": JUDGE_VERSION, "config": judge.config(), "report": dict(report), "sha256": digest}
    text = json.dumps(document, indent=2, sort_keys=True)
    atomic_write(stem.with_suffix(".json"), lambda path: path.write_text(text))


def load_judge(stem: Path, device: torch.device | str = "cpu") -> tuple[Judge, dict[str, Any]] | None:
    """The judge cached at ``stem`` and its report, or None if absent, stale or not matching its sha256."""
    meta, weights = stem.with_suffix(".json"), stem.with_suffix(".safetensors")
    try:
        document = json.loads(meta.read_text())
        data = weights.read_bytes()
    except (OSError, ValueError):
        return None
    if document.get("judge_version") != JUDGE_VERSION or hashlib.sha256(data).hexdigest() != document.get("sha256"):
        return None
    judge = Judge.from_config(document["config"])
    judge.load_state_dict(load_file(str(weights)))
    judge.to(torch.device(device)).eval()
    return judge, document["report"]


def load_or_train_judge(
    source_name: str,
    params: Mapping[str, Any],
    cache_dir: str | Path | None = None,
    device: torch.device | str = "cpu",
    progress: Progress | None = None,
    *,
    epochs: int = DEFAULT_EPOCHS,
    seed: int = 0,
    plugins: Any = None,
    on_load: Progress | None = None,
) -> tuple[Judge, dict[str, Any]]:
    """The judge for a source's dataset: from ``cache_dir`` if trained before, else trained and cached.

    ``progress(done, total)`` is called per training step (an epoch on a CPU takes minutes, so a bar per
    epoch would sit at 0 for that long) and ``on_load`` while the source renders the judge's images.
    ``plugins`` is a :class:`~conceptlib.plugins.PluginManager` (a default one is made if omitted).
    """
    if plugins is None:
        from conceptlib.plugins import PluginManager

        plugins = PluginManager()
    source = plugins.source(source_name)
    resolved = source.resolve_params(params)
    directory = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    stem = directory / f"{source_name}-{judge_cache_key(source.dataset_hash(resolved), epochs, seed)}"
    cached = load_judge(stem, device)
    if cached is not None:
        return cached
    dataset = source.load(resolved, progress=on_load)
    judge, report = train_judge(dataset, epochs=epochs, seed=seed, device=device, on_step=progress)
    report = {**report, "source": source_name, "params": resolved}
    save_judge(judge, report, stem)
    return judge, report
