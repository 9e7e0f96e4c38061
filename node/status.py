"""What a volunteer's own node is doing, as plain data: join.py, the node's client and the Watch
stream write it; the volunteer view (node/tui/volunteer.py) only reads it, so no widget talks gRPC.
"""
from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field

from google.protobuf.message import Message

from protocol.channel import PLAINTEXT
from protocol.v1 import coordinator_pb2 as pb

from .client import CoordinatorClient

LOG_LINES = 500  # what the view's log scrolls back through; older lines are in no one's way


@dataclass
class Progress:
    """A set-up step under way: a download with a byte count, or a step with none (total None)."""

    label: str
    done: int = 0
    total: int | None = None


@dataclass
class NodeStatus:
    address: str
    node_id: str = ""
    name: str = ""
    role: str = ""
    run_name: str = ""
    state: str = "starting"  # set-up steps, then the worker's own: generating, training, waiting, …
    link: str = "connecting"  # connected, or why not, from the Watch stream
    held_version: int | None = None
    latest_version: int | None = None
    tokens_per_s: float = 0.0
    accepted: int = 0  # rollouts: this session's replies, then the run's totals from the Watch stream
    rejected: int = 0
    rounds: int = 0  # training rounds submitted, this session
    credit: float = 0.0  # the coordinator's running total for this node
    swarm_online: int | None = None
    last_result: str = ""
    progress: Progress | None = None
    lines: deque[str] = field(default_factory=lambda: deque(maxlen=LOG_LINES))
    lines_total: int = 0  # lines ever added, so a reader knows how many are new since it last looked

    def add_line(self, line: str) -> None:
        self.lines.append(line)
        self.lines_total += 1

    def fetching(self, version: int, done: int, total: int) -> None:
        """VersionLoader's progress callback: a bar while bytes arrive, gone once they all have."""
        self.progress = Progress(f"fetching v{version}", done, total) if done < total else None

    def saw_snapshot(self, snapshot: pb.SwarmSnapshot) -> None:
        self.link, self.run_name = "connected", snapshot.run_name
        self.latest_version = snapshot.current_version
        self.swarm_online = sum(n.online for n in snapshot.nodes)
        mine = next((n for n in snapshot.nodes if n.node_id == self.node_id), None)
        if mine is not None:  # the coordinator's totals: work checked after its reply came counts too
            self.credit, self.accepted, self.rejected = mine.credit, mine.rollouts_accepted, mine.rollouts_rejected

    def saw_reply(self, body: Message, reply: Message) -> None:
        if isinstance(reply, pb.SubmitRolloutsReply) and isinstance(body, pb.SubmitRolloutsBody):
            self.accepted += reply.accepted
            self.rejected += reply.rejected
            self.credit = reply.credit
            verdict = (f"{reply.rejected} rejected ({reply.reject_reason})" if reply.rejected else
                       f"{reply.pending} awaiting a validator" if reply.pending else f"{reply.accepted} accepted")
            self.last_result = (f"v{body.version}: {len(body.rollouts)} rollouts in {body.generation_seconds:.1f}s"
                                f" → {verdict}")
        elif isinstance(reply, pb.SubmitTrainingReply) and isinstance(body, pb.SubmitTrainingBody):
            self.rounds += 1
            self.credit = reply.credit
            self.last_result = (f"trained v{body.report.parent_version} → v{reply.published_version} on "
                                f"{body.samples_used} samples in {body.train_seconds:.1f}s, loss {body.mean_loss:.4f}")


class ReportingClient(CoordinatorClient):
    """The node's client, telling its NodeStatus what each submission earned (the workers only log it)."""

    def __init__(self, address: str, identity, status: NodeStatus, security=PLAINTEXT, join_token: str = "") -> None:
        super().__init__(address, identity, security, join_token)
        self.status = status

    async def call(self, method: str, body: Message, timeout: float = 60.0, retry: bool = True):
        reply = await super().call(method, body, timeout, retry)
        self.status.saw_reply(body, reply)
        return reply


class StatusLogHandler(logging.Handler):
    """The node's log lines, into the view's scrolling log instead of a terminal the view owns."""

    def __init__(self, status: NodeStatus) -> None:
        super().__init__()
        self.status = status

    def emit(self, record: logging.LogRecord) -> None:
        level = "" if record.levelno <= logging.INFO else f"{record.levelname.lower()}: "
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        self.status.add_line(f"{stamp} {level}{record.getMessage()}")
