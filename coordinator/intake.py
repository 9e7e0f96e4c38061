"""Taking in rollouts: the coordinator's own checks, then a validator's (coordinator/verdicts.py).

At submission, in order:
- envelope: the lease is the node's and still open, the version is the leased one and no more than
  max_async_level behind (`stale_version`), exactly the leased prompts with G samples each, token
  ids and log-probs in range. A malformed submission is refused whole (INVALID_ARGUMENT) and
  nothing is recorded: it may be a bug, and the lease stays open for a corrected one;
- content: every reward recomputed from the tokens must match exactly (`reward_mismatch`), and a
  completion ends with EOS or at the length limit, never early (`stopped_early`). An honest node
  cannot fail these, so a failure rejects the submission and quarantines the node.
Then the submission waits for a validator's prefill check (sampling, log-probs, proofs) if it is
sampled for one (every eval, and `verification.rate` of the rest); otherwise it counts at once,
provisionally: a later caught failure of the same node voids it.
"""
from __future__ import annotations

import math
import secrets

from protocol.scoring import score
from protocol.v1 import coordinator_pb2 as pb

from .context import RunContext
from .errors import invalid, precondition
from .late import held_or_late_lease
from .store import pack_proofs
from .verdicts import accept_groups, reject_submission

REWARD_TOLERANCE = 1e-6
MAX_PROOFS = 1024  # per rollout: far beyond any completion the length limit allows


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
    if not 1 <= len(r.proofs) <= MAX_PROOFS:
        raise invalid("bad_proofs", f"{where} carries {len(r.proofs)} proofs; a rollout has at least one")


def content_failure(rollouts: list[pb.Rollout], recomputed: list[float], max_new_tokens: int
                    ) -> tuple[str, str] | None:
    """(check, detail) of the first rollout an honest node could not have produced, else None.
    Pure, so bench.verification applies the very same rule."""
    for r, mine in zip(rollouts, recomputed):
        if abs(mine - r.reward) > REWARD_TOLERANCE:
            return "reward_mismatch", (f"task {r.task_id} sample {r.sample_index} claims reward {r.reward:g}; "
                                       f"its tokens earn {mine:g}")
    for r in rollouts:
        if not r.finished and len(r.completion_ids) != max_new_tokens:
            return "stopped_early", (f"task {r.task_id} sample {r.sample_index} stops at {len(r.completion_ids)} "
                                     f"tokens without EOS, before the limit {max_new_tokens}")
    return None


def submit_rollouts(ctx: RunContext, node_id: str, body: pb.SubmitRolloutsBody) -> pb.SubmitRolloutsReply:
    lease = held_or_late_lease(ctx, node_id, body.lease_id, ("rollout", "eval"))  # late work: late.py
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
    oldest = ctx.store.current_version() - ctx.config.rollouts.max_async_level
    if lease.kind == "rollout" and lease.version < oldest:
        with ctx.store.tx():
            ctx.store.close_lease(lease.lease_id, "stale")
        raise precondition("stale_version", f"version {lease.version} is older than the async limit allows "
                                            f"(oldest usable: {oldest}); the rollouts are of no use now")

    order = {task_id: i for i, task_id in enumerate(task_ids)}
    rollouts = sorted(body.rollouts, key=lambda r: (order[r.task_id], r.sample_index))
    recomputed = [score(ctx.env, ctx.tokenizer, r.task_id, list(r.completion_ids), ctx.eos_id) for r in rollouts]
    failure = content_failure(rollouts, recomputed, ctx.max_new_tokens)
    tokens = sum(len(r.completion_ids) for r in rollouts)
    # Drawn after the submission, from the OS's randomness: a node cannot know which work is checked.
    checked = lease.kind == "eval" or secrets.SystemRandom().random() < ctx.config.verification.rate
    with ctx.store.tx():
        ctx.store.close_lease(lease.lease_id, "done")
        ctx.store.add_submission(lease, "pending", False, tokens, len(rollouts))
        for start in range(0, len(rollouts), group_size):
            group = rollouts[start:start + group_size]
            ctx.store.add_group(lease.lease_id, node_id, lease.version, group[0].task_id,
                                ctx.tokenizer(ctx.env.task(group[0].task_id).prompt)["input_ids"],
                                [(r.sample_index, list(r.completion_ids), list(r.logprobs), reward, r.finished,
                                  pack_proofs(r.proofs))
                                 for r, reward in zip(group, recomputed[start:start + group_size])],
                                "eval" if lease.kind == "eval" else "pending")
        if failure is not None:
            reject_submission(ctx, ctx.store.submission(lease.lease_id), "coordinator", *failure, {})
        elif not checked:
            accept_groups(ctx, ctx.store.submission(lease.lease_id), verified=False)
        else:
            ctx.store.set_node_status(node_id, "idle")
        credit = ctx.store.node(node_id)["credit"]
    ctx.notify()
    if failure is not None:
        return pb.SubmitRolloutsReply(rejected=len(rollouts), credit=credit, reject_reason=failure[0])
    if not checked:
        return pb.SubmitRolloutsReply(accepted=len(rollouts), credit=credit)
    return pb.SubmitRolloutsReply(pending=len(rollouts), credit=credit)
