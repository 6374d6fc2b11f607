"""A concept version as one file (``.cpt``): its weights, schema, provenance and whole lineage.

The file is a zip holding ``manifest.json`` and the registry's own safetensors blobs, each named by its
sha256. No pickle anywhere: a file from someone else carries JSON and tensors, never code. The file
carries every version the exported one was trained with (its lineage, recursively), lineage first, so
an imported concept can always be composed the way it was trained; a target registry that already
holds one of them (same tensors) reuses it. Import verifies every sha256 and every header against the
manifest before it writes anything, then writes in one transaction.

The manifest carries ``manifest_sha256``, the sha256 of everything else in it, and the manifest holds each
weights file's sha256: that one digest covers the whole file, metadata included, and import refuses a file
that does not match it. It detects damage and edits made without recomputing it; it is not a signature
(anyone can write a file that checks). The format version stays 1, so older conceptlib releases still read
these files; files they wrote, without the digest, still import, with only their weights covered (the
import says so).

A file is read as untrusted: its zip directory, its manifest and every safetensors header are checked
against the bounds of :mod:`conceptlib.limits` before anything is decompressed or allocated for them, and a
version's tensors must fit its architecture (built on torch's meta device, which allocates nothing) before
they are read.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import zipfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from conceptlib import untrusted
from conceptlib.errors import ConceptError, CorruptBlobError
from conceptlib.files import atomic_write, check_output
from conceptlib.limits import (
    MAX_CENTRAL_DIRECTORY_BYTES,
    MAX_FILE_WEIGHTS_BYTES,
    MAX_IMAGE_SIZE,
    MAX_MANIFEST_BYTES,
    MAX_SEED,
    MAX_VERSIONS,
    MAX_WEIGHTS_BYTES,
    MAX_ZIP_ENTRIES,
)
from conceptlib.names import check_name
from conceptlib.redaction import redact_url
from conceptlib.registry import blobs
from conceptlib.registry.api import ImportedVersion, NewVersion, Registry, VersionInfo, VersionRef
from conceptlib.schema import schema_from_json

FORMAT = "conceptlib-concept"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
DIGEST_KEY = "manifest_sha256"
MAX_TEXT = 1 << 16
"""A manifest string (a description, a source name, a dataset hash)."""

Fits = Callable[[NewVersion, blobs.Header, str], None]
"""Raises unless a version's tensors (as its safetensors header lays them out) fit its architecture."""


@dataclass(frozen=True)
class ConceptFile:
    """A verified export file: its versions, lineage first and the exported one last."""

    path: Path
    versions: list[ImportedVersion]
    exported_from: str
    digest: str | None
    """The manifest's sha256, to compare with the one its exporter printed; None for a file written before
    conceptlib wrote one (only its weights are covered)."""

    @property
    def ref(self) -> VersionRef:
        return self.versions[-1].origin

    @property
    def label(self) -> str:
        """Where the versions came from, as the target registry records it."""
        return f"{self.path.name} (exported from {self.exported_from})"


def export_concept(registry: Registry, version: VersionInfo, path: Path) -> tuple[list[VersionRef], str]:
    """Write ``version`` and its lineage to ``path`` (atomically, never over the registry itself or through a
    symbolic link); returns the versions written and the manifest's sha256."""
    check_output(path, registry.files())
    if not path.parent.is_dir():
        raise ConceptError(f"cannot write {path}: directory {path.parent} does not exist")
    versions = _with_lineage(registry, version)
    entries, members = [], {}
    for v in versions:
        description = registry.concept(v.concept).description
        entries.append({**v.to_json(), "ref": str(v.ref), "description": description})
        members[f"weights/{v.weights_sha256}.safetensors"] = registry.weights_blob(v)
    manifest = seal({
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "exported_at": datetime.now(timezone.utc).isoformat(),
        "exported_from": registry.display_url,
        "versions": entries,
    })

    def write(temporary: Path) -> None:
        with zipfile.ZipFile(temporary, "w", zipfile.ZIP_STORED) as archive:
            archive.writestr(MANIFEST, json.dumps(manifest, indent=2, sort_keys=True))
            for name, data in members.items():
                archive.writestr(name, data)

    atomic_write(path, write)
    return [v.ref for v in versions], manifest[DIGEST_KEY]


def seal(manifest: dict[str, Any]) -> dict[str, Any]:
    """``manifest`` with its ``manifest_sha256``: the digest of everything else in it."""
    return {**manifest, DIGEST_KEY: _digest(manifest)}


def _digest(manifest: dict[str, Any]) -> str:
    body = {key: value for key, value in manifest.items() if key != DIGEST_KEY}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _with_lineage(registry: Registry, version: VersionInfo) -> list[VersionInfo]:
    """``version`` after every version in its lineage, recursively; each lineage version before its users."""
    ordered: dict[VersionRef, VersionInfo] = {}

    def visit(v: VersionInfo) -> None:
        for ref in v.lineage:
            if ref not in ordered:
                visit(registry.resolve(ref.concept, ref.number))
        ordered[v.ref] = v

    visit(version)
    return list(ordered.values())


def read_concept_file(path: Path, fits: Fits | None = None) -> ConceptFile:
    """The versions in an export file, after checking the format, every bound, every blob's sha256 and header,
    and (with ``fits``) that each version's tensors fit its architecture before they are read."""
    if not path.is_file():
        kind = "a directory" if path.is_dir() else "not a regular file" if path.exists() else "missing"
        raise ConceptError(f"no concept file at {path} ({kind})")
    try:
        _check_directory(path)
        with zipfile.ZipFile(path) as archive:
            if len(archive.infolist()) > MAX_ZIP_ENTRIES:
                raise ConceptError(f"{path} holds more than {MAX_ZIP_ENTRIES} members; it is not a concept file")
            manifest = _manifest(archive, path)
            versions = _versions(archive, path, manifest["versions"], fits)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, OSError, EOFError, zlib.error) as exc:
        raise ConceptError(f"{path} is not a readable concept file ({exc}); export it again") from None
    known: set[VersionRef] = set()
    for item in versions:
        missing = [str(ref) for ref in item.new.lineage if ref not in known]
        if missing:
            raise ConceptError(
                f"{path}: {item.origin} was trained with {', '.join(missing)}, which the file does not carry "
                "before it; export it again with this conceptlib"
            )
        known.add(item.origin)
    exported_from = manifest.get("exported_from", "?")
    shown = redact_url(exported_from[:MAX_TEXT]) if isinstance(exported_from, str) else "?"
    return ConceptFile(path, versions, shown, manifest.get(DIGEST_KEY))


END_OF_DIRECTORY = struct.Struct("<4s4H2LH")
ZIP64_LOCATOR = b"PK\x06\x07"


def _check_directory(path: Path) -> None:
    """Refuse a zip whose directory is larger than a concept file's could be, before the zip reader loads it.

    The reader trusts the end record's directory size (and a zip64 record's, when one is present) and
    holds one object per member, so a small file could otherwise make it allocate without bound.
    """
    with path.open("rb") as handle:
        size = handle.seek(0, os.SEEK_END)
        tail_size = min(size, END_OF_DIRECTORY.size + 0xFFFF + 20)
        handle.seek(size - tail_size)
        tail = handle.read(tail_size)
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) - at < END_OF_DIRECTORY.size:
        raise zipfile.BadZipFile("File is not a zip file")
    _, _, _, _, entries, directory_size, _, _ = END_OF_DIRECTORY.unpack_from(tail, at)
    if at >= 20 and tail[at - 20 : at - 16] == ZIP64_LOCATOR:
        raise ConceptError(f"{path} is a zip64 archive, which no concept file needs; it is not a concept file")
    if entries > MAX_ZIP_ENTRIES or directory_size > MAX_CENTRAL_DIRECTORY_BYTES:
        raise ConceptError(
            f"{path} lists {entries} members in a {directory_size}-byte directory (at most {MAX_ZIP_ENTRIES} "
            f"members and {MAX_CENTRAL_DIRECTORY_BYTES} bytes); it is not a concept file"
        )


def _member(archive: zipfile.ZipFile, path: Path, name: str, missing: str) -> zipfile.ZipInfo:
    """A member's directory entry, refused unless it is stored or deflated, unencrypted (as conceptlib and any
    zip tool write it): other methods' decoders (lzma's dictionary) size their memory from the file itself."""
    try:
        info = archive.getinfo(name)
    except KeyError:
        raise ConceptError(f"{path}{missing}") from None
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED) or info.flag_bits & 0x1:
        raise ConceptError(f"{path}: {name} is encrypted or compressed in a way conceptlib never writes; "
                           "it is not a concept file")
    return info


def _manifest(archive: zipfile.ZipFile, path: Path) -> dict[str, Any]:
    info = _member(archive, path, MANIFEST, f" is not a concept file (it has no {MANIFEST}); export it again")
    if info.file_size > MAX_MANIFEST_BYTES:
        raise ConceptError(
            f"{path}: {MANIFEST} is {info.file_size} bytes, more than a manifest can be ({MAX_MANIFEST_BYTES})"
        )
    try:
        manifest = untrusted.load_json(archive.read(MANIFEST), MAX_MANIFEST_BYTES)
    except untrusted.Malformed as exc:
        raise ConceptError(f"{path}: {MANIFEST} is unreadable ({exc}); export it again") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ConceptError(f"{path} is not a conceptlib concept file (format {FORMAT!r} expected)")
    version = manifest.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version > FORMAT_VERSION:
        raise ConceptError(
            f"{path} was written by a newer conceptlib (file format {str(version)[:20]}, this one reads up to "
            f"{FORMAT_VERSION}); upgrade conceptlib to import it"
        )
    if DIGEST_KEY in manifest and manifest[DIGEST_KEY] != _digest(manifest):
        raise CorruptBlobError(
            f"{path}: the manifest does not match its {DIGEST_KEY} (the file is corrupt or was altered); "
            "nothing was imported"
        )
    versions = manifest.get("versions")
    if not isinstance(versions, list) or not versions:
        raise ConceptError(f"{path}: {MANIFEST} lists no versions; export it again")
    if len(versions) > MAX_VERSIONS:
        raise ConceptError(f"{path} lists {len(versions)} versions, more than {MAX_VERSIONS}; it was not exported")
    return manifest


def _versions(archive: zipfile.ZipFile, path: Path, entries: Sequence[Any], fits: Fits | None) -> list[ImportedVersion]:
    """Every manifest entry with its verified tensors; each read once, all of them within the bytes bound."""
    read: dict[VersionRef, ImportedVersion] = {}
    budget = MAX_FILE_WEIGHTS_BYTES
    for index, entry in enumerate(entries):
        where = f"{path}: version entry {index + 1}"
        new, origin, sha = _entry(entry, where)
        if origin in read:
            raise ConceptError(f"{path} lists {origin} twice; it was not exported by conceptlib")
        read[origin], size = _weights(archive, path, new, origin, sha, budget, fits)
        budget -= size
    return list(read.values())


def _entry(entry: Any, where: str) -> tuple[NewVersion, VersionRef, str]:
    """One manifest entry, every field checked for type and bound."""
    try:
        entry = untrusted.mapping(entry)
        origin = _ref(untrusted.field(entry, "ref"))
        sha = untrusted.text(untrusted.field(entry, "weights_sha256"))
        if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise untrusted.Malformed("weights_sha256 is not a sha256")
        hyperparameters = untrusted.mapping(untrusted.field(entry, "hyperparameters"))
        untrusted.integer(hyperparameters.get("image_size"), 1, MAX_IMAGE_SIZE, "hyperparameters.image_size")
        lineage = untrusted.sequence(untrusted.field(entry, "lineage"))
        if len(lineage) > MAX_VERSIONS:
            raise untrusted.Malformed(f"a lineage of {len(lineage)} versions")
        new = NewVersion(
            concept=origin.concept,
            schema=schema_from_json(untrusted.field(entry, "schema")),
            architecture=_short(untrusted.field(entry, "architecture")),
            architecture_config=untrusted.mapping(untrusted.field(entry, "architecture_config")),
            source=_short(untrusted.field(entry, "source")),
            source_params=untrusted.mapping(untrusted.field(entry, "source_params")),
            attribute=_short(untrusted.field(entry, "attribute")),
            dataset_hash=_short(untrusted.field(entry, "dataset_hash")),
            hyperparameters=hyperparameters,
            seed=untrusted.integer(untrusted.field(entry, "seed"), 0, MAX_SEED, "seed"),
            metrics=untrusted.mapping(untrusted.field(entry, "metrics")),
            lineage=tuple(_ref(text) for text in lineage),
            description=_short(entry.get("description", ""), MAX_TEXT),
        )
    except (untrusted.Malformed, ConceptError) as exc:
        raise ConceptError(f"{where} is malformed ({exc}); export it again") from None
    return new, origin, sha


def _weights(archive: zipfile.ZipFile, path: Path, new: NewVersion, origin: VersionRef, sha: str, budget: int,
             fits: Fits | None) -> tuple[ImportedVersion, int]:
    """A version's tensors and their size: the entry's size is checked, then its header (and ``fits``), then
    its bytes and sha256."""
    member = f"weights/{sha}.safetensors"
    info = _member(archive, path, member, f" is incomplete: the weights of {origin} ({member}) are missing")
    if info.file_size > min(MAX_WEIGHTS_BYTES, budget):
        raise ConceptError(
            f"{path}: the weights of {origin} are {info.file_size} bytes, more than a concept file may hold "
            f"({MAX_WEIGHTS_BYTES} per version, {MAX_FILE_WEIGHTS_BYTES} in all); nothing was imported"
        )
    what = f"the weights of {origin} in {path}"
    with archive.open(member) as stream:
        head = stream.read(8)
        head += stream.read(blobs.header_length(head, what))
        header = blobs.read_header(head, info.file_size, what)
        if fits is not None:
            fits(new, header, f"{origin} in {path}")
        data = head + stream.read(info.file_size - len(head))
    if blobs.sha256(data) != sha:
        raise CorruptBlobError(
            f"{path}: the weights of {origin} do not match their sha256 (the file is corrupt or was "
            "altered); nothing was imported"
        )
    claims = {"concept": origin.concept, "version": origin.number, "schema": new.schema.to_json(),
              "architecture": new.architecture, "architecture_config": new.architecture_config}
    for key, expected in claims.items():
        if header.metadata.get(key) != expected:
            raise CorruptBlobError(
                f"{path}: the manifest and the weights header of {origin} disagree about {key}; "
                "nothing was imported"
            )
    tensors = blobs.decode(data, sha, f"{origin} in {path}", verified=True)
    return ImportedVersion(new=new, tensors=tensors, origin=origin, origin_sha256=sha), info.file_size


def _ref(value: Any) -> VersionRef:
    text = untrusted.text(value)
    name, sep, number = text.partition("@")
    if not sep or not number.isascii() or not number.isdigit() or len(number) > 9 or int(number) < 1:
        raise untrusted.Malformed(f"{text[:40]!r} is not NAME@NUMBER")
    return VersionRef(check_name(name), int(number))


def _short(value: Any, limit: int = 256) -> str:
    if len(untrusted.text(value)) > limit:
        raise untrusted.Malformed(f"a text of {len(value)} characters (at most {limit})")
    return value
