"""`potluck node join`: identity, registration, the role's work loop, heartbeats, a clean exit."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import grpc
import torch

from protocol import __version__
from protocol.channel import PLAINTEXT, Security
from protocol.checkpoint import ManifestError
from protocol.config import RunConfig
from protocol.identity import Identity
from protocol.policy import load_policy, load_tokenizer
from protocol.v1 import coordinator_pb2 as pb

from .client import CoordinatorClient, banned, error_reason
from .hardware import MODEL_LOADING, pick_device, probe
from .seat import Parts, Seat, role_name
from .status import NodeStatus, Progress, ReportingClient
from .p2p import LOOPBACK
from .seeding import VersionPlane
from .versions import VersionLoader

log = logging.getLogger("potluck.node")
T = TypeVar("T")
REFUSED_BACKOFF_S = 1.0
MIRROR_INTERVAL_S = 0.5  # how often the worker's state and rate are copied to the NodeStatus
ROLES = {"auto": pb.ROLE_UNSPECIFIED, "inference": pb.ROLE_INFERENCE, "trainer": pb.ROLE_TRAINER,
         "validator": pb.ROLE_VALIDATOR}


async def _heartbeat(client: CoordinatorClient, seat: Seat) -> pb.HeartbeatReply:
    reply = await client.call("Heartbeat", pb.HeartbeatBody(
        state=seat.state, tokens_per_s=seat.tokens_per_s, holding_version=seat.parts.loader.version), timeout=10)
    seat.assign(reply.role, reply.role_reason)  # a move between rounds (coordinator/roles.py)
    return reply


async def _heartbeats(client: CoordinatorClient, seat: Seat, interval_s: float) -> None:
    while True:
        await asyncio.sleep(interval_s)
        try:
            reply = await _heartbeat(client, seat)
            interval_s = reply.heartbeat_interval_ms / 1000 or interval_s  # the coordinator may stretch it
        except grpc.aio.AioRpcError as err:
            if banned(err):
                raise  # the heartbeats end, which stops the node (join)
            log.warning("heartbeat failed: %s", err.details())


async def _mirror(status: NodeStatus, seat: Seat) -> None:
    # The workers keep their state and rate on themselves; the view reads only the NodeStatus.
    while True:
        status.state, status.tokens_per_s = seat.state, seat.tokens_per_s
        status.held_version = seat.parts.loader.version
        await asyncio.sleep(MIRROR_INTERVAL_S)


async def _register(client: CoordinatorClient, identity: Identity, role: int, hardware: pb.Hardware,
                    name: str) -> pb.RegisterReply:
    return await client.call("Register", pb.RegisterBody(public_key=identity.public_key, role=role,
                                                         hardware=hardware, software_version=__version__,
                                                         name=name, join_token=client.join_token))


async def join(address: str, role: str, device: str, home: Path, name: str,
               status: NodeStatus | None = None, stop: asyncio.Event | None = None,
               security: Security = PLAINTEXT, join_token: str = "", p2p_listen: tuple[str, ...] = (LOOPBACK,)) -> int:
    """Work for the run until stop is set (SIGINT/SIGTERM set it too), then return the leases held;
    if the coordinator bans the node, raise its refusal instead. status, if given, follows along."""
    status = NodeStatus(address) if status is None else status
    stop = asyncio.Event() if stop is None else stop
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    identity = Identity.load_or_create(home / "identity.key")
    status.node_id, status.name, status.state = identity.node_id, name, "registering"
    device = pick_device(device)
    status.state = "measuring speed"  # a few forward passes of the tiny model, remembered for a day
    hardware = await asyncio.to_thread(probe, device, home)
    client = ReportingClient(address, identity, status, security, join_token)
    # Stopping during set-up (a coordinator still unreachable, a model loading) holds no lease yet.
    ready = await _unless_stopped(_set_up(client, identity, ROLES[role], hardware, name, device, home, status,
                                          p2p_listen), stop)
    if ready is None:
        log.info("stopped before starting work")
        await client.close()
        return 0
    seat, heartbeat_s = ready
    heartbeat = asyncio.create_task(_heartbeats(client, seat, heartbeat_s))  # it ends by itself on a ban
    mirror = asyncio.create_task(_mirror(status, seat))
    was_banned = False
    try:
        while not stop.is_set() and not heartbeat.done():
            await _unless_stopped(_work_once(client, seat, identity, ROLES[role], hardware, name), stop, heartbeat)
        if heartbeat.done():
            heartbeat.result()  # raises the ban it heard
    except grpc.aio.AioRpcError as err:  # a ban: node/cli.py says so and exits with 2
        was_banned = banned(err)
        raise
    finally:
        heartbeat.cancel()
        mirror.cancel()
        status.state, status.progress = "leaving", None
        if not was_banned:  # the ban took the leases back already, and would refuse the call
            await _return_leases(client)
        await client.close()
        await seat.close()
        await seat.parts.loader.plane.close()
    return 0


async def _return_leases(client: CoordinatorClient) -> None:
    try:
        returned = await client.call("ReturnLeases", pb.ReturnLeasesBody(reason="node leaving"), timeout=5,
                                     retry=False)
        log.info("left the run; returned %d lease(s)", returned.returned)
    except grpc.aio.AioRpcError as err:
        log.warning("could not return leases: %s", err.details())


async def _set_up(client: ReportingClient, identity: Identity, role: int, hardware: pb.Hardware, name: str,
                  device: str, home: Path, status: NodeStatus,
                  p2p_listen: tuple[str, ...] = (LOOPBACK,)) -> tuple[Seat, float]:
    """Register, load the model and make the role's worker: (its seat, the heartbeat interval in s)."""
    reply = await _register(client, identity, role, hardware, name)
    config = RunConfig.model_validate_json(reply.run_config_json)
    status.role, status.run_name = role_name(reply.role), reply.run_name
    log.info("joined run %r at %s as node %s, role %s", reply.run_name, client.address, identity.node_id,
             status.role)

    status.state, status.progress = "loading model", Progress(f"loading {config.model.name}")
    # Threads, so the event loop (and a view on it) keeps going while the weights load.
    model = await asyncio.to_thread(_load_model, config, device)
    tokenizer = await asyncio.to_thread(load_tokenizer, config.model.name)
    status.progress = None
    # Every node serves the versions it holds to the others (node/seeding.py); a trainer also
    # all-reduces through the same hivemind peer.
    plane = await VersionPlane.open(identity, home, p2p_listen)
    loader = VersionLoader(client, reply.coordinator_public_key, home / "versions", model, status.fetching, plane)
    seat = Seat(Parts(client, identity, home, config, tokenizer, loader), status)
    seat.assign(reply.role)
    await seat.switch()
    return seat, reply.heartbeat_interval_ms / 1000


def _load_model(config: RunConfig, device: str):
    with MODEL_LOADING:  # not while another node in this process loads or measures (node/hardware.py)
        return load_policy(config, device)


async def _unless_stopped(coro: Coroutine[Any, Any, T], stop: asyncio.Event,
                          ending: asyncio.Task | None = None) -> T | None:
    """coro's result, or None if stop was set or ending ended first (coro is then cancelled); its
    errors propagate."""
    task = asyncio.create_task(coro)
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({task, stopping} | ({ending} if ending else set()), return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if not task.done():
        task.cancel()
        return None
    return task.result()


async def _work_once(client, seat: Seat, identity, role, hardware, name) -> None:
    """One unit of work, in the role the coordinator assigned last (a move happens only between
    units). A refused call costs that unit only: the node says why and goes on (a ban stops it)."""
    try:
        await seat.switch()
        await seat.worker.step()
        return
    except grpc.aio.AioRpcError as err:
        reason = error_reason(err) or err.code().name.lower()
        if reason == "unknown_node":  # the coordinator lost us (a fresh data dir): register again
            seat.assign((await _register(client, identity, role, hardware, name)).role)
            return
        if reason == "banned":  # every later call would be refused too: stop (join)
            raise
        if reason == "wrong_role":  # moved as it asked for work: a heartbeat's reply says to what
            log.info("work refused: %s", err.details())
            with contextlib.suppress(grpc.aio.AioRpcError):  # if it fails, the next periodic one tells
                await _heartbeat(client, seat)
            return
        log.error("work refused (%s): %s", reason, err.details())
    except ManifestError as err:  # bytes that fail their check are never loaded
        log.error("version fetch failed its check: %s", err)
    except (torch.OutOfMemoryError, MemoryError) as err:  # a role without its own remedy (inference has one)
        await _ran_out(client, seat, err)
    if seat.worker is not None:
        seat.worker.state = "idle"
    await asyncio.sleep(REFUSED_BACKOFF_S)


async def _ran_out(client: CoordinatorClient, seat: Seat, err: BaseException) -> None:
    """Out of memory in a unit of work: give every lease back and tell the coordinator, which makes an
    auto trainer an inference node; never a crash, and never the same work again at the same size."""
    log.error("out of memory as %s: %s", role_name(seat.role), str(err)[:200])
    seat.parts.loader.version = None  # the model may hold half-done work: load the version afresh
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    try:
        reply = await client.call("ReportOutOfMemory", pb.ReportOutOfMemoryBody(detail=str(err)[:200]))
        seat.assign(reply.role, "it ran out of memory as " + role_name(seat.role))
    except grpc.aio.AioRpcError as rpc_err:
        log.warning("could not report running out of memory: %s", rpc_err.details())


def configure_threads(threads: int) -> None:
    if threads > 0:
        torch.set_num_threads(threads)
