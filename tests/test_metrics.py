"""The coordinator's Prometheus endpoint, scraped from a real coordinator process."""
import urllib.request

import grpc
import pytest

from protocol.identity import Identity
from protocol.signing import NonceClock, sign_request
from protocol.v1 import coordinator_pb2 as pb
from protocol.v1 import coordinator_pb2_grpc as pb_grpc
from tests.procs import Coordinator, running


def scrape(address: str) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://{address}/metrics", timeout=10).read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def test_metrics_count_rpcs_by_status_and_report_run_state(tmp_path):
    data = tmp_path / "data"
    coordinator = Coordinator("test", data, tmp_path, extra=("--metrics", "127.0.0.1:0"))
    with running(coordinator), grpc.insecure_channel(coordinator.address) as channel:
        stub = pb_grpc.CoordinatorStub(channel)
        identity, clock = Identity.generate(), NonceClock()
        stub.Register(sign_request(identity, clock, "Register", pb.RegisterBody(
            public_key=identity.public_key, role=pb.ROLE_INFERENCE)))
        for _ in range(3):
            stub.Heartbeat(sign_request(identity, clock, "Heartbeat", pb.HeartbeatBody(state="idle")))
        forged = sign_request(identity, clock, "Heartbeat", pb.HeartbeatBody())
        forged.signature = bytes(64)
        with pytest.raises(grpc.RpcError):
            stub.Heartbeat(forged)

        samples = scrape((data / "metrics.addr").read_text().strip())
        assert samples['potluck_rpc_requests_total{code="OK",method="Register"}'] == 1
        assert samples['potluck_rpc_requests_total{code="OK",method="Heartbeat"}'] == 3
        assert samples['potluck_rpc_requests_total{code="UNAUTHENTICATED",method="Heartbeat"}'] == 1
        assert samples['potluck_rpc_latency_seconds_count{method="Heartbeat"}'] == 4
        assert samples['potluck_nodes{role="inference",state="idle"}'] == 1
        assert samples["potluck_version"] == 0
        assert samples['potluck_rpc_refusals_total{method="Heartbeat",reason="bad_signature"}'] == 1
        assert samples["potluck_banned_nodes"] == 0 and samples["potluck_paused"] == 0
