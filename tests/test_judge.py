"""The judge: held-out accuracy, realism against noise, and a pickle-free cache.

One tiny judge (1,500 renders at 32x32, 2 short epochs, seeded) is trained once for the module; the
assertions leave wide margins, since they test the plumbing, not the last point of accuracy.
"""

from __future__ import annotations

import json
import pickle
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from conceptlib import judge as judge_module
from conceptlib.imaging import images_to_tensor
from conceptlib.judge import (
    Judge,
    default_cache_dir,
    high_frequency_energy,
    judge_cache_key,
    load_judge,
    load_or_train_judge,
    split_indices,
)
from conceptlib.plugins import PluginManager
from conceptlib.sources import Dataset

PARAMS = {"n": 1500, "image_size": 32, "seed": 3}
EPOCHS = 2


@pytest.fixture(scope="module")
def dataset() -> Dataset:
    source = PluginManager().source("scenes")
    return source.load(source.resolve_params(PARAMS))


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    cache = tmp_path_factory.mktemp("judges")
    calls: list[tuple[int, int]] = []
    judge, report = load_or_train_judge(
        "scenes", PARAMS, cache, "cpu", progress=lambda done, total: calls.append((done, total)), epochs=EPOCHS
    )
    return {"judge": judge, "report": report, "cache": cache, "calls": calls}


def test_split_is_disjoint_and_complete() -> None:
    splits = split_indices(1000, seed=0)
    together = np.concatenate(list(splits.values()))
    assert sorted(together.tolist()) == list(range(1000))
    assert len(splits["test"]) == len(splits["calibration"]) == 100
    with pytest.raises(ValueError, match="hold out"):
        split_indices(3, seed=0)


def test_held_out_accuracy_is_far_above_chance(trained: dict[str, Any]) -> None:
    report = trained["report"]
    attributes = report["attributes"]
    assert report["n_test"] == report["n_calibration"] == 150 and report["n_train"] == 1200
    assert attributes["color"]["accuracy"] >= 0.9  # chance 1/6
    assert attributes["shape"]["accuracy"] >= 0.5  # chance 1/3
    assert attributes["position"]["within_0.1"] >= 0.9
    assert attributes["position"]["mae"] < 0.05
    assert attributes["size"]["mae"] < 0.0125  # always guessing the mean of U(0.10, 0.15) scores 0.0125
    steps = EPOCHS * -(-report["n_train"] // 64)  # the bar moves per optimiser step, not per (minutes-long) epoch
    assert trained["calls"] == [(done, steps) for done in range(1, steps + 1)]


def test_predict_reads_labels_in_source_units(trained: dict[str, Any], dataset: Dataset) -> None:
    judge: Judge = trained["judge"]
    images = dataset.images[:64]
    from_uint8 = judge.predict(images)
    from_float = judge.predict(images_to_tensor(images, torch.device("cpu")))
    assert set(from_uint8) == {"shape", "color", "position", "size"}
    for attribute, values in from_uint8.items():
        np.testing.assert_array_equal(values, from_float[attribute])
    assert from_uint8["shape"].shape == (64,) and from_uint8["shape"].dtype == np.int64
    assert from_uint8["position"].shape == (64, 2) and from_uint8["size"].shape == (64, 1)
    assert ((from_uint8["size"] >= 0.0) & (from_uint8["size"] <= 0.5)).all()
    # x is the column and y the row: a flipped image moves the prediction to the mirrored place.
    flipped = judge.predict(np.ascontiguousarray(images[:, :, ::-1]))["position"]
    np.testing.assert_allclose(flipped[:, 0], 1.0 - from_uint8["position"][:, 0], atol=0.05)
    np.testing.assert_allclose(flipped[:, 1], from_uint8["position"][:, 1], atol=0.05)


def test_realism_passes_held_out_reals_and_fails_noise(trained: dict[str, Any]) -> None:
    judge: Judge = trained["judge"]
    source = PluginManager().source("scenes")
    fresh = source.load(source.resolve_params({**PARAMS, "n": 300, "seed": 99})).images  # never seen
    assert judge.realism(fresh).mean() >= 0.9
    assert trained["report"]["realism"]["test_pass_rate_both"] >= 0.9

    rng = np.random.default_rng(0)
    uniform = rng.integers(0, 256, size=(50, 32, 32, 3), dtype=np.uint8)
    checker = np.indices((32, 32)).sum(axis=0) % 2
    checkerboards = (np.stack([checker] * 3, axis=-1)[None] * rng.integers(60, 200, size=(20, 1, 1, 3))).astype(
        np.uint8
    )
    noisy = np.clip(fresh[:50] / 255.0 + rng.normal(0.0, 0.2, size=fresh[:50].shape), 0, 1)
    noisy = (noisy * 255).astype(np.uint8)
    for name, images in [("uniform", uniform), ("checkerboard", checkerboards), ("real + noise", noisy)]:
        assert not judge.realism(images).any(), name
    scores = judge.realism_scores(uniform)
    assert set(scores) == {"knn", "high_frequency", "both"} and (scores["high_frequency"] > 10).all()
    assert not judge.realism(uniform, check="knn").any() and not judge.realism(uniform, check="high_frequency").any()
    with pytest.raises(ValueError, match="unknown realism check"):
        judge.realism(uniform, check="vibes")


def test_high_frequency_energy_ignores_smooth_lighting() -> None:
    ramp = torch.linspace(0, 1, 32).expand(1, 3, 32, 32).contiguous()
    assert float(high_frequency_energy(ramp)[0]) < 1e-10
    assert float(high_frequency_energy(torch.rand(1, 3, 32, 32))[0]) > 0.1


def test_cache_round_trip_is_fast_identical_and_pickle_free(
    trained: dict[str, Any], dataset: Dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    def forbidden(*_args: Any, **_kwargs: Any) -> Any:
        raise AssertionError("the judge cache must never unpickle")

    for module, name in [(torch, "load"), (pickle, "load"), (pickle, "loads")]:
        monkeypatch.setattr(module, name, forbidden)
    started = time.perf_counter()
    judge, report = load_or_train_judge("scenes", PARAMS, trained["cache"], "cpu", epochs=EPOCHS)
    assert time.perf_counter() - started < 1.0
    assert report == json.loads(json.dumps(trained["report"]))
    images = dataset.images[:100]
    for attribute, values in trained["judge"].predict(images).items():
        np.testing.assert_array_equal(judge.predict(images)[attribute], values)
    original = trained["judge"].realism_scores(images)["both"]
    np.testing.assert_array_equal(judge.realism_scores(images)["both"], original)

    weights = list(Path(trained["cache"]).glob("*.safetensors"))
    assert len(weights) == 1 and weights[0].with_suffix(".json").is_file()
    header = weights[0].read_bytes()
    assert header[8:9] == b"{"  # safetensors: u64 header length, then a JSON header


def test_cache_rejects_stale_or_corrupt_files(trained: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    stem = next(Path(trained["cache"]).glob("*.safetensors")).with_suffix("")
    assert load_judge(stem) is not None
    monkeypatch.setattr(judge_module, "JUDGE_VERSION", judge_module.JUDGE_VERSION + 1)
    assert load_judge(stem) is None
    monkeypatch.undo()
    corrupt = trained["cache"] / "copy"
    for suffix in (".json", ".safetensors"):
        corrupt.with_suffix(suffix).write_bytes(stem.with_suffix(suffix).read_bytes())
    data = bytearray(corrupt.with_suffix(".safetensors").read_bytes())
    data[-1] ^= 0xFF
    corrupt.with_suffix(".safetensors").write_bytes(bytes(data))
    assert load_judge(corrupt) is None


def test_cache_key_and_directory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    base = judge_cache_key("abc", epochs=3, seed=0)
    assert base == judge_cache_key("abc", epochs=3, seed=0)
    assert len({base, judge_cache_key("abd", 3, 0), judge_cache_key("abc", 4, 0), judge_cache_key("abc", 3, 1)}) == 4
    monkeypatch.setenv("CONCEPTLIB_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path
    monkeypatch.delenv("CONCEPTLIB_CACHE")
    assert default_cache_dir() == Path("~/.cache/conceptlib/judges").expanduser()
