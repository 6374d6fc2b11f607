"""The hostile corpus: crafted files an attacker could hand a conceptlib user, built at test time.

Nothing here is checked in as a blob: every file is made from a real export (or from nothing) by the
functions below, which the tests in this folder call. ``python -m tests.hostile.corpus DIR`` writes the
whole corpus to DIR to look at (it trains one tiny concept first, to have something to export).

Each ``forge`` keeps a file internally consistent, as an attacker would (every sha256 recomputed, the
manifest resealed), so that it reaches the check it is aimed at instead of failing an earlier one.
"""

from __future__ import annotations

import io
import json
import struct
import sys
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from conceptlib.registry import blobs
from conceptlib.registry.transfer import MANIFEST, seal

Members = dict[str, bytes]


# ------------------------------------------------------------------ zips
def read_members(data: bytes) -> Members:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def rezip(members: Members) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def manifest_of(data: bytes) -> dict[str, Any]:
    return json.loads(read_members(data)[MANIFEST])


def weights_member(entry: dict[str, Any]) -> str:
    return f"weights/{entry['weights_sha256']}.safetensors"


def split_blob(blob: bytes) -> tuple[dict[str, Any], bytes]:
    """A safetensors blob as (its JSON header, its tensor bytes)."""
    length = int.from_bytes(blob[:8], "little")
    return json.loads(blob[8 : 8 + length]), blob[8 + length :]


def join_blob(header: dict[str, Any], body: bytes) -> bytes:
    text = json.dumps(header).encode()
    return len(text).to_bytes(8, "little") + text + body


def forge(data: bytes, manifest: Callable[[dict[str, Any]], None] = lambda m: None,
          blob: Callable[[dict[str, Any], dict[str, Any], bytes], tuple[dict[str, Any], bytes]] | None = None,
          reseal: bool = True) -> bytes:
    """An export altered by ``manifest(m)`` (in place) and ``blob(entry, header, body) -> (header, body)`` for
    the last version's weights, made consistent again: weights renamed by their new sha256, the manifest
    pointing at them and (``reseal``) its ``manifest_sha256`` recomputed."""
    members = read_members(data)
    document = json.loads(members.pop(MANIFEST))
    if blob is not None:
        entry = document["versions"][-1]
        header, body = split_blob(members.pop(weights_member(entry)))
        new = join_blob(*blob(entry, header, body))
        entry["weights_sha256"] = blobs.sha256(new)
        members[weights_member(entry)] = new
    manifest(document)
    text = json.dumps(seal(document) if reseal else document).encode()
    return rezip({MANIFEST: text, **members})


def set_claim(key: str, value: Any) -> Callable[[dict[str, Any], dict[str, Any], bytes], tuple[dict[str, Any], bytes]]:
    """A blob change that sets one of conceptlib's metadata claims in the safetensors header."""

    def change(entry: dict[str, Any], header: dict[str, Any], body: bytes) -> tuple[dict[str, Any], bytes]:
        metadata = json.loads(header["__metadata__"][blobs.METADATA_KEY])
        metadata[key] = value
        header["__metadata__"][blobs.METADATA_KEY] = json.dumps(metadata, sort_keys=True)
        return header, body

    return change


def forge_config(data: bytes, **config: Any) -> bytes:
    """The last version with ``config`` merged into its architecture config, in the manifest and the header."""

    def manifest(document: dict[str, Any]) -> None:
        document["versions"][-1]["architecture_config"].update(config)

    def blob(entry: dict[str, Any], header: dict[str, Any], body: bytes) -> tuple[dict[str, Any], bytes]:
        return set_claim("architecture_config", {**entry["architecture_config"], **config})(entry, header, body)

    return forge(data, manifest, blob)


def forge_dtype(data: bytes, dtype: str) -> bytes:
    """The last version's first tensor relabelled as ``dtype`` (a type numpy has no name for), its bytes kept
    in proportion so the header stays self-consistent."""

    def blob(entry: dict[str, Any], header: dict[str, Any], body: bytes) -> tuple[dict[str, Any], bytes]:
        width = {"BF16": 2, "F8_E4M3": 1}[dtype]
        name = next(k for k in header if k != "__metadata__")
        begin, end = header[name]["data_offsets"]
        count = (end - begin) // 4
        replaced = bytes(count * width)
        shift = len(replaced) - (end - begin)
        for key, value in header.items():
            if key != "__metadata__" and value["data_offsets"][0] > begin:
                value["data_offsets"] = [o + shift for o in value["data_offsets"]]
        header[name] = {**header[name], "dtype": dtype, "data_offsets": [begin, begin + len(replaced)]}
        return header, body[:begin] + replaced + body[end:]

    return forge(data, blob=blob)


def deep_json(depth: int) -> str:
    return "[" * depth + "]" * depth


def forge_raw_manifest(data: bytes, text: str) -> bytes:
    """The export with its manifest replaced by ``text`` (not necessarily JSON)."""
    members = read_members(data)
    members[MANIFEST] = text.encode()
    return rezip(members)


def nested_manifest(data: bytes, depth: int = 200_000) -> bytes:
    """The manifest with one metric nested ``depth`` lists deep (``json.loads`` recurses once per level)."""
    text = json.dumps(seal(manifest_of(data)))
    return forge_raw_manifest(data, text.replace('"metrics": {', f'"metrics": {{"deep": {deep_json(depth)}, ', 1))


def repeated_entry(data: bytes, times: int = 4000) -> bytes:
    """The exported version listed ``times`` times: the same weights read and decoded once per entry."""
    return forge(data, lambda m: m.update(versions=m["versions"][:-1] + [m["versions"][-1]] * times))


# ------------------------------------------------------------------ decompression bombs
def deflated_zeros(size: int) -> bytes:
    """A raw DEFLATE stream of ``size`` zero bytes at about 1/1000 of it: one compressed MiB of zeros,
    fully flushed (so it stands alone), repeated, then an empty final block."""
    mib = 1 << 20
    block = zlib.compressobj(9, zlib.DEFLATED, -15)
    repeated = block.compress(bytes(mib)) + block.flush(zlib.Z_FULL_FLUSH)
    tail = zlib.compressobj(9, zlib.DEFLATED, -15)
    rest = tail.compress(bytes(size % mib)) + tail.flush()
    return repeated * (size // mib) + rest


def raw_zip(members: list[tuple[str, bytes, int, int, int]]) -> bytes:
    """A zip of already-compressed members ``(name, payload, method, crc32, uncompressed size)``, sizes past
    4 GiB in zip64 extra fields, as any zip writer may produce them."""
    out, central = io.BytesIO(), []
    for name, payload, method, crc, size in members:
        offset = out.tell()
        big = size >= 0xFFFFFFFF
        extra = struct.pack("<HHQ", 1, 8, size) if big else b""
        shown = 0xFFFFFFFF if big else size
        encoded = name.encode()
        out.write(struct.pack("<4s5H3L2H", b"PK\x03\x04", 45 if big else 20, 0, method, 0, 0, crc, len(payload),
                              shown, len(encoded), len(extra)) + encoded + extra + payload)
        central.append(struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 45, 45 if big else 20, 0, method, 0, 0, crc,
                                   len(payload), shown, len(encoded), len(extra), 0, 0, 0, 0, offset)
                       + encoded + extra)
    start = out.tell()
    directory = b"".join(central)
    out.write(directory)
    out.write(struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, len(central), len(central), len(directory), start, 0))
    return out.getvalue()


def bomb(data: bytes, size: int) -> bytes:
    """The export with its last version's weights replaced by ``size`` deflated zeros under the same name."""
    members = read_members(data)
    entry = manifest_of(data)["versions"][-1]
    target = weights_member(entry)
    packed = [(name, body, zipfile.ZIP_STORED, zlib.crc32(body), len(body))
              for name, body in members.items() if name != target]
    packed.append((target, deflated_zeros(size), zipfile.ZIP_DEFLATED, 0, size))
    return raw_zip(packed)


def png_bomb(width: int = 20_000, height: int = 10_000) -> bytes:
    """A valid 1-bit PNG of ``width`` x ``height`` zero pixels: a few kB declaring 200 million pixels."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">L", len(body)) + kind + body + struct.pack(">L", zlib.crc32(kind + body))

    row = bytes(1 + (width + 7) // 8)
    packer = zlib.compressobj(9)
    pixels = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">2L5B", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


# ------------------------------------------------------------------ plugins
PLUGIN_HEADER = """
from conceptlib.hookspecs import hookimpl
"""
MISBEHAVING_HOOKS = {
    "returns_42": "@hookimpl\ndef conceptlib_sources():\n    return 42\n",
    "returns_objects": "@hookimpl\ndef conceptlib_architectures():\n    return [object()]\n",
    "raises": "@hookimpl\ndef conceptlib_sources():\n    raise RuntimeError('the plugin broke')\n",
    "exits_in_hook": "import sys\n\n@hookimpl\ndef conceptlib_sources():\n    sys.exit(0)\n",
    "exits_on_import": "import sys\n\nsys.exit(0)\n",
}
"""Single-file plugins (``--plugins-dir``) whose hooks misbehave, by what they do."""


def write_plugin(directory: Path, name: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.py"
    path.write_text(PLUGIN_HEADER + MISBEHAVING_HOOKS[name])
    return path


def plant_distribution(directory: Path, marker: Path) -> None:
    """A ``*.dist-info`` in ``directory`` declaring a conceptlib entry point whose module (beside it)
    creates ``marker`` when imported: what ``python -m`` would find on ``sys.path[0]``."""
    info = directory / "evil_plugin-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: evil-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[conceptlib]\nevil = evil_plugin\n")
    (directory / "evil_plugin.py").write_text(f"open({str(marker)!r}, 'w').close()\n")


# ------------------------------------------------------------------ the whole corpus, for a look
def build(directory: Path, export: bytes) -> list[Path]:
    """Every crafted file derived from ``export`` (a real ``.cpt``), written to ``directory``."""
    files = {
        "config-channels-text.cpt": forge_config(export, channels=["x", 1, 2]),
        "config-channels-negative.cpt": forge_config(export, channels=[-1, 8, 8]),
        "config-huge-network.cpt": forge_config(export, channels=[4096, 4096, 4096]),
        "dtype-bf16.cpt": forge_dtype(export, "BF16"),
        "dtype-f8.cpt": forge_dtype(export, "F8_E4M3"),
        "seed-1e30.cpt": forge(export, lambda m: m["versions"][-1].update(seed=10**30)),
        "seed-infinity.cpt": forge(export, lambda m: m["versions"][-1].update(seed=float("inf"))),
        "image-size-1e6.cpt": forge(export, lambda m: m["versions"][-1]["hyperparameters"].update(image_size=10**6)),
        "image-size-negative.cpt": forge(export, lambda m: m["versions"][-1]["hyperparameters"].update(image_size=-32)),
        "nested-200k.cpt": nested_manifest(export),
        "repeated-4000.cpt": repeated_entry(export),
        "bomb-1gb.cpt": bomb(export, 1 << 30),
        "bomb-4gb.cpt": bomb(export, 4 << 30),
        "tampered-metric.cpt": forge(export, lambda m: m["versions"][-1]["metrics"].update(loss=0.123), reseal=False),
        "bomb.png": png_bomb(),
    }
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (directory / name).write_bytes(data)
    for name in MISBEHAVING_HOOKS:
        write_plugin(directory / "plugins" / name, name)
    plant_distribution(directory / "planted", directory / "planted" / "ran")
    return sorted(directory.rglob("*"))


def main(argv: list[str]) -> None:
    import tempfile

    from click.testing import CliRunner

    from conceptlib.cli import cli
    from tests.reliability import TINY_CD

    target = Path(argv[0])
    with tempfile.TemporaryDirectory() as scratch:
        registry, export = str(Path(scratch) / "r.db"), Path(scratch) / "shape.cpt"
        for args in (["add", "shape", *TINY_CD], ["export", "shape", "-o", str(export)]):
            result = CliRunner().invoke(cli, ["--registry", registry, *args])
            assert result.exit_code == 0, result.output
        written = build(target, export.read_bytes())
    print(f"wrote {len(written)} files and folders to {target}")


if __name__ == "__main__":
    main(sys.argv[1:])
