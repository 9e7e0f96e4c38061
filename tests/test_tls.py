"""TLS against a real coordinator process: a self-signed certificate made once and kept, pinned by
fingerprint or trusted as a CA; a wrong fingerprint or a plaintext client is refused."""
import json
import signal
import subprocess
import sys

import grpc
import pytest

from coordinator.server import check_listen
from potluck.admin import call
from protocol.channel import ChannelError, Security, fingerprint, sync_channel
from protocol.identity import Identity
from protocol.v1 import admin_pb2 as apb
from protocol.v1 import coordinator_pb2 as pb
from protocol.v1 import coordinator_pb2_grpc as pb_grpc
from tests.procs import ROOT, Coordinator
from tests.rpc import Node

WRONG = "sha256:" + "ab" * 32


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tls")
    proc = Coordinator("test", tmp / "data", tmp, extra=("--tls",))
    yield proc, tmp / "data"
    assert proc.stop() == 0, proc.log()


def test_pinned_fingerprint_works_and_matches_the_certificate(served):
    proc, data = served
    pin = (data / "tls.fingerprint").read_text().strip()
    assert pin == fingerprint((data / "tls.crt").read_bytes()) and pin in proc.log()
    assert oct((data / "tls.key").stat().st_mode & 0o777) == "0o600"
    with sync_channel(proc.address, Security(fingerprint=pin.upper().replace("SHA256", "sha256"))) as channel:
        node = Node(pb_grpc.CoordinatorStub(channel))
        assert node.register_reply.current_version == 0
        assert node.call("Heartbeat", pb.HeartbeatBody(state="idle")).current_version == 0


def test_admin_over_pinned_tls(served):
    proc, data = served
    pin = (data / "tls.fingerprint").read_text().strip()
    reply = call(proc.address, Security(fingerprint=pin), Identity.load_or_create(data / "coordinator.key"),
                 "Export", apb.ExportBody())
    assert json.loads(reply.state_json)["run"]["name"] == "potluck-test"


def test_certificate_as_ca_works(served):
    proc, data = served
    with sync_channel(proc.address, Security(ca=data / "tls.crt")) as channel:
        assert pb_grpc.CoordinatorStub(channel).GetVersion(pb.GetVersionRequest(latest=True)).manifest_json


def test_wrong_fingerprint_is_refused(served):
    proc, _ = served
    with pytest.raises(ChannelError, match="not the pinned"):
        sync_channel(proc.address, Security(fingerprint=WRONG))
    with pytest.raises(ChannelError, match="sha256:<64 hex digits>"):
        Security(fingerprint="sha256:1234")


def test_plaintext_client_cannot_talk_to_a_tls_server(served):
    proc, _ = served
    with grpc.insecure_channel(proc.address) as channel:
        with pytest.raises(grpc.RpcError) as info:
            pb_grpc.CoordinatorStub(channel).GetVersion(pb.GetVersionRequest(latest=True), timeout=5)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_node_with_wrong_fingerprint_exits_with_a_clear_error(served, tmp_path):
    proc, _ = served
    result = subprocess.run([sys.executable, "-m", "potluck", "node", "join", "--coordinator", proc.address,
                             "--fingerprint", WRONG, "--home", str(tmp_path / "home"), "--plain"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "not the pinned" in result.stderr and "Traceback" not in result.stderr


def test_certificate_is_kept_across_restarts(tmp_path):
    first = Coordinator("test", tmp_path / "data", tmp_path, extra=("--tls",))
    pin = (tmp_path / "data" / "tls.fingerprint").read_text()
    first.stop(signal.SIGKILL)
    again = Coordinator("test", tmp_path / "data", tmp_path, name="again", extra=("--tls",))
    try:
        assert (tmp_path / "data" / "tls.fingerprint").read_text() == pin
        with sync_channel(again.address, Security(fingerprint=pin.strip())) as channel:
            assert pb_grpc.CoordinatorStub(channel).GetVersion(pb.GetVersionRequest(latest=True)).manifest_json
    finally:
        assert again.stop() == 0


def test_plaintext_only_on_loopback():
    check_listen("127.0.0.1:7420", insecure=False)
    check_listen("[::1]:7420", insecure=False)
    check_listen("0.0.0.0:7420", insecure=False, use_tls=True)
    check_listen("0.0.0.0:7420", insecure=True)
    with pytest.raises(ValueError, match="--tls"):
        check_listen("0.0.0.0:7420", insecure=False)
