"""The inference role: lease a shard, make sure the policy is at its version, generate G completions
per prompt, score them, sign and submit.

Sequences are generated in batches sized from the memory free when the shard starts
(node/hardware.py). If the node runs out of memory all the same, it gives the lease back with
ReportOutOfMemory, halves its batches, and the coordinator halves its leases; it never crashes on it."""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import torch

from protocol.envs import Environment
from protocol.proofs import build_proofs_batch
from protocol.sampling import rollout_seed
from protocol.scoring import score
from protocol.v1 import coordinator_pb2 as pb

from ..client import CoordinatorClient
from ..hardware import free_memory_bytes, rows_that_fit, sequence_bytes
from ..versions import VersionLoader
from .generate import Generation, generate

log = logging.getLogger("potluck.node")


@dataclass
class Throughput:
    tokens: int = 0
    seconds: float = 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


def batch_rows(model, prompts: list[list[int]], max_new_tokens: int, cap: int) -> int:
    """Sequences to generate at once: what fits in the memory free now, at most cap (0: no cap)."""
    weight = next(model.parameters())
    length = max(len(ids) for ids in prompts) + max_new_tokens
    rows = rows_that_fit(free_memory_bytes(weight.device.type),
                         sequence_bytes(model.config, length, weight.element_size()))
    return min(rows, cap) if cap else rows


def generate_in_batches(model, prompts: list[list[int]], seeds: list[int], rows: int, **sampling) -> Generation:
    """generate() over batches of at most `rows` sequences (each row's result does not depend on its batch:
    seeds are per row, and the validator's tolerances cover batch-size numerics)."""
    parts = [generate(model, prompts[i:i + rows], seeds=seeds[i:i + rows], **sampling)
             for i in range(0, len(prompts), rows)]
    return Generation(*(sum((getattr(p, name) for p in parts), []) for name in
                        ("completion_ids", "logprobs", "finished", "activations")))


class OutOfMemory(Exception):
    """Generation ran out of memory (GPU or RAM) with `rows` sequences at once."""

    def __init__(self, rows: int, cause: BaseException) -> None:
        super().__init__(f"out of memory generating {rows} sequences at once: {str(cause)[:160]}")
        self.rows = rows


def rollouts_for(lease: pb.RolloutLease, model, tokenizer, env: Environment, row_cap: int = 0) -> list[pb.Rollout]:
    """Generate, prove and score every (prompt, sample) of a lease, in batches that fit in memory (and of
    at most row_cap sequences, if given)."""
    prompts = [tokenizer(p.text)["input_ids"] for p in lease.prompts]
    group = lease.group_size
    seeds = [rollout_seed(lease.seed, p.task_id, i) for p in lease.prompts for i in range(group)]
    sequences = [ids for ids in prompts for _ in range(group)]
    rows = min(len(sequences), batch_rows(model, prompts, lease.sampling.max_new_tokens, row_cap))
    try:
        gen = generate_in_batches(model, sequences, seeds, rows,
                                  max_new_tokens=lease.sampling.max_new_tokens, eos_id=tokenizer.eos_token_id,
                                  pad_id=tokenizer.pad_token_id, temperature=lease.sampling.temperature,
                                  greedy=lease.sampling.greedy)
    except (torch.OutOfMemoryError, MemoryError) as err:
        raise OutOfMemory(rows, err) from err
    proofs = build_proofs_batch(gen.activations)
    rollouts = []
    for row, (ids, logprobs, finished) in enumerate(zip(gen.completion_ids, gen.logprobs, gen.finished)):
        prompt = lease.prompts[row // group]
        rollouts.append(pb.Rollout(task_id=prompt.task_id, sample_index=row % group, completion_ids=ids,
                                   logprobs=logprobs, finished=finished, proofs=proofs[row],
                                   reward=score(env, tokenizer, prompt.task_id, ids, tokenizer.eos_token_id)))
    return rollouts


class InferenceWorker:
    def __init__(self, client: CoordinatorClient, loader: VersionLoader, tokenizer, env: Environment) -> None:
        self.client, self.loader, self.tokenizer, self.env = client, loader, tokenizer, env
        self.throughput = Throughput()
        self.state = "idle"
        self.row_cap = 0  # sequences at once, once this node has run out of memory (0: memory decides)

    async def _out_of_memory(self, lease: pb.RolloutLease, err: OutOfMemory) -> None:
        """Give the lease back, say so, and take smaller bites from now on."""
        self.row_cap = max(1, err.rows // 2)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        reply = await self.client.call("ReportOutOfMemory", pb.ReportOutOfMemoryBody(
            lease_id=lease.lease_id, detail=str(err)[:200], rows=err.rows))
        log.warning("%s; lease returned, now at most %d sequences at once and %d prompts per lease", err,
                    self.row_cap, reply.max_prompts)
        self.state = "idle"

    async def step(self) -> None:
        lease = await self.client.call("LeaseRollouts", pb.LeaseRolloutsBody())
        if not lease.has_work:
            self.state = "waiting"
            await asyncio.sleep(lease.retry_after_ms / 1000)
            return
        self.state = "fetching"
        await self.loader.ensure(lease.version)
        self.state = "evaluating" if lease.eval else "generating"
        started = time.perf_counter()
        try:
            rollouts = await asyncio.to_thread(rollouts_for, lease, self.loader.model, self.tokenizer, self.env,
                                               self.row_cap)
        except OutOfMemory as err:
            await self._out_of_memory(lease, err)
            return
        seconds = time.perf_counter() - started
        self.throughput.tokens += sum(len(r.completion_ids) for r in rollouts)
        self.throughput.seconds += seconds
        reply = await self.client.call("SubmitRollouts", pb.SubmitRolloutsBody(
            lease_id=lease.lease_id, version=lease.version, rollouts=rollouts, generation_seconds=seconds))
        mean_reward = sum(r.reward for r in rollouts) / len(rollouts)
        log.info("%s v%d: %d rollouts in %.2fs, reward %.3f; accepted %d, rejected %d, credit %.0f",
                 "eval" if lease.eval else "shard", lease.version, len(rollouts), seconds, mean_reward,
                 reply.accepted, reply.rejected, reply.credit)
        self.state = "idle"
