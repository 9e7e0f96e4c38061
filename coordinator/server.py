"""The coordinator process: open (or resume) a run's data dir, serve gRPC, sweep expired leases."""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import signal
from pathlib import Path

import grpc
from transformers import AutoConfig

from protocol.config import RunConfig
from protocol.envs import make_environment
from protocol.identity import Identity
from protocol.models import resolve_model
from protocol.policy import initial_blob, load_tokenizer
from protocol.v1 import coordinator_pb2_grpc as pb_grpc

from .blobs import BlobStore
from .context import RunContext
from .metrics import Metrics
from .publisher import publish_initial
from .scheduler import expire_leases
from .service import CoordinatorService
from .store import Store

log = logging.getLogger("potluck.coordinator")
MAX_MESSAGE_BYTES = 16 << 20
SWEEP_INTERVAL_S = 1.0
ADDRESS_FILE = "coordinator.addr"
METRICS_ADDRESS_FILE = "metrics.addr"


class RunMismatch(RuntimeError):
    pass


def open_run(config: RunConfig, data_dir: Path) -> RunContext:
    """The run in data_dir, created on first use (with version 0) and resumed after that."""
    data_dir.mkdir(parents=True, exist_ok=True)
    store = Store(data_dir / "state.sqlite")
    stored = store.get_meta("run_config")
    if stored is None:
        store.set_meta("run_config", config.model_dump_json())
    elif RunConfig.model_validate_json(stored) != config:
        raise RunMismatch(f"{data_dir} holds run {RunConfig.model_validate_json(stored).name!r} with another "
                          f"config; use a fresh --data dir or the same run file")
    tokenizer = load_tokenizer(config.model.name)
    ctx = RunContext(config=config, store=store, blobs=BlobStore(data_dir / "blobs"),
                     env=make_environment(config.environment.name, config.environment.params),
                     tokenizer=tokenizer, identity=Identity.load_or_create(data_dir / "coordinator.key"),
                     vocab_size=AutoConfig.from_pretrained(resolve_model(config.model.name)).vocab_size)
    if store.current_version() < 0:
        publish_initial(ctx, initial_blob(config))
    return ctx


def check_listen(listen: str, insecure: bool) -> None:
    host = listen.rsplit(":", 1)[0].strip("[]")
    loopback = host == "localhost" or (host and _is_loopback(host))
    if not loopback and not insecure:
        raise ValueError(f"refusing to serve plaintext gRPC on {listen}: TLS is not built yet, so only "
                         f"loopback is allowed unless you pass --insecure")


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _write_address(path: Path, address: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(address + "\n")
    os.replace(tmp, path)


async def _sweep(ctx: RunContext) -> None:
    while True:
        await asyncio.sleep(SWEEP_INTERVAL_S)
        expire_leases(ctx)


async def serve(config: RunConfig, listen: str, data_dir: Path, metrics_listen: str | None = None) -> None:
    ctx = open_run(config, data_dir)
    metrics = Metrics()
    if metrics_listen:
        bound = metrics.serve(metrics_listen, data_dir / "state.sqlite")
        _write_address(data_dir / METRICS_ADDRESS_FILE, bound)
        log.info("Prometheus metrics on http://%s/metrics", bound)
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                                      ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)])
    pb_grpc.add_CoordinatorServicer_to_server(CoordinatorService(ctx, metrics), server)
    port = server.add_insecure_port(listen)
    await server.start()
    address = f"{listen.rsplit(':', 1)[0]}:{port}"
    _write_address(data_dir / ADDRESS_FILE, address)
    log.info("coordinator for run %r serving on %s (version %d, data %s)", config.name, address,
             ctx.store.current_version(), data_dir)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    sweeper = asyncio.create_task(_sweep(ctx))
    try:
        await stop.wait()
    finally:
        log.info("coordinator stopping")
        sweeper.cancel()
        ctx.changes.close()
        await server.stop(grace=2)
        ctx.store.close()
        (data_dir / ADDRESS_FILE).unlink(missing_ok=True)
        (data_dir / METRICS_ADDRESS_FILE).unlink(missing_ok=True)
