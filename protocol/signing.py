"""Signed requests: what a node signs, and how the coordinator checks it.

The signature covers a domain tag, the RPC method, the node id, the nonce and the exact body bytes,
so a signature for one call cannot be replayed against another method, node or body.
"""
from __future__ import annotations

import time

from google.protobuf.message import Message

from .identity import Identity
from .v1 import coordinator_pb2 as pb

DOMAIN = b"potluck/v1\x00"


def signing_payload(method: str, node_id: str, nonce: int, body: bytes) -> bytes:
    return b"".join([DOMAIN, method.encode(), b"\x00", node_id.encode(), b"\x00",
                     nonce.to_bytes(8, "big"), body])


class NonceClock:
    """Strictly increasing nonces that stay increasing across restarts: wall-clock microseconds,
    bumped past the last one issued."""

    def __init__(self) -> None:
        self._last = 0

    def next(self) -> int:
        self._last = max(self._last + 1, time.time_ns() // 1000)
        return self._last


def admin_method(method: str) -> str:
    """The name an Admin call is signed under, so no node's signature can stand in for an admin's."""
    return f"admin.{method}"


def nonce_skew_s(nonce: int, now_s: float | None = None) -> float:
    """How far (in seconds) a NonceClock nonce's wall-clock time is from now: a coordinator refuses
    requests too far either way, so a captured request cannot be replayed against a later run state
    and a node with a broken clock learns it at once."""
    return nonce / 1e6 - (time.time() if now_s is None else now_s)


def sign_request(identity: Identity, clock: NonceClock, method: str, body: Message) -> pb.SignedRequest:
    raw = body.SerializeToString()
    nonce = clock.next()
    signature = identity.sign(signing_payload(method, identity.node_id, nonce, raw))
    return pb.SignedRequest(node_id=identity.node_id, nonce=nonce, body=raw, signature=signature)
