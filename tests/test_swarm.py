"""A real coordinator and real nodes on loopback complete outer steps; state survives kill -9."""
import json
import signal
import subprocess
import sys

import grpc

from protocol.checkpoint import sha256_hex, verify_manifest
from protocol.identity import Identity
from protocol.v1 import coordinator_pb2 as pb
from protocol.v1 import coordinator_pb2_grpc as pb_grpc
from tests.procs import ROOT, Coordinator, node, running, watch_until


def fetch(address: str, version: int) -> tuple[pb.VersionManifest, bytes]:
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.CoordinatorStub(channel)
        manifest = stub.GetVersion(pb.GetVersionRequest(version=version))
        data = b"".join(c.data for c in stub.FetchVersion(pb.FetchVersionRequest(version=version)))
        resumed = b"".join(c.data for c in stub.FetchVersion(pb.FetchVersionRequest(version=version, offset=100)))
    assert resumed == data[100:]
    return manifest, data


def test_swarm_completes_outer_steps_and_survives_a_killed_coordinator(tmp_path):
    data = tmp_path / "coordinator"
    coordinator = Coordinator("test", data, tmp_path)
    inference = node(coordinator.address, "inference", tmp_path / "inf", tmp_path)
    trainer = node(coordinator.address, "trainer", tmp_path / "trn", tmp_path)
    with running(coordinator, inference, trainer):
        snap = watch_until(coordinator.address,
                           lambda s: s.current_version >= 2 and all(v.has_eval for v in s.versions[:2]), 240)
        # Every published version is signed by the coordinator and its bytes match the manifest.
        key = Identity.load_or_create(data / "coordinator.key").public_key
        for version in (1, 2):
            reply, blob = fetch(coordinator.address, version)
            manifest = verify_manifest(key, reply.manifest_json, reply.signature)
            assert manifest.parent == version - 1 and manifest.sha256 == sha256_hex(blob)
        roles = {n.role: n for n in snap.nodes}
        assert roles[pb.ROLE_INFERENCE].credit > 0 and roles[pb.ROLE_TRAINER].credit > 0
        assert snap.versions[1].rollouts_used >= 16 and snap.versions[0].rollouts_generated >= 16

        # Ctrl-C: both nodes exit cleanly and the coordinator sees them leave.
        assert inference.stop(signal.SIGINT) == 0 and trainer.stop(signal.SIGINT) == 0
        left = watch_until(coordinator.address, lambda s: all(n.state == "left" for n in s.nodes), 30)
        assert "returned" in inference.log() or "left the run" in inference.log()
        published = left.current_version

        # kill -9 and restart on the same data dir: nothing published or credited is lost.
        coordinator.stop(signal.SIGKILL)
        restarted = Coordinator("test", data, tmp_path, name="coordinator-restarted")
        with running(restarted):
            after = watch_until(restarted.address, lambda s: True, 30)
            assert after.current_version == published
            assert [v.sha256 for v in after.versions] == [v.sha256 for v in left.versions]
            assert {n.node_id: n.credit for n in after.nodes} == {n.node_id: n.credit for n in left.nodes}


def test_demo_json(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "potluck", "demo", "--run", "test", "--outer-steps", "2", "--minutes", "4",
         "--inference", "1", "--trainers", "1", "--json", "--data", str(tmp_path / "demo")],
        cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stderr[-4000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["outer_steps"] >= 2 and summary["versions"] == summary["outer_steps"] + 1
    for key in ("eval_accuracy_first", "eval_accuracy_last", "reward_first", "reward_last"):
        assert 0.0 <= summary[key] <= 1.0
    assert summary["rollouts_accepted"] > 0 and summary["rollouts_rejected"] == 0 and summary["wall_s"] > 0
