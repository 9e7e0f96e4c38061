"""The pure parts of peer-to-peer version transfer: chunk hashes in the manifest, Have bitmaps, the
fetcher's choices (rarest first, when to ask the coordinator), the tracker's bookkeeping, and a
.part file that keeps only verified chunks."""
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from coordinator.errors import RpcError
from coordinator.tracker import MAX_PEERS, Tracker, serving_maddrs
from node.chunkfile import ChunkFile
from node.fetcher import PEER_IN_FLIGHT, STALL_S, Peer, coordinator_candidates, coordinator_pick, plan_peer_requests
from node.seeding import from_bitmap, to_bitmap
from protocol.checkpoint import Manifest, chunk_hashes, sha256_hex
from protocol.identity import Identity
from protocol.v1 import coordinator_pb2 as pb


def manifest_for(blob: bytes, chunk_size: int) -> Manifest:
    return Manifest(run="r", version=1, parent=0, sha256=sha256_hex(blob), size=len(blob), base_model="m",
                    created_ms=1, chunk_size=chunk_size, chunks=chunk_hashes(blob, chunk_size))


@given(st.integers(0, 200).flatmap(lambda n: st.tuples(st.just(n), st.sets(st.integers(0, max(n - 1, 0)), max_size=n))))
def test_bitmaps_round_trip(case):
    count, indices = case
    indices = {i for i in indices if i < count}
    bits = to_bitmap(indices, count)
    assert len(bits) == (count + 7) // 8 and from_bitmap(bits, count) == indices


def test_a_manifest_whose_chunks_do_not_cover_the_blob_is_refused():
    blob = bytes(range(256)) * 10
    good = manifest_for(blob, 1000)
    assert len(good.chunks) == 3 and good.chunk_plan() == (1000, good.chunks)
    with pytest.raises(ValidationError, match="do not cover"):
        Manifest(**(good.model_dump() | {"chunks": good.chunks[:2]}))
    legacy = Manifest(**(good.model_dump() | {"chunks": (), "chunk_size": 0}))
    assert legacy.chunk_plan() == (len(blob), (good.sha256,))


def test_rarest_chunks_first_within_each_peers_slots():
    peers = {"a": Peer([], held={0, 1, 2}), "b": Peer([], held={1, 2}), "c": Peer([], held={2}, in_flight=PEER_IN_FLIGHT)}
    picks = plan_peer_requests({0, 1, 2, 3}, peers, limit=8, rng=random.Random(0))
    # chunk 0 only "a" has; 1 both "a" and "b"; 2 all three but "c" is busy; 3 nobody
    assert picks[0] == (0, "a") and {i for i, _ in picks} == {0, 1, 2}
    assert all(name != "c" for _, name in picks)
    assert sum(name == "a" for _, name in picks) <= PEER_IN_FLIGHT
    assert plan_peer_requests({0, 1, 2}, peers, limit=1, rng=random.Random(0)) == [(0, "a")]


def test_the_coordinator_is_for_chunks_nobody_holds_or_has_long_been_fetching():
    peers = {"a": Peer([], held={0}, fetching={1}), "b": Peer([], fetching={2})}
    waiting = {}
    assert coordinator_candidates({0, 1, 2, 3}, peers, waiting, now=100.0) == [3]
    assert coordinator_candidates({0, 1, 2, 3}, peers, waiting, now=100.0 + STALL_S) == [1, 2, 3]
    # nodes at different tracker places mostly pick different chunks among the same candidates
    # (golden-ratio spacing: the first five places all differ, the first eight share one pick)
    picks = [coordinator_pick(list(range(8)), position) for position in range(8)]
    assert len(set(picks[:5])) == 5 and len(set(picks)) == 7


def test_serving_addresses_name_the_caller_and_a_port():
    me, other = Identity.generate().node_id, Identity.generate().node_id
    assert serving_maddrs(me, ["/ip4/10.0.0.1/tcp/5"]) == [f"/ip4/10.0.0.1/tcp/5/p2p/{me}"]
    assert serving_maddrs(me, [f"/ip4/10.0.0.1/udp/5/quic-v1/p2p/{me}"]) == [f"/ip4/10.0.0.1/udp/5/quic-v1/p2p/{me}"]
    for bad in ([f"/ip4/10.0.0.1/tcp/5/p2p/{other}"], ["/ip4/10.0.0.1"]):
        with pytest.raises(RpcError) as info:
            serving_maddrs(me, bad)
        assert info.value.reason == "bad_multiaddr"


def test_the_tracker_names_others_in_arrival_order_and_forgets_the_silent():
    tracker = Tracker(ttl_s=60)
    nodes = [Identity.generate().node_id for _ in range(MAX_PEERS + 3)]
    replies = [tracker.find_peers(n, pb.FindPeersBody(version=4, p2p_maddrs=["/ip4/127.0.0.1/tcp/1"]), lambda _: True)
               for n in nodes]
    assert [r.position for r in replies] == list(range(len(nodes)))
    assert len(replies[-1].peers) == MAX_PEERS and nodes[-1] not in {p.node_id for p in replies[-1].peers}
    # asking again keeps a node's place; a node gone from the run is no longer named
    again = tracker.find_peers(nodes[0], pb.FindPeersBody(version=4, p2p_maddrs=["/ip4/127.0.0.1/tcp/1"]),
                               lambda n: n != nodes[1])
    assert again.position == 0 and nodes[1] not in {p.node_id for p in again.peers}
    tracker.heard(nodes[2], holding_version=4)
    assert tracker.versions[4][nodes[2]].holding and not tracker.versions[4][nodes[3]].holding
    for entry in tracker.versions[4].values():
        entry.seen -= 120  # silent for longer than the ttl
    tracker._swept = 0.0
    assert not tracker.find_peers(nodes[0], pb.FindPeersBody(version=4), lambda _: True).peers


def test_a_part_file_keeps_only_the_chunks_that_match(tmp_path):
    blob = random.Random(1).randbytes(5000)
    manifest = manifest_for(blob, 1024)
    part = tmp_path / f"{manifest.sha256}.part"
    part.write_bytes(blob[:1024] + b"\xff" * 1024 + blob[2048:3100])  # chunk 0 right, 1 wrong, 2 whole
    chunks = ChunkFile(manifest, tmp_path)
    assert chunks.held == {0, 2} and chunks.missing() == {1, 3, 4}
    assert not chunks.write(1, b"\x00" * 1024) and 1 not in chunks.held  # a bad chunk is never kept
    for i in (1, 3, 4):
        offset, length = chunks.span(i)
        assert chunks.write(i, blob[offset:offset + length])
    assert chunks.finish() == blob and (tmp_path / manifest.sha256).read_bytes() == blob and not part.exists()
    chunks.close()
    again = ChunkFile(manifest, tmp_path)  # the cached blob is adopted whole
    assert again.complete and again.held == set(range(5)) and again.read(4) == blob[4096:]
    again.close()
