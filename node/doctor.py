"""`potluck node doctor`: can this machine join a run, and what would it do there? Each check says
what it found in plain words; the command fails (exit 1) when a check shows the node cannot join.

The coordinator is probed without registering (nothing is written to the run): its Watch stream
gives the run and the server's clock, GetVersion(latest) that versions are served. The p2p check
starts a throwaway hivemind peer, bounded in time, and reads where it can be reached from.
"""
from __future__ import annotations

import concurrent.futures
import ipaddress
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import torch

from protocol.channel import PLAINTEXT, ChannelError, Security, sync_channel
from protocol.checkpoint import Manifest
from protocol.identity import Identity
from protocol.roles import GIB, RunNeeds, choose_role, memory_needed, model_weight_bytes, usable_memory
from protocol.v1 import coordinator_pb2 as pb
from protocol.v1 import coordinator_pb2_grpc as pb_grpc

from .hardware import measure_tokens_per_s, probe

OK, WARN, FAIL = "ok", "warn", "FAIL"
RPC_TIMEOUT_S = 10.0
P2P_TIMEOUT_S = 60.0
MIN_DISK, LOW_DISK = GIB, 10 * GIB
CLOCK_WARN_S = 5.0
CLOCK_WINDOW_S = 300.0  # the coordinator's default [admission] clock_skew_seconds


@dataclass(frozen=True)
class Finding:
    topic: str
    verdict: str  # OK, WARN or FAIL
    text: str


@dataclass(frozen=True)
class RunView:
    """What the coordinator shows anyone: enough to predict this node's role."""
    run_name: str
    model: str
    trainers_active: int
    trainers_wanted: int


def check_gpu() -> Finding:
    if not torch.cuda.is_available():
        return Finding("gpu", OK, "no GPU: CPU only, fine for the tiny demo model; a real model wants a "
                                  "CUDA GPU")
    names = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        names.append(f"{props.name} ({props.total_memory / GIB:.1f} GiB, compute {props.major}.{props.minor})")
    return Finding("gpu", OK, f"{len(names)} CUDA GPU(s), CUDA runtime {torch.version.cuda} working with "
                              f"the driver: " + "; ".join(names))


def check_memory(hardware: pb.Hardware) -> Finding:
    text = (f"RAM {hardware.ram_bytes / GIB:.1f} GiB, {hardware.ram_available_bytes / GIB:.1f} GiB free")
    if hardware.device == "cuda":
        free, total = torch.cuda.mem_get_info()
        text += f"; GPU memory {free / GIB:.1f} of {total / GIB:.1f} GiB free"
    verdict = OK if usable_memory(hardware) >= memory_needed(pb.ROLE_INFERENCE, 0) else FAIL
    if verdict == FAIL:
        text += f": less than the {memory_needed(pb.ROLE_INFERENCE, 0) / GIB:.2f} GiB even the tiny model needs"
    return Finding("memory", verdict, text)


def check_disk(home: Path, free: int) -> Finding:
    text = f"{free / GIB:.1f} GiB free at {home} (versions are cached there)"
    if free < MIN_DISK:
        return Finding("disk", FAIL, text + ": too little to cache a version")
    if free < LOW_DISK:
        return Finding("disk", WARN, text + ": enough for the tiny model, tight for a real one")
    return Finding("disk", OK, text)


def check_throughput(device: str) -> tuple[Finding, float]:
    rate = measure_tokens_per_s(device)
    return Finding("speed", OK, f"{rate:,.0f} tokens/s through the built-in tiny model on {device} "
                                f"(the coordinator sizes lease deadlines from this)"), rate


def probe_coordinator(address: str, security: Security) -> tuple[list[Finding], RunView | None]:
    """Reachability, clock skew and the run, read-only. Returns findings and what the run looks like."""
    try:
        channel = sync_channel(address, security)
    except ChannelError as exc:
        return [Finding("coordinator", FAIL, str(exc))], None
    with channel:
        stub = pb_grpc.CoordinatorStub(channel)
        try:
            sent = time.time() * 1000
            snapshot = next(iter(stub.Watch(pb.WatchRequest(), timeout=RPC_TIMEOUT_S)))
            received = time.time() * 1000
            reply = stub.GetVersion(pb.GetVersionRequest(latest=True), timeout=RPC_TIMEOUT_S)
        except grpc.RpcError as err:
            return [Finding("coordinator", FAIL, f"cannot reach the coordinator at {address} "
                                                 f"({err.code().name.lower()}): {err.details()}")], None
    manifest = Manifest.model_validate_json(reply.manifest_json)
    online = [n for n in snapshot.nodes if n.online]
    view = RunView(snapshot.run_name, snapshot.model, sum(1 for n in online if n.role == pb.ROLE_TRAINER),
                   snapshot.trainers_per_round)
    findings = [Finding("coordinator", OK, f"reached {address}{' over TLS' if security.tls else ''} in "
                                           f"{received - sent:.0f} ms: run {view.run_name!r}, model {view.model}, "
                                           f"version {manifest.version} ({manifest.size / 1024:.0f} KiB), "
                                           f"{len(online)} node(s) online")]
    # The server stamped its clock somewhere between send and receive: judge against the midpoint.
    skew_s = (snapshot.server_time_ms - (sent + received) / 2) / 1000
    if abs(skew_s) > CLOCK_WINDOW_S:
        findings.append(Finding("clock", FAIL, f"this machine's clock is {skew_s:+.0f} s off the coordinator's; "
                                               f"signed requests beyond ±{CLOCK_WINDOW_S:.0f} s are refused: "
                                               f"set the clock (NTP)"))
    elif abs(skew_s) > CLOCK_WARN_S:
        findings.append(Finding("clock", WARN, f"this machine's clock is {skew_s:+.1f} s off the coordinator's; "
                                               f"fine, but turn on NTP before it drifts further"))
    else:
        findings.append(Finding("clock", OK, f"within {max(abs(skew_s), 0.001):.3f} s of the coordinator's"))
    return findings, view


def reachability(maddrs: list[str]) -> Finding:
    """Public when the peer listens on a global address; behind NAT when only on private ones."""
    hosts = set()
    for text in maddrs:
        parts = text.split("/")
        if len(parts) > 2 and parts[1] in ("ip4", "ip6"):
            hosts.add(ipaddress.ip_address(parts[2]))
    public = sorted(str(h) for h in hosts if h.is_global)
    if public:
        return Finding("p2p", OK, f"public: peers can dial this machine at {', '.join(public)} (if the firewall "
                                  f"lets the port in), so it can serve versions and train")
    private = sorted(str(h) for h in hosts if not h.is_loopback)
    return Finding("p2p", OK, f"behind NAT (only private addresses: {', '.join(private) or 'loopback'}): "
                              f"peers reach this machine through connections it opens or a relay; fine "
                              f"for inference, and for training when round-mates can reach each other")


def check_p2p(timeout_s: float = P2P_TIMEOUT_S) -> Finding:
    from .p2p import PeerNode  # hivemind loads only for this check

    home = Path(tempfile.mkdtemp(prefix="potluck-doctor-"))
    pool = concurrent.futures.ThreadPoolExecutor(1)
    future = pool.submit(PeerNode, Identity.generate(), home, ("/ip4/0.0.0.0/tcp/0",))
    try:
        peer = future.result(timeout_s)
    except concurrent.futures.TimeoutError:
        return Finding("p2p", WARN, f"client-only: the p2p daemon did not start within {timeout_s:.0f} s; this "
                                    f"machine can do inference but not train")
    except Exception as exc:  # hivemind reports a failed daemon start with several error types
        return Finding("p2p", WARN, f"client-only: the p2p daemon failed to start ({exc}); this machine can do "
                                    f"inference but not train")
    finally:
        pool.shutdown(wait=False)
    try:
        return reachability(peer.maddrs)
    finally:
        peer.shutdown()
        shutil.rmtree(home, ignore_errors=True)


def likely_role(hardware: pb.Hardware, view: RunView | None) -> Finding:
    if view is None:
        return Finding("role", WARN, "unknown until the coordinator is reachable")
    weights = model_weight_bytes(view.model)
    if weights and usable_memory(hardware) < memory_needed(pb.ROLE_INFERENCE, weights):
        return Finding("role", FAIL, f"{view.model} needs about {memory_needed(pb.ROLE_INFERENCE, weights) / GIB:.1f}"
                                     f" GiB even for inference; this machine has {usable_memory(hardware) / GIB:.1f}")
    # Admission rules are the host's secret: assume the trainer role is open.
    choice = choose_role(hardware, RunNeeds(view.trainers_active, view.trainers_wanted, weights, True))
    return Finding("role", OK, f"likely {pb.Role.Name(choice.role)[5:].lower()} with --role auto "
                               f"({choice.reason}); validators are named by the run's host")


def diagnose(address: str | None, home: Path, device: str, security: Security = PLAINTEXT,
             p2p_timeout_s: float = P2P_TIMEOUT_S) -> list[Finding]:
    hardware = probe(device, home, measure=False)
    findings = [check_gpu(), check_memory(hardware), check_disk(home, hardware.disk_free_bytes)]
    speed, rate = check_throughput(device)
    findings.append(speed)
    hardware.measured_tokens_per_s = rate
    view = None
    if address:
        reached, view = probe_coordinator(address, security)
        findings += reached
    findings.append(check_p2p(p2p_timeout_s))
    if address:
        findings.append(likely_role(hardware, view))
    return findings


def report(findings: list[Finding]) -> str:
    lines = [f"[{f.verdict:>4}] {f.topic:<11} {f.text}" for f in findings]
    failed = [f.topic for f in findings if f.verdict == FAIL]
    lines.append(f"cannot join: {', '.join(failed)} failed" if failed else "ready to join")
    return "\n".join(lines)


def exit_code(findings: list[Finding]) -> int:
    return 1 if any(f.verdict == FAIL for f in findings) else 0
