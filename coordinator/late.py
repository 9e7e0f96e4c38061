"""Work that arrives after its lease expired: taken if still useful (coordinator/leases.py's rule),
else refused with `lease_expired` and the reason. A lease held and unexpired is scheduler.held_lease's."""
from __future__ import annotations

import logging

from .context import RunContext
from .errors import RpcError, precondition
from .leases import late_refusal
from .scheduler import _rollout_room, held_lease
from .store import Lease

log = logging.getLogger("potluck.coordinator")


def _replaced(ctx: RunContext, lease: Lease) -> bool:
    """Has other work taken this lease's place since it expired?"""
    if lease.kind == "eval":  # the same prompts are leased again for the same version
        evaluated = any(v["version"] == lease.version and v["eval_accuracy"] is not None for v in ctx.store.versions())
        leased = any(other.version == lease.version for other in ctx.store.active_leases("eval"))
        return evaluated or leased or lease.version in ctx.store.pending_eval_versions()
    # Rollout prompts are drawn afresh for each shard: this shard's room went to other shards.
    return _rollout_room(ctx, ctx.store.current_version()) < len(lease.spec["task_ids"])


def held_or_late_lease(ctx: RunContext, node_id: str, lease_id: str, kinds: tuple[str, ...]) -> Lease:
    try:
        return held_lease(ctx, node_id, lease_id, kinds)
    except RpcError as err:
        if err.reason != "lease_expired":
            raise
        lease = ctx.store.lease(lease_id)
        refusal = late_refusal(lease.kind, lease.version, ctx.store.current_version(),
                               ctx.config.rollouts.max_async_level, _replaced(ctx, lease))
        if refusal is not None:
            raise precondition("lease_expired", f"{err.message}, and {refusal}") from None
    log.info("late %s work on lease %s of %s: nothing replaced it, so it is checked like any other",
             lease.kind, lease_id[:8], node_id[-8:])
    return lease
