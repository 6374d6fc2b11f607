"""Past the listed cases: property-based fuzzing of every reader of untrusted data (issue 25).

Generated ``.cpt`` files (bytes flipped, the zip rebuilt, manifest values replaced, safetensors headers
forged consistently), generated safetensors blobs, and registry rows edited by hand. Every case must end
in a result or a :class:`ConceptError` (one line in the CLI), never another exception, and must stay
within a memory bound: the peak of Python-tracked allocations (bytes, numpy arrays) per case is asserted.
Seeded (``derandomize``), so a run is reproducible; the case counts are asserted, not assumed.
"""

from __future__ import annotations

import json
import math
import os
import random
import resource
import shutil
import sqlite3
import tempfile
import time
import tracemalloc
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from conceptlib.cli import cli
from conceptlib.errors import ConceptError, CorruptBlobError
from conceptlib.jobs import import_concept
from conceptlib.plugins import PluginManager
from conceptlib.registry import Registry, blobs
from tests.conftest import TINY_SAMPLING, assert_one_line_error
from tests.hostile import corpus
from tests.hostile.support import execute

CPT_CASES = 2_500
BLOB_CASES = 7_500
BATCH = 20
"""Files generated per hypothesis example (from its seeded ``random.Random``): hypothesis's own cost per
example is milliseconds, a generated file's microseconds."""
ROW_CASES = 100
PEAK_BYTES = 64 << 20
"""Most memory (tracked by tracemalloc) one generated case may take: the base files are about 13 kB."""
RSS_GROWTH_BYTES = 512 << 20

FUZZ = settings(deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))


@pytest.fixture
def memory() -> Iterator[list[int]]:
    """Peaks of tracked memory, one per case (see :func:`measured`); the process's peak RSS is checked too."""
    peaks: list[int] = []
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    yield peaks
    assert peaks and max(peaks) <= PEAK_BYTES, f"a case took {max(peaks) / 2**20:.1f} MiB"
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss <= RSS_GROWTH_BYTES


@contextmanager
def traced() -> Iterator[None]:
    """tracemalloc on for a batch of cases, generated beforehand (tracing slows every allocation, and
    starting and stopping it costs milliseconds each time)."""
    tracemalloc.start()
    try:
        yield
    finally:
        tracemalloc.stop()


def measured(peaks: list[int], call: Any) -> Any:
    """``call()`` inside :func:`traced`, with the peak of the memory it allocated above what was held before
    (as tracemalloc counts it: Python objects, bytes, numpy arrays) appended to ``peaks``."""
    held = tracemalloc.get_traced_memory()[0]
    tracemalloc.reset_peak()
    try:
        return call()
    finally:
        peaks.append(tracemalloc.get_traced_memory()[1] - held)


# ------------------------------------------------------------------ JSON values an attacker may write
SPECIAL_TEXTS = ["", "\x1b[2J", "a\nb", "small", "unet", "F32", "BF16", "categorical", "continuous", "x" * 300]


def random_json(rng: random.Random, depth: int = 0) -> Any:
    """A JSON value of the kinds that break readers: huge and negative numbers, NaN, text where numbers go,
    empty and deep containers. (Python's json writes NaN and Infinity, so a file may hold them.)"""
    kind = rng.randrange(12 if depth < 3 else 8)
    if kind == 0:
        return None
    if kind == 1:
        return rng.random() < 0.5
    if kind == 2:
        return rng.choice([0, 1, -1, 2**31, 2**63, -(2**70), 10**30, rng.randrange(-1000, 1000)])
    if kind == 3:
        return rng.choice([0.5, -0.0, 1e308, float("inf"), float("-inf"), float("nan")])
    if kind in (4, 5):
        return rng.choice(SPECIAL_TEXTS)
    if kind == 6:
        return "".join(chr(rng.randrange(0, 0x3000)) for _ in range(rng.randrange(8)))
    if kind == 7:
        return nested(rng.randrange(20, 400))
    if kind in (8, 9):
        return [random_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice([*SPECIAL_TEXTS, "kind", "values", "channels", "image_size"]): random_json(rng, depth + 1)
            for _ in range(rng.randrange(4))}


def nested(depth: int) -> list[Any]:
    """Lists nested ``depth`` deep: past the readers' bound (32), within what ``json.dumps`` can write."""
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


# ------------------------------------------------------------------ .cpt files
KEYS = ["ref", "weights_sha256", "schema", "architecture", "architecture_config", "source", "source_params",
        "attribute", "dataset_hash", "hyperparameters", "seed", "metrics", "lineage", "description"]
TOP = ["format", "format_version", "versions", "exported_from", "manifest_sha256"]
CLAIMS = ["concept", "version", "schema", "architecture", "architecture_config"]
METHODS = [zipfile.ZIP_STORED, zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA, 99]


def edit_manifest(rng: random.Random, data: bytes) -> bytes:
    """A manifest value replaced (a whole field, one inside a mapping field, or a top-level one), the file
    resealed (as a forger would) or not (as a careless editor would)."""
    def change(manifest: dict[str, Any]) -> None:
        entry = rng.choice(manifest["versions"])
        where = rng.randrange(3)
        if where == 0:
            entry[rng.choice(KEYS)] = random_json(rng)
        elif where == 1:
            field = entry[rng.choice(["schema", "architecture_config", "hyperparameters", "metrics"])]
            field[rng.choice([*field, "image_size", "channels", "kind", "values", "patch"])] = random_json(rng)
        else:
            manifest[rng.choice(TOP)] = random_json(rng)

    return corpus.forge(data, change, reseal=rng.random() < 0.7)


def edit_header(rng: random.Random, data: bytes) -> bytes:
    """The last version's safetensors header altered, the file made consistent again (as a forger would)."""
    def blob(entry: dict[str, Any], header: dict[str, Any], body: bytes) -> tuple[dict[str, Any], bytes]:
        name = rng.choice(sorted(header))
        kind = rng.choice(["dtype", "shape", "data_offsets", "whole", "claim", "claim", "body"])
        if kind == "claim":
            return corpus.set_claim(rng.choice(CLAIMS), random_json(rng))(entry, header, body)
        if kind == "body":
            return header, body[: rng.randrange(len(body) + 1)]
        if kind == "whole":
            header[name] = random_json(rng)
        elif name != "__metadata__":
            header[name][kind] = random_json(rng)
        return header, body

    return corpus.forge(data, blob=blob)


def edit_bytes(rng: random.Random, data: bytes) -> bytes:
    """Bytes overwritten, or the file cut short, anywhere in the zip."""
    if rng.random() < 0.3:
        return data[: rng.randrange(len(data) + 1)]
    changed = bytearray(data)
    for _ in range(rng.randrange(1, 9)):
        changed[rng.randrange(len(data))] = rng.randrange(256)
    return bytes(changed)


def edit_zip(rng: random.Random, data: bytes) -> bytes:
    """The zip rebuilt: members dropped, duplicated, renamed, deflated, or marked with a compression method
    (bzip2, lzma, one that does not exist) that its bytes do not have."""
    members = corpus.read_members(data)
    names = sorted(members)
    packed = []
    for name in [rng.choice(names) for _ in range(rng.randrange(7))]:
        body, method = members[name], rng.choice(METHODS)
        payload = deflate(body) if method == zipfile.ZIP_DEFLATED else body
        renamed = rng.choice([name, name, name.upper(), f"../{name}", "manifest.json"])
        packed.append((renamed, payload, method, zlib.crc32(body), len(body)))
    return corpus.raw_zip(packed)


def deflate(body: bytes) -> bytes:
    packer = zlib.compressobj(1, zlib.DEFLATED, -15)
    return packer.compress(body) + packer.flush()


EDITS = [edit_manifest, edit_header, edit_bytes, edit_zip]


@pytest.fixture
def scratch(tmp_path: Path) -> Iterator[Path]:
    """A folder in memory (``/dev/shm``) where there is one: thousands of small files, no disk between them."""
    memory_disk = Path("/dev/shm")
    if not (memory_disk.is_dir() and os.access(memory_disk, os.W_OK)):
        yield tmp_path
        return
    folder = Path(tempfile.mkdtemp(prefix="conceptlib-fuzz-", dir=memory_disk))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_generated_concept_files_import_or_are_refused_in_bounded_memory(base, scratch, memory):
    plugins = PluginManager()
    registry = Registry.open("sqlite://", create=True)  # in memory: imports that succeed write there
    path = scratch / "case.cpt"
    outcomes = {"imported": 0, "refused": 0}
    started = time.process_time()

    @settings(FUZZ, max_examples=CPT_CASES // BATCH)
    @given(st.randoms(use_true_random=False))
    def case(rng: random.Random) -> None:
        files = [rng.choice(EDITS)(rng, rng.choice([base.color, base.shape])) for _ in range(BATCH)]
        with traced():
            for data in files:
                one(data)

    def one(data: bytes) -> None:
        path.write_bytes(data)
        try:
            measured(memory, lambda: import_concept(registry, plugins, path))
        except ConceptError as exc:
            assert "\n" not in str(exc).strip()
            outcomes["refused"] += 1
        else:
            outcomes["imported"] += 1

    try:
        case()
    finally:
        registry.close()
    print(f"\n.cpt files: {sum(outcomes.values())} generated ({outcomes}), peak {max(memory) / 2**20:.1f} MiB, "
          f"{time.process_time() - started:.1f} s of CPU")
    assert sum(outcomes.values()) >= CPT_CASES and outcomes["imported"] and outcomes["refused"]


# ------------------------------------------------------------------ safetensors blobs
DTYPE_NAMES = [*blobs.DTYPES, *blobs.DTYPES, "BF16", "F8_E4M3", "F8_E5M2", "C64", "f32", ""]


def random_blob(rng: random.Random) -> bytes:
    """A safetensors file: tensors laid out right or nearly so (a byte off, a field replaced), metadata that
    may or may not be conceptlib's, a header that may not be JSON, a length prefix that may lie."""
    header: dict[str, Any] = {}
    offset = 0
    for index in range(rng.randrange(5)):
        dtype = rng.choice(DTYPE_NAMES)
        shape = [rng.randrange(6) for _ in range(rng.randrange(4))]
        width = np.dtype(blobs.DTYPES[dtype]).itemsize if dtype in blobs.DTYPES else 2
        begin = offset + off_by(rng)
        end = begin + math.prod(shape) * width + off_by(rng)
        entry: dict[str, Any] = {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}
        if rng.random() < 0.1:
            entry[rng.choice(sorted(entry))] = random_json(rng)
        header[rng.choice([f"t{index}"] * 8 + ["\x00", "__metadata__"])] = entry
        offset = max(offset, end)
    metadata = rng.randrange(10)
    if metadata == 0:
        header["__metadata__"] = {rng.choice(SPECIAL_TEXTS): rng.choice(SPECIAL_TEXTS) for _ in range(3)}
    elif metadata in (1, 2):
        header["__metadata__"] = {blobs.METADATA_KEY: json.dumps(random_json(rng))}
    elif metadata == 3:
        header["__metadata__"] = random_json(rng)
    text = json.dumps(header).encode() if rng.random() < 0.95 else rng.randbytes(rng.randrange(64))
    declared = rng.choice([len(text)] * 12 + [len(text) + 1, max(0, len(text) - 1), 2**40, 2**64 - 1])
    return declared.to_bytes(8, "little") + text + bytes(max(0, offset + off_by(rng)))


def off_by(rng: random.Random) -> int:
    return rng.choice([0] * 8 + [1, -1])


def test_generated_safetensors_blobs_decode_or_are_refused_in_bounded_memory(memory):
    outcomes = {"decoded": 0, "refused": 0}
    started = time.process_time()

    @settings(FUZZ, max_examples=BLOB_CASES // BATCH)
    @given(st.randoms(use_true_random=False))
    def case(rng: random.Random) -> None:
        generated = [random_blob(rng) for _ in range(BATCH)]
        with traced():
            for data in generated:
                one(data)

    def one(data: bytes) -> None:
        try:
            tensors = measured(memory, lambda: blobs.decode(data, blobs.sha256(data), "fuzzed"))
        except CorruptBlobError as exc:
            assert "\n" not in str(exc)
            outcomes["refused"] += 1
            return
        header = blobs.read_header(data, len(data))
        assert {k: (v.dtype, v.shape) for k, v in tensors.items()} == header.layout
        outcomes["decoded"] += 1

    case()
    print(f"\nsafetensors blobs: {sum(outcomes.values())} generated ({outcomes}), "
          f"peak {max(memory) / 2**20:.1f} MiB, {time.process_time() - started:.1f} s of CPU")
    assert sum(outcomes.values()) >= BLOB_CASES and outcomes["decoded"] and outcomes["refused"]


# ------------------------------------------------------------------ registry rows edited by hand
COLUMNS = [("versions", "metrics"), ("versions", "hyperparameters"), ("versions", "architecture_config"),
           ("versions", "source_params"), ("versions", "seed"), ("versions", "number"), ("versions", "created_at"),
           ("versions", "weights_sha256"), ("versions", "architecture"), ("versions", "status"),
           ("concepts", "condition_schema"), ("concepts", "name"), ("concepts", "description"),
           ("current_versions", "version_id"), ("aliases", "version_id"), ("aliases", "name"),
           ("events", "details"), ("lineage", "frozen_version_id"), ("blobs", "data")]
ROW_VALUES = st.one_of(st.randoms(use_true_random=False).map(lambda rng: json.dumps(random_json(rng))),
                       st.text(max_size=30), st.integers(), st.none(), st.binary(max_size=16), st.floats())
COMMANDS = [["list"], ["show", "color", "--json"], ["history", "color"]]
COMPOSE = ["compose", "position=(0.5,0.5) & color=red", "-n", "1", *TINY_SAMPLING]


def test_registry_rows_edited_by_hand_never_give_a_traceback(base, tmp_path, monkeypatch):
    monkeypatch.delenv("CONCEPTLIB_REGISTRY", raising=False)
    monkeypatch.delenv("CONCEPTLIB_PLUGINS_DIR", raising=False)
    registry = tmp_path / "registry.db"
    runner = CliRunner()
    outcomes = {"answered": 0, "refused": 0}
    started = time.process_time()

    @settings(FUZZ, max_examples=ROW_CASES)
    @given(st.sampled_from(COLUMNS), ROW_VALUES, st.sampled_from(["", " WHERE rowid = 1"]))
    def case(column: tuple[str, str], value: Any, where: str) -> None:
        shutil.copy(base.registry, registry)
        try:
            execute(registry, f"UPDATE {column[0]} SET {column[1]} = ?{where}", value)
        except sqlite3.IntegrityError:
            assume(False)  # a constraint SQLite itself keeps (NOT NULL, a unique name)
        loads = column[0] in ("versions", "concepts", "blobs")  # what loading a network reads
        for args in [*COMMANDS, [*COMPOSE, "-o", str(tmp_path / "g.png")]] if loads else COMMANDS:
            result = runner.invoke(cli, ["--registry", str(registry), *args])
            assert isinstance(result.exception, (SystemExit, type(None))), repr(result.exception)
            if result.exit_code:
                assert_one_line_error(result)
            outcomes["refused" if result.exit_code else "answered"] += 1

    case()
    print(f"\nregistry rows: {ROW_CASES} edits, {sum(outcomes.values())} commands ({outcomes}), "
          f"{time.process_time() - started:.1f} s of CPU")
    assert outcomes["answered"] and outcomes["refused"]
