"""What the Watch stream's snapshot says of the version each node holds (from its heartbeats, through a
real coordinator) and of the newest DiLoCo round (from the store's rounds tables)."""
from coordinator.snapshot import round_info
from coordinator.store import Store
from protocol.channel import sync_channel
from protocol.v1 import coordinator_pb2 as pb
from protocol.v1 import coordinator_pb2_grpc as pb_grpc
from tests.procs import Coordinator, watch_until
from tests.rpc import Node

RUN = """name = "snapshot"
seed = 1
[eval]
every = 0
[verification]
embedded = false
"""


def test_a_heartbeats_held_version_reaches_the_snapshot(tmp_path):
    (tmp_path / "run.toml").write_text(RUN)
    coordinator = Coordinator(str(tmp_path / "run.toml"), tmp_path / "data", tmp_path)
    try:
        with sync_channel(coordinator.address) as channel:
            stub = pb_grpc.CoordinatorStub(channel)
            holder, loading = Node(stub), Node(stub)
            ids = holder.identity.node_id, loading.identity.node_id
            joined = watch_until(coordinator.address, lambda s: len(s.nodes) == 2, 30)
            assert not any(n.HasField("holding_version") for n in joined.nodes)  # none reported yet
            holder.call("Heartbeat", pb.HeartbeatBody(state="generating", holding_version=0))  # 0 is a version
            loading.call("Heartbeat", pb.HeartbeatBody(state="fetching"))
            snap = watch_until(coordinator.address, lambda s: {n.node_id: n.state for n in s.nodes} ==
                               {ids[0]: "generating", ids[1]: "fetching"}, 30)
            nodes = {n.node_id: n for n in snap.nodes}
            assert nodes[ids[0]].HasField("holding_version") and nodes[ids[0]].holding_version == 0
            assert not nodes[ids[1]].HasField("holding_version")
            assert not snap.HasField("round")  # no trainer has asked for work: no round yet
    finally:
        assert coordinator.stop() == 0, coordinator.log()


def test_the_round_shown_is_the_newest_with_its_members_and_results(tmp_path):
    store = Store(tmp_path / "state.db")
    try:
        assert round_info(store) is None
        a, b = {"node_id": "a", "maddrs": []}, {"node_id": "b", "maddrs": []}
        store.add_round("r1", 3, [a])
        store.update_round("r1", "failed", [a], [], "no quorum: 0 agreeing of 1 needed")
        store.add_round("r2", 3, [a])  # likely within the same millisecond as r1: order is by insertion
        forming = round_info(store)
        assert (forming.round_id, forming.version, forming.state, forming.trainers, forming.submitted) == \
            ("r2", 3, "forming", 1, 0)
        store.update_round("r2", "training", [a, b], [11, 12])
        store.add_round_result("r2", "a", "candidate", 10, "delta", 8, ["a", "b"], 0.5)
        training = round_info(store)
        assert (training.state, training.trainers, training.submitted, training.outcome) == ("training", 2, 1, "")
        store.update_round("r2", "published", [a, b], [11, 12], "version 4 from a's candidate; 2 of 2 agreed")
        assert round_info(store).outcome.startswith("version 4")
    finally:
        store.close()
