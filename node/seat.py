"""The role a node holds and the worker doing it. A node that joined with --role auto may be moved
by the coordinator between rounds (coordinator/roles.py): the heartbeat reply names the role, and
the work loop switches worker between units of work, starting or stopping the trainer's hivemind
peer as the role needs. The model and its VersionLoader stay: every role works on the same policy.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path

from protocol.config import RunConfig
from protocol.envs import make_environment
from protocol.identity import Identity
from protocol.v1 import coordinator_pb2 as pb

from .client import CoordinatorClient
from .inference.worker import InferenceWorker
from .status import NodeStatus
from .trainer.worker import TrainerWorker
from .validator.worker import ValidatorWorker
from .versions import VersionLoader

log = logging.getLogger("potluck.node")
Worker = InferenceWorker | TrainerWorker | ValidatorWorker


def role_name(role: int) -> str:
    return pb.Role.Name(role)[5:].lower()


@dataclass
class Parts:
    """What any role's worker is made of."""

    client: CoordinatorClient
    identity: Identity
    home: Path
    config: RunConfig
    tokenizer: object
    loader: VersionLoader


class Seat:
    def __init__(self, parts: Parts, status: NodeStatus) -> None:
        self.parts, self.status = parts, status
        self.role = self.wanted = pb.ROLE_UNSPECIFIED
        self.reason = ""
        self.worker: Worker | None = None

    @property
    def state(self) -> str:
        return self.worker.state if self.worker is not None else "switching role"

    @property
    def tokens_per_s(self) -> float:
        return self.worker.throughput.tokens_per_s if self.worker is not None else 0.0

    def assign(self, role: int, reason: str = "") -> None:
        """The coordinator's word on this node's role (a Register or Heartbeat reply); taken up by switch()."""
        if role != pb.ROLE_UNSPECIFIED and role != self.wanted:
            self.wanted, self.reason = role, reason

    async def switch(self) -> None:
        """Between units of work: make the worker of the assigned role, if it is not the one working."""
        if self.worker is not None and self.wanted == self.role:
            return
        if self.worker is not None:
            log.info("moving from %s to %s: %s", role_name(self.role), role_name(self.wanted),
                     self.reason or "the coordinator says so")
        await self.close()
        self.worker = await self._make(self.wanted)
        self.role = self.wanted
        self.status.role = role_name(self.role)

    async def _make(self, role: int) -> Worker:
        p = self.parts
        if role == pb.ROLE_TRAINER:
            # The node's hivemind peer (its p2p plane's, on the node key): round-mates all-reduce through it.
            return TrainerWorker(p.client, p.loader, p.config, p.tokenizer.pad_token_id, p.loader.plane.peer)
        if role == pb.ROLE_VALIDATOR:
            return ValidatorWorker(p.client, p.loader, p.config, p.tokenizer)
        return InferenceWorker(p.client, p.loader, p.tokenizer,
                               make_environment(p.config.environment.name, p.config.environment.params))

    async def close(self) -> None:
        if isinstance(self.worker, TrainerWorker):
            await asyncio.to_thread(self.worker.close)  # its averager stops
        self.worker = None
