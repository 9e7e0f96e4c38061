"""Serving versions to other nodes over hivemind P2P, and the node's p2p plane that carries it.

Every node, whatever its role, runs one hivemind peer on its own key (node/p2p.py's PeerNode: the
DHT and its p2pd in a child process that dies with the node, even by kill -9) and a P2P client in
this process on the same daemon (`DHT.replicate_p2p`). Trainers all-reduce through the peer; every
node answers two calls through the client, from its version cache:

- Have(sha256): bitmaps of the chunks it holds verified and of those it is fetching right now;
- Chunk(sha256, index): the bytes of one verified chunk.

A node serves only chunks it has checked against the coordinator-signed manifest, and a fetcher
checks them again, so a lying peer costs time, never correctness.
"""
from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path

from hivemind.p2p import P2P, P2PContext

from protocol.identity import Identity
from protocol.v1 import p2p_pb2 as ppb

from .chunkfile import ChunkFile
from .p2p import LOOPBACK, PeerNode

log = logging.getLogger("potluck.node")
HAVE, CHUNK = "potluck.v1.Have", "potluck.v1.Chunk"
# hivemind's persistent connection carries messages up to 4 MiB: one chunk and its envelope.
MAX_SERVED_CHUNK = (4 << 20) - (64 << 10)
# Starting a peer forks hivemind's DHT process. Nodes sharing a process (the demo, the bench) start
# theirs from worker threads; concurrent starts hung once in a bench run, so they take turns.
_FORKING = threading.Lock()


class SeedingError(ValueError):
    """Why a Chunk request is refused; the caller sees the message in its P2PHandlerError."""


def to_bitmap(indices, count: int) -> bytes:
    bits = bytearray((count + 7) // 8)
    for i in indices:
        bits[i // 8] |= 1 << (i % 8)
    return bytes(bits)


def from_bitmap(bits: bytes, count: int) -> set[int]:
    return {i for i in range(min(count, len(bits) * 8)) if bits[i // 8] >> (i % 8) & 1}


class Seeder:
    """Answers Have and Chunk for the blobs offered to it (complete or being fetched)."""

    def __init__(self, p2p: P2P) -> None:
        self.p2p = p2p
        self.files: dict[str, ChunkFile] = {}

    async def start(self) -> None:
        await self.p2p.add_protobuf_handler(HAVE, self._have, ppb.HaveRequest)
        await self.p2p.add_protobuf_handler(CHUNK, self._chunk, ppb.ChunkRequest)

    def offer(self, blob: ChunkFile) -> None:
        old = self.files.get(blob.manifest.sha256)
        if old is not None and old is not blob:
            old.close()
        self.files[blob.manifest.sha256] = blob

    def keep_only(self, digests: set[str]) -> None:
        """Stop serving blobs the cache no longer keeps."""
        for digest in set(self.files) - digests:
            self.files.pop(digest).close()

    async def _have(self, request: ppb.HaveRequest, _: P2PContext) -> ppb.HaveReply:
        blob = self.files.get(request.sha256)
        if blob is None:
            return ppb.HaveReply()
        return ppb.HaveReply(chunks=blob.count, held=to_bitmap(blob.held, blob.count),
                             fetching=to_bitmap(blob.fetching, blob.count))

    async def _chunk(self, request: ppb.ChunkRequest, context: P2PContext) -> ppb.ChunkReply:
        blob = self.files.get(request.sha256)
        if blob is None:
            raise SeedingError(f"no blob {request.sha256[:64]!r} here")
        if request.index >= blob.count or request.index not in blob.held:
            raise SeedingError(f"chunk {request.index} of {request.sha256[:12]} is not held here")
        if blob.span(request.index)[1] > MAX_SERVED_CHUNK:
            raise SeedingError(f"chunk {request.index} is {blob.span(request.index)[1]} bytes; "
                               f"at most {MAX_SERVED_CHUNK} travel between peers")
        return ppb.ChunkReply(data=blob.read(request.index))


class _Starting:
    """A peer starting in a worker thread, which a node stopped meanwhile abandons: whichever of the
    two comes second stops the peer, so none outlives a node that quit during its set-up."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.peer: PeerNode | None = None
        self.abandoned = False

    def start(self, identity: Identity, home: Path, listen: tuple[str, ...]) -> PeerNode | None:
        with _FORKING:
            peer = PeerNode(identity, home, listen)
        with self.lock:
            if not self.abandoned:
                self.peer = peer
                return peer
        peer.shutdown()
        return None

    def abandon(self) -> PeerNode | None:
        """The peer if it was already handed over (the caller stops it), else None (start will)."""
        with self.lock:
            self.abandoned = True
            return self.peer


class VersionPlane:
    """A node's p2p side: its hivemind peer, a P2P client on the peer's daemon, and the seeder."""

    def __init__(self, peer: PeerNode, p2p: P2P, seeder: Seeder) -> None:
        self.peer, self.p2p, self.seeder = peer, p2p, seeder
        self.node_id, self.maddrs = peer.peer_id, peer.maddrs

    @classmethod
    async def open(cls, identity: Identity, home: Path, listen: tuple[str, ...] = (LOOPBACK,)) -> VersionPlane:
        starting = _Starting()
        try:
            # On the event loop's own thread: forking hivemind's process from a worker thread of a busy
            # process (a node in a view, in a test) crashed the child with SIGSEGV. Start-up blocks the
            # loop for the second or so the DHT takes to come up.
            peer = starting.start(identity, home, listen)
            p2p = await peer.dht.replicate_p2p()
            seeder = Seeder(p2p)
            await seeder.start()
        except BaseException:  # a stop (cancellation) included: the peer is stopped in a worker
            # thread that the event loop's close waits for, so no p2pd outlives the node
            peer = starting.abandon()
            if peer is not None:
                asyncio.get_running_loop().run_in_executor(None, peer.shutdown)
            raise
        return cls(peer, p2p, seeder)

    async def close(self) -> None:
        self.seeder.keep_only(set())
        await self.p2p.shutdown()  # a replica: closes this process's client, the daemon is the peer's
        await asyncio.to_thread(self.peer.shutdown)
