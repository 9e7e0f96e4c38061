"""The trainer's p2p plane: a hivemind DHT whose peer id is the node id.

p2pd reads its identity from a file holding a libp2p PrivateKey protobuf (`-id`); we write the
node's Ed25519 key there, so peers, the coordinator and the DHT all know a trainer by one name.
The DHT runs in hivemind's own child process with its own event loop; nothing here blocks the
caller's asyncio loop except start and stop, which run in a thread.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
import time
from functools import partial
from pathlib import Path

import hivemind
import torch
from multiaddr import Multiaddr

from protocol.identity import Identity

log = logging.getLogger("potluck.node")
LOOPBACK = "/ip4/127.0.0.1/tcp/0"
DHT_SHUTDOWN_S = 3.0
START_TIMEOUT_S = 120.0
START_ATTEMPTS = 3


def _stop_children_and_exit(*_) -> None:
    """Stop this process's own children (p2pd) and exit, so no daemon outlives its peer."""
    for task in Path("/proc/self/task").iterdir():
        for child in (task / "children").read_text().split():
            os.kill(int(child), signal.SIGTERM)
    os._exit(0)


def _exit_with_parent(parent_pid: int) -> None:
    """In a hivemind child: once the node process is gone (even by kill -9), exit the same way."""
    while os.getppid() == parent_pid:
        time.sleep(1.0)
    _stop_children_and_exit()


class _OrphanSafe:
    """Mixed into hivemind's process classes: run() starts the parent watch first, and SIGTERM (what
    hivemind sends when a graceful shutdown takes too long) really ends the child. Forked from a node
    whose event loop handles SIGTERM, the child would otherwise inherit asyncio's no-op handler and
    the parent's wake-up socket: it would ignore SIGTERM, and the node would wait for it forever."""

    def run(self) -> None:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGTERM, _stop_children_and_exit)
        threading.Thread(target=_exit_with_parent, args=(self._parent_pid,), daemon=True).start()
        super().run()


class DHT(_OrphanSafe, hivemind.DHT):
    pass


class DecentralizedAverager(_OrphanSafe, hivemind.DecentralizedAverager):
    def run(self) -> None:
        # Forked from a process whose torch may already have started an OpenMP pool: the child has
        # no such threads, and a parallel region there would wait for them forever.
        torch.set_num_threads(1)
        super().run()


def write_identity_file(identity: Identity, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(identity.libp2p_private_key())
    return path


def valid_maddrs(addresses: list[str]) -> list[str]:
    """Addresses that parse as multiaddrs (the PyPI `multiaddr` package), as strings; hivemind has
    its own multiaddr classes, so the two meet only as text."""
    good = []
    for text in addresses:
        try:
            good.append(str(Multiaddr(text)))
        except Exception:  # the package raises several error types for malformed text
            log.warning("ignoring malformed peer address %r", text[:200])
    return good


def listen_maddrs(addresses: list[str] | None) -> tuple[str, ...]:
    """`--p2p-listen` values (LOOPBACK when none): ValueError if any does not parse as a multiaddr."""
    if not addresses:
        return (LOOPBACK,)
    good = valid_maddrs(addresses)
    if len(good) != len(addresses):
        raise ValueError(f"--p2p-listen takes multiaddrs such as /ip4/0.0.0.0/tcp/4001, not {addresses}")
    return tuple(good)


class PeerStartError(RuntimeError):
    pass


def _start(dht: DHT) -> None:
    """Fork hivemind's DHT process and wait until it serves. hivemind waits for it without a bound,
    so a child that dies while starting would hang the node: a fork from a busy multi-threaded process
    (several nodes in one, as in tests) once crashed in native code. Here that is an error to retry."""
    dht.start()
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            dht.wait_until_ready(timeout=0.5)
            return
        except TimeoutError:
            if not dht.is_alive():
                raise PeerStartError(f"its process exited with code {dht.exitcode} while starting") from None
            if time.monotonic() > deadline:
                dht.kill()
                raise PeerStartError(f"not ready within {START_TIMEOUT_S:.0f} s") from None


class PeerNode:
    """A running DHT peer for one trainer; `maddrs` are what the coordinator hands to its round-mates."""

    def __init__(self, identity: Identity, home: Path, listen: tuple[str, ...] = (LOOPBACK,),
                 initial_peers: tuple[str, ...] = ()) -> None:
        key_file = write_identity_file(identity, home / "p2p" / "identity.p2p")
        for attempt in range(1, START_ATTEMPTS + 1):
            self.dht = DHT(initial_peers=list(valid_maddrs(list(initial_peers))), start=False,
                           host_maddrs=list(listen), identity_path=str(key_file),
                           check_if_identity_free=False, shutdown_timeout=DHT_SHUTDOWN_S)
            try:
                _start(self.dht)
                break
            except PeerStartError as exc:
                if attempt == START_ATTEMPTS:
                    raise
                log.warning("p2p peer did not start (%s); trying again", exc)
        self.peer_id = self.dht.peer_id.to_base58()
        if self.peer_id != identity.node_id:
            self.dht.shutdown()
            raise RuntimeError(f"p2p daemon took peer id {self.peer_id}, not the node id {identity.node_id}")
        self.maddrs = [str(m) for m in self.dht.get_visible_maddrs()]
        log.info("p2p peer %s listening on %s", self.peer_id, ", ".join(self.maddrs))

    def connect(self, maddrs: list[str]) -> None:
        """Make round-mates DHT neighbours. Trainers start their DHTs independently (none may exist
        yet when another starts), so each round's lease carries its members' addresses."""
        good = [m for m in valid_maddrs(maddrs) if m not in self.maddrs]
        if good:
            self.dht.run_coroutine(partial(_connect, good))

    def shutdown(self) -> None:
        if self.dht.is_alive():
            self.dht.shutdown()
        self.dht.join(DHT_SHUTDOWN_S + 2)



async def _connect(maddrs: list[str], dht, node) -> None:
    """Runs inside the DHT process: dial each peer, then ping it into the routing table. P2P has
    no public dial, so this uses its daemon client as hivemind's own identity check does."""
    from hivemind.p2p import PeerID
    from hivemind.utils.multiaddr import Multiaddr as HivemindMultiaddr

    for text in maddrs:
        address = HivemindMultiaddr(text)
        peer = PeerID.from_base58(address["p2p"])
        try:
            await node.p2p._client.connect(peer, [address.decapsulate(HivemindMultiaddr(f"/p2p/{address['p2p']}"))])
            await node.protocol.call_ping(peer)
        except Exception as exc:  # an unreachable peer is the averager's timeout to handle
            log.warning("could not reach peer %s: %s", text, exc)
