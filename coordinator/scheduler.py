"""Handing out work: rollout shards and eval shards to inference nodes, training shards to trainers.

Rules:
- eval of a published version (held-out split, greedy) comes before new rollouts;
- rollouts are generated for the current version, and only while the pool (with the submissions
  awaiting a validator) plus the work in flight is short of two batches: while a trainer trains on
  one batch, inference generates the next (up to max_async_level versions behind by the time it is
  used), nothing piles up to go stale, and a node sitting on its lease (slow, gone or hostile) cannot
  keep the pool short of a batch until the lease expires;
- training: a round's batch is pool groups no more than max_async_level versions old, cut into one
  shard per trainer of the round (rounds.py); a shard goes back to the pool if its lease expires or
  is returned;
- a node that runs out of memory on a lease returns it and gets rollout leases of at most half its
  prompts from then on (the cap is remembered per node).
"""
from __future__ import annotations

import random
import secrets

from protocol.roles import YARDSTICK_MODEL, model_weight_bytes
from protocol.v1 import coordinator_pb2 as pb

from . import leases, rounds
from .context import RunContext
from .errors import denied, not_found, precondition
from .store import Lease, now_ms

NO_WORK_RETRY_MS = 500
PAUSED_RETRY_MS = 5000


def expire_leases(ctx: RunContext) -> int:
    """Close leases past their deadline; a training lease's groups return to the pool."""
    expired = ctx.store.expired_leases(now_ms())
    if not expired:
        return 0
    with ctx.store.tx():
        for lease in expired:
            release(ctx, lease, "expired")
    ctx.notify()
    return len(expired)


def release(ctx: RunContext, lease: Lease, state: str) -> None:
    """Inside a transaction: close a lease that did not finish, giving its work back."""
    ctx.store.close_lease(lease.lease_id, state)
    if lease.kind == "train":
        ctx.store.set_groups_state(ctx.store.groups_of_train_lease(lease.lease_id), "pool")
    elif lease.kind == "verify":  # its jobs wait for the next validator
        ctx.store.set_verify_lease(lease.spec["jobs"], None)
    ctx.store.event("lease", f"{lease.kind} lease {lease.lease_id[:8]} of {lease.node_id[-8:]} {state}")


def new_lease(ctx: RunContext, node_id: str, kind: str, version: int, spec: dict, seconds: float) -> Lease:
    t = now_ms()
    lease = Lease(secrets.token_hex(16), node_id, kind, version, spec, t, t + int(seconds * 1000), "active")
    ctx.store.add_lease(lease)
    return lease


def _eval_due(ctx: RunContext) -> int | None:
    every = ctx.config.eval.every
    if every == 0:
        return None
    busy = {lease.version for lease in ctx.store.active_leases("eval")} | ctx.store.pending_eval_versions()
    for row in ctx.store.versions():
        if (row["eval_accuracy"] is None and row["version"] % every == 0 and row["version"] not in busy
                and ctx.blobs.has(row["sha256"])):
            return row["version"]
    return None


def _rollout_room(ctx: RunContext, version: int) -> int:
    """How many more prompts may be leased for generation now."""
    cfg = ctx.config.rollouts
    pooled = ctx.store.count_pool_groups(version - cfg.max_async_level) + ctx.store.count_groups("pending")
    in_flight = ctx.store.prompts_in_flight("rollout")
    return 2 * cfg.batch_groups - pooled - in_flight


def _shard_seconds(ctx: RunContext, node_id: str, spec: dict) -> float:
    """A shard's lease, scaled to the node's speed (coordinator/leases.py): its reported rate from real
    work, else its registration yardstick; the work is every completion at the length limit."""
    hardware = pb.Hardware.FromString(ctx.store.node(node_id)["hardware"])
    rate = leases.expected_rate(ctx.store.node(node_id)["tokens_per_s"], hardware.measured_tokens_per_s,
                                model_weight_bytes(YARDSTICK_MODEL), model_weight_bytes(ctx.config.model.name))
    cfg = ctx.config.rollouts
    work = len(spec["task_ids"]) * spec["group_size"] * ctx.max_new_tokens
    return leases.scaled_seconds(work, rate, cfg.min_lease_seconds, cfg.lease_seconds)


def lease_rollouts(ctx: RunContext, node_id: str, max_prompts: int) -> pb.RolloutLease:
    if ctx.store.paused():  # an admin paused the run: no new work (issue 6)
        return pb.RolloutLease(has_work=False, retry_after_ms=PAUSED_RETRY_MS)
    expire_leases(ctx)
    cfg = ctx.config
    version = ctx.store.current_version()
    limit = min(cap for cap in (cfg.rollouts.prompts_per_shard, max_prompts, ctx.store.node(node_id)["max_prompts"])
                if cap > 0)  # the run's shard, what the node asks for, the cap its running out of memory set
    with ctx.store.tx():
        eval_version = _eval_due(ctx)
        if eval_version is not None:
            task_ids = ctx.env.eval_ids()
            spec = {"task_ids": task_ids, "group_size": 1, "seed": 0, "greedy": True}
            lease = new_lease(ctx, node_id, "eval", eval_version, spec, _shard_seconds(ctx, node_id, spec))
        else:
            room = min(limit, _rollout_room(ctx, version))
            if room <= 0:
                return pb.RolloutLease(has_work=False, retry_after_ms=NO_WORK_RETRY_MS)
            counter = int(ctx.store.get_meta("shards_issued") or 0)
            ctx.store.set_meta("shards_issued", str(counter + 1))
            rng = random.Random(f"{cfg.seed}:shard:{counter}")
            spec = {"task_ids": ctx.env.sample_train_ids(rng, room), "group_size": cfg.rollouts.group_size,
                    "seed": rng.getrandbits(63), "greedy": False}
            lease = new_lease(ctx, node_id, "rollout", version, spec, _shard_seconds(ctx, node_id, spec))
        ctx.store.set_node_status(node_id, "evaluating" if lease.kind == "eval" else "generating")
    ctx.notify()
    return pb.RolloutLease(
        has_work=True, lease_id=lease.lease_id, version=lease.version,
        prompts=[pb.Prompt(task_id=t, text=ctx.env.task(t).prompt) for t in spec["task_ids"]],
        group_size=spec["group_size"], seed=spec["seed"], deadline_ms=lease.deadline_ms,
        eval=lease.kind == "eval",
        sampling=pb.SamplingParams(temperature=cfg.sampling.temperature, max_new_tokens=ctx.max_new_tokens,
                                   greedy=spec["greedy"]))


def lease_training(ctx: RunContext, node_id: str, maddrs: list[str]) -> pb.TrainingLease:
    """A shard of the current DiLoCo round (rounds.py), or when to ask again."""
    if ctx.store.paused():
        return pb.TrainingLease(has_work=False, retry_after_ms=PAUSED_RETRY_MS)
    expire_leases(ctx)
    with ctx.store.tx():
        lease = rounds.train_lease(ctx, node_id, maddrs, NO_WORK_RETRY_MS)
    if lease.has_work:
        ctx.notify()
    return lease


def return_leases(ctx: RunContext, node_id: str) -> int:
    leases = ctx.store.active_leases(node_id=node_id)
    with ctx.store.tx():
        for lease in leases:
            release(ctx, lease, "returned")
        ctx.store.set_node_status(node_id, "left")
    ctx.notify()
    return len(leases)


def out_of_memory(ctx: RunContext, node_id: str, body: pb.ReportOutOfMemoryBody) -> int:
    """A node ran out of memory: the lease it names (every lease it holds, if none) goes back at once,
    for another node or for this one in smaller pieces. Its rollout leases from then on hold at most
    half the prompts that did not fit; one that ran out training is remembered (roles.py).
    Returns the node's prompt cap (0: none)."""
    held = ([held_lease(ctx, node_id, body.lease_id, ("rollout", "eval", "train", "verify"))] if body.lease_id
            else ctx.store.active_leases(node_id=node_id))
    row = ctx.store.node(node_id)
    cap = row["max_prompts"]
    for lease in held:
        if lease.kind in ("rollout", "eval"):
            halved = max(1, len(lease.spec["task_ids"]) // 2)
            cap = min(cap, halved) if cap else halved
    training = any(lease.kind == "train" for lease in held) or (not held and row["role"] == pb.ROLE_TRAINER)
    with ctx.store.tx():
        for lease in held:
            release(ctx, lease, "returned")
        ctx.store.set_out_of_memory(node_id, cap, training)
        kinds = "/".join(sorted({lease.kind for lease in held})) or "no"
        ctx.store.event("memory", f"{row['name']} ({node_id[-8:]}) ran out of memory on {kinds} lease(s) "
                                  f"({body.rows} sequences at once)"
                                  + (f"; its leases now hold at most {cap} prompts" if cap else ""))
    ctx.notify()
    return cap


def held_lease(ctx: RunContext, node_id: str, lease_id: str, kinds: tuple[str, ...]) -> Lease:
    """The active, unexpired lease `lease_id` held by node_id, or the precise reason it is not."""
    lease = ctx.store.lease(lease_id)
    if lease is None or lease.kind not in kinds:
        raise not_found("unknown_lease", f"no {'/'.join(kinds)} lease {lease_id[:40]!r}")
    if lease.node_id != node_id:
        raise denied("not_your_lease", f"lease {lease_id[:8]} belongs to another node")
    if lease.state == "active" and lease.deadline_ms < now_ms():
        expire_leases(ctx)
        lease = ctx.store.lease(lease_id)
    if lease.state == "expired":
        raise precondition("lease_expired", f"lease {lease_id[:8]} expired at {lease.deadline_ms} ms (unix)")
    if lease.state != "active":
        raise precondition("lease_closed", f"lease {lease_id[:8]} is already {lease.state}")
    return lease
