"""`potluck demo`: a whole swarm on this machine — a coordinator, inference nodes and a trainer as
separate processes on loopback — learning arithmetic with the tiny built-in model.

It follows the run through the coordinator's Watch stream (the same one a TUI uses), prints one line
per version, stops every process cleanly (also on Ctrl-C), and with --json ends with one JSON line.
With --tui it opens the host TUI over the swarm instead, until you quit it (q).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from protocol.channel import aio_channel
from protocol.v1 import coordinator_pb2 as pb
from protocol.v1 import coordinator_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from node.tui.app import PotluckTui

ADDRESS_FILE = "coordinator.addr"
START_TIMEOUT_S = 180.0
STOP_GRACE_S = 15.0
ALIVE_CHECK_S = 1.0


def add_commands(subparsers) -> None:
    demo = subparsers.add_parser("demo", help="run a whole swarm on this machine")
    demo.add_argument("--run", default="demo", help="run file or preset (default: demo)")
    demo.add_argument("--minutes", type=float, default=6.0, help="training time before stopping")
    demo.add_argument("--outer-steps", type=int, default=0, help="stop after this many versions (0: by time)")
    demo.add_argument("--inference", type=int, default=2, help="inference nodes")
    demo.add_argument("--trainers", type=int, default=2, help="trainer nodes (they share each round's batch)")
    demo.add_argument("--data", type=Path, default=None, help="keep state and logs here (default: a temp dir)")
    demo.add_argument("--json", action="store_true", help="end with one JSON line of results")
    demo.add_argument("--tui", action="store_true",
                      help="watch the swarm in the host TUI until you quit it (instead of --minutes/--outer-steps)")
    demo.set_defaults(handler=_demo)


@dataclass
class Swarm:
    root: Path
    procs: list[tuple[str, subprocess.Popen]] = field(default_factory=list)

    def spawn(self, name: str, *args: str) -> subprocess.Popen:
        log = open(self.root / "logs" / f"{name}.log", "wb")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        # A session of its own, so a terminal's Ctrl-C reaches only the demo, which then stops the
        # nodes first (they return their leases) and the coordinator last.
        proc = subprocess.Popen([sys.executable, "-m", "potluck", *args], stdout=log, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True)
        self.procs.append((name, proc))
        return proc

    def check_alive(self) -> None:
        for name, proc in self.procs:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with code {proc.returncode}; see {self.root / 'logs' / name}.log")

    def stop(self) -> None:
        nodes = [p for name, p in self.procs if name != "coordinator"]
        coordinator = [p for name, p in self.procs if name == "coordinator"]
        for group in (nodes, coordinator):
            for proc in group:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGINT)
            for proc in group:
                try:
                    proc.wait(STOP_GRACE_S)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def wait_for_address(data_dir: Path, coordinator: subprocess.Popen) -> str:
    deadline = time.monotonic() + START_TIMEOUT_S
    path = data_dir / ADDRESS_FILE
    while time.monotonic() < deadline:
        if path.exists():
            return path.read_text().strip()
        if coordinator.poll() is not None:
            raise RuntimeError(f"coordinator exited with code {coordinator.returncode}")
        time.sleep(0.1)
    raise TimeoutError("coordinator did not start in time")


def summary(snapshot: pb.SwarmSnapshot, wall_s: float) -> dict:
    evaluated = [v for v in snapshot.versions if v.has_eval]
    # A version's reward is over the rollouts generated with it; the newest has too few yet.
    rewarded = [v for v in snapshot.versions[:-1] if v.rollouts_generated]
    return {
        "outer_steps": snapshot.current_version,
        "versions": len(snapshot.versions),
        "eval_accuracy_first": evaluated[0].eval_accuracy if evaluated else None,
        "eval_accuracy_last": evaluated[-1].eval_accuracy if evaluated else None,
        "eval_version_last": evaluated[-1].version if evaluated else None,
        "reward_first": rewarded[0].reward_mean if rewarded else None,
        "reward_last": rewarded[-1].reward_mean if rewarded else None,
        "rollouts_accepted": snapshot.rollouts_accepted,
        "rollouts_rejected": snapshot.rollouts_rejected,
        "wall_s": round(wall_s, 1),
    }


def start_swarm(swarm: Swarm, run: str, inference: int, trainers: int, out) -> str:
    """Start the coordinator, then the nodes once it listens; return its address."""
    (swarm.root / "coordinator" / ADDRESS_FILE).unlink(missing_ok=True)  # from a killed earlier run
    coordinator = swarm.spawn("coordinator", "coordinator", "serve", "--run", run,
                              "--listen", "127.0.0.1:0", "--data", str(swarm.root / "coordinator"))
    address = wait_for_address(swarm.root / "coordinator", coordinator)
    print(f"coordinator on {address}; starting {inference} inference node(s) and {trainers} trainer(s)",
          file=out, flush=True)
    for role, count in (("inference", inference), ("trainer", trainers)):
        for i in range(count):
            swarm.spawn(f"{role}-{i}", "node", "join", "--coordinator", address, "--role", role,
                        "--home", str(swarm.root / f"{role}-{i}"), "--name", f"{role}-{i}", "--threads", "1")
    return address


def host_view(address: str) -> PotluckTui:
    # Textual loads only for --tui, so `potluck --help` and the plain demo stay quick to start.
    from node.tui.app import PotluckTui
    from node.tui.feed import watch

    return PotluckTui(watch(address), address)


async def _exit_if_a_process_dies(app: PotluckTui, swarm: Swarm) -> RuntimeError | None:
    # The TUI would go on showing a swarm that no longer works; close it and say which process died.
    while True:
        await asyncio.sleep(ALIVE_CHECK_S)
        try:
            swarm.check_alive()
        except RuntimeError as exc:
            app.exit(return_code=1)
            return exc


async def watch_in_tui(app: PotluckTui, swarm: Swarm, **run_options: Any) -> pb.SwarmSnapshot | None:
    """Run the host TUI until it is quit; the last snapshot it saw, for the summary. run_options go
    to App.run_async (tests run it headless with an auto_pilot)."""
    guard = asyncio.create_task(_exit_if_a_process_dies(app, swarm))
    try:
        await app.run_async(**run_options)
    finally:
        guard.cancel()
    if guard.done() and not guard.cancelled() and (died := guard.result()) is not None:
        raise died
    return app.state.snapshot


def _accuracy(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def report(snapshot: pb.SwarmSnapshot, wall_s: float, as_json: bool, out) -> None:
    result = summary(snapshot, wall_s)
    first, last = result["eval_accuracy_first"], result["eval_accuracy_last"]
    gain = "" if first is None or last is None else f" ({last - first:+.3f})"
    print(f"done: {result['outer_steps']} outer steps, held-out accuracy {_accuracy(first)} -> "
          f"{_accuracy(last)}{gain} in {result['wall_s']:.0f}s; every rollout verified: "
          f"{result['rollouts_accepted']:,} accepted, {result['rollouts_rejected']:,} rejected", file=out, flush=True)
    if as_json:
        print(json.dumps(result))


def _line(v: pb.VersionInfo, elapsed_s: float) -> str:
    return (f"  v{v.version:<4} held-out accuracy {v.eval_accuracy:.3f}   reward {v.reward_mean:.3f} "
            f"over {v.rollouts_generated} rollouts   {elapsed_s:5.0f}s")


async def follow(address: str, minutes: float, outer_steps: int, swarm: Swarm, out) -> pb.SwarmSnapshot:
    """Print one line per evaluated version from the Watch stream; return once the budget is spent
    (time or outer steps) and a version at least as new as the one current then is evaluated."""
    started = time.monotonic()
    deadline, target, shown = started + minutes * 60, None, set()
    async with aio_channel(address) as channel:  # the demo's coordinator is on loopback: plaintext
        async for snap in pb_grpc.CoordinatorStub(channel).Watch(pb.WatchRequest()):
            swarm.check_alive()
            # A version's line waits for its successor, by when most of its rollouts are in.
            for v in snap.versions:
                if v.has_eval and v.version not in shown and v.version < snap.current_version:
                    shown.add(v.version)
                    print(_line(v, time.monotonic() - started), file=out, flush=True)
            if target is None and (time.monotonic() >= deadline or
                                   (outer_steps and snap.current_version >= outer_steps)):
                target = snap.current_version
            evaluated = [v.version for v in snap.versions if v.has_eval]
            if target is not None and evaluated and (evaluated[-1] >= target or
                                                     time.monotonic() >= deadline + 120):
                return snap


def _demo(args: argparse.Namespace) -> int:
    out = sys.stderr if args.json else sys.stdout
    root = args.data or Path(tempfile.mkdtemp(prefix="potluck-demo-"))
    (root / "logs").mkdir(parents=True, exist_ok=True)
    swarm = Swarm(root)
    started = time.monotonic()
    print(f"potluck demo: state and logs in {root}", file=out, flush=True)
    try:
        address = start_swarm(swarm, args.run, args.inference, args.trainers, out)
        if args.tui:
            snapshot = asyncio.run(watch_in_tui(host_view(address), swarm))
        else:
            snapshot = asyncio.run(follow(address, args.minutes, args.outer_steps, swarm, out))
    except KeyboardInterrupt:
        print("interrupted; stopping the swarm", file=out, flush=True)
        return 130
    except (RuntimeError, TimeoutError) as exc:
        print(f"demo failed: {exc}", file=out, flush=True)
        return 1
    finally:
        swarm.stop()
    if snapshot is None:  # the TUI was quit before the first snapshot came
        print("stopped before the swarm reported anything", file=out, flush=True)
        return 0
    report(snapshot, time.monotonic() - started, args.json, out)
    return 0
