"""Accepting rollouts: envelope checks, reward recomputation, pooling and credit.

A submission that is malformed (wrong prompts, wrong group size, out-of-range tokens, a completion
that stops early without EOS) is refused whole with INVALID_ARGUMENT. A well-formed group whose
claimed rewards do not match the recomputed ones is rejected and earns nothing. Accepted groups
earn credit (one unit per generated token) and enter the training pool, unless their rewards do
not vary (no GRPO signal) or their version is already too old.
"""
from __future__ import annotations

import math

from protocol.scoring import score
from protocol.v1 import coordinator_pb2 as pb

from .context import RunContext
from .errors import invalid
from .scheduler import held_lease

REWARD_TOLERANCE = 1e-6


def _check_rollout(ctx: RunContext, r: pb.Rollout, limit: int) -> None:
    where = f"rollout (task {r.task_id}, sample {r.sample_index})"
    n = len(r.completion_ids)
    if not 1 <= n <= limit:
        raise invalid("bad_length", f"{where} has {n} tokens; allowed 1..{limit}")
    if len(r.logprobs) != n:
        raise invalid("bad_logprobs", f"{where} has {len(r.logprobs)} log-probs for {n} tokens")
    if max(r.completion_ids) >= ctx.vocab_size:
        raise invalid("bad_token", f"{where} has a token id >= vocab size {ctx.vocab_size}")
    if any(not math.isfinite(lp) or lp > 1e-4 for lp in r.logprobs):
        raise invalid("bad_logprobs", f"{where} has a log-prob that is not finite and <= 0")
    eos_at = [i for i, t in enumerate(r.completion_ids) if t == ctx.eos_id]
    if eos_at and eos_at[0] != n - 1:
        raise invalid("tokens_after_eos", f"{where} continues after EOS")
    if r.finished != bool(eos_at):
        raise invalid("bad_finished", f"{where}: finished={r.finished} but EOS {'present' if eos_at else 'absent'}")
    if not r.finished and n != limit:
        raise invalid("stopped_early", f"{where} stops at {n} tokens without EOS before the limit {limit}")


def submit_rollouts(ctx: RunContext, node_id: str, body: pb.SubmitRolloutsBody) -> pb.SubmitRolloutsReply:
    lease = held_lease(ctx, node_id, body.lease_id, ("rollout", "eval"))
    if body.version != lease.version:
        raise invalid("wrong_version", f"lease {lease.lease_id[:8]} is for version {lease.version}, "
                                       f"not {body.version}")
    task_ids, group_size = lease.spec["task_ids"], lease.spec["group_size"]
    keys = [(r.task_id, r.sample_index) for r in body.rollouts]
    if len(keys) != len(set(keys)):
        raise invalid("duplicate_rollout", "a (task, sample) pair appears twice")
    if set(keys) != {(t, i) for t in task_ids for i in range(group_size)}:
        raise invalid("wrong_rollouts", f"expected exactly {group_size} samples for each of the "
                                        f"{len(task_ids)} leased prompts")
    for r in body.rollouts:
        _check_rollout(ctx, r, ctx.max_new_tokens)

    by_task: dict[int, list[pb.Rollout]] = {t: [] for t in task_ids}
    for r in sorted(body.rollouts, key=lambda r: r.sample_index):
        by_task[r.task_id].append(r)
    accepted, rejected, tokens, rewards = [], 0, 0, []
    for task_id, group in by_task.items():
        recomputed = [score(ctx.env, ctx.tokenizer, task_id, list(r.completion_ids), ctx.eos_id) for r in group]
        if any(abs(mine - r.reward) > REWARD_TOLERANCE for mine, r in zip(recomputed, group)):
            rejected += len(group)
            continue
        accepted.append((task_id, group, recomputed))
        tokens += sum(len(r.completion_ids) for r in group)
        rewards += recomputed

    current = ctx.store.current_version()
    too_old = lease.version < current - ctx.config.rollouts.max_async_level
    with ctx.store.tx():
        if lease.kind == "eval":
            if not rejected:
                accuracy = sum(rewards) / len(rewards)
                ctx.store.set_eval(lease.version, accuracy)
                ctx.store.event("eval", f"version {lease.version}: held-out accuracy {accuracy:.3f}")
        else:
            for task_id, group, recomputed in accepted:
                varies = max(recomputed) != min(recomputed)
                state = "stale" if too_old else (
                    "pool" if varies or not ctx.config.rollouts.skip_zero_variance_groups else "skipped")
                prompt_ids = ctx.tokenizer(ctx.env.task(task_id).prompt)["input_ids"]
                ctx.store.add_group(lease.lease_id, node_id, lease.version, task_id, prompt_ids,
                                    [(r.sample_index, list(r.completion_ids), list(r.logprobs), rew, r.finished)
                                     for r, rew in zip(group, recomputed)], state)
        if rejected:
            ctx.store.event("reject", f"{node_id[-8:]}: {rejected} rollouts with a reward that does not "
                                      f"match the recomputed one")
        credit = ctx.store.credit(node_id, float(tokens), accepted=len(body.rollouts) - rejected,
                                  rejected=rejected, tokens=tokens)
        ctx.store.close_lease(lease.lease_id, "done")
        ctx.store.set_node_status(node_id, "idle")
    ctx.notify()
    return pb.SubmitRolloutsReply(accepted=len(body.rollouts) - rejected, rejected=rejected, credit=credit)
