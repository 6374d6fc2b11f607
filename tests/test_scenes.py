"""The ``scenes`` source: rendered pixels agree with labels, data is seeded, the hash tracks params."""

from __future__ import annotations

import numpy as np
import pluggy
import pytest

import conceptlib_scenes
from conceptlib import hookspecs
from conceptlib.errors import SourceParamError
from conceptlib.schema import Categorical, Continuous
from conceptlib_scenes import source as source_module
from conceptlib_scenes.render import COLORS, PALETTE, SHAPES, render_scenes
from conceptlib_scenes.source import ScenesSource

SMALL = {"n": 64, "seed": 1}


@pytest.fixture(scope="module")
def scenes() -> ScenesSource:
    return ScenesSource()


@pytest.fixture(scope="module")
def small(scenes: ScenesSource):
    return scenes.load(scenes.resolve_params(SMALL))


def chroma(images: np.ndarray) -> np.ndarray:
    """Max minus min channel: zero on the gray background, coverage times the color's chroma."""
    pixels = images.astype(np.int64)
    return (pixels.max(axis=-1) - pixels.min(axis=-1)).astype(np.float64)


def test_load_gives_uint8_images_and_typed_labels_within_default_ranges(small) -> None:
    assert small.images.shape == (64, 32, 32, 3) and small.images.dtype == np.uint8
    assert small.labels["shape"].dtype == np.int64 and small.labels["color"].dtype == np.int64
    assert set(small.labels["shape"]) <= set(range(len(SHAPES)))
    assert set(small.labels["color"]) <= set(range(len(COLORS)))
    position, size = small.labels["position"], small.labels["size"]
    assert position.shape == (64, 2) and position.dtype == np.float32
    assert size.shape == (64, 1) and size.dtype == np.float32
    assert position.min() >= 0.2 and position.max() <= 0.8
    assert size.min() >= 0.10 and size.max() <= 0.15


def test_attributes_declare_shape_color_position_and_size(scenes: ScenesSource) -> None:
    schemas = scenes.attributes(scenes.resolve_params({}))
    assert schemas == {
        "shape": Categorical(values=("circle", "square", "triangle")),
        "color": Categorical(values=("red", "green", "blue", "yellow", "magenta", "cyan")),
        "position": Continuous(names=("x", "y"), low=0.0, high=1.0, spatial=True),
        "size": Continuous(names=("size",), low=0.0, high=0.5),
    }


def test_same_seed_renders_identical_bytes(scenes: ScenesSource, small) -> None:
    again = scenes.load(scenes.resolve_params(SMALL))
    assert again.images.tobytes() == small.images.tobytes()
    for name, labels in small.labels.items():
        assert again.labels[name].tobytes() == labels.tobytes()


def test_different_seed_renders_different_images(scenes: ScenesSource, small) -> None:
    other = scenes.load(scenes.resolve_params({**SMALL, "seed": 2}))
    assert other.images.tobytes() != small.images.tobytes()


def test_hash_is_equal_for_params_given_as_strings_typed_or_defaulted(scenes: ScenesSource) -> None:
    typed = scenes.resolve_params({"image_size": 32, "position_low": 0.2, "size_high": 0.15})
    strings = scenes.resolve_params({"image_size": "32", "position_low": "0.2", "size_high": "0.15"})
    assert scenes.dataset_hash(typed) == scenes.dataset_hash(strings) == scenes.dataset_hash({})


def test_hash_ignores_the_order_of_color_and_shape_names(scenes: ScenesSource) -> None:
    one = scenes.resolve_params({"colors": "red,blue", "shapes": "square,circle"})
    other = scenes.resolve_params({"colors": "blue, red", "shapes": "circle,square"})
    assert scenes.dataset_hash(one) == scenes.dataset_hash(other)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("image_size", 64),
        ("n", 19999),
        ("seed", 1),
        ("position_low", 0.25),
        ("position_high", 0.75),
        ("size_low", 0.11),
        ("size_high", 0.14),
        ("shapes", "circle,square"),
        ("colors", "red"),
    ],
)
def test_hash_changes_when_any_param_changes(scenes: ScenesSource, key: str, value: object) -> None:
    assert scenes.dataset_hash(scenes.resolve_params({key: value})) != scenes.dataset_hash({})


def test_loaded_dataset_carries_the_params_hash(scenes: ScenesSource, small) -> None:
    assert small.hash == scenes.dataset_hash(scenes.resolve_params(SMALL))


def test_resolve_params_rejects_unknown_param(scenes: ScenesSource) -> None:
    with pytest.raises(SourceParamError, match="'colour'"):
        scenes.resolve_params({"colour": "red"})


@pytest.mark.parametrize(
    ("given", "named"),
    [
        ({"image_size": 8}, "image_size"),
        ({"image_size": "200"}, "image_size"),
        ({"n": 0}, "n"),
        ({"n": "many"}, "'n'"),
        ({"n": 1.5}, "n"),
        ({"seed": -1}, "seed"),
        ({"position_low": -0.1}, "position_low"),
        ({"position_high": "1.5"}, "position_high"),
        ({"position_low": 0.9}, "position_low"),
        ({"size_low": 0.0}, "size_low"),
        ({"size_high": 0.6}, "size_high"),
        ({"size_low": 0.2, "size_high": 0.1}, "size_low"),
        ({"shapes": "circle,hexagon"}, "shapes"),
        ({"colors": ""}, "colors"),
        ({"colors": "red,red"}, "colors"),
    ],
)
def test_resolve_params_rejects_bad_values_naming_the_param(
    scenes: ScenesSource, given: dict[str, object], named: str
) -> None:
    with pytest.raises(SourceParamError, match=named):
        scenes.resolve_params(given)


def test_pixel_at_object_centre_has_the_labelled_color(small) -> None:
    for image, color, (x, y) in zip(
        small.images, small.labels["color"], small.labels["position"], strict=True
    ):
        pixel = image[int(y * 32), int(x * 32)].astype(np.float64)
        assert np.array_equal(pixel > 0.5 * pixel.max(), PALETTE[color] > 0.5), COLORS[color]


def test_colored_pixels_are_centred_on_the_labelled_position(small) -> None:
    weight = chroma(small.images)
    grid = (np.arange(32) + 0.5) / 32
    total = weight.sum(axis=(1, 2))
    x = (weight * grid[None, None, :]).sum(axis=(1, 2)) / total
    y = (weight * grid[None, :, None]).sum(axis=(1, 2)) / total
    assert np.abs(np.stack([x, y], axis=1) - small.labels["position"]).max() < 0.05


def test_background_is_gray_away_from_the_object(small) -> None:
    grid = (np.arange(32) + 0.5) / 32
    x, y = small.labels["position"][:, 0, None, None], small.labels["position"][:, 1, None, None]
    reach = small.labels["size"][:, 0, None, None] * np.sqrt(2.0)  # a square's corner is the farthest
    far = np.hypot(grid[None, None, :] - x, grid[None, :, None] - y) > reach + 1 / 32
    assert chroma(small.images)[far].max() == 0


@pytest.mark.parametrize(("shape", "area"), [("circle", np.pi), ("square", 4.0), ("triangle", 1.299)])
def test_render_scenes_draws_the_given_shape_at_the_given_size(shape: str, area: float) -> None:
    n, size, radius = 8, 64, 0.15
    images = render_scenes(
        np.full(n, SHAPES.index(shape)),
        np.arange(n) % len(COLORS),
        np.full((n, 2), 0.5),
        np.full(n, radius),
        size,
        np.random.default_rng(0),
    )
    weight = chroma(images)
    covered = weight.sum(axis=(1, 2)) / weight.max(axis=(1, 2))  # pixels, edges counted fractionally
    np.testing.assert_allclose(covered, area * (radius * size) ** 2, rtol=0.05)


def test_64_pixel_scenes_render(scenes: ScenesSource) -> None:
    dataset = scenes.load(scenes.resolve_params({"n": 8, "image_size": "64"}))
    assert dataset.images.shape == (8, 64, 64, 3) and dataset.image_size == 64


def test_progress_is_reported_per_chunk_and_reaches_total(
    scenes: ScenesSource, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(source_module, "CHUNK_PIXELS", 20 * 32 * 32)
    calls: list[tuple[int, int]] = []
    scenes.load(scenes.resolve_params(SMALL), progress=lambda done, total: calls.append((done, total)))
    assert calls == [(20, 64), (40, 64), (60, 64), (64, 64)]


def test_restricted_colors_and_shapes_limit_the_labels(scenes: ScenesSource) -> None:
    dataset = scenes.load(scenes.resolve_params({**SMALL, "colors": "blue,cyan", "shapes": "triangle"}))
    assert set(dataset.labels["color"]) == {COLORS.index("blue"), COLORS.index("cyan")}
    assert set(dataset.labels["shape"]) == {SHAPES.index("triangle")}


def test_hook_registers_the_scenes_source() -> None:
    manager = pluggy.PluginManager("conceptlib")
    manager.add_hookspecs(hookspecs)
    manager.register(conceptlib_scenes)
    (sources,) = manager.hook.conceptlib_sources()
    assert [type(source) for source in sources] == [ScenesSource]
    assert sources[0].name == "scenes"
