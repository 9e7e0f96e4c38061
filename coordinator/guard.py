"""Requests that do not even parse: gRPC would answer UNKNOWN with the parser's exception text. This
interceptor wraps every method's deserializer (of every service, present and future) so such a
request gets INVALID_ARGUMENT and the reason `malformed_request` instead."""
from __future__ import annotations

from dataclasses import dataclass

import grpc

REASON = (("potluck-reason", "malformed_request"),)


@dataclass(frozen=True)
class Malformed:
    error: str


def _tolerant(parse):
    def deserialize(raw: bytes):
        try:
            return parse(raw)
        except Exception as exc:  # DecodeError, and whatever else a parser may raise on hostile bytes
            return Malformed(type(exc).__name__)
    return deserialize


async def _refuse(context, method: str, request: Malformed) -> None:
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                        f"{method}: the request is not a valid protobuf message ({request.error})",
                        trailing_metadata=REASON)


class DecodeGuard(grpc.aio.ServerInterceptor):
    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or handler.request_deserializer is None:
            return handler
        method = details.method.rsplit("/", 1)[-1]
        options = {"request_deserializer": _tolerant(handler.request_deserializer),
                   "response_serializer": handler.response_serializer}
        if handler.unary_unary is not None:
            inner = handler.unary_unary

            async def unary(request, context):
                if isinstance(request, Malformed):
                    return await _refuse(context, method, request)
                return await inner(request, context)
            return grpc.unary_unary_rpc_method_handler(unary, **options)
        if handler.unary_stream is not None:
            inner_stream = handler.unary_stream

            async def stream(request, context):
                if isinstance(request, Malformed):
                    await _refuse(context, method, request)
                    return
                async for item in inner_stream(request, context):
                    yield item
            return grpc.unary_stream_rpc_method_handler(stream, **options)
        return handler  # no client-streaming RPCs exist; they would keep gRPC's own handling
