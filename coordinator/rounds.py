"""DiLoCo rounds: which trainers train which shard of a version's batch.

Rules:
- one round at a time (the next one trains from the version this one makes);
- a round forms when the pool holds a full batch and a trainer asks for work; it waits up to
  join_seconds for trainers_per_round trainers (never fewer than min_trainers), then seals: the
  batch is cut into one shard of whole groups per member, each leased to its member with the
  round's peer list (node ids, p2p addresses, shard sizes) for the all-reduce;
- a trainer whose pseudo-gradient was refused (screening.py) gets no more training work;
- what happens to the shards when the round is decided is publisher.py's part.
"""
from __future__ import annotations

import secrets

import multiaddr
import numpy as np

from protocol.v1 import coordinator_pb2 as pb

from .context import RunContext
from .errors import invalid
from .store import Lease, now_ms, unpack_floats, unpack_ints

FORMING_RETRY_MS = 100  # a trainer in a forming round (or waiting for its round's end) asks again this soon
EXCLUDED_RETRY_MS = 60_000


def _checked_maddrs(maddrs: list[str]) -> list[str]:
    for text in maddrs:
        try:
            multiaddr.Multiaddr(text)
        except Exception as exc:  # the package raises several error types
            raise invalid("bad_multiaddr", f"p2p address {text[:80]!r} is not a multiaddr: {exc}") from None
    return list(maddrs)


def _wait(retry_ms: int) -> pb.TrainingLease:
    return pb.TrainingLease(has_work=False, retry_after_ms=retry_ms)


def train_lease(ctx: RunContext, node_id: str, maddrs: list[str], no_work_retry_ms: int) -> pb.TrainingLease:
    """Inside a transaction: this trainer's lease in the current round, or when to ask again."""
    maddrs = _checked_maddrs(maddrs)
    if ctx.store.rejected_trainer(node_id):
        return _wait(EXCLUDED_RETRY_MS)
    cfg = ctx.config
    for round_ in ctx.store.rounds(("forming", "training")):
        member = next((m for m in round_["members"] if m["node_id"] == node_id), None)
        if round_["state"] == "training":
            lease = ctx.store.lease(member["lease_id"]) if member else None
            if lease is not None and lease.state == "active" and not member.get("sent"):
                member["sent"] = True
                ctx.store.update_round(round_["round_id"], "training", round_["members"], round_["group_ids"])
                return _lease_message(ctx, round_, lease)
            # a member that has submitted asks again soon: the next round forms when this one ends
            return _wait(FORMING_RETRY_MS if member else no_work_retry_ms)
        if member is None and len(round_["members"]) < min(cfg.diloco.trainers_per_round, cfg.rollouts.batch_groups):
            round_["members"].append({"node_id": node_id, "maddrs": maddrs})
            ctx.store.update_round(round_["round_id"], "forming", round_["members"], [])
        elif member is None:
            return _wait(no_work_retry_ms)
        if _ready_to_seal(ctx, round_):
            return _seal(ctx, round_, node_id)
        return _wait(FORMING_RETRY_MS)

    version = ctx.store.current_version()
    oldest = version - cfg.rollouts.max_async_level
    dropped = ctx.store.mark_stale(oldest)
    if dropped:
        ctx.store.event("pool", f"{dropped} groups older than version {oldest} dropped as stale")
    if len(ctx.store.pool_groups(oldest)) < cfg.rollouts.batch_groups:
        return _wait(no_work_retry_ms)
    round_id = secrets.token_hex(16)
    ctx.store.add_round(round_id, version, [{"node_id": node_id, "maddrs": maddrs}])
    round_ = ctx.store.rounds(("forming",))[-1]
    if _ready_to_seal(ctx, round_):
        return _seal(ctx, round_, node_id)
    return _wait(FORMING_RETRY_MS)


def _ready_to_seal(ctx: RunContext, round_: dict) -> bool:
    d = ctx.config.diloco
    n = len(round_["members"])
    waited_s = (now_ms() - round_["created_ms"]) / 1000
    return n >= min(d.trainers_per_round, ctx.config.rollouts.batch_groups) or (
        n >= d.min_trainers and waited_s >= d.join_seconds)


def _seal(ctx: RunContext, round_: dict, asking: str) -> pb.TrainingLease:
    """Cut the batch into one shard per member, lease each, and answer the asking member."""
    cfg = ctx.config
    oldest = round_["version"] - cfg.rollouts.max_async_level
    group_ids = [row["group_id"] for row in ctx.store.pool_groups(oldest)[:cfg.rollouts.batch_groups]]
    shards = np.array_split(np.array(group_ids), len(round_["members"]))
    t = now_ms()
    for member, shard in zip(round_["members"], shards):
        lease = Lease(secrets.token_hex(16), member["node_id"], "train", round_["version"],
                      {"group_ids": shard.tolist(), "round_id": round_["round_id"]}, t,
                      t + int(cfg.grpo.lease_seconds * 1000), "active")
        ctx.store.add_lease(lease)
        ctx.store.set_groups_state(shard.tolist(), "reserved", lease.lease_id)
        ctx.store.set_node_status(member["node_id"], "training")
        member.update(lease_id=lease.lease_id, group_ids=shard.tolist(), sent=member["node_id"] == asking)
    ctx.store.update_round(round_["round_id"], "training", round_["members"], group_ids)
    ctx.store.event("round", f"round {round_['round_id'][:8]} on version {round_['version']}: "
                             f"{len(round_['members'])} trainer(s), {len(group_ids)} groups")
    mine = next(m for m in round_["members"] if m["node_id"] == asking)
    return _lease_message(ctx, round_, ctx.store.lease(mine["lease_id"]))


def shard_samples(ctx: RunContext, group_ids: list[int]) -> list[pb.TrainingSample]:
    return [pb.TrainingSample(rollout_id=s["rollout_id"], group_id=s["group_id"],
                              prompt_ids=unpack_ints(s["prompt_ids"]), completion_ids=unpack_ints(s["completion_ids"]),
                              logprobs=unpack_floats(s["logprobs"]), reward=s["reward"], version=s["version"])
            for s in ctx.store.training_samples(group_ids)]


def _lease_message(ctx: RunContext, round_: dict, lease: Lease) -> pb.TrainingLease:
    group_size = ctx.config.rollouts.group_size
    return pb.TrainingLease(
        has_work=True, lease_id=lease.lease_id, parent_version=lease.version, deadline_ms=lease.deadline_ms,
        round_id=round_["round_id"], compression=ctx.config.diloco.compression,
        peers=[pb.RoundPeer(node_id=m["node_id"], maddrs=m["maddrs"], samples=len(m["group_ids"]) * group_size)
               for m in round_["members"]],
        samples=shard_samples(ctx, lease.spec["group_ids"]))
