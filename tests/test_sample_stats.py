"""benchmarks/sample_stats.py: the statistics that say what tells samples from renders read renders as flat.

Real renders are the fixed point (no off-hue outline, no interior spread, a background the gray plane
reproduces); each perturbation moves exactly the statistic meant to see it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from conceptlib_scenes.render import COLORS, render_scenes

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "sample_stats.py"


@pytest.fixture(scope="module")
def stats():
    spec = importlib.util.spec_from_file_location("sample_stats", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def renders(color: str | None = None, n: int = 24) -> np.ndarray:
    rng = np.random.default_rng(0)
    colors = np.full(n, COLORS.index(color)) if color else rng.integers(0, len(COLORS), n)
    return render_scenes(rng.integers(0, 3, n), colors, rng.uniform(0.3, 0.7, (n, 2)), rng.uniform(0.12, 0.15, n),
                         32, rng)


def test_real_renders_have_outlines_in_their_own_hue_and_flat_interiors(stats) -> None:
    measured = stats.statistics(renders())
    assert measured["off_hue"] < 1.0
    assert measured["interior_sd"] < 1.0
    assert measured["outline"] > 3


def test_off_hue_sees_other_hues_on_the_outline_but_not_gray(stats) -> None:
    images = renders()
    _, _, outline = stats.masks(images)
    rng = np.random.default_rng(1)
    hued = images.astype(np.float64)
    hued[outline] += rng.normal(0, 12, (int(outline.sum()), 3))  # a different offset per channel: a new hue
    grayed = images.astype(np.float64)
    grayed[outline] += rng.normal(0, 12, (int(outline.sum()), 1))  # the same offset in every channel: more gray
    hued_stats = stats.off_hue(hued.clip(0, 255).round().astype(np.uint8))
    gray_stats = stats.off_hue(grayed.clip(0, 255).round().astype(np.uint8))
    assert hued_stats["off_hue"] > 5
    assert gray_stats["off_hue"] < 1.5


def test_magenta_lean_is_the_part_of_the_off_hue_towards_magenta(stats) -> None:
    images = renders("red")
    _, _, outline = stats.masks(images)
    tinted = images.astype(np.float64)
    tinted[outline] += np.array([0.0, -10.0, 10.0])  # magenta's part off a red object's plane (blue, less green)
    measured = stats.off_hue(tinted.clip(0, 255).round().astype(np.uint8))
    assert measured["magenta_lean"] > 5
    assert measured["magenta_lean"] == pytest.approx(measured["off_hue"], rel=0.2)
    assert abs(stats.off_hue(images)["magenta_lean"]) < 1


def test_ideal_backgrounds_keep_the_renderers_lighting_and_replace_noise(stats) -> None:
    images = renders()
    inside, _, outline = stats.masks(images)
    background = ~(inside | outline)
    ideal = stats.ideal_backgrounds(images)
    error = np.abs(ideal.astype(int) - images)[background]
    # the renderer's background is that plane, but for pixels the object covers too little to count as outline
    assert error.mean() < 0.1 and np.percentile(error, 99) <= 1
    assert np.array_equal(ideal[~background], images[~background])
    noisy = (images + np.random.default_rng(2).normal(0, 8, images.shape)).clip(0, 255).round().astype(np.uint8)
    cleaned = stats.ideal_backgrounds(noisy)
    noisy_inside, _, noisy_outline = stats.masks(noisy)
    replaced = background & ~(noisy_inside | noisy_outline)  # background in both, so the plane was written there
    assert np.abs(cleaned.astype(int) - images)[replaced].mean() < 2
