"""The ``mujoco`` source: labels obey each variant, pixels agree with labels, renders are cached.

Label tests are pure numpy and always run; rendering tests skip where MuJoCo is not installed or cannot
open an offscreen OpenGL context.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conceptlib.errors import PluginError, SourceParamError
from conceptlib.plugins import PluginManager
from conceptlib_mujoco import source as source_module
from conceptlib_mujoco.camera import project, unproject
from conceptlib_mujoco.source import MujocoSource
from conceptlib_mujoco.variants import (
    CLUTTER_SIZE,
    COLORS,
    LIGHT,
    PALETTE,
    SHAPES,
    TRAINING_COLORS,
    Scenes,
    draw_scenes,
    in_corner,
    large_size,
)
from tests.conftest import TINY_TRAINING, Run, assert_one_line_error

SOURCE = MujocoSource()


def scenes(n: int = 400, seed: int = 0, **given: Any) -> tuple[Scenes, dict[str, Any]]:
    params = SOURCE.resolve_params(given)
    return draw_scenes(n, params, np.random.default_rng(seed)), params


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CONCEPTLIB_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def renderable() -> None:
    """Skip unless MuJoCo is installed and renders offscreen here."""
    pytest.importorskip("mujoco")
    from conceptlib_mujoco.render import render_scenes

    try:
        render_scenes(scenes(1)[0], 16)
    except PluginError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def rendered(renderable: None) -> tuple[Scenes, np.ndarray]:
    """Eight 64x64 scenes without clutter, rendered directly (no cache)."""
    from conceptlib_mujoco.render import render_scenes

    drawn = scenes(8, seed=3)[0]
    return drawn, render_scenes(drawn, 64)


def chroma(images: np.ndarray) -> np.ndarray:
    """Max minus min channel: near zero on the gray floor and its shadows, high on colored objects."""
    pixels = images.astype(np.int64)
    return (pixels.max(axis=-1) - pixels.min(axis=-1)).astype(np.float64)


# ------------------------------------------------------------------ labels (no MuJoCo needed)
def test_unproject_inverts_project_at_any_height() -> None:
    rng = np.random.default_rng(0)
    labels, height = rng.uniform(0, 1, size=(50, 2)), rng.uniform(0, 0.3, size=50)
    points = unproject(labels, height)
    assert np.allclose(points[:, 2], height)
    assert np.allclose(project(points), labels)


def test_the_top_of_the_image_is_the_far_side_of_the_floor() -> None:
    near, far = unproject(np.array([[0.5, 0.9], [0.5, 0.1]]), np.zeros(2))
    assert far[1] > near[1]


def test_default_labels_stay_within_the_params_ranges() -> None:
    drawn = scenes()[0]
    assert set(drawn.shape) == set(range(len(SHAPES)))
    assert set(drawn.color) == {COLORS.index(c) for c in TRAINING_COLORS}
    assert drawn.position.min() >= 0.2 and drawn.position.max() <= 0.8
    assert drawn.size.min() >= 0.10 and drawn.size.max() <= 0.15
    elevation, intensity = drawn.light[:, 1] * 90, drawn.light[:, 2]
    assert elevation.min() >= LIGHT["elevation"][0] and elevation.max() <= LIGHT["elevation"][1]
    assert intensity.min() >= LIGHT["intensity"][0] and intensity.max() <= LIGHT["intensity"][1]
    assert drawn.clutter_shape.shape == (400, 0)


def test_clutter_never_shares_the_central_color_nor_touches_the_central_object() -> None:
    drawn, params = scenes(200, clutter=5)
    assert drawn.clutter_color.shape == (200, 5)
    assert not (drawn.clutter_color == drawn.color[:, None]).any()
    assert drawn.clutter_color.max() < len(TRAINING_COLORS)
    assert drawn.clutter_size.max() <= CLUTTER_SIZE[1] * params["size_low"]
    centre = unproject(drawn.position, drawn.size[:, 0])
    gap = np.hypot(*(drawn.clutter_floor[..., :2] - centre[:, None, :2]).transpose(2, 0, 1))
    assert (gap > (drawn.clutter_size + drawn.size) * math.sqrt(2)).all()


def test_cube_variant_is_one_green_cube_among_clutter_that_is_not_green() -> None:
    drawn, params = scenes(100, variant="cube")
    assert params["clutter"] == 6
    assert set(drawn.shape) == {SHAPES.index("cube")} and set(drawn.color) == {COLORS.index("green")}
    assert COLORS.index("green") not in set(drawn.clutter_color.ravel())


def test_extrapolation_shows_small_spheres_only_in_the_top_right_corner() -> None:
    drawn, params = scenes(4000, variant="extrapolation", corner=0.1)
    assert set(drawn.shape) == {SHAPES.index("sphere")}
    corner = in_corner(drawn.position, params)
    small = drawn.size[:, 0] < large_size(params)
    assert small.any() and not (small & ~corner).any()
    assert corner.mean() == pytest.approx(0.1, abs=0.02)
    assert (drawn.position[corner, 0] >= 0.8 - math.sqrt(0.1) * 0.6 - 1e-6).all()
    assert (drawn.position[corner, 1] <= 0.2 + math.sqrt(0.1) * 0.6 + 1e-6).all()


@pytest.mark.parametrize("variant", ["unseen-color", "unseen-size", "unseen-light", "unseen-type"])
def test_each_unseen_test_set_lies_outside_its_training_distribution(variant: str) -> None:
    given = {"shapes": "sphere,cube"}
    train, _ = scenes(300, **given)
    test, _ = scenes(300, seed=1, variant=variant, **given)
    changed = {
        "unseen-color": not set(test.color) & set(train.color),
        "unseen-size": test.size.min() > 0.15 >= train.size.max(),
        "unseen-light": test.light[:, 1].max() * 90 < LIGHT["elevation"][0]
        and test.light[:, 2].min() > LIGHT["intensity"][1],
        "unseen-type": set(test.shape) == {SHAPES.index("cylinder")},
    }
    assert changed[variant]
    kept = {
        "color": set(test.color) == set(train.color),
        "size": test.size.max() <= 0.15,
        "light": test.light[:, 1].min() * 90 >= LIGHT["elevation"][0],
        "type": set(test.shape) == set(train.shape),
    }
    assert all(same for factor, same in kept.items() if factor != variant.removeprefix("unseen-"))


def test_a_variant_changes_defaults_but_given_params_win() -> None:
    params = SOURCE.resolve_params({"variant": "cube", "clutter": "2"})
    assert params["clutter"] == 2 and params["shapes"] == "cube" and params["colors"] == "green"


def test_resolving_is_idempotent_for_every_variant() -> None:
    for variant in ("scene", "cube", "extrapolation"):
        once = SOURCE.resolve_params({"variant": variant})
        assert SOURCE.resolve_params(once) == once
    assert "corner" not in SOURCE.resolve_params({}) and "corner" in SOURCE.resolve_params({"variant": "extrapolation"})


@pytest.mark.parametrize(
    ("given", "named"),
    [
        ({"variant": "moon"}, "variant"),
        ({"corner": 0.2}, "corner"),
        ({"variant": "extrapolation", "corner": 0}, "corner"),
        ({"image_size": 8}, "image_size"),
        ({"clutter": 40}, "clutter"),
        ({"size_high": 0.3}, "size_high"),
        ({"shapes": "sphere,torus"}, "shapes"),
        ({"colors": "red,red"}, "colors"),
        ({"variant": "unseen-size", "size_low": 0.05, "size_high": 0.15}, "size_high"),
        ({"variant": "unseen-type"}, "shapes=sphere,cylinder"),
        ({"variant": "unseen-color", "colors": ",".join(COLORS)}, "colors"),
    ],
)
def test_bad_params_are_refused_naming_the_param(given: dict[str, Any], named: str) -> None:
    with pytest.raises(SourceParamError, match=named):
        SOURCE.resolve_params(given)


def test_a_crowded_scene_is_a_param_error_not_an_endless_loop() -> None:
    with pytest.raises(SourceParamError, match="clutter"):
        scenes(3, clutter=12, size_low=0.25, size_high=0.25)


@pytest.mark.parametrize(
    "command",
    [("source", "sample", "mujoco", "-n", "2", "--out-dir", "{tmp}"), ("add", "position", "--source", "mujoco")],
)
def test_without_mujoco_the_cli_says_how_to_install_it(
    run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: tuple[str, ...]
) -> None:
    monkeypatch.setitem(sys.modules, "mujoco", None)  # makes `import mujoco` fail
    result = run(*(arg.format(tmp=tmp_path) for arg in command))
    assert_one_line_error(result, "needs MuJoCo, which is not installed: pip install 'conceptlib[mujoco]'")


def test_the_source_is_registered_through_its_entry_point() -> None:
    assert isinstance(PluginManager().source("mujoco"), MujocoSource)


# ------------------------------------------------------------------ rendering
def test_renders_are_uint8_images_of_the_requested_size(renderable: None) -> None:
    dataset = SOURCE.load(SOURCE.resolve_params({"n": 4, "image_size": 32, "clutter": 2}))
    assert dataset.images.shape == (4, 32, 32, 3) and dataset.images.dtype == np.uint8
    assert dataset.labels["position"].shape == (4, 2) and dataset.labels["light"].shape == (4, 3)
    assert len(set(dataset.images.reshape(4, -1).sum(1))) == 4


def test_the_object_appears_where_its_position_label_says(rendered: tuple[Scenes, np.ndarray]) -> None:
    drawn, images = rendered
    covered = (chroma(images) > 20).astype(np.float64)  # the object, lit or shaded; not the gray floor
    grid = (np.arange(64) + 0.5) / 64
    total = covered.sum(axis=(1, 2))
    x = (covered * grid[None, None, :]).sum(axis=(1, 2)) / total
    y = (covered * grid[None, :, None]).sum(axis=(1, 2)) / total
    assert np.abs(np.stack([x, y], axis=1) - drawn.position).max() < 0.02  # under 1.3 pixels


def test_the_object_has_its_labelled_color(rendered: tuple[Scenes, np.ndarray]) -> None:
    drawn, images = rendered
    for image, color in zip(images, drawn.color):
        pixels = image[chroma(image[None])[0] > 60].astype(np.float64).mean(axis=0)
        assert np.array_equal(pixels > 0.5 * pixels.max(), PALETTE[color] > 0.5), COLORS[color]


def test_the_same_params_render_the_same_bytes(renderable: None, cache: Path) -> None:
    params = SOURCE.resolve_params({"n": 3, "image_size": 16, "clutter": 1})
    first = SOURCE.load(params)
    for path in cache.iterdir():
        path.unlink()
    assert SOURCE.load(params).images.tobytes() == first.images.tobytes()


def test_a_second_load_is_read_from_the_cache_without_rendering(
    renderable: None, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    renders: list[int] = []
    real = source_module.render_scenes
    monkeypatch.setattr(source_module, "render_scenes", lambda *a, **k: renders.append(1) or real(*a, **k))
    params = SOURCE.resolve_params({"n": 4, "image_size": 16})
    progress: list[tuple[int, int]] = []
    first = SOURCE.load(params, progress=lambda done, total: progress.append((done, total)))
    second = SOURCE.load(params, progress=lambda done, total: progress.append((done, total)))
    assert renders == [1] and progress == [(4, 4), (4, 4)]
    assert second.images.tobytes() == first.images.tobytes() and second.hash == first.hash
    assert [p.suffix for p in sorted(cache.iterdir())] == [".json", ".npz"]
    assert first.hash[:24] in next(cache.iterdir()).name


def test_the_hash_tracks_params_however_spelled(renderable: None) -> None:
    assert SOURCE.dataset_hash({"image_size": "64", "size_low": "0.1"}) == SOURCE.dataset_hash({})
    assert SOURCE.dataset_hash({"clutter": 1}) != SOURCE.dataset_hash({})
    assert SOURCE.dataset_hash({"variant": "cube"}) == SOURCE.dataset_hash(
        {"variant": "cube", "shapes": "cube", "colors": "green", "clutter": 6}
    )


def test_a_concept_trained_on_renders_records_their_dataset_hash(renderable: None, run: Run) -> None:
    source = ["--source", "mujoco", "--param", "n=12", "--param", "image_size=16", "--param", "clutter=1"]
    result = run("add", "position", *source, "--objective", "cd", *TINY_TRAINING)
    assert result.exit_code == 0, result.output
    shown = json.loads(run("show", "position", "--json").output)
    params = {"n": 12, "image_size": 16, "clutter": 1}
    assert shown["dataset_hash"] == SOURCE.dataset_hash(params)
    assert shown["source"] == "mujoco" and shown["source_params"] == SOURCE.resolve_params(params)


def test_no_offscreen_opengl_is_one_error_naming_the_backend_and_packages(
    renderable: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mujoco

    def refuse(*_args: object) -> None:
        raise RuntimeError("Cannot initialize a EGL device display")

    monkeypatch.setattr(mujoco, "Renderer", refuse)
    with pytest.raises(PluginError, match=r"MUJOCO_GL=.*apt-get install libegl1"):
        SOURCE.load(SOURCE.resolve_params({"n": 1, "image_size": 16}))
