"""Admission and admin operations against a real coordinator process: a join token, a trainer
allowlist, and pause, resume, ban, unban and export signed with the admin key (also via the CLI)."""
import json
import subprocess
import sys

import grpc
import pytest

from coordinator.admission import role_allowed, token_hash
from potluck.admin import call
from protocol.channel import PLAINTEXT
from protocol.config import PRESETS_DIR, AdmissionConfig
from protocol.identity import Identity
from protocol.signing import NonceClock, admin_method, sign_request
from protocol.v1 import admin_pb2 as apb
from protocol.v1 import admin_pb2_grpc as apb_grpc
from protocol.v1 import coordinator_pb2 as pb
from protocol.v1 import coordinator_pb2_grpc as pb_grpc
from tests.procs import ROOT, Coordinator, Proc, watch_until
from tests.rpc import Node, SkewedClock, reason_of, refused

TOKEN = "open-sesame-7f3a"
TRAINER = Identity.generate()


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("admin")
    run = tmp / "run.toml"
    run.write_text((PRESETS_DIR / "test.toml").read_text().replace("batch_groups = 4", "batch_groups = 64") +
                   f'\n[admission]\njoin_token_sha256 = "{token_hash(TOKEN)}"\ntrainers = ["{TRAINER.node_id}"]\n')
    proc = Coordinator(str(run), tmp / "data", tmp, extra=("--log-format", "json"))
    proc.key = tmp / "data" / "coordinator.key"
    yield proc
    assert proc.stop() == 0, proc.log()


@pytest.fixture
def stub(coordinator):
    with grpc.insecure_channel(coordinator.address) as channel:
        yield pb_grpc.CoordinatorStub(channel)


def admin(coordinator, method, body):
    return call(coordinator.address, PLAINTEXT, Identity.load_or_create(coordinator.key), method, body)


def cli(coordinator, *args):
    return subprocess.run([sys.executable, "-m", "potluck", "admin", *args, "--coordinator", coordinator.address,
                           "--key", str(coordinator.key)], cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_join_token_required(stub):
    for token in ("", "wrong"):
        refused(lambda: Node(stub, join_token=token), grpc.StatusCode.UNAUTHENTICATED, "bad_join_token")
    reply = Node(stub, join_token=TOKEN).register_reply
    assert reply.current_version == 0
    assert "admission" not in json.loads(reply.run_config_json)  # host-only: never sent to nodes


def test_json_logs_name_each_refusal(coordinator, stub):
    refused(lambda: Node(stub, join_token="wrong"), grpc.StatusCode.UNAUTHENTICATED, "bad_join_token")
    entries = [json.loads(line) for line in coordinator.log().splitlines() if line.startswith("{")]
    assert any(e["message"].startswith("coordinator for run") for e in entries)
    refusal = [e for e in entries if e.get("reason") == "bad_join_token"][-1]
    assert refusal["rpc"] == "Register" and refusal["code"] == "UNAUTHENTICATED" and refusal["level"] == "info"


def test_trainer_allowlist(stub):
    refused(lambda: Node(stub, role=pb.ROLE_TRAINER, join_token=TOKEN), grpc.StatusCode.PERMISSION_DENIED,
            "not_allowed")
    assert Node(stub, join_token=TOKEN).register_reply.role == pb.ROLE_INFERENCE  # auto: not a trainer
    assert Node(stub, role=pb.ROLE_TRAINER, join_token=TOKEN, identity=TRAINER).register_reply.role == pb.ROLE_TRAINER


def test_role_rules():
    rules = AdmissionConfig(trainers=("a",), trainer_min_credit=100.0)
    assert role_allowed(rules, pb.ROLE_TRAINER, "a", 0.0)
    assert role_allowed(rules, pb.ROLE_TRAINER, "b", 100.0) and not role_allowed(rules, pb.ROLE_TRAINER, "b", 99.0)
    assert role_allowed(rules, pb.ROLE_INFERENCE, "b", 0.0)
    assert role_allowed(AdmissionConfig(), pb.ROLE_TRAINER, "b", 0.0)
    assert not role_allowed(AdmissionConfig(), pb.ROLE_VALIDATOR, "b", 1e9)  # validators are named, never open
    assert role_allowed(AdmissionConfig(validators=("a",)), pb.ROLE_VALIDATOR, "a", 0.0)
    assert not role_allowed(AdmissionConfig(validators=("a",)), pb.ROLE_VALIDATOR, "b", 1e9)


def test_pause_and_resume_with_the_cli(coordinator, stub):
    node = Node(stub, join_token=TOKEN)
    paused = cli(coordinator, "pause", "--reason", "maintenance")
    assert paused.returncode == 0 and "paused" in paused.stdout, paused.stderr
    lease = node.call("LeaseRollouts", pb.LeaseRolloutsBody())
    assert not lease.has_work and lease.retry_after_ms >= 1000
    exported = json.loads(cli(coordinator, "export").stdout)
    assert exported["paused"] is True and any("maintenance" in e["text"] for e in exported["events"])
    assert cli(coordinator, "resume").returncode == 0
    assert node.call("LeaseRollouts", pb.LeaseRolloutsBody()).has_work


def test_ban_takes_back_leases_and_refuses_calls(coordinator, stub):
    node = Node(stub, join_token=TOKEN)
    lease = node.call("LeaseRollouts", pb.LeaseRolloutsBody())
    assert lease.has_work
    reply = admin(coordinator, "Ban", apb.BanBody(node_id=node.identity.node_id, reason="forged rollouts"))
    assert "1 lease(s)" in reply.message
    refused(lambda: node.call("Heartbeat", pb.HeartbeatBody()), grpc.StatusCode.PERMISSION_DENIED, "banned")
    refused(lambda: Node(stub, join_token=TOKEN, identity=node.identity), grpc.StatusCode.PERMISSION_DENIED,
            "banned")
    state = json.loads(admin(coordinator, "Export", apb.ExportBody()).state_json)
    assert node.identity.node_id in {b["node_id"] for b in state["bans"]}
    assert lease.lease_id not in {entry["lease_id"] for entry in state["leases"]}
    assert {n["node_id"]: n["state"] for n in state["nodes"]}[node.identity.node_id] == "banned"
    admin(coordinator, "Unban", apb.BanBody(node_id=node.identity.node_id))
    assert node.call("Heartbeat", pb.HeartbeatBody(state="idle")).current_version == 0
    with pytest.raises(grpc.RpcError) as info:
        admin(coordinator, "Unban", apb.BanBody(node_id=node.identity.node_id))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND and reason_of(info.value) == "not_banned"
    with pytest.raises(grpc.RpcError) as info:
        admin(coordinator, "Ban", apb.BanBody(node_id="nobody"))
    assert reason_of(info.value) == "bad_node_id"


def test_a_banned_node_process_stops(coordinator, tmp_path):
    """A node banned while it works exits by itself with 2, says why, and calls nothing more (the ban
    took its leases back)."""
    node = Proc("banned", ["node", "join", "--coordinator", coordinator.address, "--role", "inference",
                           "--join-token", TOKEN, "--home", str(tmp_path / "banned"), "--name", "banned",
                           "--threads", "1"], tmp_path)
    try:
        snapshot = watch_until(coordinator.address, lambda s: any(
            n.name == "banned" and n.rollouts_accepted > 0 for n in s.nodes), timeout=120)
        node_id = next(n.node_id for n in snapshot.nodes if n.name == "banned")
        admin(coordinator, "Ban", apb.BanBody(node_id=node_id, reason="test"))
        assert node.popen.wait(timeout=60) == 2, node.log()
    finally:
        node.stop()
    lines = node.log().splitlines()
    assert "refused this node (banned)" in lines[-1] and node_id in lines[-1], node.log()
    assert "retrying" not in node.log() and "could not return leases" not in node.log()
    refusals = [json.loads(line) for line in coordinator.log().splitlines() if line.startswith("{")]
    assert not [e for e in refusals if e.get("rpc") == "ReturnLeases" and e.get("reason") == "banned"]


def test_admin_calls_need_the_admin_key(coordinator):
    key = Identity.load_or_create(coordinator.key)
    with grpc.insecure_channel(coordinator.address) as channel:
        stub = apb_grpc.AdminStub(channel)
        stranger = Identity.generate()
        request = sign_request(stranger, NonceClock(), admin_method("Pause"), apb.PauseBody())
        refused(lambda: stub.Pause(request), grpc.StatusCode.PERMISSION_DENIED, "not_admin")
        request.node_id = key.node_id  # the admin's id on a stranger's signature
        refused(lambda: stub.Pause(request), grpc.StatusCode.UNAUTHENTICATED, "bad_signature")
        # A node-style signature by the admin key (no "admin." prefix) does not count either.
        request = sign_request(key, NonceClock(), "Pause", apb.PauseBody())
        refused(lambda: stub.Pause(request), grpc.StatusCode.UNAUTHENTICATED, "bad_signature")
        export = sign_request(key, NonceClock(), admin_method("Export"), apb.ExportBody())
        assert json.loads(stub.Export(export).state_json)["run"]["name"] == "potluck-test"
        refused(lambda: stub.Export(export), grpc.StatusCode.UNAUTHENTICATED, "replayed_nonce")
        stale = sign_request(key, SkewedClock(-3600), admin_method("Export"), apb.ExportBody())
        refused(lambda: stub.Export(stale), grpc.StatusCode.UNAUTHENTICATED, "stale_timestamp")


def test_cli_with_a_wrong_key_explains(coordinator, tmp_path):
    other = tmp_path / "other.key"
    Identity.load_or_create(other)
    result = subprocess.run([sys.executable, "-m", "potluck", "admin", "export", "--coordinator", coordinator.address,
                             "--key", str(other)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "not_admin" in result.stderr and "Traceback" not in result.stderr
