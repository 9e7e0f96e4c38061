"""The validator role: lease submitted rollouts, re-check them with one prefill, submit verdicts.

The checks are protocol/verification.py's, the same ones the coordinator's embedded validator runs.
"""
from __future__ import annotations

import asyncio
import logging
import time

import grpc

from protocol.config import RunConfig
from protocol.v1 import coordinator_pb2 as pb
from protocol.verification import Tolerances, verify_job

from ..client import CoordinatorClient, error_reason
from ..inference.worker import Throughput
from ..versions import VersionLoader

log = logging.getLogger("potluck.node")
UNVERIFIABLE = "unverifiable"  # the coordinator's name for "the version's bytes are gone"


class ValidatorWorker:
    def __init__(self, client: CoordinatorClient, loader: VersionLoader, config: RunConfig, tokenizer) -> None:
        self.client, self.loader, self.tokenizer = client, loader, tokenizer
        self.tolerances = Tolerances.from_config(config.verification)
        self.throughput = Throughput()
        self.state = "idle"

    async def _verdict(self, job: pb.VerificationJob) -> pb.Verdict:
        try:
            await self.loader.ensure(job.version)
        except grpc.aio.AioRpcError as err:
            if error_reason(err) not in ("unknown_version", "collected_version"):
                raise
            return pb.Verdict(job_id=job.job_id, check=UNVERIFIABLE, detail=err.details() or "")
        return await asyncio.to_thread(verify_job, self.loader.model, self.tokenizer, job, self.tolerances)

    async def step(self) -> None:
        lease = await self.client.call("LeaseVerification", pb.LeaseVerificationBody())
        if not lease.has_work:
            self.state = "waiting"
            await asyncio.sleep(lease.retry_after_ms / 1000)
            return
        self.state = "verifying"
        started = time.perf_counter()
        verdicts = [await self._verdict(job) for job in lease.jobs]
        seconds = time.perf_counter() - started
        self.throughput.tokens += sum(len(r.completion_ids) for job in lease.jobs for r in job.rollouts)
        self.throughput.seconds += seconds
        reply = await self.client.call("SubmitVerdicts", pb.SubmitVerdictsBody(
            lease_id=lease.lease_id, verdicts=verdicts, verify_seconds=seconds))
        failed = [v for v in verdicts if not v.accepted]
        log.info("checked %d submissions in %.2fs: %d rejected%s; credit %.0f", len(verdicts), seconds, len(failed),
                 "".join(f"; {v.check}: {v.detail[:100]}" for v in failed), reply.credit)
        self.state = "idle"
