"""`--role auto` at registration: the run's needs read from the store, the choice made by
protocol/roles.py's rule (the same rule `potluck node doctor` predicts with)."""
from __future__ import annotations

from protocol.roles import RoleChoice, RunNeeds, choose_role, model_weight_bytes
from protocol.v1 import coordinator_pb2 as pb

from . import admission
from .context import RunContext


def run_needs(ctx: RunContext, node_id: str, credit: float) -> RunNeeds:
    # A trainer that rejoins is not counted against itself, so it gets its role back.
    trainers = sum(1 for n in ctx.store.nodes()
                   if n["role"] == pb.ROLE_TRAINER and n["state"] != "left" and n["node_id"] != node_id)
    return RunNeeds(trainers_active=trainers, trainers_wanted=ctx.config.diloco.trainers_per_round,
                    weight_bytes=model_weight_bytes(ctx.config.model.name),
                    may_train=admission.role_allowed(ctx.config.admission, pb.ROLE_TRAINER, node_id, credit))


def auto_role(ctx: RunContext, node_id: str, credit: float, hardware: pb.Hardware) -> RoleChoice:
    return choose_role(hardware, run_needs(ctx, node_id, credit))
