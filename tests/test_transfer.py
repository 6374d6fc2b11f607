"""Export and import of a concept: weights, schema, provenance and whole lineage, verified by hash."""

from __future__ import annotations

import json
import sqlite3
import zipfile
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save as st_save

from conceptlib.registry import Registry, blobs
from conceptlib.registry.transfer import seal
from tests.conftest import TINY_SAMPLING, assert_one_line_error
from tests.reliability import TINY_CD


@pytest.fixture
def exported(run, tmp_path) -> Path:
    """color@2, trained with position@1 frozen, exported from the per-test registry."""
    for args in (["position"], ["color", "--with", "position"], ["color", "--with", "position", "--seed", "1"]):
        result = run("add", *args, *TINY_CD)
        assert result.exit_code == 0, result.output
    path = tmp_path / "color.cpt"
    result = run("export", "color", "-o", str(path))
    assert result.exit_code == 0, result.output
    assert "exported color@2 with its lineage position@1" in result.output
    return path


def into(run, target: Path, *args: str):
    return run("--registry", str(target), *args)


def dump(path: Path) -> str:
    """The whole registry as SQL: equal dumps, equal registries."""
    with closing(sqlite3.connect(path)) as db:
        return "\n".join(db.iterdump())


def rewrite(source: Path, target: Path, change) -> None:
    """Copy an export file, letting ``change(name, data) -> data`` alter each member."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for name in old.namelist():
            new.writestr(name, change(name, old.read(name)))


def test_import_carries_weights_schema_provenance_and_lineage(run, exported, registry_path, tmp_path):
    target = tmp_path / "other.db"
    result = into(run, target, "import", str(exported))
    assert result.exit_code == 0, result.output
    assert "imported position@1 as position@1" in result.output and "imported color@2 as color@1" in result.output
    source, copy = Registry.open(str(registry_path)), Registry.open(str(target))
    original, imported = source.resolve("color", 2), copy.resolve("color")
    assert [str(r) for r in imported.lineage] == ["position@1"]
    for field in ("schema", "architecture", "architecture_config", "source", "source_params", "attribute",
                  "dataset_hash", "hyperparameters", "seed", "metrics"):
        assert getattr(imported, field) == getattr(original, field), field
    assert blobs.tensor_digest(copy.load_weights(imported)) == blobs.tensor_digest(source.load_weights(original))
    assert imported.origin["ref"] == "color@2" and imported.origin["weights_sha256"] == original.weights_sha256
    assert json.loads(into(run, target, "show", "color", "--json").output)["origin"]["ref"] == "color@2"
    out = tmp_path / "grid.png"
    result = into(run, target, "compose", "position=(0.3,0.7) & color=red", "-n", "1", "-o", str(out), *TINY_SAMPLING)
    assert result.exit_code == 0, result.output


def test_importing_a_file_twice_adds_nothing_the_second_time(run, exported, tmp_path):
    target = tmp_path / "other.db"
    assert into(run, target, "import", str(exported)).exit_code == 0
    before = dump(target)
    result = into(run, target, "import", str(exported))
    assert result.exit_code == 0, result.output
    assert "color@2 is already here as color@1" in result.output
    assert dump(target) == before


def test_import_numbers_after_the_targets_versions_and_keeps_its_current_lineage_concept(run, exported, tmp_path):
    target = tmp_path / "other.db"
    for seed in ("5", "6"):
        assert into(run, target, "add", "position", *TINY_CD, "--seed", seed).exit_code == 0
    result = into(run, target, "import", str(exported))
    assert "imported position@1 as position@3" in result.output and "imported color@2 as color@1" in result.output
    listed = {c["name"]: c for c in json.loads(into(run, target, "list", "--json").output)}
    assert listed["position"]["current"] == 2  # a lineage version does not take over the concept
    assert json.loads(into(run, target, "show", "color", "--json").output)["lineage"] == ["position@3"]


@pytest.mark.parametrize(
    ("damage", "fragment"),
    [
        ("flip a weight byte", "do not match their sha256"),
        ("truncate the file", "not a readable concept file"),
        ("header lies about shapes", "not valid safetensors"),
        ("shapes that do not fit", "do not fit architecture"),
        ("newer file format", "newer conceptlib"),
        ("lineage left out", "which the file does not carry"),
        ("not a zip", "not a readable concept file"),
    ],
)
def test_a_damaged_or_altered_file_is_refused_in_one_line_and_nothing_changes(run, exported, tmp_path, damage,
                                                                              fragment):
    target = tmp_path / "other.db"
    assert into(run, target, "add", "shape", *TINY_CD).exit_code == 0
    before = dump(target)
    bad = tmp_path / "bad.cpt"
    manifest = json.loads(zipfile.ZipFile(exported).read("manifest.json"))
    color = manifest["versions"][-1]
    member = f"weights/{color['weights_sha256']}.safetensors"

    def reweigh(data: bytes) -> None:
        """Give the altered weights a matching sha256 and reseal the manifest, as a forger would: only the
        content checks remain."""
        color["weights_sha256"] = blobs.sha256(data)
        with zipfile.ZipFile(exported) as old, zipfile.ZipFile(bad, "w") as new:
            for name in old.namelist():
                if name not in ("manifest.json", member):
                    new.writestr(name, old.read(name))
            new.writestr("manifest.json", json.dumps(seal(manifest)))
            new.writestr(f"weights/{color['weights_sha256']}.safetensors", data)

    original = zipfile.ZipFile(exported).read(member)
    if damage == "flip a weight byte":
        rewrite(exported, bad, lambda name, data: data[:-1] + bytes([data[-1] ^ 1]) if name == member else data)
    elif damage == "truncate the file":
        bad.write_bytes(exported.read_bytes()[: exported.stat().st_size // 2])
    elif damage == "header lies about shapes":
        length = int.from_bytes(original[:8], "little")
        header = json.loads(original[8 : 8 + length])
        name = next(k for k in header if k != "__metadata__")
        header[name]["shape"] = [s * 2 for s in header[name]["shape"]]
        text = json.dumps(header).encode()
        reweigh(len(text).to_bytes(8, "little") + text + original[8 + length :])
    elif damage == "shapes that do not fit":
        tensors = blobs.decode(original, blobs.sha256(original), "color")
        name = next(iter(tensors))
        tensors[name] = np.zeros((3, *tensors[name].shape), tensors[name].dtype)
        reweigh(st_save(tensors, metadata={k: json.dumps(v) for k, v in blobs.read_metadata(original).items()}))
    elif damage == "newer file format":
        manifest["format_version"] = 99
        reweigh(original)
    elif damage == "lineage left out":
        manifest["versions"] = manifest["versions"][1:]
        reweigh(original)
    else:
        bad.write_text("this is a text file")
    assert_one_line_error(into(run, target, "import", str(bad)), fragment)
    assert dump(target) == before


def test_a_concept_with_another_schema_in_the_target_is_refused(run, exported, tmp_path):
    target = tmp_path / "other.db"
    assert into(run, target, "add", "color", *TINY_CD, "--attribute", "shape").exit_code == 0
    before = dump(target)
    assert_one_line_error(into(run, target, "import", str(exported)), "concept 'color' takes", "another concept name")
    assert dump(target) == before


def test_export_holds_only_json_and_safetensors(exported):
    with zipfile.ZipFile(exported) as archive:
        names = archive.namelist()
        assert names[0] == "manifest.json"
        assert all(n.startswith("weights/") and n.endswith(".safetensors") for n in names[1:])
        for name in names[1:]:
            assert blobs.sha256(archive.read(name)) == Path(name).stem
