"""The version tracker: which nodes hold or are fetching each version, and where they serve it.

Nodes ask it (FindPeers) while they fetch a version and take the chunks from each other over
hivemind P2P; the coordinator's own FetchVersion is the last resort. It lives in memory only: a
restarted coordinator knows no peers until nodes ask again, and they fetch from it meanwhile.
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass

import multiaddr

from protocol.v1 import coordinator_pb2 as pb

from .errors import invalid

MAX_PEERS = 16  # handed out per call: enough to spread the load, few enough to ask them all
MIN_TTL_S = 15.0  # an entry not refreshed (FindPeers, heartbeat) for longer than this is dropped


@dataclass
class Entry:
    maddrs: list[str]
    holding: bool
    seen: float
    position: int  # the order in which nodes first asked for the version


class Tracker:
    def __init__(self, ttl_s: float = MIN_TTL_S) -> None:
        self.ttl_s = ttl_s
        self.versions: dict[int, dict[str, Entry]] = {}
        self.asked: dict[int, int] = {}  # version -> how many nodes have asked for it
        self._swept = 0.0

    def find_peers(self, node_id: str, body: pb.FindPeersBody, online) -> pb.FindPeersReply:
        """Record the caller for body.version and answer the others; online(node_id) says whether
        the coordinator still counts a node as in the run."""
        maddrs = serving_maddrs(node_id, list(body.p2p_maddrs))
        now = time.monotonic()
        self._sweep(now)
        entries = self.versions.setdefault(body.version, {})
        for other in [n for n in entries if n != node_id and not online(n)]:
            del entries[other]
        others = [pb.VersionPeer(node_id=n, maddrs=e.maddrs, holding=e.holding) for n, e in entries.items()
                  if n != node_id]
        known = entries.get(node_id)
        position = known.position if known is not None else self.asked.get(body.version, 0)
        if maddrs:
            entries[node_id] = Entry(maddrs, body.holding, now, position)
            self.asked[body.version] = max(self.asked.get(body.version, 0), position + 1)
        random.shuffle(others)
        return pb.FindPeersReply(peers=others[:MAX_PEERS], position=position)

    def heard(self, node_id: str, holding_version: int | None) -> None:
        """A heartbeat: keep the node's entries fresh, and mark the version it has loaded as held."""
        now = time.monotonic()
        for version, entries in self.versions.items():
            entry = entries.get(node_id)
            if entry is not None:
                entry.seen = now
                entry.holding = entry.holding or version == holding_version

    def _sweep(self, now: float) -> None:
        """Drop stale entries (and versions nobody fetches any more), at most once per second."""
        if now - self._swept < 1.0:
            return
        self._swept = now
        for version, entries in list(self.versions.items()):
            for node_id in [n for n, e in entries.items() if now - e.seen > self.ttl_s]:
                del entries[node_id]
            if not entries:
                del self.versions[version]
                self.asked.pop(version, None)


def serving_maddrs(node_id: str, maddrs: list[str]) -> list[str]:
    """The caller's addresses as `/ip4|ip6|dns.../tcp|udp/.../p2p/<node_id>`: the field walk has
    parsed them already; an address naming another peer, or none to dial, is refused."""
    good = []
    for text in maddrs:
        address = multiaddr.Multiaddr(text)
        names = [p.name for p in address.protocols()]
        if not set(names) & {"tcp", "udp"}:
            raise invalid("bad_multiaddr", f"p2p_maddrs: {text[:120]!r} names no tcp or udp port to dial")
        if "p2p" in names:
            if address.value_for_protocol("p2p") != node_id:
                raise invalid("bad_multiaddr", f"p2p_maddrs: {text[:120]!r} names another peer than {node_id}")
        else:
            text = f"{text}/p2p/{node_id}"
        good.append(text)
    return good
