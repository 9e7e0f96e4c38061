"""Hostile and broken requests against a real coordinator process: each gets a precise status and
reason, and the coordinator keeps serving."""
import time

import grpc
import pytest

from protocol.config import PRESETS_DIR
from protocol.identity import Identity
from protocol.signing import NonceClock, sign_request, signing_payload
from protocol.v1 import coordinator_pb2 as pb
from protocol.v1 import coordinator_pb2_grpc as pb_grpc
from tests.procs import Coordinator
from tests.rpc import Node, SkewedClock, refused

LEASE_SECONDS = 2.0
EOS = 2  # the tiny model's EOS id


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("errors")
    run = tmp / "run.toml"
    # Short leases to test expiry; a large batch, so shards these tests lease and leave unsubmitted
    # never use up the room for more.
    run.write_text((PRESETS_DIR / "test.toml").read_text()
                   .replace("lease_seconds = 60", f"lease_seconds = {LEASE_SECONDS}")
                   .replace("batch_groups = 4", "batch_groups = 256")
                   .replace("every = 1", "every = 0"))  # no eval shards: every lease is a rollout shard
    proc = Coordinator(str(run), tmp / "data", tmp)
    yield proc
    assert proc.stop() == 0, proc.log()


@pytest.fixture
def stub(coordinator):
    with grpc.insecure_channel(coordinator.address) as channel:
        yield pb_grpc.CoordinatorStub(channel)


def answer_all(lease, reward=0.0):
    """A well-formed submission: every leased (prompt, sample) answered by an immediate EOS. Its
    proofs are placeholders: these tests look at the coordinator's own checks, made at submission."""
    return [pb.Rollout(task_id=p.task_id, sample_index=i, completion_ids=[EOS], logprobs=[-0.5], finished=True,
                       reward=reward, proofs=[bytes(8)]) for p in lease.prompts for i in range(lease.group_size)]


def lease_shard(node):
    """Lease until a training-rollout shard comes (the first lease may be an eval shard)."""
    for _ in range(5):
        lease = node.call("LeaseRollouts", pb.LeaseRolloutsBody())
        assert lease.has_work
        if not lease.eval:
            return lease
        node.call("SubmitRollouts", pb.SubmitRolloutsBody(lease_id=lease.lease_id, version=lease.version,
                                                          rollouts=answer_all(lease)))
    raise AssertionError("no rollout shard")


def test_register_returns_the_run(stub):
    node = Node(stub)
    reply = node.register_reply
    assert reply.node_id == node.identity.node_id and reply.role == pb.ROLE_INFERENCE
    assert reply.current_version == 0 and len(reply.coordinator_public_key) == 32
    assert '"group_size":4' in reply.run_config_json


def test_bad_signature(stub):
    node = Node(stub)
    request = node.sign("Heartbeat", pb.HeartbeatBody(state="idle"))
    request.signature = bytes(64)
    refused(lambda: stub.Heartbeat(request), grpc.StatusCode.UNAUTHENTICATED, "bad_signature")
    forged = node.sign("Heartbeat", pb.HeartbeatBody(state="idle"))
    forged.node_id = Node(stub).identity.node_id  # another node's id on this node's signature
    refused(lambda: stub.Heartbeat(forged), grpc.StatusCode.UNAUTHENTICATED, "bad_signature")
    assert node.call("Heartbeat", pb.HeartbeatBody(state="idle")).current_version >= 0


def test_unknown_node(stub):
    stranger = Identity.generate()
    request = sign_request(stranger, NonceClock(), "Heartbeat", pb.HeartbeatBody())
    refused(lambda: stub.Heartbeat(request), grpc.StatusCode.FAILED_PRECONDITION, "unknown_node")
    request.node_id = "not-a-peer-id"
    refused(lambda: stub.Heartbeat(request), grpc.StatusCode.INVALID_ARGUMENT, "bad_node_id")


def test_replayed_request(stub):
    node = Node(stub)
    request = node.sign("Heartbeat", pb.HeartbeatBody(state="idle"))
    stub.Heartbeat(request)
    refused(lambda: stub.Heartbeat(request), grpc.StatusCode.UNAUTHENTICATED, "replayed_nonce")


def test_malformed_body(stub):
    node = Node(stub)
    request = node.sign("Heartbeat", pb.HeartbeatBody())
    request.body = b"\xff\xff\xff"
    request.signature = node.identity.sign(
        signing_payload("Heartbeat", node.identity.node_id, request.nonce, request.body))
    refused(lambda: stub.Heartbeat(request), grpc.StatusCode.INVALID_ARGUMENT, "malformed_body")


def test_oversized_message_is_refused_and_service_continues(stub):
    node = Node(stub)
    huge = pb.SubmitTrainingBody(lease_id="x", blob=b"\x00" * (17 << 20))
    with pytest.raises(grpc.RpcError) as info:
        node.call("SubmitTraining", huge)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in info.value.details()
    assert node.call("Heartbeat", pb.HeartbeatBody(state="idle")).current_version >= 0


def test_expired_lease(stub):
    node = Node(stub)
    lease = lease_shard(node)
    while time.time() * 1000 <= lease.deadline_ms:
        time.sleep(0.05)
    submit = pb.SubmitRolloutsBody(lease_id=lease.lease_id, version=lease.version, rollouts=answer_all(lease))
    # Late, but nothing replaced it (a large batch leaves room): taken (tests/test_leases.py has the refusal).
    reply = node.call("SubmitRollouts", submit)
    assert reply.accepted + reply.pending + reply.rejected == len(submit.rollouts)
    refused(lambda: node.call("SubmitRollouts", submit), grpc.StatusCode.FAILED_PRECONDITION, "lease_closed")


def test_wrong_role_and_foreign_lease(stub):
    node, other = Node(stub), Node(stub)
    refused(lambda: node.call("LeaseTraining", pb.LeaseTrainingBody()), grpc.StatusCode.PERMISSION_DENIED,
            "wrong_role")
    lease = lease_shard(node)
    submit = pb.SubmitRolloutsBody(lease_id=lease.lease_id, version=lease.version, rollouts=answer_all(lease))
    refused(lambda: other.call("SubmitRollouts", submit), grpc.StatusCode.PERMISSION_DENIED, "not_your_lease")


def submitter(node, lease):
    def submit(rollouts, version=lease.version):
        return node.call("SubmitRollouts", pb.SubmitRolloutsBody(lease_id=lease.lease_id, version=version,
                                                                 rollouts=rollouts))
    return submit


def test_malformed_rollouts_are_refused_and_wrong_rewards_rejected(stub):
    node = Node(stub)
    lease = lease_shard(node)
    submit = submitter(node, lease)

    good = answer_all(lease)
    refused(lambda: submit(good[:-1]), grpc.StatusCode.INVALID_ARGUMENT, "wrong_rollouts")
    refused(lambda: submit(good + good[:1]), grpc.StatusCode.INVALID_ARGUMENT, "duplicate_rollout")
    refused(lambda: submit(good, version=lease.version + 7), grpc.StatusCode.INVALID_ARGUMENT, "wrong_version")
    bad_token = [pb.Rollout(**{**_fields(r), "completion_ids": [10_000]}) if i == 0 else r for i, r in enumerate(good)]
    refused(lambda: submit(bad_token), grpc.StatusCode.INVALID_ARGUMENT, "bad_token")
    # Well-formed, but the first group claims reward 1 for an empty answer: no honest node does
    # that, so the whole submission is rejected (and the node quarantined).
    inflated = [pb.Rollout(**{**_fields(r), "reward": 1.0}) if r.task_id == lease.prompts[0].task_id else r
                for r in good]
    reply = submit(inflated)
    assert reply.rejected == len(good) and reply.accepted == 0 and reply.reject_reason == "reward_mismatch"
    refused(lambda: submit(good), grpc.StatusCode.FAILED_PRECONDITION, "lease_closed")
    # Stopping without EOS before the length limit is likewise rejected.
    other = Node(stub)
    lease = lease_shard(other)
    early = [pb.Rollout(**{**_fields(r), "completion_ids": [5], "finished": False}) if i == 0 else r
             for i, r in enumerate(answer_all(lease))]
    reply = submitter(other, lease)(early)
    assert reply.rejected == len(early) and reply.reject_reason == "stopped_early"


def _fields(rollout):
    return {"task_id": rollout.task_id, "sample_index": rollout.sample_index,
            "completion_ids": list(rollout.completion_ids), "logprobs": list(rollout.logprobs),
            "finished": rollout.finished, "reward": rollout.reward, "proofs": list(rollout.proofs)}


def test_stale_and_future_timestamps_refused(stub):
    node = Node(stub)
    for offset in (-3600, 3600):  # the default window is ±300 s
        request = sign_request(node.identity, SkewedClock(offset), "Heartbeat", pb.HeartbeatBody(state="idle"))
        refused(lambda: stub.Heartbeat(request), grpc.StatusCode.UNAUTHENTICATED, "stale_timestamp")
    stranger = Identity.generate()
    late = sign_request(stranger, SkewedClock(-3600), "Register", pb.RegisterBody(public_key=stranger.public_key))
    refused(lambda: stub.Register(late), grpc.StatusCode.UNAUTHENTICATED, "stale_timestamp")
    # A refused far-future nonce did not move the node's last nonce: its honest clock still works.
    assert node.call("Heartbeat", pb.HeartbeatBody(state="idle")).current_version >= 0


def test_body_caps_per_rpc(stub):
    node = Node(stub)
    # 100 KiB is far below the 16 MiB transport cap but far above what a heartbeat needs (4 KiB).
    err = refused(lambda: node.call("Heartbeat", pb.HeartbeatBody(state="x" * (100 << 10))),
                  grpc.StatusCode.RESOURCE_EXHAUSTED, "too_large")
    assert "Heartbeat body is" in err.details() and "limit is 4096" in err.details()


def test_field_rules(stub):
    node = Node(stub)
    refused(lambda: node.call("Heartbeat", pb.HeartbeatBody(state="x" * 33)), grpc.StatusCode.INVALID_ARGUMENT,
            "too_long")
    refused(lambda: node.call("Heartbeat", pb.HeartbeatBody(tokens_per_s=float("nan"))),
            grpc.StatusCode.INVALID_ARGUMENT, "not_finite")
    refused(lambda: node.call("Heartbeat", pb.HeartbeatBody(tokens_per_s=-1.0)),
            grpc.StatusCode.INVALID_ARGUMENT, "out_of_range")
    refused(lambda: node.call("LeaseRollouts", pb.LeaseRolloutsBody(max_prompts=5000)),
            grpc.StatusCode.INVALID_ARGUMENT, "out_of_range")
    stranger = Identity.generate()
    unknown_role = pb.RegisterBody(public_key=stranger.public_key, role=42)
    refused(lambda: stub.Register(sign_request(stranger, NonceClock(), "Register", unknown_role)),
            grpc.StatusCode.INVALID_ARGUMENT, "bad_enum")
    long_name = pb.RegisterBody(public_key=stranger.public_key, name="é" * 65)
    refused(lambda: stub.Register(sign_request(stranger, NonceClock(), "Register", long_name)),
            grpc.StatusCode.INVALID_ARGUMENT, "too_long")


def test_rate_limit(stub):
    node = Node(stub)
    codes = []
    for _ in range(200):  # the default bucket: 60 calls at once, then 20 per second
        try:
            node.call("Heartbeat", pb.HeartbeatBody(state="idle"))
            codes.append("ok")
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.details()
            assert dict(err.trailing_metadata()).get("potluck-reason") == "rate_limited"
            codes.append("limited")
            break
    assert codes[-1] == "limited" and codes.count("ok") >= 59  # Register took one token of the 60
    # Another node is not affected by this one's bucket.
    assert Node(stub).call("Heartbeat", pb.HeartbeatBody(state="idle")).current_version >= 0
