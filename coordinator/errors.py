"""Errors the coordinator answers with: a gRPC status, a machine-readable reason, a message."""
from __future__ import annotations

import grpc


class RpcError(Exception):
    def __init__(self, code: grpc.StatusCode, reason: str, message: str) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message


def invalid(reason: str, message: str) -> RpcError:
    return RpcError(grpc.StatusCode.INVALID_ARGUMENT, reason, message)


def precondition(reason: str, message: str) -> RpcError:
    return RpcError(grpc.StatusCode.FAILED_PRECONDITION, reason, message)


def denied(reason: str, message: str) -> RpcError:
    return RpcError(grpc.StatusCode.PERMISSION_DENIED, reason, message)


def not_found(reason: str, message: str) -> RpcError:
    return RpcError(grpc.StatusCode.NOT_FOUND, reason, message)


def unauthenticated(reason: str, message: str) -> RpcError:
    return RpcError(grpc.StatusCode.UNAUTHENTICATED, reason, message)


def exhausted(reason: str, message: str) -> RpcError:
    return RpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, reason, message)
