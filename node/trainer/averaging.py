"""All-reduce of one round's pseudo-gradients with the round's other trainers (hivemind's
DecentralizedAverager, weighted by samples, compressed on the wire).

Each round gets its own averager under a prefix named for the round, so trainers of different
rounds never meet. A finished averager is kept until the next round opens: hivemind returns to a
peer as soon as its own parts are reduced, while round-mates may still be downloading the parts
it reduced for them.
"""
from __future__ import annotations

import logging
import signal

import torch

from protocol.diloco import Tensors

from ..p2p import DecentralizedAverager, PeerNode
from .compression import compression

log = logging.getLogger("potluck.node")


class RoundAverager:
    def __init__(self, peer: PeerNode, wait_s: float) -> None:
        self.peer, self.wait_s = peer, wait_s
        self._averager: DecentralizedAverager | None = None
        self._names: list[str] = []

    def open(self, round_id: str, template: Tensors, group_size: int, codec: str) -> None:
        """Call from the main thread: hivemind installs a SIGINT handler while it forks (and leaves
        it ignored); the caller's handler is put back."""
        self.close()
        self._names = sorted(template)
        previous = signal.getsignal(signal.SIGINT)
        try:
            self._averager = DecentralizedAverager(
                [torch.zeros_like(template[k], dtype=torch.float32) for k in self._names], self.peer.dht,
                start=True, prefix=f"potluck_{round_id[:24]}", target_group_size=group_size, min_group_size=2,
                min_matchmaking_time=self.wait_s, request_timeout=min(1.0, self.wait_s / 3),
                allreduce_timeout=max(30.0, 10 * self.wait_s), compression=compression(codec))
        finally:
            signal.signal(signal.SIGINT, previous)

    def average(self, delta: Tensors, weight: float) -> tuple[Tensors, list[str]]:
        """Blocking (run it in a thread): the weighted average over the group that formed, and the
        group's peer ids. If no round-mate could be reached, this trainer's own pseudo-gradient."""
        with self._averager.get_tensors() as tensors:
            for name, tensor in zip(self._names, tensors):
                tensor.copy_(delta[name])
        try:
            group = self._averager.step(weight=weight, timeout=3 * self.wait_s)
        except Exception as exc:  # hivemind raises its own types for failed matchmaking or all-reduce
            log.warning("all-reduce failed (%s); going on alone", exc)
            group = None
        if not group:
            return delta, [self.peer.peer_id]
        with self._averager.get_tensors() as tensors:
            averaged = {name: tensor.clone() for name, tensor in zip(self._names, tensors)}
        return averaged, sorted(peer.to_base58() for peer in group)

    def close(self) -> None:
        if self._averager is not None:
            self._averager.shutdown()
            self._averager = None
