"""The dataset cache: a round trip keeps every array and schema, and a bad file is rebuilt, never trusted."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conceptlib.datacache import cache_stem, cached_dataset, dataset_cache_dir, load_dataset
from conceptlib.schema import Categorical, Continuous
from conceptlib.sources import Dataset


def tiny(digest: str = "ab" * 32) -> Dataset:
    rng = np.random.default_rng(0)
    return Dataset(
        images=rng.integers(0, 256, size=(5, 8, 8, 3), dtype=np.uint8),
        labels={"color": np.array([0, 1, 2, 1, 0]), "position": rng.random((5, 2), dtype=np.float32)},
        schemas={
            "color": Categorical(values=("red", "green", "blue")),
            "position": Continuous(names=("x", "y"), spatial=True),
        },
        hash=digest,
    )


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CONCEPTLIB_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def counted(dataset: Dataset) -> tuple[list[int], object]:
    calls: list[int] = []

    def build() -> Dataset:
        calls.append(1)
        return dataset

    return calls, build


def test_the_cache_directory_comes_from_the_environment(cache: Path) -> None:
    assert dataset_cache_dir() == cache


def test_a_second_load_comes_from_disk_with_equal_arrays_and_schemas() -> None:
    original = tiny()
    calls, build = counted(original)
    cached_dataset("fake", original.hash, build)
    progress: list[tuple[int, int]] = []
    again = cached_dataset("fake", original.hash, build, progress=lambda done, total: progress.append((done, total)))
    assert calls == [1] and progress == [(5, 5)]
    assert again.images.tobytes() == original.images.tobytes()
    for name, labels in original.labels.items():
        assert np.array_equal(again.labels[name], labels) and again.labels[name].dtype == labels.dtype
    assert again.schemas == original.schemas and again.hash == original.hash


def test_another_hash_is_another_entry() -> None:
    calls, build = counted(tiny())
    cached_dataset("fake", "ab" * 32, build)
    cached_dataset("fake", "cd" * 32, build)
    assert calls == [1, 1]


def test_a_truncated_archive_is_rebuilt() -> None:
    original = tiny()
    calls, build = counted(original)
    cached_dataset("fake", original.hash, build)
    archive = cache_stem("fake", original.hash).with_suffix(".npz")
    archive.write_bytes(archive.read_bytes()[:100])
    assert load_dataset(cache_stem("fake", original.hash), original.hash) is None
    cached_dataset("fake", original.hash, build)
    assert calls == [1, 1]


def test_archives_hold_no_pickled_objects() -> None:
    original = tiny()
    cached_dataset("fake", original.hash, counted(original)[1])
    with np.load(cache_stem("fake", original.hash).with_suffix(".npz"), allow_pickle=False) as archive:
        assert all(archive[key].dtype != object for key in archive.files)


def test_an_unwritable_cache_warns_and_still_returns_the_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("CONCEPTLIB_CACHE", str(blocker))
    original = tiny()
    with pytest.warns(UserWarning, match="could not cache"):
        assert cached_dataset("fake", original.hash, counted(original)[1]) is original
