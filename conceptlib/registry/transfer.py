"""A concept version as one file (``.cpt``): its weights, schema, provenance and whole lineage.

The file is a zip holding ``manifest.json`` and the registry's own safetensors blobs, each named by its
sha256. No pickle anywhere: a file from someone else carries JSON and tensors, never code. The file
carries every version the exported one was trained with (its lineage, recursively), lineage first, so
an imported concept can always be composed the way it was trained; a target registry that already
holds one of them (same tensors) reuses it. Import verifies every sha256 and every header against the
manifest before it writes anything, then writes in one transaction.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from conceptlib.errors import ConceptError, CorruptBlobError
from conceptlib.files import atomic_write
from conceptlib.registry import blobs
from conceptlib.registry.api import ImportedVersion, NewVersion, Registry, VersionInfo, VersionRef
from conceptlib.schema import schema_from_json

FORMAT = "conceptlib-concept"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 16 << 20


@dataclass(frozen=True)
class ConceptFile:
    """A verified export file: its versions, lineage first and the exported one last."""

    path: Path
    versions: list[ImportedVersion]
    exported_from: str

    @property
    def ref(self) -> VersionRef:
        return self.versions[-1].origin

    @property
    def label(self) -> str:
        """Where the versions came from, as the target registry records it."""
        return f"{self.path.name} (exported from {self.exported_from})"


def export_concept(registry: Registry, version: VersionInfo, path: Path) -> list[VersionRef]:
    """Write ``version`` and its lineage to ``path`` (atomically); returns the versions written."""
    versions = _with_lineage(registry, version)
    entries, members = [], {}
    for v in versions:
        description = registry.concept(v.concept).description
        entries.append({**v.to_json(), "ref": str(v.ref), "description": description})
        members[f"weights/{v.weights_sha256}.safetensors"] = registry.weights_blob(v)
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "exported_at": datetime.now(timezone.utc).isoformat(),
        "exported_from": registry.display_url,
        "versions": entries,
    }
    if not path.parent.is_dir():
        raise ConceptError(f"cannot write {path}: directory {path.parent} does not exist")

    def write(temporary: Path) -> None:
        with zipfile.ZipFile(temporary, "w", zipfile.ZIP_STORED) as archive:
            archive.writestr(MANIFEST, json.dumps(manifest, indent=2, sort_keys=True))
            for name, data in members.items():
                archive.writestr(name, data)

    atomic_write(path, write)
    return [v.ref for v in versions]


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


def read_concept_file(path: Path) -> ConceptFile:
    """The versions in an export file, after checking the format and every blob's sha256 and header."""
    if not path.is_file():
        raise ConceptError(f"no concept file at {path}")
    try:
        with zipfile.ZipFile(path) as archive:
            manifest = _manifest(archive, path)
            versions = [_version(archive, path, entry, i) for i, entry in enumerate(manifest["versions"])]
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError) as exc:
        raise ConceptError(f"{path} is not a readable concept file ({exc}); export it again") from None
    if not versions:
        raise ConceptError(f"{path} holds no versions; export it again")
    known: set[VersionRef] = set()
    for item in versions:
        missing = [str(ref) for ref in item.new.lineage if ref not in known]
        if missing:
            raise ConceptError(
                f"{path}: {item.origin} was trained with {', '.join(missing)}, which the file does not carry "
                "before it; export it again with this conceptlib"
            )
        known.add(item.origin)
    return ConceptFile(path, versions, str(manifest.get("exported_from", "?")))


def _manifest(archive: zipfile.ZipFile, path: Path) -> dict[str, Any]:
    try:
        info = archive.getinfo(MANIFEST)
    except KeyError:
        raise ConceptError(f"{path} is not a concept file (it has no {MANIFEST}); export it again") from None
    if info.file_size > MAX_MANIFEST_BYTES:
        raise ConceptError(f"{path}: {MANIFEST} is {info.file_size} bytes, too large to be a manifest")
    try:
        manifest = json.loads(archive.read(MANIFEST))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConceptError(f"{path}: {MANIFEST} is not valid JSON ({exc}); export it again") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ConceptError(f"{path} is not a conceptlib concept file (format {FORMAT!r} expected)")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ConceptError(
            f"{path} was written by a newer conceptlib (file format {version}, this one reads up to "
            f"{FORMAT_VERSION}); upgrade conceptlib to import it"
        )
    if not isinstance(manifest.get("versions"), list):
        raise ConceptError(f"{path}: {MANIFEST} lists no versions; export it again")
    return manifest


def _version(archive: zipfile.ZipFile, path: Path, entry: Any, index: int) -> ImportedVersion:
    """One manifest entry with its verified tensors."""
    where = f"{path}: version entry {index + 1}"
    try:
        origin = _ref(entry["ref"])
        sha = str(entry["weights_sha256"])
        new = NewVersion(
            concept=origin.concept,
            schema=schema_from_json(entry["schema"]),
            architecture=_text(entry["architecture"]),
            architecture_config=_mapping(entry["architecture_config"]),
            source=_text(entry["source"]),
            source_params=_mapping(entry["source_params"]),
            attribute=_text(entry["attribute"]),
            dataset_hash=_text(entry["dataset_hash"]),
            hyperparameters=_mapping(entry["hyperparameters"]),
            seed=int(entry["seed"]),
            metrics=_mapping(entry["metrics"]),
            lineage=tuple(_ref(text) for text in _list(entry["lineage"])),
            description=_text(entry.get("description", "")),
        )
    except (KeyError, TypeError, ValueError, AttributeError, ConceptError) as exc:
        raise ConceptError(f"{where} is malformed ({exc.__class__.__name__}: {exc}); export it again") from None
    member = f"weights/{sha}.safetensors"
    try:
        data = archive.read(member)
    except KeyError:
        raise ConceptError(f"{path} is incomplete: the weights of {origin} ({member}) are missing") from None
    if blobs.sha256(data) != sha:
        raise CorruptBlobError(
            f"{path}: the weights of {origin} do not match their sha256 (the file is corrupt or was "
            "altered); nothing was imported"
        )
    tensors = blobs.decode(data, sha, f"{origin} in {path}", verified=True)
    header = blobs.read_metadata(data)
    claims = {"concept": origin.concept, "version": origin.number, "schema": new.schema.to_json(),
              "architecture": new.architecture, "architecture_config": new.architecture_config}
    for key, expected in claims.items():
        if header.get(key) != expected:
            raise CorruptBlobError(
                f"{path}: the manifest and the weights header of {origin} disagree about {key}; "
                "nothing was imported"
            )
    return ImportedVersion(new=new, tensors=tensors, origin=origin, origin_sha256=sha)


def _ref(text: Any) -> VersionRef:
    name, sep, number = _text(text).partition("@")
    if not name or not sep or not number.isdigit():
        raise ValueError(f"{text!r} is not NAME@NUMBER")
    return VersionRef(name, int(number))


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected text, got {type(value).__name__}")
    return value


def _mapping(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TypeError(f"expected an object, got {type(value).__name__}")
    return value


def _list(value: Any) -> Iterable[Any]:
    if not isinstance(value, list):
        raise TypeError(f"expected a list, got {type(value).__name__}")
    return value

