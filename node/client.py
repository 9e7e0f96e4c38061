"""The node's gRPC client: signs every state-changing call, retries while the coordinator is away."""
from __future__ import annotations

import asyncio
import logging

import grpc
from google.protobuf.message import Message

from protocol.channel import PLAINTEXT, Security, aio_channel
from protocol.identity import Identity
from protocol.signing import NonceClock, sign_request
from protocol.v1 import coordinator_pb2_grpc as pb_grpc

log = logging.getLogger("potluck.node")
# UNAVAILABLE: the coordinator is away (restarting, unreachable); RESOURCE_EXHAUSTED with reason
# rate_limited: this node is calling too fast, so it slows down.
RETRY_CODES = (grpc.StatusCode.UNAVAILABLE,)
RETRY_REASONS = ("rate_limited", "too_many_streams")
MAX_BACKOFF_S = 10.0


def error_reason(err: grpc.aio.AioRpcError) -> str:
    """The coordinator's machine-readable reason for an error, or '' if it gave none."""
    for key, value in err.trailing_metadata() or ():
        if key == "potluck-reason":
            return value
    return ""


def banned(err: grpc.aio.AioRpcError) -> bool:
    """Whether the coordinator refused a call because the run's host banned this node: every later
    call would be refused the same way, so the node stops instead of retrying."""
    return error_reason(err) == "banned"


class CoordinatorClient:
    def __init__(self, address: str, identity: Identity, security: Security = PLAINTEXT,
                 join_token: str = "") -> None:
        self.address = address
        self.identity = identity
        self.join_token = join_token  # sent with every Register, when the run requires one
        self.channel = aio_channel(address, security)
        self.stub = pb_grpc.CoordinatorStub(self.channel)
        self.clock = NonceClock()
        # Nonces must reach the coordinator in the order they were issued, so calls from one node
        # (work and heartbeats) are signed and sent one at a time.
        self._in_order = asyncio.Lock()

    async def call(self, method: str, body: Message, timeout: float = 60.0, retry: bool = True):
        """Sign and send; while the coordinator is unreachable, retry with backoff (each try signed
        afresh, so its nonce is new)."""
        backoff = 0.5
        while True:
            try:
                async with self._in_order:
                    request = sign_request(self.identity, self.clock, method, body)
                    return await getattr(self.stub, method)(request, timeout=timeout)
            except grpc.aio.AioRpcError as err:
                if not retry or (err.code() not in RETRY_CODES and error_reason(err) not in RETRY_REASONS):
                    raise
                log.warning("coordinator %s unreachable (%s); retrying in %.1fs", self.address,
                            err.details(), backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)

    async def close(self) -> None:
        await self.channel.close()
