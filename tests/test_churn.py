"""Durability under churn, with real processes: the coordinator SIGKILLed mid-round and restarted
on the same data dir and port, and 30% of the nodes SIGKILLed at random moments, twice. Nothing a
node was told was accepted is lost, nodes reconnect by themselves, dead nodes' leases expire and
their work is handed out again, and the run keeps publishing versions."""
import random
import re
import signal
import sqlite3
import time

from protocol.config import PRESETS_DIR
from tests.procs import Coordinator, Proc, running, watch_until

ROLLOUT_LEASE_S = 4
TRAIN_LEASE_S = 15
ACKED_CREDIT = re.compile(r"accepted \d+, rejected \d+, credit (\d+)")


def churn_run(tmp_path):
    run = tmp_path / "run.toml"
    run.write_text((PRESETS_DIR / "test.toml").read_text()
                   .replace("lease_seconds = 60", f"lease_seconds = {ROLLOUT_LEASE_S}")
                   .replace("[grpo]\n", f"[grpo]\nlease_seconds = {TRAIN_LEASE_S}\n"))
    return str(run)


def start_node(address: str, role: str, home, log_dir, generation: int = 0) -> Proc:
    return Proc(f"{role}-{home.name}-{generation}", ["node", "join", "--coordinator", address, "--role", role,
                                                     "--home", str(home), "--name", home.name, "--threads", "1",
                                                     "--plain"], log_dir)


def acked_credit(proc: Proc) -> float:
    """The credit the coordinator last told this inference node it has (0 if it told it nothing yet)."""
    found = ACKED_CREDIT.findall(proc.log())
    return float(found[-1]) if found else 0.0


def test_coordinator_killed_mid_round_loses_nothing_acknowledged(tmp_path):
    data = tmp_path / "data"
    run = churn_run(tmp_path)
    coordinator = Coordinator(run, data, tmp_path)
    address = coordinator.address
    nodes = [start_node(address, "inference", tmp_path / f"inf{i}", tmp_path) for i in range(2)]
    nodes.append(start_node(address, "trainer", tmp_path / "trn", tmp_path))
    with running(*nodes):
        # Mid-round: version 1 is out and work for the next one is leased.
        before = watch_until(address, lambda s: s.current_version >= 1 and s.rollouts_accepted > 0 and
                             any(n.state in ("generating", "training") for n in s.nodes), 240)
        coordinator.stop(signal.SIGKILL)
        acked = {proc.name: acked_credit(proc) for proc in nodes[:2]}
        restarted = Coordinator(run, data, tmp_path, name="coordinator-restarted", listen=address)
        with running(restarted):
            after = watch_until(address, lambda s: True, 30)
            # Everything committed before the kill is there: versions, nodes, credit, rollouts.
            assert [v.sha256 for v in after.versions[:len(before.versions)]] == [v.sha256 for v in before.versions]
            credit = {n.name: n.credit for n in after.nodes}
            for n in before.nodes:
                assert credit[n.name] >= n.credit, (n.name, credit[n.name], n.credit)
            for proc in nodes[:2]:  # and what each node was told it had earned
                assert credit[proc.name.split("-")[1]] >= acked[proc.name], proc.name
            assert after.rollouts_accepted >= before.rollouts_accepted
            # The same nodes reconnect on their own and the run reaches the next version.
            nxt = watch_until(address, lambda s: s.current_version >= before.current_version + 1 and
                              s.rollouts_accepted > after.rollouts_accepted, 240)
            assert {n.node_id for n in nxt.nodes} == {n.node_id for n in before.nodes}
            assert any("unreachable" in proc.log() for proc in nodes)


def test_thirty_percent_of_nodes_killed_twice(tmp_path):
    data = tmp_path / "data"
    coordinator = Coordinator(churn_run(tmp_path), data, tmp_path)
    address = coordinator.address
    homes = {f"inf{i}": "inference" for i in range(4)} | {"trn": "trainer"}
    procs = {name: start_node(address, role, tmp_path / name, tmp_path) for name, role in homes.items()}
    rng = random.Random(6)
    dead_leases: list[str] = []
    try:
        with running(coordinator):
            snap = watch_until(address, lambda s: s.current_version >= 1, 240)
            for generation in (1, 2):
                # A random moment at which some node holds work: it dies with it, and so do others
                # picked at random, 30% of the nodes in all.
                names = {n.node_id: n.name for n in snap.nodes}
                holder = _wait_for_a_lease(data, rng)
                victims = {names[holder]} | set(rng.sample(sorted(set(procs) - {names[holder]}),
                                                           k=round(0.3 * len(procs)) - 1))
                for name in victims:
                    procs[name].stop(signal.SIGKILL)
                # What they held as they died (a holder may have handed its work in just before).
                ids = [node_id for node_id, name in names.items() if name in victims]
                dead_leases += _active_leases(data, ids)
                # The others carry on; the victims come back a little later, as themselves.
                after_kill = watch_until(address, lambda s: True, 30)
                watch_until(address, lambda s: s.rollouts_accepted > after_kill.rollouts_accepted, 180)
                for name in victims:
                    procs[name] = start_node(address, homes[name], tmp_path / name, tmp_path, generation)
                snap = watch_until(address, lambda s: s.current_version > after_kill.current_version, 240)
            final = watch_until(address, lambda s: True, 30)
            assert final.current_version >= 3 and len(final.nodes) == len(homes)
            assert dead_leases, "no victim died holding a lease"
            _wait_until_closed(data, dead_leases, timeout=TRAIN_LEASE_S + 30)
            db = sqlite3.connect(f"file:{data / 'state.sqlite'}?mode=ro", uri=True)
            try:
                closed = 0
                for lease_id in dead_leases:
                    # No dead node's lease is still active; one that expired (or was given back when its
                    # node came back) was followed by new leases. (A lease can also end "done" or
                    # "submitted": the node's last call was on the wire as it died.)
                    state, deadline = db.execute("SELECT state, deadline_ms FROM leases WHERE lease_id = ?",
                                                 (lease_id,)).fetchone()
                    assert state != "active", lease_id
                    if state in ("expired", "returned"):
                        closed += 1
                        _wait_for_a_lease_after(data, deadline if state == "expired" else 0, timeout=120)
                assert closed, f"no dead node's lease expired: {dead_leases}"
                stuck = db.execute("SELECT COUNT(*) FROM groups g JOIN leases l ON g.train_lease = l.lease_id"
                                   " WHERE g.state = 'reserved' AND l.state != 'active'").fetchone()[0]
                assert stuck == 0  # no training data is held by a lease that is over
            finally:
                db.close()
    finally:
        for proc in procs.values():
            proc.stop()


def _query(data, sql: str, args=()) -> list[tuple]:
    db = sqlite3.connect(f"file:{data / 'state.sqlite'}?mode=ro", uri=True)
    try:
        return db.execute(sql, args).fetchall()
    finally:
        db.close()


def _active_leases(data, node_ids: list[str]) -> list[str]:
    marks = ",".join("?" * len(node_ids))
    return [row[0] for row in _query(data, f"SELECT lease_id FROM leases WHERE state = 'active' AND node_id IN ({marks})",
                                     node_ids)]


def _wait_until_closed(data, lease_ids: list[str], timeout: float) -> None:
    """Until none of lease_ids is active: the sweep closes a dead node's lease once its deadline passes."""
    marks = ",".join("?" * len(lease_ids))
    deadline = time.monotonic() + timeout
    while _query(data, f"SELECT COUNT(*) FROM leases WHERE state = 'active' AND lease_id IN ({marks})",
                 lease_ids)[0][0]:
        assert time.monotonic() < deadline, f"dead nodes' leases still active after {timeout}s"
        time.sleep(0.2)


def _wait_for_a_lease_after(data, t_ms: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not _query(data, "SELECT COUNT(*) FROM leases WHERE created_ms > ?", (t_ms,))[0][0]:
        assert time.monotonic() < deadline, f"no lease was issued after {t_ms} within {timeout}s"
        time.sleep(0.2)


def _wait_for_a_lease(data, rng, timeout: float = 120.0) -> str:
    """The node id of a holder of an active rollout or training lease, once there is one."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = _query(data, "SELECT node_id FROM leases WHERE state = 'active' AND kind IN ('rollout', 'train')")
        if rows:
            return rng.choice(sorted(rows))[0]
        time.sleep(0.05)
    raise AssertionError(f"no lease was active within {timeout}s")
