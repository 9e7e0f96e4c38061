"""Signed calls from test code: a node with its own key and nonce clock, and refusal checks."""
from __future__ import annotations

import grpc
import pytest

from protocol.identity import Identity
from protocol.signing import NonceClock, sign_request
from protocol.v1 import coordinator_pb2 as pb


class Node:
    def __init__(self, stub, role=pb.ROLE_INFERENCE, join_token: str = "", identity: Identity | None = None,
                 hardware: pb.Hardware | None = None):
        self.stub, self.identity, self.clock = stub, identity or Identity.generate(), NonceClock()
        self.register_reply = self.call("Register", pb.RegisterBody(public_key=self.identity.public_key, role=role,
                                                                    join_token=join_token, hardware=hardware))

    def sign(self, method, body):
        return sign_request(self.identity, self.clock, method, body)

    def call(self, method, body):
        return getattr(self.stub, method)(self.sign(method, body))


class SkewedClock(NonceClock):
    """The nonces of a machine whose clock is off by offset_s seconds."""

    def __init__(self, offset_s: float) -> None:
        super().__init__()
        self.offset_us = int(offset_s * 1e6)

    def next(self) -> int:
        return super().next() + self.offset_us


def reason_of(err: grpc.RpcError) -> str | None:
    return dict(err.trailing_metadata() or ()).get("potluck-reason")


def refused(call, code, reason):
    with pytest.raises(grpc.RpcError) as info:
        call()
    err = info.value
    assert err.code() == code, err.details()
    assert reason_of(err) == reason, err.details()
    return err
