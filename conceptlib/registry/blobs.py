"""Weights as safetensors bytes: encoding with provenance metadata, decoding with verification.

Never pickle: safetensors holds only tensors and a JSON header, so loading a blob from someone else
runs no code. The header also records concept, version and schema, so a blob copied out of the
registry still says what it is.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from conceptlib import untrusted
from conceptlib.errors import CorruptBlobError
from conceptlib.limits import MAX_HEADER_BYTES, MAX_TENSORS


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


METADATA_KEY = "conceptlib"


def encode(tensors: dict[str, np.ndarray], metadata: dict[str, Any]) -> bytes:
    """Safetensors bytes with the metadata as one sorted JSON string under :data:`METADATA_KEY`.

    One key, because safetensors writes several metadata keys in a per-process hash order: the same
    weights would get a different sha256 in every run, and a seeded run could not be checked by hash.
    """
    header = {METADATA_KEY: json.dumps(metadata, sort_keys=True)}
    return st_save({k: np.ascontiguousarray(v) for k, v in tensors.items()}, metadata=header)


DTYPES = {"BOOL": "?", "U8": "u1", "I8": "i1", "U16": "<u2", "I16": "<i2", "F16": "<f2", "U32": "<u4",
          "I32": "<i4", "F32": "<f4", "U64": "<u8", "I64": "<i8", "F64": "<f8"}
"""The safetensors dtypes numpy holds (no BF16 or F8: numpy has no such type)."""


@dataclass(frozen=True)
class Header:
    """A safetensors header, checked: every tensor's dtype, shape and byte range, and the metadata."""

    layout: dict[str, tuple[np.dtype, tuple[int, ...]]]
    """Tensor name -> (dtype, shape)."""
    metadata: dict[str, Any]
    size: int
    """The whole file's size in bytes that this header describes."""


def header_length(prefix: bytes, what: str = "weights") -> int:
    """The JSON header's length from a safetensors file's first 8 bytes, refused past ``MAX_HEADER_BYTES``."""
    if len(prefix) < 8:
        raise CorruptBlobError(f"{what} are not valid safetensors: shorter than the 8-byte header length")
    length = int.from_bytes(prefix[:8], "little")
    if length > MAX_HEADER_BYTES:
        raise CorruptBlobError(
            f"{what} are not valid safetensors: a {length}-byte header (at most {MAX_HEADER_BYTES})"
        )
    return length


def read_header(head: bytes, size: int, what: str = "weights") -> Header:
    """The checked header of a safetensors file of ``size`` bytes that starts with ``head`` (at least its
    8-byte length and header). Every tensor must have a known dtype, a shape whose bytes match its range,
    and the ranges must tile the data exactly, so the tensors' memory is known before they are read."""
    length = header_length(head, what)
    try:
        return _parse(head, length, size)
    except untrusted.Malformed as exc:
        raise CorruptBlobError(f"{what} are not valid safetensors: {exc}") from None


def _parse(head: bytes, length: int, size: int) -> Header:
    if len(head) < 8 + length or size < 8 + length:
        raise untrusted.Malformed("the file ends inside its header")
    header = untrusted.mapping(untrusted.load_json(head[8 : 8 + length], MAX_HEADER_BYTES))
    metadata = _metadata(header.pop("__metadata__", None))
    if len(header) > MAX_TENSORS:
        raise untrusted.Malformed(f"{len(header)} tensors (at most {MAX_TENSORS})")
    layout, ranges = {}, []
    for name, entry in header.items():
        dtype, shape, (begin, end) = _tensor(untrusted.mapping(entry))
        if end - begin != math.prod(shape) * dtype.itemsize:
            raise untrusted.Malformed(f"tensor {name[:40]!r}: its byte range does not hold its shape")
        layout[name] = (dtype, shape)
        ranges.append((begin, end))
    position = 0
    for begin, end in sorted(ranges):
        if begin != position:
            raise untrusted.Malformed("its tensors overlap or leave gaps")
        position = end
    if 8 + length + position != size:
        raise untrusted.Malformed(f"{size} bytes, but the header describes {8 + length + position}")
    return Header(layout, metadata, size)


def _tensor(entry: dict[str, Any]) -> tuple[np.dtype, tuple[int, ...], tuple[int, int]]:
    dtype = untrusted.text(untrusted.field(entry, "dtype"))
    if dtype not in DTYPES:
        raise untrusted.Malformed(f"dtype {dtype[:20]!r} is not one of {', '.join(DTYPES)}")
    shape = tuple(untrusted.integer(d, 0, 2**62, "a dimension") for d in untrusted.sequence(entry.get("shape")))
    offsets = untrusted.sequence(untrusted.field(entry, "data_offsets"))
    if len(offsets) != 2 or len(shape) > 8:
        raise untrusted.Malformed("a tensor needs two data_offsets and at most 8 dimensions")
    begin, end = (untrusted.integer(o, 0, 2**62, "an offset") for o in offsets)
    return np.dtype(DTYPES[dtype]), shape, (begin, end)


def _metadata(raw: Any) -> dict[str, Any]:
    """conceptlib's metadata: one JSON string under :data:`METADATA_KEY`, or (before 0.2) one per key."""
    if raw is None:
        return {}
    raw = untrusted.mapping(raw)
    if set(raw) == {METADATA_KEY}:
        return untrusted.mapping(untrusted.load_json(untrusted.text(raw[METADATA_KEY]), MAX_HEADER_BYTES))
    return {key: untrusted.load_json(untrusted.text(value), MAX_HEADER_BYTES) for key, value in raw.items()}


def read_metadata(data: bytes, what: str = "weights") -> dict[str, Any]:
    """The metadata of a safetensors blob, decoded from its checked JSON header."""
    return read_header(data[: 8 + header_length(data, what)], len(data), what).metadata


def verify(data: bytes, expected_sha256: str, what: str) -> None:
    """Refuse bytes whose sha256 differs from the one recorded for them."""
    actual = sha256(data)
    if actual != expected_sha256:
        raise CorruptBlobError(
            f"weights of {what} are corrupt: sha256 {actual[:12]}... does not match the recorded "
            f"{expected_sha256[:12]}...; roll back to another version or re-train it"
        )


def decode(data: bytes, expected_sha256: str, what: str, verified: bool = False) -> dict[str, np.ndarray]:
    """Tensors of a blob after checking its sha256 (unless the caller just did) and its safetensors layout."""
    if not verified:
        verify(data, expected_sha256, what)
    shown = f"weights of {what}"
    read_header(data[: 8 + header_length(data, shown)], len(data), shown)
    try:
        return st_load(data)
    except (SafetensorError, ValueError, KeyError) as exc:
        raise CorruptBlobError(f"{shown} are not valid safetensors: {exc}") from None


def tensor_digest(tensors: dict[str, np.ndarray]) -> str:
    """sha256 of the tensors alone (names, dtypes, shapes, bytes), whatever header a blob carries.

    Two blobs with equal tensor digests hold the same weights even when their headers name different
    versions, which is how an import recognises a version the registry already has.
    """
    digest = hashlib.sha256()
    for name in sorted(tensors):
        array = np.ascontiguousarray(tensors[name])
        digest.update(json.dumps([name, array.dtype.str, list(array.shape)]).encode())
        digest.update(array.tobytes())
    return digest.hexdigest()
