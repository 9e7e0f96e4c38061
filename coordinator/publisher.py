"""Versions: creating version 0, vetting a trainer's result, and publishing it with a signed manifest."""
from __future__ import annotations

from protocol.checkpoint import Manifest, blob_layout, sha256_hex, sign_manifest
from protocol.v1 import coordinator_pb2 as pb

from .context import RunContext
from .errors import invalid, not_found, precondition
from .scheduler import held_lease
from .store import now_ms

COORDINATOR_TRAINER = "coordinator"


def _publish(ctx: RunContext, version: int, parent: int | None, blob: bytes, trainer: str,
             rollouts_used: int) -> None:
    """Inside a transaction: store the blob, sign its manifest, record the version."""
    digest = ctx.blobs.put(blob)
    manifest = Manifest(run=ctx.config.name, version=version, parent=parent, sha256=digest, size=len(blob),
                        base_model=ctx.config.model.name, created_ms=now_ms())
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
    try:
        layout = blob_layout(body.blob)
    except ValueError as exc:
        raise invalid("bad_blob", str(exc)) from None
    expected = blob_layout(ctx.blobs.read(parent["sha256"], 0, parent["size"]))
    if layout != expected:
        missing = sorted(set(expected) ^ set(layout))[:3]
        raise invalid("bad_blob", f"tensor names, shapes or dtypes differ from version {lease.version}: {missing}")

    group_ids = ctx.store.groups_of_train_lease(lease.lease_id)
    samples = len(ctx.store.training_samples(group_ids))
    with ctx.store.tx():
        _publish(ctx, lease.version + 1, lease.version, body.blob, node_id, samples)
        ctx.store.set_groups_state(group_ids, "consumed", lease.lease_id)
        ctx.store.close_lease(lease.lease_id, "done")
        credit = ctx.store.credit(node_id, float(samples))
        ctx.store.set_node_status(node_id, "idle")
    collect_garbage(ctx)
    ctx.notify()
    return pb.SubmitTrainingReply(published_version=lease.version + 1, credit=credit)


def manifest(ctx: RunContext, request: pb.GetVersionRequest) -> pb.VersionManifest:
    version = ctx.store.current_version() if request.latest else request.version
    row = ctx.store.version(version)
    if row is None:
        raise not_found("unknown_version", f"no version {version}; the latest is {ctx.store.current_version()}")
    if not ctx.blobs.has(row["sha256"]):
        raise not_found("collected_version", f"version {version}'s bytes were garbage-collected")
    return pb.VersionManifest(manifest_json=row["manifest"], signature=row["signature"])
