"""How a fresh version spreads: N nodes on loopback fetch it at once through the tracker and each
other, and the coordinator's egress is measured.

    python -m bench.broadcast --json [--quick]

For each N (4, 8, 16; --quick: 3), a fresh coordinator process publishes version 0 of a run
whose LoRA rank makes the blob many chunks long (--rank 128: 24 MiB, 24 chunks of 1 MiB; --quick:
rank 16, 3 chunks), or with --full a full-parameter run's (every weight and its momentum: 33.6 MB). N nodes register, each opens its p2p plane (its own key, hivemind DHT and
p2pd, and seeder: node/seeding.py's VersionPlane, as `potluck node join` does), and all start the
real fetcher (node/fetcher.py) together. Reported per N:
- coordinator_egress_copies: the coordinator's potluck_version_bytes_served_total (its Prometheus
  counter of FetchVersion bytes) divided by the blob size;
- seconds_until_all_hold: from the common start until the last node holds the verified blob;
- all_verified: every node's cached blob hashes to the manifest's sha256 (each chunk was checked
  against the signed manifest as it arrived, the whole blob at the end);
- chunks_from_peers / chunks_from_coordinator, summed over the nodes;
- coordinator_only_*: the same two figures when the same nodes then fetch the version again
  without their planes (every chunk from the coordinator, as before this tracker), side by side.

The N nodes are asyncio tasks of this one process: each has its own daemon and key and talks to
the others only over libp2p, but they share one Python event loop. N separate node processes
would each import torch and hivemind (~0.5 GB and seconds each) on this 2-core machine, which
would measure the machine, not the protocol. Progress goes to stderr; the last stdout line is one
JSON object.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from node.client import CoordinatorClient
from node.fetcher import FetchStats, fetch_blob
from node.seeding import VersionPlane
from node.versions import fetch_manifest
from protocol.checkpoint import sha256_hex
from protocol.config import PRESETS_DIR
from protocol.identity import Identity
from protocol.v1 import coordinator_pb2 as pb
from tests.procs import Coordinator

TARGET_COPIES = 2.0


def write_run(path: Path, rank: int, full: bool = False) -> Path:
    """The integration-test run with a LoRA rank that makes version blobs about rank/5.3 MiB, or in
    full-parameter mode."""
    extra = '[training]\nmode = "full"\n' if full else f"[lora]\nrank = {rank}\n"
    path.write_text((PRESETS_DIR / "test.toml").read_text() + "\n" + extra)
    return path


def start_coordinator(data: Path, rank: int, log_dir: Path, full: bool = False) -> tuple[Coordinator, str, bytes]:
    """A coordinator process with its metrics endpoint: (process, metrics HOST:PORT, its public key)."""
    proc = Coordinator(str(write_run(data.parent / f"{data.name}.toml", rank, full)), data, log_dir,
                       name=data.name, extra=("--metrics", "127.0.0.1:0"))
    metrics = (data / "metrics.addr").read_text().strip()
    return proc, metrics, Identity.load_or_create(data / "coordinator.key").public_key


def served_bytes(metrics_address: str) -> float:
    """The coordinator's potluck_version_bytes_served_total, scraped."""
    with urllib.request.urlopen(f"http://{metrics_address}/metrics", timeout=10) as reply:
        for line in reply.read().decode().splitlines():
            if line.startswith("potluck_version_bytes_served_total "):
                return float(line.split()[1])
    return 0.0


async def join_node(address: str, home: Path) -> tuple[CoordinatorClient, VersionPlane]:
    """A registered node with its p2p plane open (the part of `potluck node join` that fetches)."""
    identity = Identity.generate()
    client = CoordinatorClient(address, identity)
    await client.call("Register", pb.RegisterBody(public_key=identity.public_key, role=pb.ROLE_INFERENCE,
                                                  name=home.name))
    try:
        return client, await VersionPlane.open(identity, home)
    except BaseException:
        await client.close()
        raise


async def leave(nodes: list[tuple[CoordinatorClient, VersionPlane]]) -> None:
    """Leave as `potluck node join` does: say so (the tracker stops naming the node), stop the plane."""
    await asyncio.gather(*(client.call("ReturnLeases", pb.ReturnLeasesBody(reason="node leaving"), timeout=5,
                                       retry=False) for client, _ in nodes), return_exceptions=True)
    await asyncio.gather(*(plane.close() for _, plane in nodes), return_exceptions=True)
    await asyncio.gather(*(client.close() for client, _ in nodes), return_exceptions=True)


async def broadcast(n: int, rank: int, full: bool, root: Path) -> dict:
    data = root / f"coordinator-{n}"
    proc, metrics, key = start_coordinator(data, rank, root, full)
    nodes: list[tuple[CoordinatorClient, VersionPlane]] = []
    try:
        for i in range(n):
            nodes.append(await join_node(proc.address, root / f"n{n}-node{i}"))
        manifest = await fetch_manifest(nodes[0][0], key, 0)
        before = served_bytes(metrics)
        stats = [FetchStats() for _ in nodes]
        started = time.perf_counter()

        async def fetch(i: int) -> float:
            client, plane = nodes[i]
            await fetch_blob(client, manifest, root / f"n{n}-node{i}" / "versions", plane=plane, stats=stats[i])
            return time.perf_counter() - started

        finished = await asyncio.gather(*(fetch(i) for i in range(n)))
        egress = served_bytes(metrics) - before

        before, started = served_bytes(metrics), time.perf_counter()

        async def direct(i: int) -> float:
            await fetch_blob(nodes[i][0], manifest, root / f"n{n}-node{i}" / "direct")
            return time.perf_counter() - started

        direct_finished = await asyncio.gather(*(direct(i) for i in range(n)))
        direct_egress = served_bytes(metrics) - before
        verified = all(sha256_hex((root / f"n{n}-node{i}" / "versions" / manifest.sha256).read_bytes())
                       == manifest.sha256 for i in range(n))
        result = {
            "coordinator_egress_copies": round(egress / manifest.size, 3),
            "seconds_until_all_hold": round(max(finished), 3),
            "seconds_until_first_holds": round(min(finished), 3),
            "all_verified": verified,
            "chunks_from_peers": sum(sum(s.from_peers.values()) for s in stats),
            "chunks_from_coordinator": sum(s.from_coordinator for s in stats),
            "bad_peers": sum(len(s.bad_peers) for s in stats),
            "coordinator_only_egress_copies": round(direct_egress / manifest.size, 3),
            "coordinator_only_seconds_until_all_hold": round(max(direct_finished), 3),
        }
        print(f"N={n}: {result}", file=sys.stderr)
        return result | {"version_bytes": manifest.size, "chunks": len(manifest.chunks),
                         "chunk_size": manifest.chunk_size, "format": manifest.format}
    finally:
        await leave(nodes)
        proc.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, nargs="+", default=None, help="swarm sizes (default 4 8 16)")
    parser.add_argument("--rank", type=int, default=None, help="LoRA rank of the run (blob size ~ rank/5.3 MiB)")
    parser.add_argument("--quick", action="store_true", help="a tiny run: 3 nodes, a 3-chunk blob")
    parser.add_argument("--full", action="store_true", help="a full-parameter run's version (all weights)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    sizes = args.nodes or ([3] if args.quick else [4, 8, 16])
    rank = args.rank or (16 if args.quick else 128)
    runs = {}
    with tempfile.TemporaryDirectory(prefix="potluck-broadcast-") as tmp:
        for n in sizes:
            runs[str(n)] = asyncio.run(broadcast(n, rank, args.full, Path(tmp)))
    first = next(iter(runs.values()))
    result = {
        "quick": args.quick,
        "version_bytes": first["version_bytes"], "chunks": first["chunks"], "chunk_size": first["chunk_size"],
        "format": first["format"],
        "coordinator_egress_copies": {n: r["coordinator_egress_copies"] for n, r in runs.items()},
        "seconds_until_all_hold": {n: r["seconds_until_all_hold"] for n, r in runs.items()},
        "all_verified": all(r["all_verified"] for r in runs.values()),
        "max_egress_copies": max(r["coordinator_egress_copies"] for r in runs.values()),
        "target_egress_copies": TARGET_COPIES,
        "runs": {n: {k: v for k, v in r.items() if k not in ("version_bytes", "chunks", "chunk_size", "format")}
                 for n, r in runs.items()},
        "nodes": "asyncio tasks in one process, each with its own key, hivemind DHT + p2pd and seeder",
    }
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
