"""Load on one coordinator process: simulated nodes as real gRPC clients on loopback, each with its
own key and nonces, running the cycle a real inference node runs: a signed heartbeat at the interval
the coordinator asks for, and lease -> generate (simulated by --work-seconds of waiting) -> submit.

    python -m bench.coordinator_load --json                     # 2,000 nodes, 2 client processes
    python -m bench.coordinator_load --nodes 200 --seconds 20   # a quick look

Nodes join over --ramp-seconds (a swarm grows; it does not arrive in one instant), then latencies
of every RPC are recorded for --seconds. Two arms, one after the other, each with a fresh
coordinator: nodes that join as inference nodes, then the same swarm joining with `--role auto`,
which the coordinator considers moving (coordinator/roles.py) on each heartbeat and lease once they
have held their role [roles] hold_seconds. The last stdout line is one JSON object: the inference
arm's nodes, per_node_rpc_per_s, rpc_per_s, p50_ms, p99_ms, errors and per-method figures, the
auto arm's under "auto", and auto/inference ratios under "auto_over_inference".
"""
from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EOS = 2  # the built-in model's EOS id: an immediate EOS is a valid (reward 0) completion
RUN_FILE = """
name = "potluck-load"
heartbeat_seconds = 5.0

[rollouts]
group_size = 4
prompts_per_shard = 4
batch_groups = 65536
lease_seconds = 120

[eval]
every = 0

[verification]
rate = 1e-9
embedded = false

[limits]
heartbeat_target_rps = {target}

[roles]
hold_seconds = {hold}
"""
ARMS = {"inference": "ROLE_INFERENCE", "auto": "ROLE_UNSPECIFIED"}  # the role each arm's nodes join with


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


async def _node(stub, pb, sign, identity, clock, role: int, work_s: float, measure_from: float, stop_at: float,
                samples: dict, errors: dict) -> None:
    """One simulated node until stop_at; latencies (ms) of calls started after measure_from."""
    import grpc

    in_order = asyncio.Lock()  # as node/client.py: nonces must arrive in the order they were issued

    async def call(method: str, body):
        async with in_order:  # the time waiting here is the node's own queue, not the coordinator's
            started = time.monotonic()
            try:
                return await getattr(stub, method)(sign(identity, clock, method, body), timeout=30)
            except grpc.aio.AioRpcError as err:
                if measure_from <= started < stop_at:
                    errors[f"{method}:{err.code().name}"] = errors.get(f"{method}:{err.code().name}", 0) + 1
                return None
            finally:
                if measure_from <= started < stop_at:
                    samples.setdefault(method, []).append((time.monotonic() - started) * 1000)

    # No hardware reported: an auto node has no memory to train in, so it stays an inference node and
    # every heartbeat and lease pays for the coordinator's look at the run's needs, never for a move.
    reply = await call("Register", pb.RegisterBody(public_key=identity.public_key, role=role))
    if reply is None:
        return
    interval = reply.heartbeat_interval_ms / 1000

    async def heartbeats():
        nonlocal interval
        await asyncio.sleep(random.uniform(0, interval))
        while time.monotonic() < stop_at:
            beat = await call("Heartbeat", pb.HeartbeatBody(state="generating", tokens_per_s=100.0))
            interval = beat.heartbeat_interval_ms / 1000 if beat else interval
            await asyncio.sleep(max(0.0, min(interval, stop_at - time.monotonic())))

    beat = asyncio.create_task(heartbeats())
    try:
        await asyncio.sleep(random.uniform(0, work_s))
        while time.monotonic() < stop_at:
            lease = await call("LeaseRollouts", pb.LeaseRolloutsBody())
            if lease is None or not lease.has_work:
                await asyncio.sleep((lease.retry_after_ms / 1000) if lease else 1.0)
                continue
            await asyncio.sleep(min(work_s * random.uniform(0.8, 1.2), max(0.0, stop_at - time.monotonic())))
            rollouts = [pb.Rollout(task_id=p.task_id, sample_index=i, completion_ids=[EOS], logprobs=[-0.5],
                                   finished=True, reward=0.0, proofs=[b"\x00" * 16])
                        for p in lease.prompts for i in range(lease.group_size)]
            await call("SubmitRollouts", pb.SubmitRolloutsBody(lease_id=lease.lease_id, version=lease.version,
                                                               rollouts=rollouts, generation_seconds=work_s))
    finally:
        await beat  # it ends by itself at stop_at; cancelling would cut a call short and count it an error


async def _client(address: str, count: int, role: str, work_s: float, ramp_s: float, measure_from: float,
                  stop_at: float) -> dict:
    import grpc

    from protocol.identity import Identity
    from protocol.signing import NonceClock, sign_request
    from protocol.v1 import coordinator_pb2 as pb
    from protocol.v1 import coordinator_pb2_grpc as pb_grpc

    samples: dict[str, list[float]] = {}
    errors: dict[str, int] = {}
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.CoordinatorStub(channel)
        tasks = []
        for i in range(count):
            tasks.append(asyncio.create_task(_node(stub, pb, sign_request, Identity.generate(), NonceClock(),
                                                   pb.Role.Value(role), work_s, measure_from, stop_at, samples,
                                                   errors)))
            await asyncio.sleep(ramp_s / count)
        await asyncio.gather(*tasks)
    return {"samples": samples, "errors": errors}


def _client_process(address, count, role, work_s, ramp_s, measure_from_wall, stop_at_wall, queue) -> None:
    # Wall-clock deadlines cross the process boundary; each process turns them into its own monotonic time.
    offset = time.monotonic() - time.time()
    queue.put(asyncio.run(_client(address, count, role, work_s, ramp_s, measure_from_wall + offset,
                                  stop_at_wall + offset)))


def _start_coordinator(data: Path, target_rps: float, hold_s: float) -> tuple[subprocess.Popen, str]:
    run = data / "run.toml"
    data.mkdir(parents=True, exist_ok=True)
    run.write_text(RUN_FILE.format(target=target_rps, hold=hold_s))
    log = open(data / "coordinator.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "potluck", "coordinator", "serve", "--run", str(run),
                             "--listen", "127.0.0.1:0", "--data", str(data / "state")], cwd=ROOT,
                            stdout=log, stderr=subprocess.STDOUT)
    address_file = data / "state" / "coordinator.addr"
    deadline = time.monotonic() + 120
    while not address_file.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError((data / "coordinator.log").read_text()[-3000:])
        time.sleep(0.1)
    return proc, address_file.read_text().strip()


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _arm(args: argparse.Namespace, role: str) -> dict:
    """One swarm joining with role against a fresh coordinator: its figures."""
    data = Path(tempfile.mkdtemp(prefix="potluck-load-"))
    coordinator, address = _start_coordinator(data, args.heartbeat_target_rps, args.hold_seconds)
    try:
        now = time.time()
        measure_from, stop_at = now + args.ramp_seconds + 5, now + args.ramp_seconds + 5 + args.seconds
        ctx = multiprocessing.get_context("spawn")
        queue = ctx.Queue()
        shares = [args.nodes // args.procs + (i < args.nodes % args.procs) for i in range(args.procs)]
        clients = [ctx.Process(target=_client_process, args=(address, n, role, args.work_seconds,
                                                            args.ramp_seconds, measure_from, stop_at, queue))
                   for n in shares]
        for client in clients:
            client.start()
        while time.time() < measure_from:
            time.sleep(0.1)
        pids = [coordinator.pid] + [client.pid for client in clients]
        cpu_start = [_cpu_seconds(pid) for pid in pids]
        while time.time() < stop_at:
            time.sleep(0.1)
        cpu_used = [_cpu_seconds(pid) - start for pid, start in zip(pids, cpu_start)]
        results = [queue.get(timeout=120) for _ in clients]
        for client in clients:
            client.join(30)
    finally:
        coordinator.terminate()
        coordinator.wait(30)

    by_method: dict[str, list[float]] = {}
    errors: dict[str, int] = {}
    for result in results:
        for method, values in result["samples"].items():
            by_method.setdefault(method, []).extend(values)
        for key, n in result["errors"].items():
            errors[key] = errors.get(key, 0) + n
    everything = [v for values in by_method.values() for v in values]
    rpc_per_s = len(everything) / args.seconds
    summary = {
        "nodes": args.nodes, "client_procs": args.procs, "cores": os.cpu_count(),
        "work_seconds": args.work_seconds, "measured_s": args.seconds,
        "rpc_per_s": round(rpc_per_s, 1), "per_node_rpc_per_s": round(rpc_per_s / args.nodes, 4),
        "p50_ms": round(percentile(everything, 0.50), 2), "p99_ms": round(percentile(everything, 0.99), 2),
        "max_ms": round(max(everything, default=0.0), 2),
        "errors": sum(errors.values()), "error_kinds": errors,
        "coordinator_cpu_fraction": round(cpu_used[0] / args.seconds, 3),
        "clients_cpu_fraction": round(sum(cpu_used[1:]) / args.seconds, 3),
        "load_avg_1m_after": round(os.getloadavg()[0], 2),  # other work on the machine skews the figures
        "methods": {m: {"calls": len(v), "p50_ms": round(statistics.median(v), 2),
                        "p99_ms": round(percentile(v, 0.99), 2)} for m, v in sorted(by_method.items())},
    }
    if not args.json:
        print(f"{role} nodes:")
        for method, figures in summary["methods"].items():
            print(f"{method:>15}: {figures['calls']:7d} calls  p50 {figures['p50_ms']:7.2f} ms  "
                  f"p99 {figures['p99_ms']:7.2f} ms")
    return summary


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=2000)
    parser.add_argument("--procs", type=int, default=2, help="client processes")
    parser.add_argument("--work-seconds", type=float, default=30.0,
                        help="simulated generation time per shard (a GPU node on a 1-8B model: tens of s)")
    parser.add_argument("--ramp-seconds", type=float, default=30.0)
    parser.add_argument("--seconds", type=float, default=60.0, help="measured window after the ramp")
    parser.add_argument("--heartbeat-target-rps", type=float, default=200.0)
    parser.add_argument("--hold-seconds", type=float, default=5.0,
                        help="[roles] hold_seconds: shorter than the ramp, so auto nodes are past it when measured")
    parser.add_argument("--arms", default="inference,auto", help=f"comma-separated, of {', '.join(ARMS)}")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    unknown = set(args.arms.split(",")) - set(ARMS)
    if unknown:
        parser.error(f"unknown arm(s): {', '.join(sorted(unknown))}")
    arms = {arm: _arm(args, ARMS[arm]) for arm in args.arms.split(",")}
    summary = dict(arms.get("inference", {}))
    if "auto" in arms:
        auto = arms["auto"]
        summary["auto"] = auto
        if "inference" in arms:
            summary["auto_over_inference"] = {
                key: _ratio(auto[key], summary[key])
                for key in ("coordinator_cpu_fraction", "p50_ms", "p99_ms", "rpc_per_s")}
            summary["auto_over_inference"].update({
                f"{method}_p50_ms": _ratio(auto["methods"][method]["p50_ms"], summary["methods"][method]["p50_ms"])
                for method in ("Heartbeat", "LeaseRollouts")
                if method in auto["methods"] and method in summary["methods"]})
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
