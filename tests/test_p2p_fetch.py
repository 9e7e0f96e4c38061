"""Versions spread between real peers: each node has its own key, hivemind DHT + p2pd and seeder
(node/seeding.py), the coordinator process is the tracker and the last-resort seed, and its
Prometheus counter says how many bytes it sent."""
import asyncio
import os
import shutil
import signal
import time
from pathlib import Path

import grpc
import pytest

from bench.broadcast import join_node, leave, served_bytes, start_coordinator
from node.chunkfile import ChunkFile
from node.fetcher import PEER_IN_FLIGHT, FetchStats, _announce, fetch_blob
from node.seeding import CHUNK, VersionPlane
from node.versions import fetch_manifest
from protocol.checkpoint import sha256_hex
from protocol.identity import Identity
from protocol.v1 import coordinator_pb2 as pb
from protocol.v1 import coordinator_pb2_grpc as pb_grpc
from protocol.v1 import p2p_pb2 as ppb
from tests.procs import node, watch_until
from tests.rpc import Node, refused

RANK = 32  # a 6-chunk version 0


@pytest.fixture(scope="module")
def swarm(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("p2p-fetch")
    proc, metrics, key = start_coordinator(tmp / "coordinator", RANK, tmp)
    yield proc, metrics, key
    assert proc.stop() == 0, proc.log()


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 120))


def test_an_interrupted_fetch_resumes_and_a_holder_then_serves_every_chunk(swarm, tmp_path):
    proc, metrics, key = swarm

    async def body():
        a, b = await join_node(proc.address, tmp_path / "a"), await join_node(proc.address, tmp_path / "b")
        try:
            manifest = await fetch_manifest(a[0], key, 0)
            assert len(manifest.chunks) == 6
            two_chunks = asyncio.Event()
            cut = asyncio.create_task(fetch_blob(
                a[0], manifest, tmp_path / "a" / "versions", plane=a[1],
                progress=lambda held, total: held >= 2 * manifest.chunk_size and two_chunks.set()))
            await two_chunks.wait()
            cut.cancel()  # the node stops mid-download (its .part file keeps the verified chunks)
            with pytest.raises(asyncio.CancelledError):
                await cut
            before, resumed = served_bytes(metrics), FetchStats()
            data = await fetch_blob(a[0], manifest, tmp_path / "a" / "versions", plane=a[1], stats=resumed)
            resent = served_bytes(metrics) - before

            before, copied = served_bytes(metrics), FetchStats()
            copy = await fetch_blob(b[0], manifest, tmp_path / "b" / "versions", plane=b[1], stats=copied)
            return manifest, data, resumed, resent, copy, copied, served_bytes(metrics) - before, a[1].node_id
        finally:
            await leave([a, b])

    manifest, data, resumed, resent, copy, copied, egress, holder = run(body())
    assert sha256_hex(data) == sha256_hex(copy) == manifest.sha256
    # only the chunks missing from the .part file came again, and only those bytes left the coordinator
    assert 2 <= resumed.reused < 6 and resumed.from_coordinator == 6 - resumed.reused
    assert resent == manifest.size - resumed.reused_bytes > 0
    # the second node took every chunk from the first, nothing from the coordinator
    assert copied.from_peers == {holder: 6} and copied.from_coordinator == 0 and egress == 0

def test_a_peer_serving_corrupt_chunks_is_dropped_and_the_fetch_completes_from_others(swarm, tmp_path):
    proc, metrics, key = swarm

    async def body():
        honest, liar, fetcher = [await join_node(proc.address, tmp_path / name) for name in ("h", "l", "f")]
        try:
            manifest = await fetch_manifest(honest[0], key, 0)
            await fetch_blob(honest[0], manifest, tmp_path / "h" / "versions", plane=honest[1])
            # the liar holds the real blob, says so, and serves every chunk with one byte flipped
            (tmp_path / "l" / "versions").mkdir()
            shutil.copy(tmp_path / "h" / "versions" / manifest.sha256, tmp_path / "l" / "versions")
            liar[1].seeder.offer(ChunkFile(manifest, tmp_path / "l" / "versions"))
            served = []

            async def flipped(request, context):
                data = bytearray((await liar[1].seeder._chunk(request, context)).data)
                data[len(data) // 2] ^= 0xFF
                served.append(request.index)
                return ppb.ChunkReply(data=bytes(data))

            await liar[1].p2p.remove_protobuf_handler(CHUNK)
            await liar[1].p2p.add_protobuf_handler(CHUNK, flipped, ppb.ChunkRequest)
            assert (await _announce(liar[0], liar[1], 0, holding=True)) is not None

            before, stats = served_bytes(metrics), FetchStats()
            data = await fetch_blob(fetcher[0], manifest, tmp_path / "f" / "versions", plane=fetcher[1], stats=stats)
            return (manifest, data, stats, served_bytes(metrics) - before, served, honest[1].node_id,
                    liar[1].node_id)
        finally:
            await leave([honest, liar, fetcher])

    manifest, data, stats, egress, served, honest, liar = run(body())
    assert sha256_hex(data) == manifest.sha256
    # both holders were asked at once (rarest first, PEER_IN_FLIGHT each): the liar's first chunk
    # failed its hash, the liar was dropped, and its chunks came from the honest peer instead
    assert 1 <= len(served) <= PEER_IN_FLIGHT and stats.bad_peers == [liar] and liar in stats.dropped_peers
    assert stats.from_peers == {honest: 6} and stats.from_coordinator == 0 and egress == 0


def test_with_no_live_peer_every_chunk_comes_from_the_coordinator(swarm, tmp_path):
    proc, metrics, key = swarm

    async def body():
        ghost = await join_node(proc.address, tmp_path / "ghost")
        lone = await join_node(proc.address, tmp_path / "lone")
        try:
            manifest = await fetch_manifest(lone[0], key, 0)
            # the ghost tells the tracker it holds the version, then its daemon dies with no goodbye
            assert (await _announce(ghost[0], ghost[1], 0, holding=True)) is not None
            await ghost[1].close()
            before, stats = served_bytes(metrics), FetchStats()
            data = await fetch_blob(lone[0], manifest, tmp_path / "lone" / "versions", plane=lone[1], stats=stats)
            return manifest, data, stats, served_bytes(metrics) - before, ghost[1].node_id
        finally:
            await leave([lone])
            await ghost[0].close()

    manifest, data, stats, egress, ghost = run(body())
    assert sha256_hex(data) == manifest.sha256
    assert ghost in stats.dropped_peers and not stats.bad_peers and not stats.from_peers
    assert stats.from_coordinator == 6 and egress == manifest.size


def test_the_tracker_refuses_bad_input_and_names_other_fetchers(swarm):
    proc, _, _ = swarm
    with grpc.insecure_channel(proc.address) as channel:
        stub = pb_grpc.CoordinatorStub(channel)
        a, b = Node(stub), Node(stub)

        def find(node, maddrs, version=0):
            return node.call("FindPeers", pb.FindPeersBody(version=version, p2p_maddrs=maddrs))

        mine = f"/ip4/127.0.0.1/tcp/4001/p2p/{a.identity.node_id}"
        for maddrs in (["not a multiaddr"], ["/ip4/127.0.0.1"], [f"/ip4/127.0.0.1/tcp/4001/p2p/{b.identity.node_id}"]):
            refused(lambda: find(a, maddrs), grpc.StatusCode.INVALID_ARGUMENT, "bad_multiaddr")
        refused(lambda: find(a, [mine] * 33), grpc.StatusCode.INVALID_ARGUMENT, "too_many")
        refused(lambda: find(a, [mine], version=99), grpc.StatusCode.NOT_FOUND, "unknown_version")

        first = find(a, [mine])
        second = find(b, ["/ip4/127.0.0.1/tcp/4002"])  # no /p2p/ part: the tracker adds the caller's
        assert a.identity.node_id not in {p.node_id for p in first.peers}
        assert second.position > first.position
        assert pb.VersionPeer(node_id=a.identity.node_id, maddrs=[mine]) in second.peers
        named = {p.node_id: list(p.maddrs) for p in find(a, [mine]).peers}
        assert named[b.identity.node_id] == [f"/ip4/127.0.0.1/tcp/4002/p2p/{b.identity.node_id}"]
        b.call("ReturnLeases", pb.ReturnLeasesBody(reason="node leaving"))  # a node that left is not named
        assert b.identity.node_id not in {p.node_id for p in find(a, [mine]).peers}


def descendants(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in map(int, (task / "children").read_text().split()):
            found += [child, *descendants(child)]
    return found


def is_p2pd(pid: int) -> bool:
    try:
        return b"p2pd" in Path(f"/proc/{pid}/cmdline").read_bytes()  # a zombie's is empty
    except FileNotFoundError:
        return False


def p2pd_of(pid: int) -> list[int]:
    return [child for child in descendants(pid) if is_p2pd(child)]


def test_an_inference_node_serves_through_its_plane_and_a_kill_leaves_no_daemon(swarm, tmp_path):
    proc, _, _ = swarm
    worker = node(proc.address, "inference", tmp_path / "inf", tmp_path)
    try:
        # a real `potluck node join`: its plane is up, it fetched version 0 through it, and says so
        watch_until(proc.address, lambda snap: any(n.name == "inf" and n.HasField("holding_version")
                                                   for n in snap.nodes), timeout=120)
        daemons = p2pd_of(worker.popen.pid)
        assert len(daemons) == 1, worker.log()
        worker.popen.send_signal(signal.SIGKILL)
        worker.popen.wait(10)
        deadline = time.monotonic() + 20
        while any(map(is_p2pd, daemons)):
            assert time.monotonic() < deadline, "p2pd outlived its killed node"
            time.sleep(0.1)
    finally:
        worker.stop()


def test_a_node_stopped_while_its_plane_starts_leaves_no_daemon(tmp_path):
    async def body():
        opening = asyncio.create_task(VersionPlane.open(Identity.generate(), tmp_path))
        deadline = time.monotonic() + 30
        while not descendants(os.getpid()):  # the DHT process is forked: the plane is starting
            assert time.monotonic() < deadline and not opening.done()
            await asyncio.sleep(0.01)
        opening.cancel()
        with pytest.raises(asyncio.CancelledError):
            await opening

    asyncio.run(body())  # returns once the worker thread that stops the peer has finished
    assert not p2pd_of(os.getpid())
