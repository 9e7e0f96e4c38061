"""Real potluck processes for tests: started on loopback, stopped (and killed if need be) by the test."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import grpc

from protocol.v1 import coordinator_pb2 as pb
from protocol.v1 import coordinator_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 120


class Proc:
    def __init__(self, name: str, args: list[str], log_dir: Path, module: str = "potluck") -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "wb")
        self.popen = subprocess.Popen([sys.executable, "-m", module, *args], cwd=ROOT, stdout=self._log,
                                      stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1"))

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGINT, timeout: float = 20.0) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._log.close()
        return self.popen.returncode


class Coordinator(Proc):
    def __init__(self, run: str, data: Path, log_dir: Path, name: str = "coordinator",
                 listen: str = "127.0.0.1:0", extra: tuple[str, ...] = ()) -> None:
        address_file = data / "coordinator.addr"
        address_file.unlink(missing_ok=True)  # left behind by a killed coordinator
        super().__init__(name, ["coordinator", "serve", "--run", run, "--listen", listen,
                                "--data", str(data), *extra], log_dir)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not address_file.exists():
            if self.popen.poll() is not None or time.monotonic() > deadline:
                self.stop(signal.SIGKILL)
                raise RuntimeError(f"coordinator did not start:\n{self.log()}")
            time.sleep(0.05)
        self.address = address_file.read_text().strip()


def node(address: str, role: str, home: Path, log_dir: Path) -> Proc:
    return Proc(f"{role}-{home.name}", ["node", "join", "--coordinator", address, "--role", role,
                                        "--home", str(home), "--name", home.name, "--threads", "1"], log_dir)


@contextmanager
def running(*procs: Proc):
    try:
        yield procs
    finally:
        for proc in procs:
            proc.stop()


def watch_until(address: str, predicate, timeout: float) -> pb.SwarmSnapshot:
    """The first snapshot from the Watch stream that satisfies predicate; fails after timeout."""
    with grpc.insecure_channel(address) as channel:
        stream = pb_grpc.CoordinatorStub(channel).Watch(pb.WatchRequest(), timeout=timeout)
        last = None
        try:
            for snapshot in stream:
                last = snapshot
                if predicate(snapshot):
                    return snapshot
        except grpc.RpcError as err:
            if err.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                raise
        raise AssertionError(f"condition not reached in {timeout}s; last snapshot:\n{last}")
