"""The coordinator's Watch stream as an endless async iterator that reconnects by itself.

It yields every SwarmSnapshot it receives and, each time the link drops or cannot be made, one
Disconnected saying why and when the next attempt starts; the app shows both and never has to
know about gRPC.
"""
from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from dataclasses import dataclass

import grpc

from protocol.channel import PLAINTEXT, ChannelError, Security, aio_channel
from protocol.v1 import coordinator_pb2 as pb
from protocol.v1 import coordinator_pb2_grpc as pb_grpc

# The coordinator pushes a snapshot at least every ~2 s, so a silent stream is a dead link
# (a frozen host or a dropped route gives no error of its own).
STALE_AFTER_S = 15.0


@dataclass(frozen=True)
class Disconnected:
    reason: str
    retry_at: float  # clock time of the next attempt


Update = pb.SwarmSnapshot | Disconnected


@dataclass(frozen=True)
class Backoff:
    first_s: float = 0.5
    max_s: float = 8.0
    jitter: float = 0.2  # spread, so a restarted coordinator is not hit by every viewer at once

    def delay(self, failures: int) -> float:
        base = min(self.max_s, self.first_s * 2 ** max(failures - 1, 0))
        return base * (1 + self.jitter * random.random())


async def watch(address: str, backoff: Backoff = Backoff(), clock: Callable[[], float] = time.monotonic,
                security: Security = PLAINTEXT) -> AsyncGenerator[Update, None]:
    failures = 0
    while True:
        try:
            async with aclosing(_stream(address, security)) as stream:
                async for snapshot in stream:
                    failures = 0
                    yield snapshot
            reason = "the coordinator closed the stream"
        except grpc.aio.AioRpcError as err:
            # gRPC's details nest causes ("failed to connect …; last error: …: Connection refused");
            # the innermost one is what a person needs, and it fits the status line.
            reason = f"{err.code().name.lower()}: {(err.details() or '').rsplit(': ', 1)[-1]}"
        except asyncio.TimeoutError:
            reason = f"no update for {STALE_AFTER_S:g}s"
        except ChannelError as err:  # a pinned fingerprint that does not match, an unreadable CA
            reason = str(err)
        failures += 1
        delay = backoff.delay(failures)
        yield Disconnected(reason, clock() + delay)
        await asyncio.sleep(delay)


async def _stream(address: str, security: Security) -> AsyncGenerator[pb.SwarmSnapshot, None]:
    if security.fingerprint:
        # Pinning fetches the certificate with a blocking handshake: try it off the event loop first,
        # so an unreachable or impostor host does not freeze the view (grpc's aio channel itself must
        # be made on the loop's thread; its own fetch then finds the host answering).
        await asyncio.to_thread(security.credentials, address)
    async with aio_channel(address, security) as channel:
        call = pb_grpc.CoordinatorStub(channel).Watch(pb.WatchRequest())
        while True:
            snapshot = await asyncio.wait_for(call.read(), STALE_AFTER_S)
            if snapshot is grpc.aio.EOF:
                return
            yield snapshot
