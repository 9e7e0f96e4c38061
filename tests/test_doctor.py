"""`potluck node doctor` against a real coordinator process, and against an address nobody serves."""
import socket
import subprocess
import sys

from node.doctor import FAIL, OK, exit_code, probe_coordinator, reachability
from protocol.channel import PLAINTEXT
from tests.procs import ROOT, Coordinator


def test_doctor_reports_a_reachable_coordinator_and_the_role_it_would_get(tmp_path):
    coordinator = Coordinator("test", tmp_path / "data", tmp_path)
    try:
        done = subprocess.run([sys.executable, "-m", "potluck", "node", "doctor", "--coordinator",
                               coordinator.address, "--device", "cpu", "--home", str(tmp_path / "home")],
                              cwd=ROOT, capture_output=True, text=True, timeout=300)
    finally:
        assert coordinator.stop() == 0, coordinator.log()
    lines = {line[7:18].strip(): line for line in done.stdout.splitlines() if line.startswith("[")}
    assert done.returncode == 0, done.stdout + done.stderr
    assert set(lines) == {"gpu", "memory", "disk", "speed", "coordinator", "clock", "p2p", "role"}, done.stdout
    assert "no GPU: CPU only" in lines["gpu"]
    assert f"reached {coordinator.address}" in lines["coordinator"] and "run 'potluck-test'" in lines["coordinator"]
    assert lines["clock"].startswith("[  ok]")  # the same machine's clock
    assert "tokens/s" in lines["speed"]
    # An empty run with trainers_per_round = 1 wants a trainer first.
    assert "likely trainer with --role auto (the run has 0 of the 1 trainer(s)" in lines["role"]
    assert done.stdout.rstrip().endswith("ready to join")


def test_an_unreachable_coordinator_fails_with_the_reason():
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there now
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"
    findings, view = probe_coordinator(address, PLAINTEXT)
    assert view is None and exit_code(findings) == 1
    assert findings[0].verdict == FAIL
    assert f"cannot reach the coordinator at {address} (unavailable)" in findings[0].text


def test_reachability_reads_the_listening_addresses():
    public = reachability(["/ip4/127.0.0.1/tcp/4001/p2p/x", "/ip4/8.8.8.8/tcp/4001/p2p/x"])
    assert public.verdict == OK and public.text.startswith("public") and "8.8.8.8" in public.text
    nat = reachability(["/ip4/127.0.0.1/tcp/4001", "/ip4/192.168.1.7/tcp/4001"])
    assert nat.text.startswith("behind NAT") and "192.168.1.7" in nat.text
