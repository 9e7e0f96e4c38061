"""Versions on the wire and on disk: the blob format and the coordinator-signed manifest.

A version blob is one safetensors file: the LoRA adapter tensors under `adapter/` and the DiLoCo
outer momentum under `outer_momentum/` (so a trainer that joins later computes the same next
version). It is content-addressed by its sha256; the manifest binds version, parent and hash and is
signed by the coordinator key, so a node can take the bytes from anyone and check them.
"""
from __future__ import annotations

import hashlib
import json

import numpy as np
from pydantic import BaseModel, ConfigDict
from safetensors.numpy import load as load_numpy

from .identity import Identity, verify

ADAPTER_PREFIX = "adapter/"
MOMENTUM_PREFIX = "outer_momentum/"
BLOB_FORMAT = "potluck-lora-v1"


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


class ManifestError(ValueError):
    pass


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def manifest_json(manifest: Manifest) -> str:
    return json.dumps(manifest.model_dump(), sort_keys=True, separators=(",", ":"))


def sign_manifest(identity: Identity, manifest: Manifest) -> tuple[str, bytes]:
    text = manifest_json(manifest)
    return text, identity.sign(text.encode())


def verify_manifest(coordinator_key: bytes, text: str, signature: bytes) -> Manifest:
    if not verify(coordinator_key, text.encode(), signature):
        raise ManifestError("manifest signature does not verify against the coordinator key")
    return Manifest.model_validate_json(text)


def blob_layout(blob: bytes) -> dict[str, tuple[str, tuple[int, ...]]]:
    """name -> (dtype, shape) of every tensor; raises ValueError if the blob is not a sound,
    finite potluck blob. Needs no torch, so the coordinator can vet blobs cheaply."""
    try:
        tensors = load_numpy(blob)
    except Exception as exc:  # safetensors raises its own error types for malformed input
        raise ValueError(f"not a safetensors blob: {exc}") from exc
    layout = {}
    for name, array in tensors.items():
        if not name.startswith((ADAPTER_PREFIX, MOMENTUM_PREFIX)):
            raise ValueError(f"unexpected tensor {name!r} in version blob")
        if not np.isfinite(array).all():
            raise ValueError(f"tensor {name!r} has non-finite values")
        layout[name] = (str(array.dtype), tuple(array.shape))
    return layout
