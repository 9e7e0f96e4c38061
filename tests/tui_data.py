"""A fixed, made-up swarm for the TUI's snapshot tests: every id and time is constant."""
from __future__ import annotations

import hashlib

from protocol.v1 import coordinator_pb2 as pb

NOW_MS = 1_780_000_000_000  # the snapshot's server time; every age on screen is measured from it
BASE58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
GIB = 1 << 30


def peer_id(name: str) -> str:
    digest = hashlib.sha512(name.encode()).digest()
    return "12D3KooW" + "".join(BASE58[b % 58] for b in digest)[:44]


def cpu(cpus: int, ram_gib: int) -> pb.Hardware:
    return pb.Hardware(device="cpu", cpu_count=cpus, ram_bytes=ram_gib * GIB, disk_free_bytes=200 * GIB,
                       platform="Linux x86_64 python 3.11.7")


def cuda(gpu: str, count: int, mem_gib: int, cpus: int, ram_gib: int) -> pb.Hardware:
    hw = cpu(cpus, ram_gib)
    hw.device = "cuda"
    hw.gpus.extend(pb.Gpu(name=gpu, memory_bytes=mem_gib * GIB, compute_capability="9.0") for _ in range(count))
    return hw


NODES = (
    # name, role, hardware, state, online, tokens/s, credit, accepted, rejected, seen ms ago
    ("ada", pb.ROLE_INFERENCE, cuda("NVIDIA H100 80GB HBM3", 1, 80, 16, 128), "generating", True, 1843.5, 912.0, 4480, 0, 400),
    ("bert", pb.ROLE_INFERENCE, cpu(8, 32), "generating", True, 212.4, 245.0, 1216, 8, 900),
    ("curie", pb.ROLE_TRAINER, cuda("NVIDIA RTX 4090", 2, 24, 24, 64), "training", True, 0.0, 330.0, 0, 0, 1200),
    ("dijkstra", pb.ROLE_INFERENCE, cpu(2, 8), "evaluating", True, 61.0, 58.0, 288, 0, 700),
    ("euler", pb.ROLE_INFERENCE, cpu(4, 16), "left", False, 120.0, 131.0, 640, 0, 3_600_000),
    ("fermi", pb.ROLE_INFERENCE, cpu(4, 16), "generating", True, 118.9, 12.0, 64, 96, 1500),
    ("gauss", pb.ROLE_TRAINER, cuda("NVIDIA A100-SXM4-40GB", 1, 40, 32, 256), "idle", True, 0.0, 280.0, 0, 0, 800),
)
REWARDS = (0.21, 0.24, 0.23, 0.29, 0.33, 0.35, 0.41, 0.44, 0.43, 0.5, 0.55, 0.58)
EVALS = (0.18, 0.2, 0.22, 0.25, 0.31, 0.34, 0.36, 0.42, 0.45, 0.47, 0.52, 0.56, 0.57)


def snapshot() -> pb.SwarmSnapshot:
    nodes = [pb.NodeInfo(node_id=peer_id(name), name=name, role=role, hardware=hw, state=state, online=online,
                         tokens_per_s=tps, credit=credit, rollouts_accepted=acc, rollouts_rejected=rej,
                         last_seen_ms=NOW_MS - ago)
             for name, role, hw, state, online, tps, credit, acc, rej, ago in NODES]
    trainers = [peer_id("curie"), peer_id("gauss")]
    versions = []
    for v, accuracy in enumerate(EVALS):
        versions.append(pb.VersionInfo(
            version=v, sha256=hashlib.sha256(f"version {v}".encode()).hexdigest(), size=2_243_952 + 1024 * v,
            created_ms=NOW_MS - (len(EVALS) - v) * 95_000, reward_mean=REWARDS[v] if v < len(REWARDS) else 0.0,
            rollouts_generated=512 if v < len(REWARDS) else 0, has_eval=True, eval_accuracy=accuracy,
            rollouts_used=0 if v == 0 else 512, trainer="coordinator" if v == 0 else trainers[v % 2]))
    lines = _events()
    events = [pb.Event(id=100 + i, time_ms=NOW_MS - (len(lines) - i) * 17_000, kind=kind, text=text)
              for i, (kind, text) in enumerate(lines)]
    accepted = sum(n.rollouts_accepted for n in nodes)
    return pb.SwarmSnapshot(
        run_name="potluck-demo", model="tiny-arith", environment="arithmetic", current_version=len(EVALS) - 1,
        versions=versions, nodes=nodes, rollouts_accepted=accepted,
        rollouts_rejected=sum(n.rollouts_rejected for n in nodes), tokens_generated=3_482_112, events=events,
        server_time_ms=NOW_MS, rollouts_per_s=38.4)


def _events() -> list[tuple[str, str]]:
    short = {name: peer_id(name)[-8:] for name, *_ in NODES}
    lines = [("join", f"{name} ({short[name]}) joined as {pb.Role.Name(role)[5:].lower()}")
             for name, role, *_ in NODES]
    for v in range(5, 12):
        trainer = "curie" if v % 2 == 0 else "gauss"
        lines += [("lease", f"train lease {v:08x} of {short[trainer]} done"),
                  ("version", f"version {v} published ({hashlib.sha256(f'version {v}'.encode()).hexdigest()[:12]}, "
                              f"{2_243_952 + 1024 * v} bytes) by {short[trainer]}"),
                  ("eval", f"version {v}: held-out accuracy {EVALS[v]:.3f}")]
        if v in (7, 10):
            lines.append(("reject", f"{short['fermi']}: 48 rollouts with a reward that does not match the verifier"))
    lines.append(("pool", "3 groups older than version 10 dropped as stale"))
    lines.append(("reject", f"{short['bert']}: 8 rollouts with a reward that does not match the verifier"))
    return lines
