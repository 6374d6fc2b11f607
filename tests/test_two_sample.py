"""The two-sample realism test: real renders matched to what was asked, and a critic that can tell."""

from __future__ import annotations

import numpy as np
import pytest

from conceptlib.plugins import PluginManager
from conceptlib.two_sample import NOT_POSITION_AWAY, match_real, repeated_two_sample_accuracy, two_sample_accuracy


def renders(seed: int, n: int, size: int = 16) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    source = PluginManager().source("scenes")
    data = source.load(source.resolve_params({"n": n, "seed": seed, "image_size": size}))
    return data.images, dict(data.labels)


def pool_index(pool: np.ndarray, images: np.ndarray) -> list[int]:
    """Which pool image each matched image is."""
    return [int(np.flatnonzero((pool == image).all(axis=(1, 2, 3)))[0]) for image in images]


def test_real_renders_show_what_each_sample_was_asked():
    pool, labels = renders(1, 4000)
    rng = np.random.default_rng(0)
    targets = {"position": rng.uniform(0.2, 0.8, (20, 2)), "color": rng.integers(0, 6, 20),
               "not_shape": rng.integers(0, 3, 20)}
    matched = match_real(targets, pool, labels, rng)
    index = pool_index(pool, matched.images)
    assert len(set(index)) == 20  # no real render used twice
    assert (labels["color"][index] == targets["color"]).all()
    assert (labels["shape"][index] != targets["not_shape"]).all()
    error = np.linalg.norm(labels["position"][index] - targets["position"], axis=1)
    assert error.mean() == pytest.approx(matched.position_error) and matched.position_error < 0.05


def test_or_pairs_follow_the_first_modes_share_and_not_position_stays_away():
    pool, labels = renders(2, 4000)
    rng = np.random.default_rng(0)
    targets = {"mode1": np.full((200, 2), 0.3), "mode2": np.full((200, 2), 0.7)}
    matched = match_real(targets, pool, labels, rng, first_mode_share=0.2)
    index = pool_index(pool, matched.images)
    near_first = np.linalg.norm(labels["position"][index] - 0.3, axis=1) < 0.1
    assert 0.12 < near_first.mean() < 0.28
    away = match_real({"not_position": np.full((50, 2), 0.5)}, pool, labels, rng)
    index = pool_index(pool, away.images)
    assert (np.linalg.norm(labels["position"][index] - 0.5, axis=1) >= NOT_POSITION_AWAY).all()


def test_a_pool_without_a_match_is_a_clear_error():
    pool, labels = renders(3, 10)
    with pytest.raises(ValueError, match="larger pool"):
        match_real({"color": np.zeros(20, int)}, pool, labels, np.random.default_rng(0))
    with pytest.raises(ValueError, match="no 'size' label"):
        match_real({"size": np.zeros(2, int)}, pool, {"color": labels["color"]}, np.random.default_rng(0))


def test_the_critic_cannot_tell_real_from_real_but_sees_faint_speckle():
    a, _ = renders(11, 240)
    b, _ = renders(12, 240)
    same = two_sample_accuracy(a, b, seed=0)
    assert same["accuracy"] <= 0.62, same
    speckle = np.random.default_rng(0).integers(-10, 11, a.shape)
    noisy = np.clip(a.astype(np.int16) + speckle, 0, 255).astype(np.uint8)
    told = two_sample_accuracy(noisy, b, seed=0)
    assert told["accuracy"] >= 0.9, told
    with pytest.raises(ValueError, match="pair one to one"):
        two_sample_accuracy(a[:5], b[:6])


def test_a_high_pass_critic_sees_speckle_on_the_object_alone():
    a, _ = renders(11, 240)
    b, _ = renders(12, 240)
    mask = ((a.max(axis=3).astype(np.int16) - a.min(axis=3)) > 30)[..., None]
    speckle = np.random.default_rng(0).integers(-32, 33, a.shape) * mask
    noisy = np.clip(a.astype(np.int16) + speckle, 0, 255).astype(np.uint8)
    assert two_sample_accuracy(noisy, b, seed=0, high_pass=True)["accuracy"] >= 0.75  # 0.84 here
    assert two_sample_accuracy(a, b, seed=0, high_pass=True)["accuracy"] <= 0.62


def test_repeated_critics_average_their_seeds():
    a, _ = renders(11, 60)
    b, _ = renders(12, 60)
    speckle = np.random.default_rng(0).integers(-6, 7, a.shape)
    noisy = np.clip(a.astype(np.int16) + speckle, 0, 255).astype(np.uint8)
    each = [two_sample_accuracy(noisy, b, seed=seed, steps=40)["accuracy"] for seed in (3, 4, 5)]
    finished: list[int] = []
    repeated = repeated_two_sample_accuracy(noisy, b, (3, 4, 5), on_critic=finished.append, steps=40)
    assert finished == [1, 2, 3]  # a progress bar's steps, one per critic
    assert repeated["accuracy"] == pytest.approx(np.mean(each)) and repeated["critics"] == 3
    assert (repeated["accuracy_min"], repeated["accuracy_max"]) == (min(each), max(each))
    assert len(set(each)) > 1  # the seeds do differ: otherwise the average would hide nothing
    with pytest.raises(ValueError, match="at least one critic seed"):
        repeated_two_sample_accuracy(noisy, b, ())
