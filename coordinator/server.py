"""The coordinator process: open (or resume) a run's data dir, serve gRPC (plaintext on loopback,
TLS anywhere), sweep expired leases."""
from __future__ import annotations

import asyncio
import gc
import ipaddress
import logging
import os
import signal
import sqlite3
from pathlib import Path

import grpc
from transformers import AutoConfig

from protocol.config import HOST_ONLY, RunConfig
from protocol.envs import make_environment
from protocol.identity import Identity
from protocol.models import resolve_model
from protocol.policy import initial_blob, load_tokenizer
from protocol.v1 import admin_pb2_grpc as apb_grpc
from protocol.v1 import coordinator_pb2_grpc as pb_grpc

from . import tls
from .admin import AdminService
from .guard import DecodeGuard

from .blobs import BlobStore
from .context import RunContext
from .limits import training_body_cap
from .metrics import Metrics
from .publisher import publish_initial
from .scheduler import expire_leases
from .service import CoordinatorService
from .store import Store
from .validator import EmbeddedValidator

log = logging.getLogger("potluck.coordinator")
MAX_MESSAGE_BYTES = 16 << 20  # raised to fit a submission where versions are larger (full-parameter runs)
SWEEP_INTERVAL_S = 1.0
CHECKPOINT_INTERVAL_S = 2.0
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
    elif _run_part(RunConfig.model_validate_json(stored)) != _run_part(config):
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


def _message_cap(ctx: RunContext) -> int:
    """Room for the largest signed SubmitTraining body (limits.py) and its envelope."""
    return max(MAX_MESSAGE_BYTES, training_body_cap(ctx.store.version(0)["size"]) + (1 << 20))


def _run_part(config: RunConfig) -> dict:
    """What must not change across restarts of a run ([admission] and [limits] may)."""
    return config.model_dump(exclude=HOST_ONLY)


def check_listen(listen: str, insecure: bool, use_tls: bool = False) -> None:
    host = listen.rsplit(":", 1)[0].strip("[]")
    loopback = host == "localhost" or (host and _is_loopback(host))
    if not loopback and not insecure and not use_tls:
        raise ValueError(f"refusing to serve plaintext gRPC on {listen}: pass --tls (nodes then pin the "
                         f"printed fingerprint), or --insecure to force plaintext")


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _write_address(path: Path, address: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(address + "\n")
    os.replace(tmp, path)


def _checkpoint_once(db_path: Path) -> None:
    db = sqlite3.connect(db_path)
    try:
        db.execute("PRAGMA wal_checkpoint(PASSIVE)")
    finally:
        db.close()


async def _checkpoints(db_path: Path) -> None:
    """Copy the WAL into the database from a worker thread. SQLite would otherwise checkpoint inside
    whichever commit crosses 1000 pages, fsyncs included, on the event loop that answers every node.
    A passive checkpoint blocks no writer; commits stay durable without it (WAL, synchronous=NORMAL)."""
    while True:
        await asyncio.sleep(CHECKPOINT_INTERVAL_S)
        await asyncio.to_thread(_checkpoint_once, db_path)


async def _sweep(ctx: RunContext) -> None:
    while True:
        await asyncio.sleep(SWEEP_INTERVAL_S)
        expire_leases(ctx)


async def serve(config: RunConfig, listen: str, data_dir: Path, metrics_listen: str | None = None,
                use_tls: bool = False, tls_cert: Path | None = None, tls_key: Path | None = None) -> None:
    ctx = open_run(config, data_dir)
    # What loading left on the heap (tokenizer, config) lives as long as the process: keep the
    # collector from walking it again and again under load.
    gc.freeze()
    metrics = Metrics()
    if metrics_listen:
        bound = metrics.serve(metrics_listen, data_dir / "state.sqlite")
        _write_address(data_dir / METRICS_ADDRESS_FILE, bound)
        log.info("Prometheus metrics on http://%s/metrics", bound)
    server = grpc.aio.server(interceptors=[DecodeGuard()],
                             options=[("grpc.max_receive_message_length", _message_cap(ctx)),
                                      ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)])
    service = CoordinatorService(ctx, metrics)
    pb_grpc.add_CoordinatorServicer_to_server(service, server)
    apb_grpc.add_AdminServicer_to_server(AdminService(ctx, service._run), server)
    host = listen.rsplit(":", 1)[0]
    if use_tls:
        cert_pem, key_pem = tls.load_or_create(data_dir, host.strip("[]"), tls_cert, tls_key)
        port = server.add_secure_port(listen, grpc.ssl_server_credentials([(key_pem, cert_pem)]))
    else:
        port = server.add_insecure_port(listen)
    await server.start()
    address = f"{host}:{port}"
    if use_tls:
        pin = (data_dir / tls.FINGERPRINT_FILE).read_text().strip()
        log.info("TLS certificate fingerprint %s (nodes: --coordinator %s --fingerprint %s)", pin, address, pin)
    _write_address(data_dir / ADDRESS_FILE, address)
    log.info("coordinator for run %r serving on %s%s (version %d, data %s)", config.name, address,
             " with TLS" if use_tls else "", ctx.store.current_version(), data_dir)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    ctx.store.db.execute("PRAGMA wal_autocheckpoint=0")  # _checkpoints does it, off the event loop
    sweeper = asyncio.create_task(_sweep(ctx))
    tasks = [sweeper, asyncio.create_task(_checkpoints(data_dir / "state.sqlite"))]
    tasks += [asyncio.create_task(EmbeddedValidator(ctx).run())] if config.verification.embedded else []
    try:
        await stop.wait()
    finally:
        log.info("coordinator stopping")
        for task in tasks:
            task.cancel()
        ctx.changes.close()
        await server.stop(grace=2)
        ctx.store.close()
        (data_dir / ADDRESS_FILE).unlink(missing_ok=True)
        (data_dir / METRICS_ADDRESS_FILE).unlink(missing_ok=True)
