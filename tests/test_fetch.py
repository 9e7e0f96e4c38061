"""A node's version fetch against a real coordinator: resume, corrupt bytes, forged manifests."""
import asyncio

import pytest

from node.client import CoordinatorClient
from node.versions import fetch_blob, fetch_manifest
from protocol.checkpoint import ManifestError, sha256_hex
from protocol.identity import Identity
from tests.procs import Coordinator


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fetch")
    proc = Coordinator("test", tmp / "data", tmp)
    yield proc, Identity.load_or_create(tmp / "data" / "coordinator.key").public_key
    assert proc.stop() == 0, proc.log()


def run(coro_fn, address):
    async def body():
        client = CoordinatorClient(address, Identity.generate())
        try:
            return await coro_fn(client)
        finally:
            await client.close()
    return asyncio.run(body())


def test_fetch_resumes_a_partial_download(coordinator, tmp_path):
    proc, key = coordinator

    async def fetch(client):
        manifest = await fetch_manifest(client, key, 0)
        whole = await fetch_blob(client, manifest, tmp_path / "a")
        # a second cache holding the first 1000 bytes: only the rest is streamed
        (tmp_path / "b").mkdir()
        (tmp_path / "b" / f"{manifest.sha256}.part").write_bytes(whole[:1000])
        resumed = await fetch_blob(client, manifest, tmp_path / "b")
        return manifest, whole, resumed

    manifest, whole, resumed = run(fetch, proc.address)
    assert sha256_hex(whole) == manifest.sha256 == sha256_hex(resumed) and len(whole) == manifest.size
    assert not (tmp_path / "b" / f"{manifest.sha256}.part").exists()


def test_corrupt_partial_bytes_are_detected_and_discarded(coordinator, tmp_path):
    proc, key = coordinator

    async def fetch(client):
        manifest = await fetch_manifest(client, key, 0)
        partial = tmp_path / f"{manifest.sha256}.part"
        partial.write_bytes(b"\x00" * 1000)  # wrong bytes where the download resumes
        with pytest.raises(ManifestError, match="do not match"):
            await fetch_blob(client, manifest, tmp_path)
        assert not partial.exists()
        return manifest, await fetch_blob(client, manifest, tmp_path)  # a clean retry succeeds

    manifest, data = run(fetch, proc.address)
    assert sha256_hex(data) == manifest.sha256


def test_a_manifest_not_signed_by_the_coordinator_is_refused(coordinator):
    proc, _ = coordinator

    async def fetch(client):
        with pytest.raises(ManifestError, match="signature"):
            await fetch_manifest(client, Identity.generate().public_key, 0)

    run(fetch, proc.address)
