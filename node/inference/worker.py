"""The inference role: lease a shard, make sure the policy is at its version, generate G completions
per prompt, score them, sign and submit."""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from protocol.envs import Environment
from protocol.proofs import build_proofs_batch
from protocol.sampling import rollout_seed
from protocol.scoring import score
from protocol.v1 import coordinator_pb2 as pb

from ..client import CoordinatorClient
from ..versions import VersionLoader
from .generate import generate

log = logging.getLogger("potluck.node")


@dataclass
class Throughput:
    tokens: int = 0
    seconds: float = 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


def rollouts_for(lease: pb.RolloutLease, model, tokenizer, env: Environment) -> list[pb.Rollout]:
    """Generate, prove and score every (prompt, sample) of a lease, in one batch."""
    prompts = [tokenizer(p.text)["input_ids"] for p in lease.prompts]
    group = lease.group_size
    seeds = [rollout_seed(lease.seed, p.task_id, i) for p in lease.prompts for i in range(group)]
    gen = generate(model, [ids for ids in prompts for _ in range(group)],
                   max_new_tokens=lease.sampling.max_new_tokens, eos_id=tokenizer.eos_token_id,
                   pad_id=tokenizer.pad_token_id, temperature=lease.sampling.temperature,
                   greedy=lease.sampling.greedy, seeds=seeds)
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
        rollouts = await asyncio.to_thread(rollouts_for, lease, self.loader.model, self.tokenizer, self.env)
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
