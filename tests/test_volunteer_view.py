"""The volunteer view of `potluck node join` and `potluck demo --tui`: snapshots on fixed data, and
pilot tests against a real coordinator with real nodes on loopback."""
import asyncio
import io
import logging
import time

import torch
from textual.widgets import Log, Static

from node.status import NodeStatus, Progress
from node.tui.volunteer import VolunteerView
from node.view import follow_watch, logs_into, start
from potluck.demo import Swarm, host_view, report, start_swarm, watch_in_tui
from protocol.v1 import coordinator_pb2 as pb
from tests.procs import Coordinator, node, running, watch_until
from tests.tui_pilot import check_snapshot, plain, settle, until


def fixed_status() -> NodeStatus:
    status = NodeStatus("127.0.0.1:7420", node_id="12D3KooWQk9aBcDeFgHiJkLmNoPqRsTuVwXyZ3xQk9aB2",
                        name="kitchen-laptop", role="inference", run_name="potluck-demo", state="generating",
                        link="connected", held_version=7, latest_version=8, tokens_per_s=212.4, accepted=1216,
                        rejected=8, credit=245.0, swarm_online=4,
                        last_result="v7: 16 rollouts in 2.1s → 16 accepted, 0 rejected")
    for i in range(12):
        status.add_line(f"20:{i:02d}:00 shard v{i // 2}: 16 rollouts in 2.{i}s, reward 0.{40 + i}; accepted 16")
    return status


def facts_text(view: VolunteerView) -> str:
    return plain(view.query_one("#facts", Static).content, width=78)


def test_view_matches_snapshots(tmp_path):
    async def run():
        status = fixed_status()
        view = VolunteerView(status, leave=lambda: None)
        view.animation_level = "none"
        failures = []
        async with view.run_test(size=(80, 24)) as pilot:
            await settle(pilot)
            failures.append(check_snapshot(view.export_screenshot(simplify=True), "volunteer-80x24", tmp_path))
            # A version downloading: the set-up bar, and the view's state follows the node's.
            status.state, status.progress = "fetching", Progress("fetching v8", 3 << 20, 4 << 20)
            await until(pilot, lambda: view.query_one("#setup").has_class("-active"), 5, "the progress bar shown")
            await settle(pilot)
            failures.append(check_snapshot(view.export_screenshot(simplify=True), "volunteer-fetching-80x24",
                                           tmp_path))
        return [f for f in failures if f]

    assert asyncio.run(run()) == []


def test_snapshot_and_replies_update_the_status():
    status = NodeStatus("a", node_id="me")
    status.saw_snapshot(pb.SwarmSnapshot(run_name="r", current_version=3, nodes=[
        pb.NodeInfo(node_id="me", credit=10, online=True), pb.NodeInfo(node_id="other", online=False)]))
    assert (status.latest_version, status.swarm_online, status.credit, status.link) == (3, 1, 10, "connected")
    status.saw_reply(pb.SubmitRolloutsBody(version=3, rollouts=[pb.Rollout()] * 4, generation_seconds=1.5),
                     pb.SubmitRolloutsReply(accepted=3, rejected=1, credit=13))
    status.saw_reply(pb.SubmitRolloutsBody(version=3, rollouts=[pb.Rollout()] * 4),
                     pb.SubmitRolloutsReply(accepted=4, credit=17))
    assert (status.accepted, status.rejected, status.credit) == (7, 1, 17)
    status.fetching(4, 10, 100)
    assert status.progress == Progress("fetching v4", 10, 100)
    status.fetching(4, 100, 100)
    assert status.progress is None


def test_view_follows_a_real_node(tmp_path, caplog):
    """An inference node runs in this process under the view; a trainer (a process) makes versions."""
    torch.set_num_threads(1)
    caplog.set_level(logging.INFO)  # what `potluck node join` logs
    coordinator = Coordinator("test", tmp_path / "coordinator", tmp_path)
    trainer = node(coordinator.address, "trainer", tmp_path / "trn", tmp_path)

    async def run() -> int:
        status = NodeStatus(coordinator.address)
        with logs_into(status):
            view, work = start(status, "inference", "cpu", tmp_path / "vol", "volunteer")
            view.animation_level = "none"
            watcher = asyncio.create_task(follow_watch(status, coordinator.address))
            try:
                async with view.run_test(size=(100, 30)) as pilot:
                    await until(pilot, lambda: status.accepted > 0 and status.credit > 0, 120, "accepted, credited work")
                    first_credit = status.credit
                    await until(pilot, lambda: f"{status.accepted:,} ✔" in facts_text(view), 5, "the count shown")
                    assert "inference" in plain(view.query_one("#title", Static).content)
                    # The trainer publishes v1 from this node's rollouts; the node moves on to it.
                    await until(pilot, lambda: (status.held_version or 0) >= 1 and status.credit > first_credit,
                                180, "a newer version held and more credit")
                    await until(pilot, lambda: f"v{status.held_version}" in facts_text(view), 5, "the version shown")
                    assert "connected to" in plain(view.query_one("#link", Static).content)
                    assert any("joined run" in line for line in view.query_one(Log).lines)
                    await pilot.press("q")  # leave: leases go back, then the view closes by itself
                    await until(pilot, work.done, 30, "the node left")
            finally:
                watcher.cancel()
        return await work

    with running(coordinator, trainer):
        assert asyncio.run(run()) == 0
        left = watch_until(coordinator.address,
                           lambda s: any(n.name == "volunteer" and n.state == "left" for n in s.nodes), 30)
        assert next(n for n in left.nodes if n.name == "volunteer").rollouts_accepted > 0


def test_demo_tui_shows_the_swarm_and_stops_it(tmp_path):
    swarm = Swarm(tmp_path)
    (tmp_path / "logs").mkdir()
    out = io.StringIO()
    started = time.monotonic()

    async def drive(pilot):
        app = pilot.app
        await until(pilot, lambda: app.state.snapshot is not None and
                    any(n.online for n in app.state.snapshot.nodes), 60, "the demo's node online")
        await pilot.press("q")

    try:
        address = start_swarm(swarm, "test", 1, 0, out)
        app = host_view(address)
        app.animation_level = "none"
        snapshot = asyncio.run(watch_in_tui(app, swarm, headless=True, size=(100, 30), auto_pilot=drive))
    finally:
        swarm.stop()
    assert all(proc.returncode == 0 for _, proc in swarm.procs)  # every process stopped cleanly
    assert snapshot is not None and len(snapshot.nodes) == 1
    report(snapshot, time.monotonic() - started, True, out)
    assert "done: 0 outer steps, held-out accuracy" in out.getvalue()
