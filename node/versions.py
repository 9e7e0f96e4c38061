"""Fetching versions: verify the coordinator's signature on the manifest, stream the bytes (resuming
a partial download), check the sha256, cache the blob by content, and load it into the policy."""
from __future__ import annotations

import logging
import os
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch

from protocol.checkpoint import Manifest, ManifestError, sha256_hex, verify_manifest
from protocol.policy import decode_blob, load_adapter_state
from protocol.v1 import coordinator_pb2 as pb

from .client import CoordinatorClient

log = logging.getLogger("potluck.node")
CACHED_VERSIONS = 3  # a node only ever needs the version it works on and the next
# (bytes held so far, total bytes): lets a view draw a download's progress bar.
FetchProgress = Callable[[int, int], None]


async def fetch_manifest(client: CoordinatorClient, coordinator_key: bytes, version: int) -> Manifest:
    reply = await client.stub.GetVersion(pb.GetVersionRequest(version=version), timeout=30)
    manifest = verify_manifest(coordinator_key, reply.manifest_json, reply.signature)
    if manifest.version != version:
        raise ManifestError(f"asked for version {version}, got a manifest for {manifest.version}")
    return manifest


async def fetch_blob(client: CoordinatorClient, manifest: Manifest, cache_dir: Path,
                     progress: FetchProgress | None = None) -> bytes:
    cache_dir.mkdir(parents=True, exist_ok=True)
    final = cache_dir / manifest.sha256
    if final.exists():
        data = final.read_bytes()
        if sha256_hex(data) == manifest.sha256:
            return data
        final.unlink()
    partial = cache_dir / f"{manifest.sha256}.part"
    offset = partial.stat().st_size if partial.exists() else 0
    if offset > manifest.size:
        partial.unlink()
        offset = 0
    with open(partial, "ab") as out:
        if progress is not None:
            progress(offset, manifest.size)  # a resumed download starts part-way
        stream = client.stub.FetchVersion(pb.FetchVersionRequest(version=manifest.version, offset=offset), timeout=300)
        async for chunk in stream:
            if chunk.offset != offset or offset + len(chunk.data) > manifest.size:
                raise ManifestError(f"chunk at {chunk.offset} does not continue the download at {offset}")
            out.write(chunk.data)
            offset += len(chunk.data)
            if progress is not None:
                progress(offset, manifest.size)
    data = partial.read_bytes()
    if sha256_hex(data) != manifest.sha256:
        partial.unlink()
        raise ManifestError(f"version {manifest.version}: downloaded bytes do not match sha256 {manifest.sha256[:12]}")
    os.replace(partial, final)
    _prune(cache_dir, keep=CACHED_VERSIONS)
    return data


def _prune(cache_dir: Path, keep: int) -> None:
    blobs = sorted((p for p in cache_dir.iterdir() if len(p.name) == 64), key=lambda p: p.stat().st_mtime)
    for stale in blobs[:-keep]:
        stale.unlink(missing_ok=True)


class VersionLoader:
    """Keeps the policy model at the version the current work needs."""

    def __init__(self, client: CoordinatorClient, coordinator_key: bytes, cache_dir: Path, model,
                 progress: Callable[[int, int, int], None] | None = None) -> None:
        self.client, self.coordinator_key, self.cache_dir, self.model = client, coordinator_key, cache_dir, model
        self.progress = progress  # (version, bytes held, total bytes) while a version downloads
        self.version: int | None = None
        self.momentum: dict[str, torch.Tensor] = {}

    async def ensure(self, version: int) -> None:
        if self.version == version:
            return
        manifest = await fetch_manifest(self.client, self.coordinator_key, version)
        on_bytes = None if self.progress is None else partial(self.progress, version)
        blob = await fetch_blob(self.client, manifest, self.cache_dir, on_bytes)
        adapter, self.momentum = decode_blob(blob)
        load_adapter_state(self.model, adapter)
        self.version = version
        log.info("loaded version %d (%s, %d bytes)", version, manifest.sha256[:12], manifest.size)
