"""Bad input a registry meets: each is refused with one clear line (exit 2), and nothing changes.

Damaged weights, a safetensors header that lies, a schema from a newer release, a file that is not a
registry, an image that is not an image, condition values a concept does not take.
"""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save as st_save

from conceptlib.registry import blobs
from tests.conftest import TINY_SAMPLING, assert_one_line_error
from tests.reliability import TINY_CD


def dump(path: Path) -> str:
    with closing(sqlite3.connect(path)) as db:
        return "\n".join(db.iterdump())


def execute(path: Path, sql: str, *parameters: object) -> None:
    with closing(sqlite3.connect(path)) as db, db:
        db.execute("PRAGMA foreign_keys = OFF")
        db.execute(sql, parameters)


@pytest.fixture
def shape(run, registry_path) -> Path:
    assert run("add", "shape", *TINY_CD).exit_code == 0
    return registry_path


def compose(run, tmp_path: Path, expression: str = "shape=circle"):
    return run("compose", expression, "-o", str(tmp_path / "grid.png"), *TINY_SAMPLING)


def replace_blob(path: Path, data: bytes) -> None:
    """Swap the version's blob for ``data`` under its true sha256, as a forger would: only content checks remain."""
    digest = blobs.sha256(data)
    execute(path, "UPDATE blobs SET data = ?, sha256 = ?, size = ?", data, digest, len(data))
    execute(path, "UPDATE versions SET weights_sha256 = ?", digest)


def stored_blob(path: Path) -> bytes:
    with closing(sqlite3.connect(path)) as db:
        return db.execute("SELECT data FROM blobs").fetchone()[0]


@pytest.mark.parametrize(
    ("damage", "fragment"),
    [
        ("flip", "corrupt"),
        ("truncate", "corrupt"),
        ("header lies about shapes", "not valid safetensors"),
        ("shapes of another network", "do not fit architecture"),
        ("header names another version", "says it belongs to"),
    ],
)
def test_damaged_weights_are_refused_and_nothing_is_written(run, shape, tmp_path, damage, fragment):
    data = stored_blob(shape)
    if damage == "flip":
        execute(shape, "UPDATE blobs SET data = ?", data[:-1] + bytes([data[-1] ^ 1]))
    elif damage == "truncate":
        execute(shape, "UPDATE blobs SET data = ?", data[: len(data) // 2])
    elif damage == "header lies about shapes":
        length = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + length])
        name = next(k for k in header if k != "__metadata__")
        header[name]["shape"] = [2 * s for s in header[name]["shape"]]
        text = json.dumps(header).encode()
        replace_blob(shape, len(text).to_bytes(8, "little") + text + data[8 + length :])
    else:
        tensors = blobs.decode(data, blobs.sha256(data), "shape@1")
        metadata = blobs.read_metadata(data)
        if damage == "shapes of another network":
            name = next(iter(tensors))
            tensors[name] = np.zeros((2, *tensors[name].shape), tensors[name].dtype)
        else:
            metadata["version"] = 7
        replace_blob(shape, st_save(tensors, metadata={k: json.dumps(v) for k, v in metadata.items()}))
    before = dump(shape)
    assert_one_line_error(compose(run, tmp_path), fragment)
    assert_one_line_error(run("add", "color", *TINY_CD, "--with", "shape"), fragment)
    assert dump(shape) == before
    assert not (tmp_path / "grid.png").exists()


def test_a_registry_from_a_newer_release_is_refused_untouched(run, shape):
    execute(shape, "UPDATE alembic_version SET version_num = '9999'")
    before = shape.read_bytes()
    for args in (["list"], ["add", "shape", *TINY_CD], ["alias", "shape", "stable"]):
        assert_one_line_error(run(*args), "schema revision 9999", "upgrade conceptlib")
    assert shape.read_bytes() == before


def test_a_condition_schema_from_a_newer_release_is_refused(run, shape, tmp_path):
    execute(shape, "UPDATE concepts SET condition_schema = ?", json.dumps({"kind": "spherical", "radius": 1}))
    before = dump(shape)
    for result in (run("show", "shape"), run("list"), compose(run, tmp_path)):
        assert_one_line_error(result, "unknown condition schema kind 'spherical'", "newer release")
    assert dump(shape) == before


@pytest.mark.parametrize(
    "content",
    [b"this is not a database, just text\n", b"SQLite format 3\x00" + b"\xff" * 5000, b"PK\x03\x04 a zip"],
    ids=["text", "sqlite header then garbage", "a zip"],
)
def test_a_registry_file_that_is_not_a_registry_is_refused_untouched(run, registry_path, content):
    registry_path.write_bytes(content)
    for args in (["list"], ["add", "shape", *TINY_CD], ["import", str(registry_path)]):
        result = run(*args)
        assert_one_line_error(result)
        assert any(word in result.output for word in ("not a SQLite database", "not a usable database"))
    assert registry_path.read_bytes() == content


@pytest.mark.parametrize(
    "content", [b"not a picture", b"\x89PNG\r\n\x1a\n" + b"\x00" * 20, b""], ids=["text", "truncated png", "empty"]
)
def test_an_image_that_is_not_an_image_is_refused(run, shape, tmp_path, content):
    bogus = tmp_path / "picture.png"
    bogus.write_bytes(content)
    before = dump(shape)
    assert_one_line_error(run("infer", "shape", str(bogus), "--device", "cpu"), "is not an image")
    assert dump(shape) == before


@pytest.mark.parametrize(
    ("expression", "fragment"),
    [("shape=hexagon", "one of circle"), ("shape=(0.5,0.5)", "shape takes one of"), ("shape=0.5", "shape takes"),
     ("position=(0.3,nan)", "expected a number"), ("position=(0.3,1e309)", "too large"),
     ("position=(0.3,-0.1)", "must lie in [0, 1]"), ("position=(0.3,0.5,0.7)", "takes 2 numbers"),
     ("position=left", "got the name")],
)
def test_a_condition_value_the_concept_does_not_take_is_refused(run, shape, tmp_path, expression, fragment):
    assert run("add", "position", *TINY_CD).exit_code == 0
    before = dump(shape)
    assert_one_line_error(compose(run, tmp_path, expression), fragment)
    assert dump(shape) == before
    assert not (tmp_path / "grid.png").exists()
