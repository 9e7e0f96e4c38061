"""What every part of the coordinator shares for one run."""
from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

from protocol.config import RunConfig
from protocol.envs import Environment
from protocol.identity import Identity

from .blobs import BlobStore
from .store import Store


class ChangeFeed:
    """Wakes every Watch stream when state changes; each stream has its own event."""

    def __init__(self) -> None:
        self._events: set[asyncio.Event] = set()
        self.closed = False

    def notify(self) -> None:
        for event in self._events:
            event.set()

    def close(self) -> None:
        """The server is stopping: streams end instead of being cancelled mid-wait."""
        self.closed = True
        self.notify()

    @contextlib.contextmanager
    def subscribe(self):
        event = asyncio.Event()
        self._events.add(event)
        try:
            yield event
        finally:
            self._events.discard(event)


@dataclass
class RunContext:
    config: RunConfig
    store: Store
    blobs: BlobStore
    env: Environment
    tokenizer: object  # a transformers tokenizer for the run's model
    identity: Identity  # the coordinator key: signs manifests
    vocab_size: int
    changes: ChangeFeed = field(default_factory=ChangeFeed)
    _interval: tuple[float, float] = (0.0, 0.0)  # (heartbeat interval in s, monotonic time it expires)

    def heartbeat_interval_s(self) -> float:
        """The heartbeat interval nodes are told, stretched (BOINC-style) so the whole swarm's
        heartbeats stay near limits.heartbeat_target_rps however many nodes there are. Counting all
        nodes is O(nodes): once a second is plenty."""
        now = time.monotonic()
        if now >= self._interval[1]:
            nodes = self.store.count_nodes_not_left()
            self._interval = (max(self.config.heartbeat_seconds, nodes / self.config.limits.heartbeat_target_rps),
                              now + 1.0)
        return self._interval[0]

    @property
    def max_new_tokens(self) -> int:
        return self.config.sampling.max_new_tokens or self.env.max_new_tokens

    @property
    def eos_id(self) -> int:
        return self.tokenizer.eos_token_id

    def notify(self) -> None:
        self.changes.notify()
