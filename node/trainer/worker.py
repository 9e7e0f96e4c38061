"""The trainer role: lease a round's training shard, load its parent version, run the inner steps,
all-reduce the pseudo-gradient with the round's other trainers, apply the outer step, and submit
the candidate version with this trainer's own pseudo-gradient (the coordinator checks one against
the other and publishes on a quorum)."""
from __future__ import annotations

import asyncio
import logging
import time

import torch

from protocol.checkpoint import sha256_hex
from protocol.config import RunConfig
from protocol.policy import encode_blob, version_format
from protocol.v1 import coordinator_pb2 as pb

from ..client import CoordinatorClient
from ..inference.worker import Throughput
from ..p2p import PeerNode
from ..versions import VersionLoader
from .averaging import RoundAverager
from .faults import POISONS, fault_mode, hang, poison
from .round import apply_outer, inner_optimizer, inner_steps

log = logging.getLogger("potluck.node")


class TrainerWorker:
    def __init__(self, client: CoordinatorClient, loader: VersionLoader, config: RunConfig, pad_id: int,
                 peer: PeerNode) -> None:
        self.client, self.loader, self.config, self.pad_id, self.peer = client, loader, config, pad_id, peer
        self.averager = RoundAverager(peer, config.diloco.averaging_wait_seconds)
        self.throughput = Throughput()
        self.state = "idle"
        self.busy_seconds = 0.0  # computing (inner steps, outer step), for utilization
        self._optimizer: torch.optim.Optimizer | None = None
        self._produced: int | None = None  # the version this trainer's last round was to make

    def _inner_optimizer(self, parent: int) -> torch.optim.Optimizer:
        """With grpo.carry_optimizer, the AdamW state carries over while this trainer trains
        consecutive versions; otherwise (and after a gap) it starts fresh."""
        if not self.config.grpo.carry_optimizer or self._optimizer is None or self._produced != parent:
            self._optimizer = inner_optimizer(self.loader.model, self.config)
        self._produced = parent + 1
        return self._optimizer

    async def step(self) -> None:
        lease = await self.client.call("LeaseTraining", pb.LeaseTrainingBody(p2p_maddrs=self.peer.maddrs))
        if not lease.has_work:
            self.state = "waiting"
            await asyncio.sleep(lease.retry_after_ms / 1000)
            return
        self.state = "fetching"
        await self.loader.ensure(lease.parent_version)
        self.state = "training"
        started = time.perf_counter()
        inner = await asyncio.to_thread(inner_steps, self.loader.model, list(lease.samples), self.config,
                                        self._inner_optimizer(lease.parent_version), self.pad_id)
        computed = time.perf_counter() - started
        mode = fault_mode(lease.parent_version)
        delta = poison(inner.delta, mode) if mode in POISONS else inner.delta

        averaged, group = delta, [self.peer.peer_id]
        others = [p for p in lease.peers if p.node_id != self.peer.peer_id]
        if others:
            self.state = "averaging"
            await asyncio.to_thread(self.peer.connect, [m for p in others for m in p.maddrs])
            self.averager.open(lease.round_id, delta, len(lease.peers), lease.compression)
            averaged, group = await asyncio.to_thread(self.averager.average, delta, float(inner.samples))
        if mode == "hang":
            await hang()
        adapter, momentum = apply_outer(self.loader.model, inner.start, averaged, self.loader.momentum, self.config)
        if mode == "candidate":
            adapter = poison(adapter, mode)
        self.loader.version = None  # the model now holds a candidate, not a published version
        fmt = version_format(self.config)
        blob = encode_blob(adapter, momentum, fmt)
        seconds = time.perf_counter() - started
        self.busy_seconds += computed
        self.throughput.tokens += sum(len(s.completion_ids) for s in lease.samples)
        self.throughput.seconds += seconds
        self.state = "submitting"
        reply = await self.client.call("SubmitTraining", pb.SubmitTrainingBody(
            lease_id=lease.lease_id, blob=blob, train_seconds=seconds, mean_loss=inner.mean_loss,
            samples_used=inner.samples, pseudo_gradient=encode_blob(delta, fmt=fmt), averaged_with=group,
            report=pb.VersionReport(parent_version=lease.parent_version, sha256=sha256_hex(blob), size=len(blob))))
        if reply.round_state == "published" and reply.published_sha256 == sha256_hex(blob):
            self.loader.version, self.loader.momentum = reply.published_version, momentum
        log.info("round %s: trained v%d on %d samples with %d peer(s) in %.2fs (loss %.4f, clipped %.3f, "
                 "masked %.3f): %s%s; credit %.0f", lease.round_id[:8], lease.parent_version, inner.samples,
                 len(group) - 1, seconds, inner.mean_loss, inner.clip_fraction, inner.masked_fraction,
                 reply.round_state, f" v{reply.published_version}" if reply.published_version else "", reply.credit)
        self.state = "idle"

    def close(self) -> None:
        self.averager.close()  # the peer is the node's p2p plane's: it stops when the node leaves
