"""Weights as safetensors bytes: encoding with provenance metadata, decoding with verification.

Never pickle: safetensors holds only tensors and a JSON header, so loading a blob from someone else
runs no code. The header also records concept, version and schema, so a blob copied out of the
registry still says what it is.
"""

from __future__ import annotations

import hashlib
import json
import struct
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from conceptlib.errors import CorruptBlobError


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


def read_metadata(data: bytes) -> dict[str, Any]:
    """The metadata of a safetensors blob, decoded from its JSON header."""
    try:
        (length,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8 : 8 + length])
        raw = header.get("__metadata__", {}) or {}
        if set(raw) == {METADATA_KEY}:
            decoded = json.loads(raw[METADATA_KEY])
            if not isinstance(decoded, dict):
                raise ValueError("the metadata is not a JSON object")
            return decoded
        return {key: json.loads(value) for key, value in raw.items()}  # blobs written before 0.2
    except (struct.error, ValueError, TypeError, AttributeError) as exc:
        raise CorruptBlobError(f"weights blob has an unreadable safetensors header: {exc}") from None


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
    try:
        return st_load(data)
    except (SafetensorError, ValueError) as exc:
        raise CorruptBlobError(f"weights of {what} are not valid safetensors: {exc}") from None


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
