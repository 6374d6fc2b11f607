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


def encode(tensors: dict[str, np.ndarray], metadata: dict[str, Any]) -> bytes:
    """Safetensors bytes; metadata values are JSON-encoded (safetensors allows only strings)."""
    header = {key: json.dumps(value) for key, value in metadata.items()}
    return st_save({k: np.ascontiguousarray(v) for k, v in tensors.items()}, metadata=header)


def read_metadata(data: bytes) -> dict[str, Any]:
    """The metadata of a safetensors blob, decoded from its JSON header."""
    try:
        (length,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8 : 8 + length])
        raw = header.get("__metadata__", {}) or {}
        return {key: json.loads(value) for key, value in raw.items()}
    except (struct.error, ValueError, TypeError, AttributeError) as exc:
        raise CorruptBlobError(f"weights blob has an unreadable safetensors header: {exc}") from None


def decode(data: bytes, expected_sha256: str, what: str) -> dict[str, np.ndarray]:
    """Tensors of a blob after checking its sha256 against the registry's record."""
    actual = sha256(data)
    if actual != expected_sha256:
        raise CorruptBlobError(
            f"weights of {what} are corrupt: sha256 {actual[:12]}... does not match the recorded "
            f"{expected_sha256[:12]}...; roll back to another version or re-train it"
        )
    try:
        return st_load(data)
    except (SafetensorError, ValueError) as exc:
        raise CorruptBlobError(f"weights of {what} are not valid safetensors: {exc}") from None
