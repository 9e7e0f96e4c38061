"""Keeping the policy at a version: verify the coordinator's signature on the manifest, fetch the
bytes (node/fetcher.py: from peers when the node has a p2p plane, else from the coordinator; every
chunk checked, a partial download resumed), and load them into the model."""
from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch

from protocol.checkpoint import Manifest, ManifestError, verify_manifest
from protocol.policy import decode_blob, load_adapter_state
from protocol.v1 import coordinator_pb2 as pb

from .client import CoordinatorClient
from .fetcher import fetch_blob
from .seeding import VersionPlane

log = logging.getLogger("potluck.node")


async def fetch_manifest(client: CoordinatorClient, coordinator_key: bytes, version: int) -> Manifest:
    reply = await client.stub.GetVersion(pb.GetVersionRequest(version=version), timeout=30)
    manifest = verify_manifest(coordinator_key, reply.manifest_json, reply.signature)
    if manifest.version != version:
        raise ManifestError(f"asked for version {version}, got a manifest for {manifest.version}")
    return manifest


class VersionLoader:
    """Keeps the policy model at the version the current work needs."""

    def __init__(self, client: CoordinatorClient, coordinator_key: bytes, cache_dir: Path, model,
                 progress: Callable[[int, int, int], None] | None = None,
                 plane: VersionPlane | None = None) -> None:
        self.client, self.coordinator_key, self.cache_dir, self.model = client, coordinator_key, cache_dir, model
        self.progress = progress  # (version, bytes held, total bytes) while a version downloads
        self.plane = plane  # the node's p2p side: fetch from peers, serve what it holds
        self.version: int | None = None
        self.momentum: dict[str, torch.Tensor] = {}

    async def ensure(self, version: int) -> None:
        if self.version == version:
            return
        manifest = await fetch_manifest(self.client, self.coordinator_key, version)
        on_bytes = None if self.progress is None else partial(self.progress, version)
        blob = await fetch_blob(self.client, manifest, self.cache_dir, on_bytes, self.plane)
        adapter, self.momentum = decode_blob(blob)
        load_adapter_state(self.model, adapter)
        self.version = version
        log.info("loaded version %d (%s, %d bytes)", version, manifest.sha256[:12], manifest.size)
