"""Fetching a version chunk by chunk: from peers that hold it when there are any, from the
coordinator only for chunks no peer has or is fetching.

The loop, until every chunk is held and verified:
- every REFRESH_S (REFRESH_ALONE_S while it knows no peer), ask the coordinator's tracker
  (FindPeers) who holds or fetches this version; it records this node as fetching it too;
- every HAVE_S, ask HAVE_FANOUT peers at random which chunks they hold and which they are fetching
  (Have); while idle, every HAVE_IDLE_S, ask all of them;
- take missing chunks from peers, rarest first, a few in flight per peer; check each against the
  signed manifest; a peer that sends a bad chunk or fails a call is dropped for this fetch;
- take a chunk from the coordinator only while idle, one at a time, after a fresh Have round to
  every peer says that none holds or fetches it (or the one fetching it has been at it for
  STALL_S). The first such chunk is at a place set by this node's position in the tracker
  (golden-ratio spacing) and the next ones follow it, so nodes starting together seed different
  chunks and the coordinator sends about one copy however many fetch.
Without a p2p plane it takes every chunk from the coordinator. Resuming keeps every chunk already
in the `.part` file that matches its hash.
"""
from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from hivemind.p2p import PeerID
from hivemind.utils.multiaddr import Multiaddr

from protocol.checkpoint import Manifest, ManifestError
from protocol.v1 import coordinator_pb2 as pb
from protocol.v1 import p2p_pb2 as ppb

from .chunkfile import ChunkFile
from .client import CoordinatorClient
from .seeding import CHUNK, HAVE, VersionPlane, from_bitmap

log = logging.getLogger("potluck.node")
CACHED_VERSIONS = 3  # a node only ever needs the version it works on and the next
REFRESH_S = 1.0  # FindPeers
REFRESH_ALONE_S = 0.2  # ... while no peer is known (others may be asking at the same moment)
HAVE_S = 0.5  # Have rounds while chunks are in flight
HAVE_IDLE_S = 0.1  # ... and while none is
HAVE_FANOUT = 6  # peers asked per round (at random): a swarm's Have traffic grows with N, not N^2
GOLDEN = 0.6180339887498949  # spreads tracker positions 0, 1, 2, ... evenly over the chunks
HOLD_OFF_S = 0.3  # with few chunks left to seed, a coordinator chunk waits a random part of this
STALL_S = 5.0  # a chunk only a peer is fetching is taken from the coordinator after this long
PEER_IN_FLIGHT = 2
COORDINATOR_STREAMS = 4  # chunks in flight from the coordinator for a node without a p2p plane
TOTAL_IN_FLIGHT = 8
CALL_TIMEOUT_S = 15.0
# (bytes held so far, total bytes): lets a view draw a download's progress bar.
FetchProgress = Callable[[int, int], None]


@dataclass
class FetchStats:
    chunks: int = 0
    reused: int = 0  # verified chunks found in the .part file of an interrupted fetch
    reused_bytes: int = 0
    from_coordinator: int = 0
    from_peers: Counter = field(default_factory=Counter)  # node id -> chunks
    bad_peers: list[str] = field(default_factory=list)  # sent a chunk that failed its hash
    dropped_peers: list[str] = field(default_factory=list)  # every peer dropped, bad ones included


@dataclass
class Peer:
    maddrs: list[str]
    held: set[int] = field(default_factory=set)
    fetching: set[int] = field(default_factory=set)
    in_flight: int = 0
    connected: bool = False


def plan_peer_requests(wanted: set[int], peers: dict[str, Peer], limit: int,
                       rng: random.Random) -> list[tuple[int, str]]:
    """(chunk, peer) pairs to request now: rarest chunks first (ties at random), each from the
    holder with the most free slots, within PEER_IN_FLIGHT per peer and limit in all."""
    free = {name: PEER_IN_FLIGHT - peer.in_flight for name, peer in peers.items()}
    rarity = {i: sum(i in peer.held for peer in peers.values()) for i in wanted}
    picks = []
    for i in sorted((i for i, n in rarity.items() if n), key=lambda i: (rarity[i], rng.random())):
        if len(picks) >= limit:
            break
        holders = [name for name, peer in peers.items() if i in peer.held and free[name] > 0]
        if holders:
            best = max(holders, key=lambda name: (free[name], rng.random()))
            free[best] -= 1
            picks.append((i, best))
    return picks


def coordinator_pick(candidates: list[int], position: float) -> int:
    """The candidate at this node's place among them: nodes deciding at once pick apart."""
    return candidates[int((position * GOLDEN) % 1.0 * len(candidates))]


def coordinator_candidates(wanted: set[int], peers: dict[str, Peer], waiting_since: dict[int, float],
                           now: float) -> list[int]:
    """Wanted chunks no peer holds and none is fetching (or has been fetching for STALL_S); notes in
    waiting_since when a chunk was first seen fetched by someone else."""
    held = set().union(*(p.held for p in peers.values()))
    fetching = set().union(*(p.fetching for p in peers.values()))
    for i in wanted & fetching - held:
        waiting_since.setdefault(i, now)
    return sorted(i for i in wanted - held if i not in fetching or now - waiting_since[i] >= STALL_S)


async def fetch_blob(client: CoordinatorClient, manifest: Manifest, cache_dir: Path,
                     progress: FetchProgress | None = None, plane: VersionPlane | None = None,
                     stats: FetchStats | None = None) -> bytes:
    """The version's verified bytes, cached under cache_dir by sha256 (the cache keeps the last
    CACHED_VERSIONS blobs); a p2p plane both fetches from peers and serves what it holds."""
    blob = await asyncio.to_thread(ChunkFile, manifest, cache_dir)
    if plane is not None:
        plane.seeder.offer(blob)
    stats = FetchStats() if stats is None else stats
    stats.chunks, stats.reused, stats.reused_bytes = blob.count, len(blob.held), blob.held_bytes()
    try:
        if not blob.complete:
            await _Fetch(client, manifest, blob, plane, stats, progress).run()
        data = await asyncio.to_thread(blob.finish)
    finally:
        if plane is None:
            blob.close()
    if plane is not None:
        await _announce(client, plane, manifest.version, holding=True)
    kept = _prune(cache_dir, CACHED_VERSIONS)
    if plane is not None:
        plane.seeder.keep_only(kept | {p.name.removesuffix(".part") for p in cache_dir.glob("*.part")})
    return data


def _prune(cache_dir: Path, keep: int) -> set[str]:
    """Delete all but the keep newest blobs; the names of those kept."""
    blobs = sorted((p for p in cache_dir.iterdir() if len(p.name) == 64), key=lambda p: p.stat().st_mtime)
    for stale in blobs[:-keep]:
        stale.unlink(missing_ok=True)
    return {p.name for p in blobs[-keep:]}


async def _announce(client: CoordinatorClient, plane: VersionPlane, version: int,
                    holding: bool) -> pb.FindPeersReply | None:
    """Tell the tracker where this node serves version's chunks; its answer names other peers. A
    coordinator without a tracker (or refusing) leaves the coordinator as the only source."""
    try:
        return await client.call("FindPeers", pb.FindPeersBody(version=version, p2p_maddrs=plane.maddrs,
                                                               holding=holding), timeout=10, retry=False)
    except grpc.aio.AioRpcError as err:
        log.warning("the tracker did not answer (%s): %s", err.code().name, err.details())
        return None


class _Fetch:
    def __init__(self, client: CoordinatorClient, manifest: Manifest, blob: ChunkFile, plane: VersionPlane | None,
                 stats: FetchStats, progress: FetchProgress | None) -> None:
        self.client, self.manifest, self.blob, self.plane = client, manifest, blob, plane
        self.stats, self.progress = stats, progress
        self.peers: dict[str, Peer] = {}
        self.dropped: set[str] = set()
        self.tasks: dict[asyncio.Task, tuple[int, str | None]] = {}  # chunk task -> (chunk, peer or None)
        self.waiting_since: dict[int, float] = {}
        self.rng = random.Random()
        self.position = self.rng.random() / GOLDEN  # a random start until the tracker gives a place
        # When the last Have round to every peer began and ended; when this idle node may decide on
        # a coordinator chunk (None: not idle with such chunks in view); whether it wants a full round.
        self.full_have_at = self.full_have_done = -1.0
        self.decide_at: float | None = None
        self.want_full = False
        self.found = False  # the tracker has answered (and the peers it named are dialled) once

    async def run(self) -> None:
        self._report()
        background: set[asyncio.Task] = set()
        next_find = last_have = 0.0
        try:
            while self.blob.missing():
                now = time.monotonic()
                next_have = last_have + (HAVE_S if self.tasks else HAVE_IDLE_S)
                if self.plane is not None and not background:
                    if now >= next_find:
                        background.add(asyncio.create_task(self._find()))
                        next_find = now + (REFRESH_S if self.peers else REFRESH_ALONE_S)
                    elif now >= next_have:
                        background.add(asyncio.create_task(self._ask_have(full=self.want_full)))
                        last_have = now
                self._schedule(now)
                pending = {*self.tasks, *background}
                wake = max(min(next_find, next_have) - time.monotonic(), 0.01) if self.plane is not None else None
                if not pending:
                    await asyncio.sleep(wake or 0.01)
                    continue
                done, _ = await asyncio.wait(pending, timeout=wake, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    if task in background:
                        background.discard(task)
                        task.result()
                    else:
                        await self._landed(task)
        finally:
            for task in [*self.tasks, *background]:
                task.cancel()
            self.blob.fetching.clear()

    def _schedule(self, now: float) -> None:
        wanted = self.blob.missing() - self.blob.fetching
        live = {name: peer for name, peer in self.peers.items() if peer.connected}
        for index, name in plan_peer_requests(wanted, live, TOTAL_IN_FLIGHT - len(self.tasks), self.rng):
            self.peers[name].in_flight += 1
            self._start(index, name, self._from_peer(index, name))
            wanted.discard(index)
        candidates = coordinator_candidates(wanted, live, self.waiting_since, now)
        self.want_full = False
        if not candidates:
            self.decide_at = None
        while candidates and self._may_ask_coordinator(now, bool(live), len(candidates) <= len(live)):
            index = coordinator_pick(candidates, self.position)
            candidates.remove(index)
            self.decide_at = None
            self._start(index, None, self._from_coordinator(index))

    def _may_ask_coordinator(self, now: float, peers_about: bool, crowded: bool) -> bool:
        """Without a plane: a few chunks at a time. With one: only once the tracker has answered,
        only while idle, after a random hold-off when no more chunks are left to seed than there
        are peers (idle peers that see the same few would otherwise all ask at once), and once a
        Have round to every peer, begun after that and at most HAVE_S old, says that none holds
        or fetches the chunk."""
        if self.plane is None:
            return sum(name is None for _, name in self.tasks.values()) < COORDINATOR_STREAMS
        if self.tasks:
            self.decide_at = None
            return False
        if self.decide_at is None:
            self.decide_at = now + (self.rng.uniform(0, HOLD_OFF_S) if crowded else 0.0)
        fresh = self.found and (not peers_about or (self.full_have_at >= self.decide_at and
                                                    now - self.full_have_done <= HAVE_S))
        self.want_full = not fresh and now >= self.decide_at
        return fresh

    def _start(self, index: int, name: str | None, coro) -> None:
        self.blob.fetching.add(index)
        self.tasks[asyncio.create_task(coro)] = (index, name)

    async def _landed(self, task: asyncio.Task) -> None:
        index, name = self.tasks.pop(task)
        self.blob.fetching.discard(index)
        if name in self.peers:
            self.peers[name].in_flight -= 1
        try:
            data = task.result()
        except (grpc.aio.AioRpcError, ManifestError):
            raise  # the coordinator's errors end this fetch; the .part file keeps what was verified
        except Exception as exc:  # a peer's failure: P2P errors, timeouts, closed streams
            self._drop(name, f"its Chunk call failed: {exc!r}"[:300])
            return
        if not await asyncio.to_thread(self.blob.write, index, data):
            if name is None:
                raise ManifestError(f"the coordinator's chunk {index} does not match the signed manifest")
            if name not in self.dropped:
                self.stats.bad_peers.append(name)
                self._drop(name, f"it sent chunk {index} with the wrong bytes")
            return
        if name is None:
            self.stats.from_coordinator += 1
        else:
            self.stats.from_peers[name] += 1
        self._report()

    async def _call(self, name: str, handler: str, request, reply_type):
        """A peer's answer, or TimeoutError after CALL_TIMEOUT_S. The call itself is never cancelled:
        hivemind's client loses its connection to the daemon when an answer arrives for a call
        cancelled a moment before, so an abandoned call is left to finish on its own."""
        call = asyncio.ensure_future(self.plane.p2p.call_protobuf_handler(PeerID.from_base58(name), handler,
                                                                          request, reply_type))
        call.add_done_callback(lambda done: done.cancelled() or done.exception())
        done, _ = await asyncio.wait({call}, timeout=CALL_TIMEOUT_S)
        if not done:
            raise TimeoutError(f"{handler} took more than {CALL_TIMEOUT_S:g}s")
        return call.result()

    async def _from_peer(self, index: int, name: str) -> bytes:
        reply = await self._call(name, CHUNK, ppb.ChunkRequest(sha256=self.manifest.sha256, index=index),
                                 ppb.ChunkReply)
        return reply.data

    async def _from_coordinator(self, index: int) -> bytes:
        offset, length = self.blob.span(index)
        parts, size = [], 0
        stream = self.client.stub.FetchVersion(pb.FetchVersionRequest(
            version=self.manifest.version, offset=offset, length=length), timeout=120)
        async for chunk in stream:
            parts.append(chunk.data)
            size += len(chunk.data)
            if size >= length:  # a coordinator that ignores `length` streams on: enough is enough
                stream.cancel()
                break
        return b"".join(parts)[:length]

    async def _find(self) -> None:
        reply = await _announce(self.client, self.plane, self.manifest.version, holding=False)
        if reply is None:
            self.found = True  # no tracker to wait for: the coordinator it is
            return
        self.position = reply.position
        for found in reply.peers:
            if found.node_id not in self.peers and found.node_id not in self.dropped \
                    and found.node_id != self.plane.node_id:
                self.peers[found.node_id] = Peer(list(found.maddrs))
        await asyncio.gather(*(self._connect(name) for name, peer in self.peers.items() if not peer.connected))
        self.found = True

    async def _connect(self, name: str) -> None:
        peer = self.peers[name]
        try:
            addresses = [Multiaddr(m).decapsulate(Multiaddr(f"/p2p/{name}")) for m in peer.maddrs]
            await asyncio.wait_for(self.plane.p2p._client.connect(PeerID.from_base58(name), addresses),
                                   CALL_TIMEOUT_S)
            peer.connected = True
        except Exception as exc:  # unreachable, bad address, wrong key behind the address
            self._drop(name, f"could not connect: {exc!r}"[:300])

    async def _ask_have(self, full: bool) -> None:
        started = time.monotonic()
        asked = [name for name, peer in self.peers.items() if peer.connected]
        if not full:
            asked = self.rng.sample(asked, min(HAVE_FANOUT, len(asked)))
        await asyncio.gather(*(self._have(name) for name in asked))
        if full:
            self.full_have_at, self.full_have_done = started, time.monotonic()

    async def _have(self, name: str) -> None:
        try:
            reply = await self._call(name, HAVE, ppb.HaveRequest(sha256=self.manifest.sha256), ppb.HaveReply)
        except Exception as exc:  # gone or broken: take its chunks elsewhere
            self._drop(name, f"its Have call failed: {exc!r}"[:300])
            return
        peer = self.peers.get(name)
        if peer is not None and reply.chunks == self.blob.count:
            peer.held, peer.fetching = from_bitmap(reply.held, reply.chunks), from_bitmap(reply.fetching, reply.chunks)

    def _drop(self, name: str | None, why: str) -> None:
        if name is None or name in self.dropped:
            return
        log.warning("version %d: dropping peer %s for this fetch: %s", self.manifest.version, name, why)
        self.dropped.add(name)
        self.stats.dropped_peers.append(name)
        peer = self.peers.pop(name, None)
        if peer is not None:
            peer.held, peer.fetching = set(), set()

    def _report(self) -> None:
        if self.progress is not None:
            self.progress(self.blob.held_bytes(), self.manifest.size)
