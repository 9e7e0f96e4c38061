"""`--role auto`: the role chosen at registration, and the moves between inference and trainer as
the run's needs change. The run's needs are read from the store; the choices are protocol/roles.py's
rules (the same ones `potluck node doctor` predicts with).

A move happens only between units of work: never while the node holds a lease, never while a
trainer is a member of a round that is forming or training. The node hears of it in its next
heartbeat reply and switches its worker before its next unit of work.
"""
from __future__ import annotations

import logging

from protocol.roles import RAN_OUT_TRAINING, RoleChoice, RunNeeds, choose_role, model_weight_bytes, rebalanced_role
from protocol.v1 import coordinator_pb2 as pb

from . import admission
from .context import RunContext
from .store import now_ms

log = logging.getLogger("potluck.coordinator")
ONLINE_HEARTBEATS = 3  # a node silent for this many heartbeat intervals no longer counts
ONLINE_MAX_AGE_S = 1.0  # who is online is read over all nodes at most this often (coordinator/online.py)


def _online_since_ms(ctx: RunContext) -> int:
    return now_ms() - int(ONLINE_HEARTBEATS * ctx.heartbeat_interval_s() * 1000)


def run_needs(ctx: RunContext, node_id: str, credit: float) -> RunNeeds:
    # The node itself is not counted, so a trainer that rejoins gets its role back.
    online = ctx.store.online_roles(lambda: _online_since_ms(ctx), ONLINE_MAX_AGE_S).counts_excluding(node_id)
    row = ctx.store.node(node_id)
    return RunNeeds(trainers_active=online.get(pb.ROLE_TRAINER, 0),
                    trainers_wanted=ctx.config.diloco.trainers_per_round,
                    weight_bytes=model_weight_bytes(ctx.config.model.name),
                    may_train=admission.role_allowed(ctx.config.admission, pb.ROLE_TRAINER, node_id, credit),
                    inference_active=online.get(pb.ROLE_INFERENCE, 0),
                    ran_out_training=bool(row is not None and row["train_oom"]))


def auto_role(ctx: RunContext, node_id: str, credit: float, hardware: pb.Hardware) -> RoleChoice:
    return choose_role(hardware, run_needs(ctx, node_id, credit))


def _between_units(ctx: RunContext, node_id: str) -> bool:
    if ctx.store.active_leases(node_id=node_id):
        return False
    return not any(m["node_id"] == node_id for round_ in ctx.store.rounds(("forming", "training"))
                   for m in round_["members"])


def rebalance(ctx: RunContext, node_id: str) -> RoleChoice | None:
    """Move an auto node to the role the run needs now, if it should move; the move, or None."""
    row = ctx.store.node(node_id)
    if not (ctx.config.roles.rebalance and row["auto_role"]) or row["quarantined"] or row["state"] == "left":
        return None
    held_s = (now_ms() - row["role_since_ms"]) / 1000
    if held_s < ctx.config.roles.hold_seconds or not _between_units(ctx, node_id):
        return None
    choice = rebalanced_role(row["role"], pb.Hardware.FromString(row["hardware"]),
                             run_needs(ctx, node_id, row["credit"]), held_s, ctx.config.roles.hold_seconds)
    if choice is not None:
        _move(ctx, row, choice)
    return choice


def after_running_out(ctx: RunContext, node_id: str) -> None:
    """A node ran out of memory (its leases are back): an auto trainer that ran out training does
    inference from now on, at once (it holds nothing a round waits for)."""
    row = ctx.store.node(node_id)
    if row["auto_role"] and row["role"] == pb.ROLE_TRAINER and row["train_oom"]:
        _move(ctx, row, RoleChoice(pb.ROLE_INFERENCE, RAN_OUT_TRAINING))


def _move(ctx: RunContext, row, choice: RoleChoice) -> None:
    node_id = row["node_id"]
    before, after = (pb.Role.Name(r)[5:].lower() for r in (row["role"], choice.role))
    with ctx.store.tx():
        ctx.store.set_role(node_id, choice.role)
        ctx.store.event("role", f"{row['name']} ({node_id[-8:]}) moved from {before} to {after}: {choice.reason}")
    log.info("node %s moved from %s to %s: %s", node_id[-8:], before, after, choice.reason)
    ctx.notify()
