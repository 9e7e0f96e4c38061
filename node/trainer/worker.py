"""The trainer role: lease a training shard, load its parent version, run one round, submit the
new version's bytes with their sha256."""
from __future__ import annotations

import asyncio
import logging
import time

import torch

from protocol.checkpoint import sha256_hex
from protocol.config import RunConfig
from protocol.policy import encode_blob
from protocol.v1 import coordinator_pb2 as pb

from ..client import CoordinatorClient
from ..inference.worker import Throughput
from ..versions import VersionLoader
from .round import run_round, trainable

log = logging.getLogger("potluck.node")


class TrainerWorker:
    def __init__(self, client: CoordinatorClient, loader: VersionLoader, config: RunConfig, pad_id: int) -> None:
        self.client, self.loader, self.config, self.pad_id = client, loader, config, pad_id
        self.throughput = Throughput()
        self.state = "idle"
        self._optimizer: torch.optim.Optimizer | None = None
        self._produced: int | None = None  # the version this trainer's optimizer state belongs to

    def _inner_optimizer(self, parent: int) -> torch.optim.Optimizer:
        """Inner AdamW state carries over between rounds while this trainer continues from its own
        last result (as DiLoCo keeps it); otherwise it starts fresh."""
        if self._optimizer is None or self._produced != parent:
            self._optimizer = torch.optim.AdamW(trainable(self.loader.model), lr=self.config.grpo.lr,
                                                weight_decay=self.config.grpo.weight_decay)
        return self._optimizer

    async def step(self) -> None:
        lease = await self.client.call("LeaseTraining", pb.LeaseTrainingBody())
        if not lease.has_work:
            self.state = "waiting"
            await asyncio.sleep(lease.retry_after_ms / 1000)
            return
        self.state = "fetching"
        await self.loader.ensure(lease.parent_version)
        self.state = "training"
        started = time.perf_counter()
        optimizer = self._inner_optimizer(lease.parent_version)
        result = await asyncio.to_thread(run_round, self.loader.model, list(lease.samples), self.config,
                                         self.loader.momentum, optimizer, self.pad_id)
        seconds = time.perf_counter() - started
        self.loader.version, self.loader.momentum = None, result.momentum  # the model now holds a candidate
        blob = encode_blob(result.adapter, result.momentum)
        self.throughput.tokens += sum(len(s.completion_ids) for s in lease.samples)
        self.throughput.seconds += seconds
        reply = await self.client.call("SubmitTraining", pb.SubmitTrainingBody(
            lease_id=lease.lease_id, blob=blob, train_seconds=seconds, mean_loss=result.mean_loss,
            samples_used=result.samples,
            report=pb.VersionReport(parent_version=lease.parent_version, sha256=sha256_hex(blob), size=len(blob))))
        self.loader.version = self._produced = reply.published_version
        log.info("trained v%d -> v%d on %d samples in %.2fs (loss %.4f, clipped %.3f); credit %.0f",
                 lease.parent_version, reply.published_version, result.samples, seconds, result.mean_loss,
                 result.clip_fraction, reply.credit)
        self.state = "idle"
