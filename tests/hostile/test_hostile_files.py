"""Hostile files in and out (issue 25, cases 1, 2, 3, 6, 10 and 14).

An export written over the registry, ``.cpt`` files that would exhaust memory or break the reader, outputs
through links planted in the output folder, a full disk, a tampered manifest: each is refused with one
line and exit 2, and nothing changes anywhere (the registry, the output files, the targets of links).
"""

from __future__ import annotations

import builtins
import errno
import io
import json
from pathlib import Path
from typing import Any

import pytest

from conceptlib import jobs
from conceptlib.limits import MAX_VERSIONS
from conceptlib.registry.transfer import DIGEST_KEY
from conceptlib_nets import UNET_CONFIG
from tests.conftest import TINY_SAMPLING, assert_one_line_error
from tests.hostile import corpus
from tests.hostile.support import dump, one_line_error

COMPOSE = ["compose", "position=(0.5,0.5) & color=red", "-n", "2", *TINY_SAMPLING]


def written(tmp_path: Path, data: bytes, name: str = "hostile.cpt") -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


# ------------------------------------------------------------------ case 1: export over the registry
@pytest.mark.parametrize("target", ["the registry", "a link to the registry", "the registry's WAL file"])
def test_export_never_writes_over_the_registry(run, trained, tmp_path, target):
    before = dump(trained)
    output = {"the registry": trained, "a link to the registry": tmp_path / "link.cpt",
              "the registry's WAL file": trained.with_name(trained.name + "-wal")}[target]
    if target == "a link to the registry":
        output.symlink_to(trained)
    result = run("export", "color", "-o", str(output))
    assert_one_line_error(result, str(output))
    assert dump(trained) == before


def test_export_never_replaces_a_link_it_finds_at_the_output(run, trained, tmp_path):
    victim = tmp_path / "notes.txt"
    victim.write_text("precious")
    link = tmp_path / "color.cpt"
    link.symlink_to(victim)
    assert_one_line_error(run("export", "color", "-o", str(link)), "symbolic link")
    assert link.is_symlink() and victim.read_text() == "precious"


# ------------------------------------------------------------------ case 2: memory
@pytest.mark.parametrize(
    ("attack", "fragment"),
    [
        (lambda base: corpus.bomb(base.color, 1 << 30), "more than a concept file may hold"),
        (lambda base: corpus.bomb(base.color, 4 << 30), "more than a concept file may hold"),
        (lambda base: corpus.repeated_entry(base.color, 4000), "more than a manifest can be"),
        (lambda base: corpus.repeated_entry(base.color, MAX_VERSIONS - 2), "color@1 twice"),
        (lambda base: corpus.forge_config(base.color, channels=[4096, 4096, 4096]), "do not fit architecture"),
    ],
    ids=["1 MB deflating to 1 GiB", "4 MB deflating to 4 GiB", "4000 entries", "one entry repeated",
         "a network of gigabytes for tiny tensors"],
)
def test_a_small_file_cannot_make_import_large(bounded, trained, tmp_path, base, attack, fragment):
    path = written(tmp_path, attack(base))
    before = dump(trained)
    code, output = bounded("--registry", str(trained), "import", path)
    one_line_error(code, output, fragment)
    assert dump(trained) == before


# ------------------------------------------------------------------ case 3: manifests and headers
def forge_architecture(data: bytes, name: str, config: dict[str, Any]) -> bytes:
    """The last version claiming another architecture and config, in the manifest and in its header."""

    def blob(entry: dict[str, Any], header: dict[str, Any], body: bytes) -> tuple[dict[str, Any], bytes]:
        header, body = corpus.set_claim("architecture", name)(entry, header, body)
        return corpus.set_claim("architecture_config", config)(entry, header, body)

    return corpus.forge(data, lambda m: m["versions"][-1].update(architecture=name, architecture_config=config),
                        blob)


def rename(data: bytes, name: str) -> bytes:
    """The last version under another concept name, in the manifest and in its header."""
    return corpus.forge(data, lambda m: m["versions"][-1].update(ref=f"{name}@1"), corpus.set_claim("concept", name))


def seed(value: Any):
    return lambda m: m["versions"][-1].update(seed=value)


def image_size(value: Any):
    return lambda m: m["versions"][-1]["hyperparameters"].update(image_size=value)


HOSTILE_FILES = {
    "channels of text": (lambda b: corpus.forge_config(b.color, channels=["x", 1, 2]), "channels"),
    "patch 0": (lambda b: forge_architecture(b.color, "unet", {**UNET_CONFIG, "patch": 0}), "patch"),
    "channels -1": (lambda b: corpus.forge_config(b.color, channels=[-1, 8, 8]), "channels"),
    "seed 1e30": (lambda b: corpus.forge(b.color, seed(10**30)), "seed"),
    "seed Infinity": (lambda b: corpus.forge(b.color, seed(float("inf"))), "seed"),
    "JSON nested 200,000 deep": (lambda b: corpus.nested_manifest(b.color), "nested deeper"),
    "dtype BF16": (lambda b: corpus.forge_dtype(b.color, "BF16"), "BF16"),
    "dtype F8_E4M3": (lambda b: corpus.forge_dtype(b.color, "F8_E4M3"), "F8_E4M3"),
    "image_size 1e6": (lambda b: corpus.forge(b.shape, image_size(10**6)), "image_size"),
    "image_size -32": (lambda b: corpus.forge(b.shape, image_size(-32)), "image_size"),
    "a concept name with escapes": (lambda b: rename(b.shape, "sh\x1b[2Jape"), "not a name"),
}


@pytest.mark.parametrize("attack", list(HOSTILE_FILES))
def test_a_malformed_file_is_refused_in_one_line_and_nothing_changes(run, trained, tmp_path, base, attack):
    build, fragment = HOSTILE_FILES[attack]
    before = dump(trained)
    assert_one_line_error(run("import", written(tmp_path, build(base))), fragment)
    assert dump(trained) == before


def test_a_refused_import_into_a_new_registry_creates_no_file(run, registry_path, tmp_path, base):
    assert_one_line_error(run("import", written(tmp_path, corpus.forge_dtype(base.color, "BF16"))), "BF16")
    assert not registry_path.exists()


# ------------------------------------------------------------------ case 6: planted links
@pytest.fixture
def victim(tmp_path: Path) -> Path:
    path = tmp_path / "victim.txt"
    path.write_text("precious")
    return path


def test_compose_never_writes_through_a_link_planted_in_its_output_folder(run, trained, tmp_path, victim):
    out = tmp_path / "out"
    out.mkdir()
    (out / "sample_00000.json").symlink_to(victim)
    assert_one_line_error(run(*COMPOSE, "--out-dir", str(out)), "symbolic link")
    assert victim.read_text() == "precious"
    assert [p.name for p in out.iterdir()] == ["sample_00000.json"]


def test_compose_never_writes_its_grid_through_a_link(run, trained, tmp_path, victim):
    grid = tmp_path / "grid.png"
    grid.symlink_to(victim)
    assert_one_line_error(run(*COMPOSE, "-o", str(grid)), "symbolic link")
    assert victim.read_text() == "precious"


def test_source_sample_never_writes_through_a_link_planted_in_its_output_folder(run, tmp_path, victim):
    out = tmp_path / "out"
    out.mkdir()
    (out / "labels.jsonl").symlink_to(victim)
    result = run("source", "sample", "scenes", "-n", "2", "--out-dir", str(out), "--param", "image_size=16")
    assert_one_line_error(result, "symbolic link")
    assert victim.read_text() == "precious"
    assert [p.name for p in out.iterdir()] == ["labels.jsonl"]


# ------------------------------------------------------------------ case 10: a full disk
class FullDisk:
    """A file on a full disk: opening works, every write fails with ENOSPC; the rest is the real file's."""

    def __init__(self, real: Any) -> None:
        self.real = real

    def write(self, data: Any) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    writelines = write

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def __enter__(self) -> FullDisk:
        return self

    def __exit__(self, *exc: object) -> None:
        self.real.close()


@pytest.fixture
def full_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder where every file opened for writing fails its first write, as on a full disk."""
    disk = tmp_path / "disk"
    disk.mkdir()
    real_open = builtins.open

    def full_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        handle = real_open(file, mode, *args, **kwargs)
        if any(flag in mode for flag in "wax+") and str(file).startswith(str(disk)):
            return FullDisk(handle)
        return handle

    monkeypatch.setattr(builtins, "open", full_open)
    monkeypatch.setattr(io, "open", full_open)
    return disk


def test_export_on_a_full_disk_is_one_line_and_leaves_no_file(run, trained, full_disk):
    assert_one_line_error(run("export", "color", "-o", str(full_disk / "color.cpt")), "No space left on device")
    assert list(full_disk.iterdir()) == []


@pytest.mark.parametrize("output", [["-o", "grid.png"], ["--out-dir", "samples"]], ids=["grid", "samples"])
def test_compose_on_a_full_disk_is_one_line_and_leaves_no_file(run, trained, full_disk, output):
    flag, name = output
    assert_one_line_error(run(*COMPOSE, flag, str(full_disk / name)), "No space left on device")
    assert [p for p in full_disk.rglob("*") if p.is_file()] == []


def test_a_grid_without_an_image_extension_is_refused_before_sampling(run, trained, tmp_path, monkeypatch):
    def sample(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("sampled before checking where the grid goes")

    monkeypatch.setattr(jobs, "compose_images", sample)
    assert_one_line_error(run(*COMPOSE, "-o", str(tmp_path / "grid")), "extension")
    assert not (tmp_path / "grid").exists()


# ------------------------------------------------------------------ case 14: a tampered manifest
def held_out_accuracy(value: float):
    return lambda m: m["versions"][-1]["metrics"].update(held_out_accuracy=value)


def test_a_manifest_edited_after_export_is_refused(run, registry_path, tmp_path, base):
    assert "held_out_accuracy" in corpus.manifest_of(base.shape)["versions"][-1]["metrics"]
    tampered = corpus.forge(base.shape, held_out_accuracy(0.123), reseal=False)
    assert_one_line_error(run("import", written(tmp_path, tampered)), "manifest_sha256", "nothing was imported")
    assert not registry_path.exists()


def test_the_digest_is_no_signature_a_resealed_forgery_imports(run, registry_path, tmp_path, base):
    """What the digest guarantees, and no more: whoever edits a file can recompute it (docs/security.md)."""
    result = run("import", written(tmp_path, corpus.forge(base.shape, held_out_accuracy(0.123))))
    assert result.exit_code == 0, result.output
    assert json.loads(run("show", "shape", "--json").output)["metrics"]["held_out_accuracy"] == 0.123


def test_a_file_from_before_the_digest_imports_with_a_warning(run, registry_path, tmp_path, base):
    old = corpus.forge(base.shape, lambda m: m.pop(DIGEST_KEY, None), reseal=False)
    result = run("import", written(tmp_path, old))
    assert result.exit_code == 0, result.output
    assert "carries no manifest_sha256" in result.output and "only its weights were verified" in result.output
