"""The ``imagefolder`` source on tiny folders built here: CelebA's layout and the CSV layout."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conceptlib.errors import SourceError, SourceParamError
from conceptlib.plugins import PluginManager
from conceptlib.schema import Categorical, Continuous
from conceptlib_imagefolder import source as source_module
from conceptlib_imagefolder.source import ImageFolderSource
from tests.conftest import TINY_TRAINING, Run, assert_one_line_error

SOURCE = ImageFolderSource()
RED, BLUE, GREEN = (220, 30, 30), (30, 30, 220), (30, 200, 30)
CELEBA_ROWS = [  # file, 5_o_Clock_Shadow, Smiling, Male
    ("000001.jpg", 1, -1, 1),
    ("000002.jpg", -1, 1, -1),
    ("000003.jpg", -1, 1, 1),
    ("000004.jpg", 1, -1, -1),
    ("000005.jpg", -1, -1, 1),
]


def face(size: tuple[int, int], inner: int, color: tuple[int, int, int]) -> Image.Image:
    """A ``size`` picture in blue with a centred ``inner`` square of ``color``: what a centre crop keeps."""
    picture = Image.new("RGB", size, BLUE)
    left, top = (size[0] - inner) // 2, (size[1] - inner) // 2
    picture.paste(Image.new("RGB", (inner, inner), color), (left, top))
    return picture


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CONCEPTLIB_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def celeba(tmp_path: Path) -> Path:
    """CelebA's own layout: 178x218 JPEGs, the face (red when smiling, green not) a little wider than the crop."""
    root = tmp_path / "celeba"
    (root / "img_align_celeba").mkdir(parents=True)
    lines = [str(len(CELEBA_ROWS)), "5_o_Clock_Shadow Smiling Male "]
    for file, *values in CELEBA_ROWS:
        face((178, 218), 150, RED if values[1] == 1 else GREEN).save(root / "img_align_celeba" / file, quality=95)
        lines.append(file + "".join(f" {v:2d}" for v in values))
    (root / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """The CSV layout: PNGs of two sizes, a text column and a number column."""
    root = tmp_path / "folder"
    (root / "images").mkdir(parents=True)
    rows = [("a.png", "Blond Hair", 31), ("b.png", "black", 18.5), ("c.png", "Blond Hair", 64)]
    for file, _, _ in rows:
        face((60, 40), 40, RED).save(root / "images" / file)
    (root / "labels.csv").write_text("filename,Hair Color,age\n" + "".join(f"{f},{h},{a}\n" for f, h, a in rows))
    return root


def load(root: Path, **given: object):
    return SOURCE.load(SOURCE.resolve_params({"root": str(root), "image_size": 32, **given}))


def test_celeba_layout_is_detected_and_each_attribute_is_no_or_yes(celeba: Path) -> None:
    params = SOURCE.resolve_params({"root": str(celeba)})
    assert params["layout"] == "celeba" and params["crop"] == 140
    assert SOURCE.attributes(params) == {
        name: Categorical(values=("no", "yes")) for name in ("_5_o_clock_shadow", "smiling", "male")
    }
    dataset = load(celeba)
    assert dataset.images.shape == (5, 32, 32, 3) and dataset.images.dtype == np.uint8
    assert dataset.labels["smiling"].tolist() == [0, 1, 1, 0, 0]
    assert dataset.label_record(1) == {"_5_o_clock_shadow": "no", "smiling": "yes", "male": "no"}


def test_the_centre_crop_keeps_the_face_and_drops_the_border(celeba: Path) -> None:
    images = load(celeba).images.astype(np.int64)
    smiling = np.array([values[1] == 1 for _, *values in CELEBA_ROWS])
    red, green, blue = images[..., 0].mean((1, 2)), images[..., 1].mean((1, 2)), images[..., 2].max((1, 2))
    assert (red[smiling] > 200).all() and (green[~smiling] > 180).all()
    assert (blue < 60).all()  # no border pixel survived the crop
    wide = load(celeba, crop=178).images
    assert wide[:, :, 0, 2].mean() > 150  # a crop as wide as the image keeps the blue sides


def test_csv_numbers_are_continuous_and_text_is_categorical(folder: Path) -> None:
    params = SOURCE.resolve_params({"root": str(folder)})
    assert params["layout"] == "csv" and params["crop"] == 0
    assert SOURCE.attributes(params) == {
        "hair_color": Categorical(values=("black", "blond_hair")),
        "age": Continuous(names=("age",), low=18.5, high=64.0),
    }
    dataset = load(folder)
    assert dataset.labels["hair_color"].tolist() == [1, 0, 1]
    assert dataset.labels["age"].dtype == np.float32 and dataset.labels["age"][:, 0].tolist() == [31, 18.5, 64]
    assert (dataset.images[..., 0] > 200).all()  # the largest centred square of a 60x40 image is its red middle


def test_n_and_attributes_choose_rows_and_columns(celeba: Path) -> None:
    dataset = load(celeba, n=2, attributes="Smiling")
    assert len(dataset) == 2 and list(dataset.labels) == ["smiling"] and list(dataset.schemas) == ["smiling"]


def test_a_second_load_is_read_from_the_cache(celeba: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[int] = []
    real = source_module.read_images
    monkeypatch.setattr(source_module, "read_images", lambda *a, **k: reads.append(1) or real(*a, **k))
    first, second = load(celeba), load(celeba)
    assert reads == [1] and second.images.tobytes() == first.images.tobytes()


def test_the_hash_follows_the_files_not_where_the_folder_lives(celeba: Path, tmp_path: Path) -> None:
    params = {"root": str(celeba)}
    before = SOURCE.dataset_hash(params)
    copy = shutil.copytree(celeba, tmp_path / "copy", copy_function=shutil.copy2)  # keeps sizes and times
    assert SOURCE.dataset_hash({"root": str(copy)}) == before
    image = celeba / "img_align_celeba" / "000002.jpg"
    os.utime(image, ns=(image.stat().st_atime_ns, image.stat().st_mtime_ns + 10**9))
    assert SOURCE.dataset_hash(params) != before
    assert SOURCE.dataset_hash({**params, "n": 1}) != SOURCE.dataset_hash({**params, "n": 2})


@pytest.mark.parametrize(
    ("given", "error", "named"),
    [
        ({"root": ""}, SourceParamError, "root=DIR"),
        ({"root": "{tmp}/nowhere"}, SourceParamError, "nowhere is not a directory"),
        ({"root": "{tmp}"}, SourceParamError, "list_attr_celeba.txt"),
        ({"root": "{celeba}", "layout": "csv"}, SourceParamError, "labels.csv, which is missing"),
        ({"root": "{celeba}", "layout": "lmdb"}, SourceParamError, "layout"),
        ({"root": "{celeba}", "attributes": "smiling,wings"}, SourceParamError, "no attribute 'wings'"),
        ({"root": "{celeba}", "crop": 300}, SourceError, "smaller than crop=300"),
        ({"root": "{celeba}", "image_size": 4}, SourceParamError, "image_size"),
    ],
)
def test_bad_input_is_one_clear_error(
    celeba: Path, tmp_path: Path, given: dict[str, object], error: type[Exception], named: str
) -> None:
    given = {k: v.format(tmp=tmp_path, celeba=celeba) if isinstance(v, str) else v for k, v in given.items()}
    with pytest.raises(error, match=named):
        SOURCE.load(SOURCE.resolve_params(given))


def test_an_unreadable_image_is_named(celeba: Path) -> None:
    (celeba / "img_align_celeba" / "000003.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(SourceError, match=r"000003\.jpg"):
        load(celeba)


def test_a_missing_image_is_named(celeba: Path) -> None:
    (celeba / "img_align_celeba" / "000004.jpg").unlink()
    with pytest.raises(SourceError, match=r"000004\.jpg"):
        load(celeba)


def test_a_bad_attribute_value_names_its_line(celeba: Path) -> None:
    table = celeba / "list_attr_celeba.txt"
    table.write_text(table.read_text().replace("000003.jpg -1  1  1", "000003.jpg -1  0  1"))
    with pytest.raises(SourceError, match="line 5"):
        load(celeba)


def test_a_csv_without_a_filename_column_says_so(folder: Path) -> None:
    (folder / "labels.csv").write_text("name,age\na.png,3\n")
    with pytest.raises(SourceError, match="filename"):
        load(folder)


def test_the_source_is_registered_through_its_entry_point() -> None:
    assert isinstance(PluginManager().source("imagefolder"), ImageFolderSource)


def test_cli_trains_a_celeba_attribute_and_records_the_dataset_hash(celeba: Path, run: Run) -> None:
    source = ["--source", "imagefolder", "--param", f"root={celeba}", "--param", "image_size=16"]
    result = run("add", "smiling", *source, "--objective", "cd", *TINY_TRAINING)
    assert result.exit_code == 0, result.output
    shown = json.loads(run("show", "smiling", "--json").output)
    assert shown["dataset_hash"] == SOURCE.dataset_hash({"root": str(celeba), "image_size": 16})
    assert shown["source_params"]["root"] == str(celeba.resolve())


def test_cli_samples_the_folder_with_its_labels(celeba: Path, run: Run, tmp_path: Path) -> None:
    result = run("source", "sample", "imagefolder", "-n", "2", "--out-dir", str(tmp_path / "out"),
                 "--param", f"root={celeba}", "--param", "attributes=smiling")
    assert result.exit_code == 0, result.output
    labels = [json.loads(line) for line in (tmp_path / "out" / "labels.jsonl").read_text().splitlines()]
    assert labels == [{"file": "imagefolder_00000.png", "smiling": "no"},
                      {"file": "imagefolder_00001.png", "smiling": "yes"}]


def test_cli_names_a_missing_root_in_one_line(run: Run, tmp_path: Path) -> None:
    result = run("add", "smiling", "--source", "imagefolder", "--param", f"root={tmp_path / 'nowhere'}")
    assert_one_line_error(result, "nowhere is not a directory")
