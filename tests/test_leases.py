"""Lease deadlines scaled to a node's speed, and work that arrives after its lease expired: the pure
rules (coordinator/leases.py), then a real coordinator applying them; then real node processes that
are killed, leave with Ctrl-C, or lose their network and come back."""
import os
import signal
import sqlite3
import time

import grpc
import pytest

from coordinator.leases import SLACK, expected_rate, late_refusal, scaled_seconds
from protocol.channel import sync_channel
from protocol.v1 import coordinator_pb2 as pb
from protocol.v1 import coordinator_pb2_grpc as pb_grpc
from tests.netproxy import NetProxy
from tests.procs import Coordinator, Proc, node, running, watch_until
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


# --- leases and real node processes: killed, Ctrl-C'd, cut off from the network ---------------------
# A fresh run's first piece of work is the eval of version 0 (512 held-out prompts, greedy): one lease
# whose work is named (the version to evaluate) and takes its node seconds, so a test can catch it held.
EVAL_RUN = """name = "lease-procs"
seed = 1
heartbeat_seconds = 0.5
[rollouts]
group_size = 2
prompts_per_shard = 2
batch_groups = 1024
lease_seconds = {lease}
min_lease_seconds = {lease}
[eval]
every = {every}
"""


def _run(tmp_path, lease: float, every: int = 1) -> Coordinator:
    (tmp_path / "run.toml").write_text(EVAL_RUN.format(lease=lease, every=every))
    return Coordinator(str(tmp_path / "run.toml"), tmp_path / "data", tmp_path)


def _db(tmp_path, sql: str, args=()) -> list[sqlite3.Row]:
    db = sqlite3.connect(f"file:{tmp_path / 'data' / 'state.sqlite'}?mode=ro", uri=True)
    db.row_factory = sqlite3.Row
    try:
        return db.execute(sql, args).fetchall()
    finally:
        db.close()


def _node_id(tmp_path, name: str) -> str:
    rows = _db(tmp_path, "SELECT node_id FROM nodes WHERE name = ?", (name,))
    return rows[0]["node_id"] if rows else ""


def _frozen_holding_eval(tmp_path, procs: list[Proc], timeout: float = 120) -> tuple[Proc, sqlite3.Row]:
    """Once one of procs holds the eval lease of version 0, freeze it (SIGSTOP) and return it with that
    lease: frozen, the node can neither finish nor give back its work until the test decides."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        held = _db(tmp_path, "SELECT * FROM leases WHERE kind = 'eval' AND state = 'active'")
        holder = next((p for p in procs if held and _node_id(tmp_path, p.name.split("-", 1)[1]) == held[0]["node_id"]),
                      None)
        if holder is not None:
            os.kill(holder.popen.pid, signal.SIGSTOP)
            lease = _db(tmp_path, "SELECT * FROM leases WHERE lease_id = ?", (held[0]["lease_id"],))[0]
            if lease["state"] == "active":
                return holder, lease
            os.kill(holder.popen.pid, signal.SIGCONT)
            raise AssertionError(f"{holder.name} finished its eval lease before it could be caught holding it")
        for proc in procs:
            assert proc.popen.poll() is None, proc.log()
        time.sleep(0.02)
    raise AssertionError(f"no node held an eval lease within {timeout}s")


def _wait_for(what: str, condition, timeout: float):
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert time.monotonic() < deadline, f"{what}: not within {timeout}s"
        time.sleep(0.1)
    return result


def test_a_node_killed_mid_lease_has_its_work_leased_again_and_done_by_another(tmp_path):
    coordinator = _run(tmp_path, lease=3)
    nodes = [node(coordinator.address, "inference", tmp_path / name, tmp_path) for name in ("one", "two")]
    with running(coordinator, *nodes):
        victim, dead = _frozen_holding_eval(tmp_path, nodes)
        victim.stop(signal.SIGKILL)  # it dies holding the eval of version 0
        watch_until(coordinator.address, lambda s: s.versions[0].has_eval, 120)
    (other,) = [p for p in nodes if p is not victim]
    leases = {row["lease_id"]: row for row in _db(tmp_path, "SELECT * FROM leases WHERE kind = 'eval'")}
    assert leases[dead["lease_id"]]["state"] == "expired"
    done = [row for row in leases.values() if row["state"] == "done"]
    assert len(done) == 1 and done[0]["version"] == 0
    assert done[0]["node_id"] == _node_id(tmp_path, other.name.split("-", 1)[1])
    assert done[0]["created_ms"] > dead["deadline_ms"]  # leased again only once the dead node's lease ran out


def test_ctrl_c_gives_the_held_lease_back_at_once(tmp_path):
    coordinator = _run(tmp_path, lease=600)
    leaving = node(coordinator.address, "inference", tmp_path / "leaving", tmp_path)
    with running(coordinator, leaving):
        _, held = _frozen_holding_eval(tmp_path, [leaving])
        os.kill(leaving.popen.pid, signal.SIGINT)  # Ctrl-C, taken as soon as it runs again
        os.kill(leaving.popen.pid, signal.SIGCONT)
        assert leaving.popen.wait(60) == 0, leaving.log()
        lease = _db(tmp_path, "SELECT * FROM leases WHERE lease_id = ?", (held["lease_id"],))[0]
        assert lease["state"] == "returned" and lease["deadline_ms"] - time.time() * 1000 > 500_000
        assert "returned 1 lease(s)" in leaving.log()
        # The work is free now, not in ten minutes: the next node to ask gets the same eval.
        with sync_channel(coordinator.address) as channel:
            again = Node(pb_grpc.CoordinatorStub(channel)).call("LeaseRollouts", pb.LeaseRolloutsBody())
        assert again.has_work and again.eval and again.version == 0


def test_a_node_whose_network_drops_comes_back_as_itself_with_its_credit(tmp_path):
    coordinator = _run(tmp_path, lease=10, every=0)
    proxy = NetProxy(coordinator.address)
    roaming = node(proxy.address, "inference", tmp_path / "roaming", tmp_path)
    try:
        with running(coordinator, roaming):
            before = watch_until(coordinator.address, lambda s: any(n.credit > 0 for n in s.nodes), 120)
            (me,) = before.nodes
            proxy.cut()
            _wait_for("the node notices", lambda: "unreachable" in roaming.log() or "heartbeat failed" in roaming.log(),
                      60)
            gone = watch_until(coordinator.address, lambda s: not s.nodes[0].online, 30)
            cut_ms = gone.server_time_ms
            proxy.restore()
            back = watch_until(coordinator.address, lambda s: s.nodes[0].online and s.nodes[0].credit > gone.nodes[0].credit,
                               120)
            assert [n.node_id for n in back.nodes] == [me.node_id]  # the same identity, no second node
            assert back.nodes[0].credit > gone.nodes[0].credit >= me.credit  # nothing lost, more earned
            assert _db(tmp_path, "SELECT COUNT(*) FROM leases WHERE node_id = ? AND created_ms > ?",
                       (me.node_id, cut_ms))[0][0] > 0  # new work after the network came back
            assert proxy.refused > 0  # it really was refused while down
    finally:
        proxy.close()
