"""Cheating inference nodes: what a dishonest volunteer could do to a leased shard, as functions
from (lease, model, tokenizer, environment) to the rollouts it submits.

Each cheat is as strong as we could make it: whatever the cheater changes, it recomputes everything
it can recompute itself (rewards, behaviour log-probs, hidden-state proofs by a teacher-forced
forward pass of the true model), so only a check it cannot fake catches it. Used by the adversarial
tests (tests/cheat_node.py runs one as a real node process) and by bench.verification.
"""
from __future__ import annotations

import random
from collections.abc import Callable

import torch

from node.inference.generate import generate
from node.inference.worker import rollouts_for
from protocol.envs import Environment
from protocol.policy import adapter_state, load_adapter_state
from protocol.proofs import build_proofs_batch, split_prefill
from protocol.scoring import score
from protocol.v1 import coordinator_pb2 as pb
from protocol.verification import GREEDY_TEMPERATURE, prefill_shared

Cheat = Callable[[pb.RolloutLease, object, object, Environment], list[pb.Rollout]]


def _temperature(lease: pb.RolloutLease) -> float:
    return GREEDY_TEMPERATURE if lease.sampling.greedy else lease.sampling.temperature


def restate(lease: pb.RolloutLease, model, tokenizer, env: Environment,
            completions: dict[tuple[int, int], list[int]]) -> list[pb.Rollout]:
    """Rollouts for chosen completions with every self-computable field made consistent: the true
    model's log-probs and hidden-state proofs of exactly these tokens, and their true rewards."""
    prompts = {p.task_id: tokenizer(p.text)["input_ids"] for p in lease.prompts}
    keys = list(completions)
    prompt_of = {task_id: n for n, task_id in enumerate(prompts)}
    forwards = prefill_shared(model, list(prompts.values()), [(prompt_of[t], completions[(t, i)][:-1]) for t, i in keys],
                              tokenizer.pad_token_id)
    proofs = build_proofs_batch([split_prefill(hidden, len(prompts[t])) for (t, _), (_, hidden) in zip(keys, forwards)])
    eos = tokenizer.eos_token_id
    rollouts = []
    for (task_id, index), (logits, _), proof in zip(keys, forwards, proofs):
        ids = completions[(task_id, index)]
        logp = torch.log_softmax(logits[len(prompts[task_id]) - 1:] / _temperature(lease), dim=-1)
        rollouts.append(pb.Rollout(
            task_id=task_id, sample_index=index, completion_ids=ids, finished=ids[-1] == eos, proofs=proof,
            logprobs=logp.gather(1, torch.tensor(ids)[:, None]).squeeze(1).tolist(),
            reward=score(env, tokenizer, task_id, ids, eos)))
    return rollouts


def _honest_completions(lease, model, tokenizer, env) -> dict[tuple[int, int], list[int]]:
    return {(r.task_id, r.sample_index): list(r.completion_ids) for r in rollouts_for(lease, model, tokenizer, env)}


def other_weights(lease, model, tokenizer, env):
    """(1) Generates with different weights: the adapter perturbed (a cheaper or stale model)."""
    honest = adapter_state(model)
    generator = torch.Generator().manual_seed(lease.seed & 0xFFFF)
    load_adapter_state(model, {k: v + 0.05 * torch.randn(v.shape, generator=generator) for k, v in honest.items()})
    try:
        return rollouts_for(lease, model, tokenizer, env)
    finally:
        load_adapter_state(model, honest)


def paste_answer(lease, model, tokenizer, env):
    """(2) Pastes the dataset's answer into every completion."""
    eos = tokenizer.eos_token_id
    answers = {p.task_id: tokenizer(env.task(p.task_id).answer, add_special_tokens=False)["input_ids"] + [eos] for p in lease.prompts}
    return restate(lease, model, tokenizer, env,
                   {(p.task_id, i): answers[p.task_id] for p in lease.prompts for i in range(lease.group_size)})


def inflate_rewards(lease, model, tokenizer, env):
    """(3) Claims full reward for everything it generated."""
    rollouts = rollouts_for(lease, model, tokenizer, env)
    for r in rollouts:
        r.reward = 1.0
    return rollouts


def cherry_pick(lease, model, tokenizer, env):
    """(4) Samples 4G completions per prompt and submits the best G as samples 0..G-1."""
    wide = pb.RolloutLease()
    wide.CopyFrom(lease)
    wide.group_size = 4 * lease.group_size
    best: dict[tuple[int, int], list[int]] = {}
    by_task: dict[int, list[pb.Rollout]] = {}
    for r in rollouts_for(wide, model, tokenizer, env):
        by_task.setdefault(r.task_id, []).append(r)
    for task_id, group in by_task.items():
        ranked = sorted(group, key=lambda r: -r.reward)[:lease.group_size]
        best.update({(task_id, i): list(r.completion_ids) for i, r in enumerate(ranked)})
    return restate(lease, model, tokenizer, env, best)


def edit_tokens(lease, model, tokenizer, env):
    """(5) Edits a token of every wrong completion toward the answer, then recomputes its log-probs
    and proofs with the true model, so only the sampling check can tell."""
    eos = tokenizer.eos_token_id
    edited = {}
    for key, ids in _honest_completions(lease, model, tokenizer, env).items():
        answer = tokenizer(env.task(key[0]).answer, add_special_tokens=False)["input_ids"] + [eos]
        if ids != answer:
            first_wrong = next((j for j, (a, b) in enumerate(zip(ids, answer)) if a != b), min(len(ids), len(answer)) - 1)
            ids = ids[:first_wrong] + [answer[first_wrong]] + ids[first_wrong + 1:]
            ids = ids[:ids.index(eos) + 1] if eos in ids else ids
            if eos not in ids and len(ids) < lease.sampling.max_new_tokens:
                ids = ids + [eos]  # an edit that replaced the EOS must not look like an early stop
        edited[key] = ids
    return restate(lease, model, tokenizer, env, edited)


def other_temperature(lease, model, tokenizer, env):
    """(6a) Samples colder than leased (sharper, more often right), reporting log-probs at the
    leased temperature as an honest node would."""
    cold = pb.RolloutLease()
    cold.CopyFrom(lease)
    cold.sampling.temperature = lease.sampling.temperature / 4
    return restate(lease, model, tokenizer, env, _honest_completions(cold, model, tokenizer, env))


def ignore_seed(lease, model, tokenizer, env):
    """(6b) Samples with seeds of its own instead of the leased ones."""
    rng = random.Random(lease.seed ^ 0x5EED)
    prompts = [tokenizer(p.text)["input_ids"] for p in lease.prompts]
    g = lease.group_size
    gen = generate(model, [ids for ids in prompts for _ in range(g)], max_new_tokens=lease.sampling.max_new_tokens,
                   eos_id=tokenizer.eos_token_id, pad_id=tokenizer.pad_token_id,
                   temperature=lease.sampling.temperature, seeds=[rng.getrandbits(62) for _ in range(len(prompts) * g)])
    return restate(lease, model, tokenizer, env,
                   {(p.task_id, i): gen.completion_ids[row * g + i] for row, p in enumerate(lease.prompts) for i in range(g)})


def stop_early(lease, model, tokenizer, env):
    """(9) Cuts every completion short of its EOS (it saves the compute of the last tokens)."""
    eos = tokenizer.eos_token_id
    cut = {}
    for key, ids in _honest_completions(lease, model, tokenizer, env).items():
        cut[key] = ids[:-1] if len(ids) > 1 and ids[-1] == eos else ids
    return restate(lease, model, tokenizer, env, cut)


CHEATS: dict[str, Cheat] = {
    "other_weights": other_weights,
    "paste_answer": paste_answer,
    "inflate_rewards": inflate_rewards,
    "cherry_pick": cherry_pick,
    "edit_tokens": edit_tokens,
    "other_temperature": other_temperature,
    "ignore_seed": ignore_seed,
    "stop_early": stop_early,
}

# The checks that may rightly catch each cheat (the coordinator reports the first that fails).
# Other weights change the logits, the log-probs and the hidden states alike.
EXPECTED_CHECKS = {
    "other_weights": {"sampling", "logprobs", "proof"},
    "paste_answer": {"sampling"},
    "inflate_rewards": {"reward_mismatch"},
    "cherry_pick": {"sampling"},
    "edit_tokens": {"sampling"},
    "other_temperature": {"sampling"},
    "ignore_seed": {"sampling"},
    "stop_early": {"stopped_early"},
}
