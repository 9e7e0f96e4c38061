"""Lease deadlines scaled to a node's speed, and work that arrives after its lease expired: the pure
rules (coordinator/leases.py), then a real coordinator applying them."""
import time

import grpc
import pytest

from coordinator.leases import SLACK, expected_rate, late_refusal, scaled_seconds
from protocol.channel import sync_channel
from protocol.v1 import coordinator_pb2 as pb
from protocol.v1 import coordinator_pb2_grpc as pb_grpc
from tests.procs import Coordinator
from tests.rpc import Node, refused

EOS = 2  # the tiny model's EOS id


def test_deadlines_scale_with_speed_within_the_bounds():
    assert scaled_seconds(1000, 100.0, 5, 600) == SLACK * 10
    assert scaled_seconds(1000, 200.0, 5, 600) == SLACK * 5  # twice as fast, half the time
    assert scaled_seconds(10, 1e6, 5, 600) == 5  # never below the floor
    assert scaled_seconds(10**9, 1.0, 5, 600) == 600  # never beyond the run's lease_seconds
    assert scaled_seconds(1000, 0.0, 5, 600) == 600  # speed unknown: the full lease
    assert scaled_seconds(10, 1e6, 90, 60) == 60  # a floor above the bound gives the bound


def test_expected_rate_prefers_real_work_then_the_scaled_yardstick():
    assert expected_rate(50.0, 1000.0, 10, 100) == 50.0
    assert expected_rate(0.0, 1000.0, 10, 100) == 100.0  # a model 10x the yardstick: 10x slower
    assert expected_rate(0.0, 1000.0, 10, 5) == 1000.0  # a smaller model is not assumed faster
    assert expected_rate(0.0, 1000.0, 10, 0) == 0.0 and expected_rate(0.0, 0.0, 10, 100) == 0.0


def test_late_work_is_refused_only_when_stale_or_replaced():
    assert late_refusal("rollout", 4, 5, 1, replaced=False) is None
    assert "async limit" in late_refusal("rollout", 3, 5, 1, replaced=False)
    assert "leased again" in late_refusal("rollout", 5, 5, 1, replaced=True)
    assert late_refusal("eval", 1, 5, 1, replaced=False) is None  # evals of old versions still count
    assert "leased again" in late_refusal("eval", 1, 5, 1, replaced=True)


# Room for 2 * batch_groups = 6 prompts in flight or waiting; no validator, so submissions stay
# pending and the room changes only by what the test does.
RUN = """name = "leases"
seed = 1
[rollouts]
group_size = 2
prompts_per_shard = 2
batch_groups = 3
lease_seconds = 600
min_lease_seconds = 1
[eval]
every = 0
[verification]
embedded = false
"""


@pytest.fixture
def stub(tmp_path):
    (tmp_path / "run.toml").write_text(RUN)
    coordinator = Coordinator(str(tmp_path / "run.toml"), tmp_path / "data", tmp_path)
    try:
        with sync_channel(coordinator.address) as channel:
            yield pb_grpc.CoordinatorStub(channel)
    finally:
        assert coordinator.stop() == 0, coordinator.log()


def answers(lease):
    return [pb.Rollout(task_id=p.task_id, sample_index=i, completion_ids=[EOS], logprobs=[-0.5], finished=True,
                       reward=0.0, proofs=[bytes(8)]) for p in lease.prompts for i in range(lease.group_size)]


def lease(node):
    shard = node.call("LeaseRollouts", pb.LeaseRolloutsBody())
    assert shard.has_work and len(shard.prompts) == 2
    return shard


def submit(node, shard):
    return node.call("SubmitRollouts", pb.SubmitRolloutsBody(lease_id=shard.lease_id, version=shard.version,
                                                            rollouts=answers(shard)))


def wait_past(deadline_ms):
    while time.time() * 1000 <= deadline_ms:
        time.sleep(0.05)


def test_fast_nodes_get_short_leases_and_late_work_is_taken_unless_replaced(stub):
    fast, slow = Node(stub), Node(stub)
    fast.call("Heartbeat", pb.HeartbeatBody(state="idle", tokens_per_s=1e6))  # measured from real work
    f1, s1 = lease(fast), lease(slow)
    # The slow node reported no speed: it gets the run's full lease; the fast one the floor.
    assert s1.deadline_ms - f1.deadline_ms > 590_000
    wait_past(f1.deadline_ms)
    # Late, but nothing took its place (room for 6 prompts, 2 in flight): taken and checked.
    assert submit(fast, f1).pending == 4
    f2 = lease(fast)  # 2 pending + 2 + 2 in flight: the room is full
    wait_past(f2.deadline_ms)
    lease(slow)  # the expired lease's room goes to another shard
    err = refused(lambda: submit(fast, f2), grpc.StatusCode.FAILED_PRECONDITION, "lease_expired")
    assert "leased again" in err.details()
