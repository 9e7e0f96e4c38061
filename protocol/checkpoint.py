"""Versions on the wire and on disk: the blob format and the coordinator-signed manifest.

A version blob is one safetensors file: the LoRA adapter tensors under `adapter/` (format
potluck-lora-v1) or, in full-parameter mode, every model parameter under `weights/`
(potluck-full-v1), and the DiLoCo outer momentum of each of them under `outer_momentum/` (so a
trainer that joins later computes the same next version). The format is in the file's metadata.
It is content-addressed by its sha256; the manifest binds version, parent and hash and is signed
by the coordinator key, so a node can take the bytes from anyone and check them. The manifest also
lists the sha256 of every chunk_size piece of the blob, so a node fetching from several peers
checks each piece as it arrives and knows which peer sent a bad one.
"""
from __future__ import annotations

import hashlib
import json
import math
import struct

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator
from safetensors.numpy import load as load_numpy

from .identity import Identity, verify

ADAPTER_PREFIX = "adapter/"
MOMENTUM_PREFIX = "outer_momentum/"
BLOB_FORMAT = "potluck-lora-v1"
WEIGHTS_PREFIX = "weights/"
FULL_BLOB_FORMAT = "potluck-full-v1"
# format -> the prefix of the trained tensors; each has its momentum under MOMENTUM_PREFIX
PARAM_PREFIXES = {BLOB_FORMAT: ADAPTER_PREFIX, FULL_BLOB_FORMAT: WEIGHTS_PREFIX}
CHUNK_SIZE = 1 << 20  # what the publisher cuts blobs into; nodes read it from each manifest


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    run: str
    version: int
    parent: int | None
    sha256: str
    size: int
    base_model: str
    format: str = BLOB_FORMAT
    created_ms: int
    # Manifests signed before chunk hashes existed have none: their one chunk is the whole blob.
    chunk_size: int = Field(0, ge=0)
    chunks: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _chunks_cover_the_blob(self) -> Manifest:
        if self.chunks and (self.chunk_size <= 0 or len(self.chunks) != math.ceil(self.size / self.chunk_size)):
            raise ValueError(f"{len(self.chunks)} chunk hashes of {self.chunk_size} bytes do not cover {self.size} bytes")
        return self

    def chunk_plan(self) -> tuple[int, tuple[str, ...]]:
        """(chunk size, sha256 of each chunk): the signed hashes every piece is checked against."""
        if self.chunks:
            return self.chunk_size, self.chunks
        return max(self.size, 1), (self.sha256,)


class ManifestError(ValueError):
    pass


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def chunk_hashes(blob: bytes, chunk_size: int = CHUNK_SIZE) -> tuple[str, ...]:
    view = memoryview(blob)
    return tuple(sha256_hex(view[i:i + chunk_size]) for i in range(0, len(blob), chunk_size))


def manifest_json(manifest: Manifest) -> str:
    return json.dumps(manifest.model_dump(), sort_keys=True, separators=(",", ":"))


def sign_manifest(identity: Identity, manifest: Manifest) -> tuple[str, bytes]:
    text = manifest_json(manifest)
    return text, identity.sign(text.encode())


def verify_manifest(coordinator_key: bytes, text: str, signature: bytes) -> Manifest:
    if not verify(coordinator_key, text.encode(), signature):
        raise ManifestError("manifest signature does not verify against the coordinator key")
    return Manifest.model_validate_json(text)


def blob_format(blob: bytes) -> str:
    """The format named in a safetensors blob's metadata; ValueError if it names none we know."""
    try:
        (length,) = struct.unpack("<Q", blob[:8])
        header = json.loads(blob[8:8 + length]) if length <= len(blob) - 8 else None
    except (struct.error, ValueError) as exc:
        raise ValueError(f"not a safetensors blob: {exc}") from exc
    found = (header.get("__metadata__") or {}).get("format") if isinstance(header, dict) else None
    if found not in PARAM_PREFIXES:
        raise ValueError(f"unknown version blob format {found!r}; expected one of {sorted(PARAM_PREFIXES)}")
    return found


def blob_layout(blob: bytes) -> dict[str, tuple[str, tuple[int, ...]]]:
    """name -> (dtype, shape) of every tensor; raises ValueError if the blob is not a sound,
    finite potluck blob with only its format's prefixes. Needs no torch, so the coordinator can vet
    blobs cheaply."""
    prefixes = (PARAM_PREFIXES[blob_format(blob)], MOMENTUM_PREFIX)
    try:
        tensors = load_numpy(blob)
    except Exception as exc:  # safetensors raises its own error types for malformed input
        raise ValueError(f"not a safetensors blob: {exc}") from exc
    layout = {}
    for name, array in tensors.items():
        if not name.startswith(prefixes):
            raise ValueError(f"unexpected tensor {name!r} in version blob")
        if not np.isfinite(array).all():
            raise ValueError(f"tensor {name!r} has non-finite values")
        layout[name] = (str(array.dtype), tuple(array.shape))
    return layout
