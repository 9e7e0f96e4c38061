"""A node's version fetch from a real coordinator alone (no p2p plane): chunk by chunk, each chunk
checked against the signed manifest, an interrupted download resumed, forged manifests refused."""
import asyncio

import pytest

from node.client import CoordinatorClient
from node.fetcher import FetchStats, fetch_blob
from node.versions import fetch_manifest
from protocol.checkpoint import ManifestError, sha256_hex
from protocol.identity import Identity
from protocol.v1 import coordinator_pb2 as pb
from tests.procs import Coordinator


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fetch")
    proc = Coordinator("test", tmp / "data", tmp)
    yield proc, Identity.load_or_create(tmp / "data" / "coordinator.key")  # only its public key is used
    assert proc.stop() == 0, proc.log()


def run(coro_fn, address):
    async def body():
        client = CoordinatorClient(address, Identity.generate())
        try:
            return await coro_fn(client)
        finally:
            await client.close()
    return asyncio.run(body())


def test_fetch_resumes_with_the_verified_chunks_of_a_partial_download(coordinator, tmp_path):
    proc, key = coordinator

    async def fetch(client):
        manifest = await fetch_manifest(client, key.public_key, 0)
        first = FetchStats()
        whole = await fetch_blob(client, manifest, tmp_path / "a", stats=first)
        # another cache holding the first chunk and a half: the whole chunk is kept, the half is not
        (tmp_path / "b").mkdir()
        (tmp_path / "b" / f"{manifest.sha256}.part").write_bytes(whole[:manifest.chunk_size * 3 // 2])
        again = FetchStats()
        resumed = await fetch_blob(client, manifest, tmp_path / "b", stats=again)
        return manifest, whole, resumed, first, again

    manifest, whole, resumed, first, again = run(fetch, proc.address)
    assert sha256_hex(whole) == manifest.sha256 == sha256_hex(resumed) and len(whole) == manifest.size
    assert len(manifest.chunks) >= 3 and first.chunks == len(manifest.chunks)
    assert (first.reused, first.from_coordinator) == (0, len(manifest.chunks))
    assert (again.reused, again.from_coordinator) == (1, len(manifest.chunks) - 1)
    assert not (tmp_path / "b" / f"{manifest.sha256}.part").exists()
    assert (tmp_path / "b" / manifest.sha256).read_bytes() == whole


def test_corrupt_partial_bytes_are_fetched_again(coordinator, tmp_path):
    proc, key = coordinator

    async def fetch(client):
        manifest = await fetch_manifest(client, key.public_key, 0)
        (tmp_path / f"{manifest.sha256}.part").write_bytes(b"\xff" * manifest.size)  # wrong bytes everywhere (v0 has all-zero chunks)
        stats = FetchStats()
        return manifest, await fetch_blob(client, manifest, tmp_path, stats=stats), stats

    manifest, data, stats = run(fetch, proc.address)
    assert sha256_hex(data) == manifest.sha256
    assert (stats.reused, stats.from_coordinator) == (0, len(manifest.chunks))


def test_bytes_that_differ_from_the_signed_chunk_hashes_are_refused(coordinator, tmp_path):
    proc, key = coordinator

    async def fetch(client):
        real = await fetch_manifest(client, key.public_key, 0)
        # a manifest naming another hash for chunk 0 than its bytes have: no chunk 0 is ever kept
        forged = real.model_copy(update={"chunks": (sha256_hex(b"other"),) + real.chunks[1:]})
        with pytest.raises(ManifestError, match="chunk 0 does not match the signed manifest"):
            await fetch_blob(client, forged, tmp_path)
        # a manifest signed before chunk hashes existed: the whole blob is its one chunk
        legacy = real.model_copy(update={"chunks": (), "chunk_size": 0})
        stats = FetchStats()
        return real, await fetch_blob(client, legacy, tmp_path / "legacy", stats=stats), stats

    real, data, stats = run(fetch, proc.address)
    assert sha256_hex(data) == real.sha256 and (stats.chunks, stats.from_coordinator) == (1, 1)


def test_a_manifest_not_signed_by_the_coordinator_is_refused(coordinator):
    proc, _ = coordinator

    async def fetch(client):
        with pytest.raises(ManifestError, match="signature"):
            await fetch_manifest(client, Identity.generate().public_key, 0)

    run(fetch, proc.address)


def test_fetch_version_streams_a_single_chunk_range(coordinator):
    proc, key = coordinator

    async def fetch(client):
        manifest = await fetch_manifest(client, key.public_key, 0)
        offset = manifest.chunk_size
        pieces = [c async for c in client.stub.FetchVersion(pb.FetchVersionRequest(
            version=0, offset=offset, length=manifest.chunk_size))]
        return manifest, pieces

    manifest, pieces = run(fetch, proc.address)
    data = b"".join(p.data for p in pieces)
    assert pieces[0].offset == manifest.chunk_size and len(data) == manifest.chunk_size
    assert sha256_hex(data) == manifest.chunks[1]
