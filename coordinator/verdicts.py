"""Verdicts on rollout submissions, and what follows from them.

- accepted: the groups enter the training pool (or are skipped when their rewards do not vary, or
  marked stale when they aged past max_async_level while waiting), and the node earns credit: one
  unit per generated token. An eval submission sets its version's held-out accuracy.
- rejected: the groups never count, and the node is quarantined: no new leases, its leases
  revoked, its pending work void, and its unchecked work (verification.rate < 1) void and its
  credit taken back where no trainer has used it yet.
- unverifiable: the version's bytes are gone (garbage-collected); the work is void, the node not
  blamed.

Validators lease pending submissions as jobs (lease kind "verify"): validator nodes over gRPC, and
the coordinator's embedded validator (coordinator/validator.py) directly.
"""
from __future__ import annotations

import sqlite3

from protocol.v1 import coordinator_pb2 as pb

from .context import RunContext
from .errors import invalid
from .scheduler import NO_WORK_RETRY_MS, expire_leases, held_lease, new_lease, release
from .store import unpack_floats, unpack_ints, unpack_proofs

EMBEDDED_VALIDATOR = "coordinator"
UNVERIFIABLE = "unverifiable"
# Generated tokens per verification lease (one submission may exceed it on its own): a lease's
# tokens, log-probs and proofs stay a few MB on the wire.
MAX_JOB_TOKENS = 1 << 17


def _short(node_id: str) -> str:
    return node_id[-8:]


def accept_groups(ctx: RunContext, sub: sqlite3.Row, verified: bool) -> None:
    """Inside a transaction: count a submission's work."""
    groups = ctx.store.groups_of_submission(sub["lease_id"])
    if sub["kind"] == "eval":
        rewards = [r["reward"] for r in ctx.store.rollouts_of_groups([g["group_id"] for g in groups])]
        accuracy = sum(rewards) / len(rewards)
        ctx.store.set_eval(sub["version"], accuracy)
        ctx.store.event("eval", f"version {sub['version']}: held-out accuracy {accuracy:.3f}")
    else:
        oldest = ctx.store.current_version() - ctx.config.rollouts.max_async_level
        skip_flat = ctx.config.rollouts.skip_zero_variance_groups
        for state in ("stale", "pool", "skipped"):
            ids = [g["group_id"] for g in groups if state == (
                "stale" if g["version"] < oldest else "pool" if g["reward_std"] > 0 or not skip_flat else "skipped")]
            ctx.store.set_groups_state(ids, state)
    ctx.store.set_submission_state(sub["lease_id"], "accepted", verified)
    ctx.store.credit(sub["node_id"], float(sub["tokens"]), accepted=sub["rollouts"], tokens=sub["tokens"])
    if verified:
        ctx.store.count_verified(sub["node_id"], True)


def _void(ctx: RunContext, sub: sqlite3.Row) -> None:
    ctx.store.set_groups_state([g["group_id"] for g in ctx.store.groups_of_submission(sub["lease_id"])], "void")
    ctx.store.set_submission_state(sub["lease_id"], "void", bool(sub["verified"]))


def reject_submission(ctx: RunContext, sub: sqlite3.Row, validator: str, check: str, detail: str,
                      figures: dict[str, float]) -> None:
    """Inside a transaction: record the failed check and quarantine the node."""
    node_id = sub["node_id"]
    ctx.store.set_groups_state([g["group_id"] for g in ctx.store.groups_of_submission(sub["lease_id"])],
                               "rejected")
    ctx.store.set_submission_state(sub["lease_id"], "rejected", True)
    ctx.store.add_verdict(sub["lease_id"], node_id, validator, False, check, detail, figures)
    ctx.store.count_verified(node_id, False)
    ctx.store.credit(node_id, 0.0, rejected=sub["rollouts"])
    ctx.store.event("reject", f"{_short(node_id)}: {sub['rollouts']} rollouts rejected ({check}): {detail}")
    _quarantine(ctx, node_id, check)


def _quarantine(ctx: RunContext, node_id: str, check: str) -> None:
    if ctx.store.node(node_id)["quarantined"]:
        return
    ctx.store.quarantine(node_id)
    for lease in ctx.store.active_leases(node_id=node_id):
        release(ctx, lease, "revoked")
    pending = ctx.store.submissions_of(node_id, ("pending",))
    for sub in pending:
        _void(ctx, sub)
    revoked, trained_on = 0, 0
    for sub in ctx.store.submissions_of(node_id, ("accepted",)):
        if sub["verified"]:
            continue
        groups = ctx.store.groups_of_submission(sub["lease_id"])
        if any(g["state"] in ("reserved", "consumed") for g in groups):
            trained_on += 1  # a trainer already used it: it stays in the history, uncredited from now on
        _void(ctx, sub)
        ctx.store.credit(node_id, -float(sub["tokens"]), accepted=-sub["rollouts"], rejected=sub["rollouts"],
                         tokens=-sub["tokens"])
        revoked += 1
    ctx.store.set_node_status(node_id, "quarantined")
    ctx.store.event("quarantine", f"{_short(node_id)} quarantined after failing the {check} check: "
                                  f"{len(pending)} pending and {revoked} unchecked submissions void"
                                  + (f" ({trained_on} already trained on)" if trained_on else ""))


def job_of(ctx: RunContext, sub: sqlite3.Row) -> pb.VerificationJob:
    """A pending submission as a validator sees it: prompts, seed, sampling and the rollouts."""
    spec = ctx.store.lease(sub["lease_id"]).spec
    groups = ctx.store.groups_of_submission(sub["lease_id"])
    task_of = {g["group_id"]: g["task_id"] for g in groups}
    rollouts = [pb.Rollout(task_id=task_of[r["group_id"]], sample_index=r["sample_index"],
                           completion_ids=unpack_ints(r["completion_ids"]), logprobs=unpack_floats(r["logprobs"]),
                           reward=r["reward"], finished=bool(r["finished"]), proofs=unpack_proofs(r["proofs"]))
                for r in ctx.store.rollouts_of_groups(list(task_of))]
    return pb.VerificationJob(
        job_id=sub["lease_id"], version=sub["version"], seed=spec["seed"], group_size=spec["group_size"],
        prompts=[pb.Prompt(task_id=t, text=ctx.env.task(t).prompt) for t in spec["task_ids"]],
        sampling=pb.SamplingParams(temperature=ctx.config.sampling.temperature, max_new_tokens=ctx.max_new_tokens,
                                   greedy=spec["greedy"]),
        rollouts=rollouts)


def lease_jobs(ctx: RunContext, validator: str, max_tokens: int = MAX_JOB_TOKENS) -> pb.VerificationLease:
    expire_leases(ctx)
    with ctx.store.tx():
        subs = ctx.store.unleased_pending_submissions(max_tokens)
        if not subs:
            return pb.VerificationLease(has_work=False, retry_after_ms=NO_WORK_RETRY_MS)
        ids = [s["lease_id"] for s in subs]
        lease = new_lease(ctx, validator, "verify", subs[0]["version"], {"jobs": ids},
                          ctx.config.verification.lease_seconds)
        ctx.store.set_verify_lease(ids, lease.lease_id)
        jobs = [job_of(ctx, s) for s in subs]
    return pb.VerificationLease(has_work=True, lease_id=lease.lease_id, jobs=jobs, deadline_ms=lease.deadline_ms)


def record_verdicts(ctx: RunContext, validator: str, lease_id: str, verdicts: list[pb.Verdict]) -> int:
    """Apply a validator's verdicts on its leased jobs; jobs it gave no verdict for go back to the
    queue. Returns how many verdicts were recorded."""
    lease = held_lease(ctx, validator, lease_id, ("verify",))
    jobs = set(lease.spec["jobs"])
    seen = [v.job_id for v in verdicts]
    if len(seen) != len(set(seen)) or not set(seen) <= jobs:
        raise invalid("wrong_verdicts", "verdicts must be for distinct jobs of this lease")
    recorded, checked_tokens = 0, 0
    with ctx.store.tx():
        for v in verdicts:
            sub = ctx.store.submission(v.job_id)
            if sub["state"] != "pending" or sub["verify_lease"] != lease_id:
                continue  # voided meanwhile (its node was caught elsewhere)
            figures = dict(v.figures)
            if v.accepted:
                accept_groups(ctx, sub, verified=True)
                ctx.store.add_verdict(v.job_id, sub["node_id"], validator, True, "", "", figures)
            elif v.check == UNVERIFIABLE:
                _void(ctx, sub)
                ctx.store.event("verify", f"{_short(sub['node_id'])}'s submission for version {sub['version']} "
                                          f"could not be checked: {v.detail[:200]}")
            else:
                reject_submission(ctx, sub, validator, v.check[:32] or "unspecified", v.detail[:500], figures)
            recorded += 1
            checked_tokens += sub["tokens"]
        ctx.store.set_verify_lease([j for j in jobs if j not in seen], None)
        ctx.store.close_lease(lease_id, "done")
        if validator != EMBEDDED_VALIDATOR:
            ctx.store.credit(validator, float(checked_tokens))
    ctx.notify()
    return recorded


def release_embedded_leases(ctx: RunContext) -> None:
    """At start-up: the embedded validator of a previous process held these; give them back now
    instead of waiting out their deadlines."""
    leases = ctx.store.active_leases("verify", node_id=EMBEDDED_VALIDATOR)
    if leases:
        with ctx.store.tx():
            for lease in leases:
                release(ctx, lease, "returned")
