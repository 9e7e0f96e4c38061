"""The Admin service: pause, resume, ban, unban and export, for the holder of the admin key.

The admin key is the coordinator's own key (DATA/coordinator.key): whoever can read the run's data
dir already holds everything, so no second secret is needed. Requests are signed like a node's (the
method name is prefixed `admin.` in the signed bytes, so no node signature can stand in for one),
with a nonce that must increase and lie within the clock window.
"""
from __future__ import annotations

import json

from google.protobuf.message import Message

from protocol.identity import public_key_of, verify
from protocol.signing import admin_method, signing_payload
from protocol.v1 import admin_pb2 as apb
from protocol.v1 import admin_pb2_grpc as apb_grpc
from protocol.v1 import coordinator_pb2 as pb

from . import limits
from .context import RunContext
from .errors import denied, invalid, not_found, unauthenticated
from .scheduler import release
from .store import now_ms

ADMIN_NONCE_KEY = "admin_nonce"
EXPORT_EVENTS = 200


class AdminService(apb_grpc.AdminServicer):
    def __init__(self, ctx: RunContext, run) -> None:
        self.ctx = ctx
        self._run = run  # CoordinatorService._run: statuses, reasons, metrics, logs

    def _authenticate(self, method: str, request: pb.SignedRequest, body_type: type[Message]) -> Message:
        limits.check_body_size(method, request.body)
        admin = self.ctx.identity
        if request.node_id != admin.node_id:
            raise denied("not_admin", "admin calls must be signed with the coordinator's key (DATA/coordinator.key)")
        payload = signing_payload(admin_method(method), request.node_id, request.nonce, request.body)
        if not verify(admin.public_key, payload, request.signature):
            raise unauthenticated("bad_signature", "the admin signature does not verify")
        limits.check_nonce_time(request.nonce, self.ctx.config.admission.clock_skew_seconds)
        with self.ctx.store.tx():
            last = int(self.ctx.store.get_meta(ADMIN_NONCE_KEY) or 0)
            if request.nonce <= last:
                raise unauthenticated("replayed_nonce", f"admin nonce {request.nonce} is not greater than {last}")
            self.ctx.store.set_meta(ADMIN_NONCE_KEY, str(request.nonce))
        return limits.parse_body(method, request.body, body_type)

    def _set_paused(self, method: str, request: pb.SignedRequest, paused: bool) -> apb.AdminReply:
        body = self._authenticate(method, request, apb.PauseBody)
        with self.ctx.store.tx():
            self.ctx.store.set_meta("paused", "1" if paused else "0")
            why = f": {body.reason}" if body.reason else ""
            self.ctx.store.event("admin", f"run {'paused' if paused else 'resumed'}{why}")
        self.ctx.notify()
        return apb.AdminReply(message=f"run {self.ctx.config.name!r} {'paused' if paused else 'resumed'}")

    def _ban(self, request: pb.SignedRequest) -> apb.AdminReply:
        body = self._authenticate("Ban", request, apb.BanBody)
        _check_node_id(body.node_id)
        leases = self.ctx.store.active_leases(node_id=body.node_id)
        with self.ctx.store.tx():
            self.ctx.store.ban(body.node_id, body.reason)
            for lease in leases:
                release(self.ctx, lease, "returned")
            if self.ctx.store.node(body.node_id) is not None:
                self.ctx.store.set_node_status(body.node_id, "banned")
            self.ctx.store.event("admin", f"{body.node_id[-8:]} banned{': ' + body.reason if body.reason else ''}")
        self.ctx.notify()
        return apb.AdminReply(message=f"banned {body.node_id}; {len(leases)} lease(s) given back")

    def _unban(self, request: pb.SignedRequest) -> apb.AdminReply:
        body = self._authenticate("Unban", request, apb.BanBody)
        _check_node_id(body.node_id)
        with self.ctx.store.tx():
            if not self.ctx.store.unban(body.node_id):
                raise not_found("not_banned", f"node {body.node_id} is not banned")
            self.ctx.store.event("admin", f"{body.node_id[-8:]} unbanned")
        self.ctx.notify()
        return apb.AdminReply(message=f"unbanned {body.node_id}")

    def _export(self, request: pb.SignedRequest) -> apb.ExportReply:
        self._authenticate("Export", request, apb.ExportBody)
        return apb.ExportReply(state_json=json.dumps(export_state(self.ctx), sort_keys=True))

    async def Pause(self, request, context):
        return await self._run(context, "Pause", self._set_paused, "Pause", request, True)

    async def Resume(self, request, context):
        return await self._run(context, "Resume", self._set_paused, "Resume", request, False)

    async def Ban(self, request, context):
        return await self._run(context, "Ban", self._ban, request)

    async def Unban(self, request, context):
        return await self._run(context, "Unban", self._unban, request)

    async def Export(self, request, context):
        return await self._run(context, "Export", self._export, request)


def _check_node_id(node_id: str) -> None:
    try:
        public_key_of(node_id)
    except ValueError as exc:
        raise invalid("bad_node_id", str(exc)) from None


def export_state(ctx: RunContext) -> dict:
    """The run's state as plain data: config, nodes, versions, active leases, bans, pool, events."""
    store = ctx.store
    node_keys = ("node_id", "name", "role", "state", "credit", "rollouts_accepted", "rollouts_rejected",
                 "tokens_generated", "registered_ms", "last_seen_ms")
    version_keys = ("version", "parent", "sha256", "size", "created_ms", "trainer", "rollouts_used",
                    "eval_accuracy")
    return {
        "run": ctx.config.model_dump(mode="json"),
        "server_time_ms": now_ms(),
        "paused": store.paused(),
        "current_version": store.current_version(),
        "nodes": [{k: row[k] for k in node_keys} | {"role": pb.Role.Name(row["role"])[5:].lower()}
                  for row in store.nodes()],
        "versions": [{k: row[k] for k in version_keys} for row in store.versions()],
        "leases": [{"lease_id": lease.lease_id, "node_id": lease.node_id, "kind": lease.kind,
                    "version": lease.version, "deadline_ms": lease.deadline_ms}
                   for lease in store.active_leases()],
        "bans": [{"node_id": row["node_id"], "reason": row["reason"], "time_ms": row["time_ms"]}
                 for row in store.bans()],
        "groups": store.group_counts(),
        "events": [{"time_ms": row["time_ms"], "kind": row["kind"], "text": row["text"]}
                   for row in store.recent_events(EXPORT_EVENTS)],
    }
