"""Versions: creating version 0, deciding a DiLoCo round from its trainers' results, and publishing
the canonical one with a signed manifest.

The canonical form: a round's version is the candidate blob of one trainer, the lowest node id
among the largest set of candidates that agree with the coordinator's recomputation (screening.py)
and were averaged over the same peers. It is published when that set reaches the quorum
(max(min_trainers, ceil(quorum x members))); other candidates are recorded as outvoted.
"""
from __future__ import annotations

import math

from protocol.checkpoint import (CHUNK_SIZE, PARAM_PREFIXES, Manifest, blob_format, blob_layout, chunk_hashes,
                                 sha256_hex, sign_manifest)
from protocol.policy import decode_blob, version_format
from protocol.v1 import coordinator_pb2 as pb

from .context import RunContext
from .errors import invalid, not_found, precondition
from .scheduler import expire_leases, held_lease
from .direction import descent_slopes
from .screening import direction_offenders, expected_version, norm, relative_error, screen
from .store import now_ms

NORM_HISTORY = 32  # accepted pseudo-gradient norms the relative cap looks back on
LIVENESS_FLOOR_S = 15.0

COORDINATOR_TRAINER = "coordinator"


def _publish(ctx: RunContext, version: int, parent: int | None, blob: bytes, trainer: str,
             rollouts_used: int) -> None:
    """Inside a transaction: store the blob, sign its manifest, record the version."""
    digest = ctx.blobs.put(blob)
    manifest = Manifest(run=ctx.config.name, version=version, parent=parent, sha256=digest, size=len(blob),
                        base_model=ctx.config.model.name, format=version_format(ctx.config), created_ms=now_ms(), chunk_size=CHUNK_SIZE,
                        chunks=chunk_hashes(blob, CHUNK_SIZE))
    text, signature = sign_manifest(ctx.identity, manifest)
    ctx.store.add_version(version, parent, digest, len(blob), text, signature, trainer, rollouts_used)
    ctx.store.event("version", f"version {version} published ({digest[:12]}, {len(blob)} bytes) by {trainer[-8:]}")


def collect_garbage(ctx: RunContext) -> int:
    """Delete blobs of versions that are neither among the last keep_last nor milestones, once no
    live version shares their bytes. Returns how many blobs were deleted."""
    rule = ctx.config.checkpoints
    rows = ctx.store.versions()
    newest = rows[-1]["version"]

    def kept(version: int) -> bool:
        return version > newest - rule.keep_last or version == 0 or (
            rule.keep_every and version % rule.keep_every == 0)

    live = {r["sha256"] for r in rows if kept(r["version"])}
    doomed = {r["sha256"] for r in rows if not kept(r["version"]) and ctx.blobs.has(r["sha256"])} - live
    for digest in doomed:
        ctx.blobs.delete(digest)
    return len(doomed)


def publish_initial(ctx: RunContext, blob: bytes) -> None:
    with ctx.store.tx():
        _publish(ctx, 0, None, blob, COORDINATOR_TRAINER, 0)


def submit_training(ctx: RunContext, node_id: str, body: pb.SubmitTrainingBody) -> pb.SubmitTrainingReply:
    """Record a round member's candidate and pseudo-gradient; decide the round if it can be."""
    lease = held_lease(ctx, node_id, body.lease_id, ("train",))
    report = body.report
    if report.parent_version != lease.version:
        raise invalid("wrong_version", f"lease {lease.lease_id[:8]} trains version {lease.version}, "
                                       f"not {report.parent_version}")
    if lease.version != ctx.store.current_version():
        raise precondition("superseded", f"version {lease.version} is no longer the latest")
    if len(body.blob) != report.size or sha256_hex(body.blob) != report.sha256:
        raise invalid("hash_mismatch", "the blob does not match the reported sha256 and size")
    parent = ctx.store.version(lease.version)
    parent_blob = ctx.blobs.read(parent["sha256"], 0, parent["size"])
    expected, trained = blob_layout(parent_blob), PARAM_PREFIXES[blob_format(parent_blob)]
    _check_layout(body.blob, expected, f"tensor names, shapes or dtypes differ from version {lease.version}")
    _check_layout(body.pseudo_gradient, {k: v for k, v in expected.items() if k.startswith(trained)},
                  "the pseudo-gradient's tensors differ from the adapter's")
    round_ = next(r for r in ctx.store.rounds(("training",)) if r["round_id"] == lease.spec["round_id"])
    members = {m["node_id"] for m in round_["members"]}
    averaged_with = list(dict.fromkeys(body.averaged_with))
    if node_id not in averaged_with or not set(averaged_with) <= members:
        raise invalid("bad_group", "averaged_with must name this trainer and only members of its round")
    delta_norm = norm(decode_blob(body.pseudo_gradient)[0])
    samples = len(lease.spec["group_ids"]) * ctx.config.rollouts.group_size
    with ctx.store.tx():
        candidate, delta = ctx.blobs.put(body.blob), ctx.blobs.put(body.pseudo_gradient)
        ctx.store.add_round_result(round_["round_id"], node_id, candidate, len(body.blob), delta, samples,
                                   averaged_with, delta_norm)
        ctx.store.close_lease(lease.lease_id, "submitted")
        ctx.store.set_node_status(node_id, "submitted")
        _settle(ctx)
    collect_garbage(ctx)
    ctx.notify()
    outcome = next(r for r in ctx.store.rounds(ROUND_STATES) if r["round_id"] == round_["round_id"])
    credit = ctx.store.node(node_id)["credit"]
    if outcome["state"] != "published":
        return pb.SubmitTrainingReply(round_state=outcome["state"] if outcome["state"] != "training" else "open",
                                      credit=credit)
    published = ctx.store.version(outcome["version"] + 1)
    return pb.SubmitTrainingReply(published_version=published["version"], credit=credit, round_state="published",
                                  published_sha256=published["sha256"])


ROUND_STATES = ("forming", "training", "published", "rejected", "failed")


def _check_layout(blob: bytes, expected: dict, message: str) -> None:
    try:
        layout = blob_layout(blob)
    except ValueError as exc:
        raise invalid("bad_blob", str(exc)) from None
    if layout != expected:
        differing = sorted(set(expected.items()) ^ set(layout.items()))[:3]
        raise invalid("bad_blob", f"{message}: {differing}")


def settle_rounds(ctx: RunContext) -> None:
    """Decide every round that can be decided (a member's lease may have expired meanwhile)."""
    expire_leases(ctx)
    with ctx.store.tx():
        decided = _settle(ctx)
    if decided:
        collect_garbage(ctx)
        ctx.notify()


def _settle(ctx: RunContext) -> int:
    """Inside a transaction. A round is decided once no member is still expected: every member has
    submitted or lost its lease, or the results are in and no missing member holds the round. One
    that took part in none of their all-reduces (it died, or came too late for matchmaking) holds
    nothing; one that did holds it while it is online, for at most submit_grace_seconds after the
    round's first result (it died, or hangs, between the all-reduce and its submission: the results
    that averaged with it cannot be checked without it, so its shard and theirs go back to the pool)."""
    decided = 0
    for round_ in ctx.store.rounds(("training",)):
        results = ctx.store.round_results(round_["round_id"])
        done = {r["node_id"] for r in results}
        waiting = [m["node_id"] for m in round_["members"] if m["node_id"] not in done
                   and ctx.store.lease(m["lease_id"]).state == "active"]
        named = {peer for r in results for peer in r["averaged_with"]}
        if not waiting or (results and not any(_holds_round(ctx, node, results[0]["created_ms"])
                                               for node in named & set(waiting))):
            _decide(ctx, round_, results)
            decided += 1
    return decided


def _holds_round(ctx: RunContext, node_id: str, first_result_ms: int) -> bool:
    """Within the grace after the round's first result, and online: heard from within 3 heartbeat
    intervals (stretched as the swarm grows, as nodes are told) and never less than
    LIVENESS_FLOOR_S, since a busy trainer's heartbeats can lag a few short intervals."""
    t, config = now_ms(), ctx.config
    if t - first_result_ms > config.diloco.submit_grace_seconds * 1000:
        return False
    interval_s = ctx.heartbeat_interval_s()
    row = ctx.store.node(node_id)
    silent_ms = t - row["last_seen_ms"]
    return row["state"] != "left" and silent_ms <= 1000 * max(LIVENESS_FLOOR_S, 3 * interval_s)


def _tensors(ctx: RunContext, digest: str, size: int):
    return decode_blob(ctx.blobs.read(digest, 0, size))


def _decide(ctx: RunContext, round_: dict, results: list[dict]) -> None:
    cfg, round_id, tag = ctx.config.diloco, round_["round_id"], round_["round_id"][:8]
    parent = ctx.store.version(round_["version"])
    parent_adapter, parent_momentum = _tensors(ctx, parent["sha256"], parent["size"])
    deltas = {r["node_id"]: _tensors(ctx, r["delta"], ctx.blobs.size(r["delta"]))[0] for r in results}
    weights = {r["node_id"]: float(r["samples"]) for r in results}

    offenders = screen(deltas, weights, ctx.store.accepted_delta_norms(NORM_HISTORY), cfg)
    if cfg.direction_check:
        shards = {m["node_id"]: m["group_ids"] for m in round_["members"]}
        offenders |= direction_offenders(descent_slopes(
            ctx, parent_adapter, {n: d for n, d in deltas.items() if n not in offenders}, shards))
    if offenders:
        for r in results:
            ctx.store.set_verdict(round_id, r["node_id"], "rejected" if r["node_id"] in offenders else "discarded")
        for node, why in offenders.items():
            ctx.store.event("reject", f"round {tag}: {node[-8:]} refused ({why}); no more training work for it")
        _close_round(ctx, round_, results, "rejected", [], f"refused: {', '.join(n[-8:] for n in offenders)}")
        return

    agreeing: dict[tuple[str, ...], list[str]] = {}
    expected: dict[tuple[str, ...], tuple] = {}
    for r in results:
        group = tuple(sorted(r["averaged_with"]))
        if any(peer not in deltas for peer in group):
            ctx.store.set_verdict(round_id, r["node_id"], "unverifiable")
            continue
        if group not in expected:
            expected[group] = expected_version(parent_adapter, parent_momentum, [deltas[p] for p in group],
                                               [weights[p] for p in group], cfg)
        adapter, momentum, _ = expected[group]
        cand_adapter, cand_momentum = _tensors(ctx, r["candidate"], r["size"])
        step = norm({k: adapter[k] - parent_adapter[k] for k in adapter})
        error = max(relative_error(cand_adapter, adapter, step), relative_error(cand_momentum, momentum, norm(momentum)))
        if error <= cfg.agreement_rtol:
            agreeing.setdefault(group, []).append(r["node_id"])
        else:
            ctx.store.set_verdict(round_id, r["node_id"], "outvoted")
            ctx.store.event("round", f"round {tag}: {r['node_id'][-8:]}'s candidate is {error:.3g} away from the "
                                     f"recomputed version (tolerance {cfg.agreement_rtol}): outvoted")
    need = max(cfg.min_trainers, math.ceil(cfg.quorum * len(round_["members"])))
    best = max(agreeing, key=lambda g: (len(agreeing[g]), sum(weights[p] for p in g)), default=None)
    if best is None or len(agreeing[best]) < need:
        for group, nodes in agreeing.items():
            for node in nodes:
                ctx.store.set_verdict(round_id, node, "no_quorum")
        missing = sorted({p[-8:] for r in results for p in r["averaged_with"] if p not in deltas})
        _close_round(ctx, round_, results, "failed", [], f"no quorum: {0 if best is None else len(agreeing[best])} "
                     f"agreeing of {need} needed" + (f"; never submitted: {', '.join(missing)}" if missing else ""))
        return
    canonical = next(r for r in results if r["node_id"] == min(agreeing[best]))
    for group, nodes in agreeing.items():
        for node in nodes:
            ctx.store.set_verdict(round_id, node, "agreed" if group == best else "outvoted")
            if group == best:
                ctx.store.credit(node, weights[node])
    blob = ctx.blobs.read(canonical["candidate"], 0, canonical["size"])
    _publish(ctx, round_["version"] + 1, round_["version"], blob, canonical["node_id"],
             int(sum(weights[p] for p in best)))
    consumed = [g for m in round_["members"] if m["node_id"] in best for g in m["group_ids"]]
    _close_round(ctx, round_, results, "published", consumed,
                 f"version {round_['version'] + 1} from {canonical['node_id'][-8:]}'s candidate; "
                 f"{len(agreeing[best])} of {len(round_['members'])} agreed")


def _close_round(ctx: RunContext, round_: dict, results: list[dict], state: str, consumed: list[int],
                 outcome: str) -> None:
    """Close the members' leases, consume the shards whose pseudo-gradients made the version and put
    every other shard back in the pool (the next round takes it while it is fresh enough), and
    delete the result blobs no version uses."""
    for member in round_["members"]:
        lease = ctx.store.lease(member["lease_id"])
        if lease.state == "active":
            ctx.store.close_lease(lease.lease_id, "dropped")
        ctx.store.set_node_status(member["node_id"], "idle")
    ctx.store.set_groups_state([g for g in round_["group_ids"] if g not in set(consumed)], "pool")
    for member in round_["members"]:
        used = [g for g in member["group_ids"] if g in set(consumed)]
        ctx.store.set_groups_state(used, "consumed", member["lease_id"])
    ctx.store.update_round(round_["round_id"], state, round_["members"], round_["group_ids"], outcome)
    ctx.store.event("round", f"round {round_['round_id'][:8]} {state}: {outcome}")
    live = {row["sha256"] for row in ctx.store.versions()}
    for digest in {r[key] for r in results for key in ("candidate", "delta")} - live:
        ctx.blobs.delete(digest)


def manifest(ctx: RunContext, request: pb.GetVersionRequest) -> pb.VersionManifest:
    version = ctx.store.current_version() if request.latest else request.version
    row = ctx.store.version(version)
    if row is None:
        raise not_found("unknown_version", f"no version {version}; the latest is {ctx.store.current_version()}")
    if not ctx.blobs.has(row["sha256"]):
        raise not_found("collected_version", f"version {version}'s bytes were garbage-collected")
    return pb.VersionManifest(manifest_json=row["manifest"], signature=row["signature"])
