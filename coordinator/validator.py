"""The embedded validator: the coordinator checks submissions itself, for runs too small to need
validator nodes. It leases jobs like a validator node would and runs the same checks
(protocol/verification.py), in a worker thread so the gRPC server keeps answering.
"""
from __future__ import annotations

import asyncio
import logging

from protocol.policy import decode_blob, load_adapter_state, load_policy
from protocol.v1 import coordinator_pb2 as pb
from protocol.verification import Tolerances, verify_job

from .context import RunContext
from .verdicts import EMBEDDED_VALIDATOR, UNVERIFIABLE, lease_jobs, record_verdicts, release_embedded_leases

log = logging.getLogger("potluck.coordinator")
IDLE_WAIT_S = 0.5


class EmbeddedValidator:
    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self.tolerances = Tolerances.from_config(ctx.config.verification)
        self.model = None
        self.version: int | None = None

    def _blobs(self, jobs: list[pb.VerificationJob]) -> dict[int, tuple[str, int] | None]:
        """(sha256, size) of each job's version, None where its bytes are gone; read on the event
        loop's thread, which owns the SQLite connection."""
        found = {}
        for version in {job.version for job in jobs}:
            row = self.ctx.store.version(version)
            found[version] = (row["sha256"], row["size"]) if row and self.ctx.blobs.has(row["sha256"]) else None
        return found

    def _load(self, version: int, blob: tuple[str, int] | None) -> bool:
        """Put the policy at `version`; False if its bytes are gone."""
        if self.model is None:
            self.model = load_policy(self.ctx.config)
        if self.version != version:
            if blob is None:
                return False
            adapter, _ = decode_blob(self.ctx.blobs.read(blob[0], 0, blob[1]))
            load_adapter_state(self.model, adapter)
            self.version = version
        return True

    def _verify(self, jobs: list[pb.VerificationJob], blobs: dict[int, tuple[str, int] | None]) -> list[pb.Verdict]:
        verdicts = []
        for job in jobs:
            if not self._load(job.version, blobs[job.version]):
                verdicts.append(pb.Verdict(job_id=job.job_id, check=UNVERIFIABLE,
                                           detail=f"version {job.version}'s bytes were garbage-collected"))
                continue
            verdicts.append(verify_job(self.model, self.ctx.tokenizer, job, self.tolerances))
        return verdicts

    async def run(self) -> None:
        release_embedded_leases(self.ctx)
        while True:
            lease = lease_jobs(self.ctx, EMBEDDED_VALIDATOR)
            if not lease.has_work:
                await asyncio.sleep(IDLE_WAIT_S)
                continue
            jobs = list(lease.jobs)
            try:
                verdicts = await asyncio.to_thread(self._verify, jobs, self._blobs(jobs))
            except Exception:
                log.exception("embedded validator failed; its jobs go back to the queue")
                record_verdicts(self.ctx, EMBEDDED_VALIDATOR, lease.lease_id, [])
                await asyncio.sleep(IDLE_WAIT_S)
                continue
            record_verdicts(self.ctx, EMBEDDED_VALIDATOR, lease.lease_id, verdicts)
            rejected = [v for v in verdicts if not v.accepted]
            if rejected:
                log.warning("rejected %d of %d submissions: %s", len(rejected), len(verdicts),
                            "; ".join(f"{v.check}: {v.detail[:120]}" for v in rejected))
