"""Real hivemind peers on loopback: the DHT peer id is the node id, and round-mates all-reduce
their pseudo-gradients weighted by samples, compressed on the wire."""
import asyncio
import signal
import threading
import time
from pathlib import Path

import pytest
import torch

from node.p2p import PeerNode
from node.trainer.averaging import RoundAverager
from protocol.identity import Identity


@pytest.fixture
def peers(tmp_path):
    started = []
    try:
        for i in range(2):
            started.append(PeerNode(Identity.generate(), tmp_path / f"peer{i}"))
        yield started
    finally:
        for peer in started:
            peer.shutdown()


@pytest.mark.parametrize("codec, tolerance", [("fp16", 1e-3), ("int8", 0.1)])
def test_round_mates_average_weighted_by_samples(peers, codec, tolerance):
    a, b = peers
    assert a.peer_id != b.peer_id and all(m.endswith(f"/p2p/{p.peer_id}") for p in peers for m in p.maddrs)
    a.connect(b.maddrs)
    b.connect(a.maddrs)
    g = torch.Generator().manual_seed(0)
    deltas = [{"x": torch.randn(300, 64, generator=g), "y": torch.randn(1000, generator=g)} for _ in peers]
    averagers = [RoundAverager(p, wait_s=2.0) for p in peers]
    for averager in averagers:
        averager.open(f"test{codec}", deltas[0], group_size=2, codec=codec)
    results = [None, None]

    def run(i, weight):
        results[i] = averagers[i].average(deltas[i], weight)

    threads = [threading.Thread(target=run, args=(i, w)) for i, w in enumerate((1.0, 3.0))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for averager in averagers:
        averager.close()
    expected = {k: 0.25 * deltas[0][k] + 0.75 * deltas[1][k] for k in deltas[0]}
    for averaged, group in results:
        assert group == sorted(p.peer_id for p in peers)
        for k in expected:
            assert ((averaged[k] - expected[k]).norm() / expected[k].norm()).item() < tolerance


def test_the_dht_peer_id_is_the_node_id(tmp_path):
    identity = Identity.generate()
    peer = PeerNode(identity, tmp_path / "me")
    try:
        assert peer.peer_id == identity.node_id
    finally:
        peer.shutdown()
    # the same key gives the same peer id again (the key file is rewritten, not regenerated)
    again = PeerNode(identity, tmp_path / "me")
    try:
        assert again.peer_id == identity.node_id
    finally:
        again.shutdown()


def _children(pid: int) -> list[int]:
    return [int(c) for task in Path(f"/proc/{pid}/task").iterdir()
            for c in (task / "children").read_text().split()]


def test_a_peer_started_under_a_sigterm_handler_still_dies_on_sigterm(tmp_path):
    """A node's event loop handles SIGTERM; the forked peer process must not inherit that (it would
    ignore the SIGTERM of a hard shutdown and the node would wait for it forever at exit)."""
    async def start_under_handler() -> PeerNode:
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, lambda: None)
        try:
            return await asyncio.to_thread(PeerNode, Identity.generate(), tmp_path / "me")
        finally:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGTERM)

    peer = asyncio.run(start_under_handler())
    daemons = _children(peer.dht.pid)
    assert daemons, "the peer process runs p2pd"
    peer.dht.terminate()
    peer.dht.join(30)
    assert not peer.dht.is_alive() and peer.dht.exitcode == 0
    for pid in daemons:  # and it took its p2pd with it
        deadline = time.monotonic() + 30
        while Path(f"/proc/{pid}").exists() and Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z":
            assert time.monotonic() < deadline, f"p2pd {pid} outlived its peer"
            time.sleep(0.1)
