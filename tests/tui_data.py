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
    # name, role, hardware, state, online, tokens/s, credit, accepted, rejected, seen ms ago, reputation, quarantined,
    # the version it holds (None: none reported)
    ("ada", pb.ROLE_INFERENCE, cuda("NVIDIA H100 80GB HBM3", 1, 80, 16, 128), "generating", True, 1843.5, 912.0,
     4480, 0, 400, 0.99, False, 12),
    ("bert", pb.ROLE_INFERENCE, cpu(8, 32), "generating", True, 212.4, 245.0, 1216, 0, 900, 0.97, False, 12),
    ("curie", pb.ROLE_TRAINER, cuda("NVIDIA RTX 4090", 2, 24, 24, 64), "training", True, 0.0, 330.0, 0, 0, 1200,
     0.5, False, 12),
    ("dijkstra", pb.ROLE_INFERENCE, cpu(2, 8), "evaluating", True, 61.0, 58.0, 288, 0, 700, 0.94, False, 11),
    # Offline: what it held when it left is not counted.
    ("euler", pb.ROLE_INFERENCE, cpu(4, 16), "left", False, 120.0, 131.0, 640, 0, 3_600_000, 0.95, False, 4),
    # Caught by a validator's sampling check; it still heartbeats, but gets no work.
    ("fermi", pb.ROLE_INFERENCE, cpu(4, 16), "waiting", True, 0.0, 12.0, 64, 96, 1500, 0.0, True, 10),
    ("gauss", pb.ROLE_TRAINER, cuda("NVIDIA A100-SXM4-40GB", 1, 40, 32, 256), "idle", True, 0.0, 280.0, 0, 0, 800,
     0.5, False, 12),
    ("hopper", pb.ROLE_VALIDATOR, cpu(8, 32), "verifying", True, 0.0, 96.0, 0, 0, 600, 0.5, False, 11),
    # Caught by the coordinator's reward check at submission, then it left.
    ("knuth", pb.ROLE_INFERENCE, cpu(2, 4), "left", False, 35.2, 0.0, 0, 32, 540_000, 0.0, True, None),
)
REWARDS = (0.21, 0.24, 0.23, 0.29, 0.33, 0.35, 0.41, 0.44, 0.43, 0.5, 0.55, 0.58)
EVALS = (0.18, 0.2, 0.22, 0.25, 0.31, 0.34, 0.36, 0.42, 0.45, 0.47, 0.52, 0.56, 0.57)
# Curie and gauss train version 12; curie has submitted.
ROUND = pb.RoundInfo(round_id=hashlib.sha256(b"round 12").hexdigest()[:32], version=12, state="training", trainers=2,
                     submitted=1, created_ms=NOW_MS - 40_000)


def snapshot() -> pb.SwarmSnapshot:
    nodes = [pb.NodeInfo(node_id=peer_id(name), name=name, role=role, hardware=hw, state=state, online=online,
                         tokens_per_s=tps, credit=credit, rollouts_accepted=acc, rollouts_rejected=rej,
                         last_seen_ms=NOW_MS - ago, reputation=reputation, quarantined=quarantined,
                         holding_version=holding)
             for name, role, hw, state, online, tps, credit, acc, rej, ago, reputation, quarantined, holding in NODES]
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
        server_time_ms=NOW_MS, rollouts_per_s=38.4, verdicts=verdicts(), rollouts_pending=48, trainers_per_round=2,
        round=ROUND)


SAMPLING_DETAIL = ("3 of 16 rollouts fail; task 1207 sample 2: a token is not the seeded choice: its score is "
                   "2.731 logits below the best (margin 0.05)")
REWARD_DETAIL = "task 412 sample 3 claims reward 1; its tokens earn 0"
VERDICTS = (
    # seconds ago, node, validator, accepted, check, detail, rollouts, kind, version
    (610, "knuth", "coordinator", False, "reward_mismatch", REWARD_DETAIL, 32, "rollout", 9),
    (540, "ada", "hopper", True, "", "", 64, "rollout", 9),
    (470, "bert", "coordinator", True, "", "", 16, "rollout", 10),
    (400, "fermi", "hopper", True, "", "", 16, "rollout", 10),
    (330, "fermi", "hopper", False, "sampling", SAMPLING_DETAIL, 16, "rollout", 10),
    (260, "dijkstra", "coordinator", True, "", "", 900, "eval", 11),
    (190, "ada", "hopper", True, "", "", 64, "rollout", 11),
    (120, "bert", "coordinator", True, "", "", 16, "rollout", 11),
    (50, "ada", "hopper", True, "", "", 64, "rollout", 12),
    (20, "dijkstra", "coordinator", True, "", "", 900, "eval", 12),
)


def verdicts() -> list[pb.VerdictInfo]:
    """The Watch stream's recent verdicts, oldest first; validators are named by node id."""
    def who(validator: str) -> str:
        return validator if validator == "coordinator" else peer_id(validator)

    return [pb.VerdictInfo(id=700 + i, time_ms=NOW_MS - ago * 1000, node_id=peer_id(name), validator=who(validator),
                           accepted=accepted, check=check, detail=detail, rollouts=rollouts, kind=kind, version=version)
            for i, (ago, name, validator, accepted, check, detail, rollouts, kind, version) in enumerate(VERDICTS)]


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
        if v == 9:
            lines += [("reject", f"{short['knuth']}: 32 rollouts rejected (reward_mismatch): {REWARD_DETAIL}"),
                      ("quarantine", f"{short['knuth']} quarantined after failing the reward_mismatch check: "
                                     "0 pending and 0 unchecked submissions void")]
        if v == 10:
            lines += [("reject", f"{short['fermi']}: 16 rollouts rejected (sampling): {SAMPLING_DETAIL}"),
                      ("quarantine", f"{short['fermi']} quarantined after failing the sampling check: "
                                     "2 pending and 5 unchecked submissions void")]
    lines.append(("pool", "3 groups older than version 10 dropped as stale"))
    lines.append(("verify", f"{short['euler']}'s submission for version 4 could not be checked: "
                            "version 4 is no longer stored"))
    return lines
