"""What the TUI knows: the latest snapshot, the events seen so far, and the link to the coordinator."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum

from protocol.v1 import coordinator_pb2 as pb

from .feed import Disconnected, Update

MAX_EVENTS = 10_000  # a long run's log stays searchable without growing without bound


class Link(Enum):
    CONNECTING = "connecting"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"


@dataclass(frozen=True)
class LogEvent:
    # A plain copy: holding the protobuf Event would keep its whole snapshot alive.
    id: int
    time_ms: int
    kind: str
    text: str


@dataclass
class SwarmState:
    snapshot: pb.SwarmSnapshot | None = None
    # Each snapshot carries only the coordinator's most recent events; the log is their union.
    events: list[LogEvent] = field(default_factory=list)
    link: Link = Link.CONNECTING
    lost: Disconnected | None = None  # why and until when, while disconnected
    received_at: float | None = None  # clock time of the latest snapshot

    def apply(self, update: Update, now: float) -> None:
        if isinstance(update, Disconnected):
            self.link, self.lost = Link.DISCONNECTED, update
            return
        self.link, self.lost, self.snapshot, self.received_at = Link.CONNECTED, None, update, now
        self._merge_events(update.events)

    def _merge_events(self, events: Sequence[pb.Event]) -> None:
        if not events:
            return
        last = self.events[-1].id if self.events else 0
        if events[-1].id < last:
            # Ids went backwards: the coordinator started over on a fresh data dir.
            self.events.clear()
            last = 0
        self.events.extend(LogEvent(e.id, e.time_ms, e.kind, e.text) for e in events if e.id > last)
        del self.events[:-MAX_EVENTS]


def acceptance(snapshot: pb.SwarmSnapshot) -> float | None:
    judged = snapshot.rollouts_accepted + snapshot.rollouts_rejected
    return snapshot.rollouts_accepted / judged if judged else None


def tokens_per_s(snapshot: pb.SwarmSnapshot) -> float:
    # A node that left keeps its last reported rate in the registry; it is not generating any more.
    return sum(n.tokens_per_s for n in snapshot.nodes if n.online)


def nodes_by_id(snapshot: pb.SwarmSnapshot) -> dict[str, pb.NodeInfo]:
    return {n.node_id: n for n in snapshot.nodes}
