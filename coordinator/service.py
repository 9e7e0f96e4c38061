"""The gRPC service: authenticate each signed request, dispatch it, map errors to statuses.

Checks, in order: the node id is well formed, the node is known (Register excepted), the body is
within its RPC's size cap, the signature verifies over the exact body bytes, the node is not banned,
it is within its rate limit, the nonce's time is within the clock window of the server's, the nonce
is fresh, the body parses, its fields pass coordinator/limits.py's rules. Each failure is answered
with its own status and a `potluck-reason` trailer; the server never drops a connection for it.
"""
from __future__ import annotations

import asyncio
import logging
import time

import grpc
from google.protobuf.message import Message

from protocol.config import HOST_ONLY
from protocol.identity import public_key_of, verify
from protocol.signing import signing_payload
from protocol.v1 import coordinator_pb2 as pb
from protocol.v1 import coordinator_pb2_grpc as pb_grpc

from . import admission, intake, limits, publisher, roles, scheduler, verdicts
from .context import RunContext
from .errors import RpcError, denied, exhausted, invalid, precondition, unauthenticated
from .metrics import Metrics
from .ratelimit import TokenBuckets
from .snapshot import RateMeter, build_snapshot
from .store import now_ms
from .tracker import Tracker

log = logging.getLogger("potluck.coordinator")
CHUNK_BYTES = 1 << 20
WATCH_REFRESH_S = 2.0


class CoordinatorService(pb_grpc.CoordinatorServicer):
    def __init__(self, ctx: RunContext, metrics: Metrics) -> None:
        self.ctx = ctx
        self.metrics = metrics
        self.meter = RateMeter()
        self.rates = TokenBuckets(ctx.config.limits.rate_per_s, ctx.config.limits.burst)
        self.streams = limits.StreamGate(ctx.config.limits.max_streams)
        self.tracker = Tracker(max(3 * ctx.config.heartbeat_seconds, 15.0))
        self.training_cap = limits.training_body_cap(ctx.store.version(0)["size"])

    async def _run(self, context: grpc.aio.ServicerContext, method: str, handler, *args):
        """Answer with handler's reply, or with the status its RpcError names; a bug becomes
        INTERNAL with no stack trace for the caller (it goes to the log)."""
        started, code = time.perf_counter(), grpc.StatusCode.OK
        try:
            return handler(*args)
        except RpcError as err:
            code = err.code
            self.metrics.refused(method, err.reason)
            log.info("refused %s: %s", method, err.message,
                     extra={"rpc": method, "code": code.name, "reason": err.reason})
            await context.abort(err.code, err.message, trailing_metadata=(("potluck-reason", err.reason),))
        except Exception:
            log.exception("%s failed", method)
            code = grpc.StatusCode.INTERNAL
            await context.abort(code, f"{method} failed inside the coordinator",
                                trailing_metadata=(("potluck-reason", "internal"),))
        finally:
            self.metrics.observe(method, code.name, time.perf_counter() - started)

    def _authenticate(self, method: str, request: pb.SignedRequest, body_type: type[Message],
                      register: bool = False) -> tuple[str, Message]:
        node_id = request.node_id
        try:
            key = public_key_of(node_id)
        except ValueError as exc:
            raise invalid("bad_node_id", str(exc)) from None
        row = self.ctx.store.node(node_id)
        if row is None and not register:
            raise precondition("unknown_node", f"node {node_id} is not registered; call Register first")
        limits.check_body_size(method, request.body, self.training_cap if method == "SubmitTraining" else None)
        if not verify(key, signing_payload(method, node_id, request.nonce, request.body), request.signature):
            raise unauthenticated("bad_signature", f"signature does not verify for node {node_id}")
        if self.ctx.store.banned(node_id):
            raise denied("banned", f"node {node_id} is banned from this run")
        wait = self.rates.take(node_id)
        if wait > 0:
            raise exhausted("rate_limited", f"node {node_id} exceeds {self.ctx.config.limits.rate_per_s:g} "
                                            f"calls/s; retry in {wait:.2f}s")
        limits.check_nonce_time(request.nonce, self.ctx.config.admission.clock_skew_seconds)
        if row is not None and not self.ctx.store.claim_nonce(node_id, request.nonce):
            raise unauthenticated("replayed_nonce", f"nonce {request.nonce} is not greater than the last one "
                                                    f"seen from {node_id} (replayed or stale request)")
        return node_id, limits.parse_body(method, request.body, body_type)

    def _role(self, node_id: str, role: int) -> None:
        if self.ctx.store.node(node_id)["role"] != role:
            raise denied("wrong_role", f"node {node_id} does not hold the {pb.Role.Name(role)} role")
        if self.ctx.store.node(node_id)["quarantined"]:
            raise denied("quarantined", f"node {node_id} failed a verification check and gets no more work")

    # --- signed, state-changing calls ---

    def _register(self, request: pb.SignedRequest) -> pb.RegisterReply:
        node_id, body = self._authenticate("Register", request, pb.RegisterBody, register=True)
        if body.public_key != public_key_of(node_id):
            raise invalid("key_mismatch", "body.public_key is not the key of node_id")
        rules = self.ctx.config.admission
        admission.check_token(rules, body.join_token)
        known = self.ctx.store.node(node_id)
        credit = known["credit"] if known is not None else 0.0
        role = body.role
        if role == pb.ROLE_UNSPECIFIED:
            choice = roles.auto_role(self.ctx, node_id, credit, body.hardware)
            role = choice.role
            log.info("node %s gets role %s: %s", node_id[-8:], pb.Role.Name(role)[5:].lower(), choice.reason)
        admission.check_role(rules, role, node_id, credit)
        name = body.name or node_id[-8:]
        with self.ctx.store.tx():
            fresh = self.ctx.store.node(node_id) is None
            self.ctx.store.upsert_node(node_id, body.public_key, name, role, body.hardware.SerializeToString(),
                                       auto_role=body.role == pb.ROLE_UNSPECIFIED)
            self.ctx.store.claim_nonce(node_id, request.nonce)
            self.ctx.store.event("join", f"{name} ({node_id[-8:]}) {'joined' if fresh else 'rejoined'} "
                                         f"as {pb.Role.Name(role)[5:].lower()}")
        self.ctx.notify()
        return pb.RegisterReply(
            node_id=node_id, role=role, run_name=self.ctx.config.name,
            run_config_json=self.ctx.config.model_dump_json(exclude=HOST_ONLY),
            coordinator_public_key=self.ctx.identity.public_key,
            heartbeat_interval_ms=int(self.ctx.heartbeat_interval_s() * 1000), server_time_ms=now_ms(),
            current_version=self.ctx.store.current_version())

    def _heartbeat(self, request: pb.SignedRequest) -> pb.HeartbeatReply:
        node_id, body = self._authenticate("Heartbeat", request, pb.HeartbeatBody)
        self.ctx.store.record_heartbeat(node_id, body.state[:32] or "idle", max(0.0, body.tokens_per_s),
                                        body.holding_version if body.HasField("holding_version") else None)
        self.tracker.heard(node_id, body.holding_version if body.HasField("holding_version") else None)
        moved = roles.rebalance(self.ctx, node_id)
        return pb.HeartbeatReply(current_version=self.ctx.store.current_version(), server_time_ms=now_ms(),
                                 heartbeat_interval_ms=int(self.ctx.heartbeat_interval_s() * 1000),
                                 role=self.ctx.store.node(node_id)["role"], role_reason=moved.reason if moved else "")

    def _lease_rollouts(self, request: pb.SignedRequest) -> pb.RolloutLease:
        node_id, body = self._authenticate("LeaseRollouts", request, pb.LeaseRolloutsBody)
        roles.rebalance(self.ctx, node_id)  # asking for work, it holds none: the moment to move it if need be
        self._role(node_id, pb.ROLE_INFERENCE)
        return scheduler.lease_rollouts(self.ctx, node_id, body.max_prompts)

    def _submit_rollouts(self, request: pb.SignedRequest) -> pb.SubmitRolloutsReply:
        node_id, body = self._authenticate("SubmitRollouts", request, pb.SubmitRolloutsBody)
        return intake.submit_rollouts(self.ctx, node_id, body)

    def _lease_training(self, request: pb.SignedRequest) -> pb.TrainingLease:
        node_id, body = self._authenticate("LeaseTraining", request, pb.LeaseTrainingBody)
        roles.rebalance(self.ctx, node_id)  # between rounds, before it joins the next one
        self._role(node_id, pb.ROLE_TRAINER)
        publisher.settle_rounds(self.ctx)  # a round may be decidable now that a lease has expired
        return scheduler.lease_training(self.ctx, node_id, list(body.p2p_maddrs))

    def _submit_training(self, request: pb.SignedRequest) -> pb.SubmitTrainingReply:
        node_id, body = self._authenticate("SubmitTraining", request, pb.SubmitTrainingBody)
        return publisher.submit_training(self.ctx, node_id, body)

    def _lease_verification(self, request: pb.SignedRequest) -> pb.VerificationLease:
        node_id, body = self._authenticate("LeaseVerification", request, pb.LeaseVerificationBody)
        self._role(node_id, pb.ROLE_VALIDATOR)
        return verdicts.lease_jobs(self.ctx, node_id, min(body.max_tokens or verdicts.MAX_JOB_TOKENS,
                                                          verdicts.MAX_JOB_TOKENS))

    def _submit_verdicts(self, request: pb.SignedRequest) -> pb.SubmitVerdictsReply:
        node_id, body = self._authenticate("SubmitVerdicts", request, pb.SubmitVerdictsBody)
        self._role(node_id, pb.ROLE_VALIDATOR)
        recorded = verdicts.record_verdicts(self.ctx, node_id, body.lease_id, list(body.verdicts))
        return pb.SubmitVerdictsReply(recorded=recorded, credit=self.ctx.store.node(node_id)["credit"])

    def _return_leases(self, request: pb.SignedRequest) -> pb.ReturnLeasesReply:
        node_id, _ = self._authenticate("ReturnLeases", request, pb.ReturnLeasesBody)
        return pb.ReturnLeasesReply(returned=scheduler.return_leases(self.ctx, node_id))

    def _report_out_of_memory(self, request: pb.SignedRequest) -> pb.ReportOutOfMemoryReply:
        node_id, body = self._authenticate("ReportOutOfMemory", request, pb.ReportOutOfMemoryBody)
        cap = scheduler.out_of_memory(self.ctx, node_id, body)
        roles.after_running_out(self.ctx, node_id)
        return pb.ReportOutOfMemoryReply(max_prompts=cap, role=self.ctx.store.node(node_id)["role"])

    def _find_peers(self, request: pb.SignedRequest) -> pb.FindPeersReply:
        node_id, body = self._authenticate("FindPeers", request, pb.FindPeersBody)
        publisher.manifest(self.ctx, pb.GetVersionRequest(version=body.version))  # NOT_FOUND if no bytes
        return self.tracker.find_peers(node_id, body, self._in_run)

    def _in_run(self, node_id: str) -> bool:
        row = self.ctx.store.node(node_id)
        return row is not None and row["state"] != "left" and not self.ctx.store.banned(node_id)

    async def Register(self, request, context):
        return await self._run(context, "Register", self._register, request)

    async def Heartbeat(self, request, context):
        return await self._run(context, "Heartbeat", self._heartbeat, request)

    async def LeaseRollouts(self, request, context):
        return await self._run(context, "LeaseRollouts", self._lease_rollouts, request)

    async def SubmitRollouts(self, request, context):
        return await self._run(context, "SubmitRollouts", self._submit_rollouts, request)

    async def LeaseTraining(self, request, context):
        return await self._run(context, "LeaseTraining", self._lease_training, request)

    async def SubmitTraining(self, request, context):
        return await self._run(context, "SubmitTraining", self._submit_training, request)

    async def LeaseVerification(self, request, context):
        return await self._run(context, "LeaseVerification", self._lease_verification, request)

    async def SubmitVerdicts(self, request, context):
        return await self._run(context, "SubmitVerdicts", self._submit_verdicts, request)

    async def ReturnLeases(self, request, context):
        return await self._run(context, "ReturnLeases", self._return_leases, request)

    async def ReportOutOfMemory(self, request, context):
        return await self._run(context, "ReportOutOfMemory", self._report_out_of_memory, request)

    async def FindPeers(self, request, context):
        return await self._run(context, "FindPeers", self._find_peers, request)

    # --- read-only calls ---

    async def GetVersion(self, request, context):
        return await self._run(context, "GetVersion", self._get_version, request)

    def _get_version(self, request: pb.GetVersionRequest) -> pb.VersionManifest:
        limits.check_fields(request)
        return publisher.manifest(self.ctx, request)

    async def _stream(self, context: grpc.aio.ServicerContext, method: str, items):
        """A server stream within the stream cap; its errors answered as _run answers a call's."""
        try:
            with self.streams.admit(method):
                async for item in items:
                    yield item
        except RpcError as err:
            self.metrics.refused(method, err.reason)
            await context.abort(err.code, err.message, trailing_metadata=(("potluck-reason", err.reason),))
        except grpc.aio.AbortError:
            raise
        except Exception:
            log.exception("%s failed", method)
            await context.abort(grpc.StatusCode.INTERNAL, f"{method} failed inside the coordinator",
                                trailing_metadata=(("potluck-reason", "internal"),))

    async def FetchVersion(self, request, context):
        async for chunk in self._stream(context, "FetchVersion", self._fetch_version(request, context)):
            yield chunk

    async def _fetch_version(self, request, context):
        limits.check_fields(request)
        row = self.ctx.store.version(request.version)
        if row is None or not self.ctx.blobs.has(row["sha256"]):
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no bytes for version {request.version}",
                                trailing_metadata=(("potluck-reason", "unknown_version"),))
        if request.offset > row["size"]:
            await context.abort(grpc.StatusCode.OUT_OF_RANGE, f"offset {request.offset} > size {row['size']}",
                                trailing_metadata=(("potluck-reason", "bad_offset"),))
        offset = request.offset
        end = min(row["size"], offset + request.length) if request.length else row["size"]
        while offset < end:
            data = self.ctx.blobs.read(row["sha256"], offset, min(CHUNK_BYTES, end - offset))
            self.metrics.version_bytes.inc(len(data))
            yield pb.Chunk(offset=offset, data=data, total_size=row["size"])
            offset += len(data)

    async def Watch(self, request, context):
        async for snapshot in self._stream(context, "Watch", self._watch()):
            yield snapshot

    async def _watch(self):
        with self.ctx.changes.subscribe() as changed:
            while not self.ctx.changes.closed:
                changed.clear()
                yield build_snapshot(self.ctx, self.meter)
                try:
                    await asyncio.wait_for(changed.wait(), WATCH_REFRESH_S)
                except asyncio.TimeoutError:
                    pass
                await asyncio.sleep(0.2)  # coalesce bursts of changes into one snapshot
