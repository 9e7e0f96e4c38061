"""The TUI against a real coordinator with real inference nodes on loopback: panes, sorting,
filtering and details on live data; the coordinator going away and coming back."""
import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from textual.widgets import Static, TabbedContent

from node.tui.app import PotluckTui
from node.tui.details import NodeDetails
from node.tui.feed import Backoff, watch
from node.tui.panes.checkpoints import CheckpointsPane
from node.tui.panes.credit import CreditPane
from node.tui.panes.logs import EventLog, LogsPane
from node.tui.panes.nodes import NodesTable
from node.tui.panes.verification import VerdictsTable, VerificationPane
from node.tui.state import Link
from node.tui.status import LinkBar
from node.tui.table import SwarmTable
from tests.procs import Coordinator, Proc, node, watch_until
from tests.tui_pilot import column, free_port, names, plain, until

# Retry fast: the reconnect test waits on a restarted coordinator.
FAST = Backoff(first_s=0.2, max_s=1.0, jitter=0.0)


@dataclass
class Swarm:
    address: str
    data: Path
    logs: Path
    coordinator: Coordinator
    nodes: list[Proc]


@pytest.fixture(scope="module")
def swarm(tmp_path_factory):
    root = tmp_path_factory.mktemp("tui-swarm")
    # A fixed port, so a restarted coordinator is found where the TUI looks for it.
    address = f"127.0.0.1:{free_port()}"
    # Nodes start first: they import torch for longer than the coordinator takes to start, and
    # they retry until it answers.
    nodes = [node(address, "inference", root / name, root) for name in ("alpha", "bravo")]
    swarm = None
    try:
        swarm = Swarm(address, root / "coordinator", root,
                      Coordinator("test", root / "coordinator", root, listen=address), nodes)
        watch_until(address, lambda s: len(s.nodes) == 2, 120)
        yield swarm
    finally:
        with ThreadPoolExecutor() as pool:  # each stop waits for a clean exit: wait for all at once
            list(pool.map(Proc.stop, nodes))
        if swarm is not None:
            swarm.coordinator.stop()  # the one running now: the reconnect test replaces it


def live_app(swarm: Swarm) -> PotluckTui:
    app = PotluckTui(watch(swarm.address, FAST), swarm.address)
    app.animation_level = "none"
    return app


def table_keys(pane) -> list[str]:
    table = pane.query_one(SwarmTable)
    return [row.key.value for row in table.ordered_rows]


def test_live_panes_sort_filter_and_details(swarm):
    async def run():
        app = live_app(swarm)
        async with app.run_test(size=(120, 36)) as pilot:
            await until(pilot, lambda: app.state.snapshot is not None and len(app.state.snapshot.nodes) == 2, 30,
                        "both nodes in a snapshot")
            snap = app.state.snapshot
            assert snap is not None
            # The bar redraws on the app's next refresh after the snapshot lands, not at once.
            await until(pilot, lambda: str(app.query_one(LinkBar).content).startswith(f"● {snap.run_name}"), 10,
                        "the link bar showing the run")
            assert str(app.query_one("#headline", Static).content).startswith("potluck-test")

            await pilot.press("2")
            table = app.query_one(NodesTable)
            await until(pilot, lambda: table.row_count == 2, 10, "two rows in the nodes table")
            assert names(table) == ["alpha", "bravo"]
            await pilot.press("r")
            assert names(table) == ["bravo", "alpha"]
            await pilot.press("slash", *"alp")
            await until(pilot, lambda: table.row_count == 1, 5, "the filter keeps one node")
            assert names(table) == ["alpha"]
            await pilot.press("escape", "enter")
            alpha = next(n for n in snap.nodes if n.name == "alpha")
            assert isinstance(app.screen, NodeDetails) and app.screen.node_id == alpha.node_id
            details = plain(app.screen.query_one("#body", Static).content)
            assert alpha.node_id in details and "joined as inference" in details
            await pilot.press("escape")

            # Every submission is checked by the coordinator's embedded validator: its verdicts show.
            await pilot.press("3")
            verdicts = app.query_one(VerdictsTable)
            await until(pilot, lambda: verdicts.row_count > 0, 120, "a verdict in the verification pane")
            newest = {key: verdicts.get_row_at(0)[column(verdicts, key)].plain
                      for key in ("node", "verdict", "validator")}
            assert newest == {"node": newest["node"], "verdict": "✔", "validator": "coordinator"}
            assert newest["node"] in ("alpha", "bravo")
            assert "accepted" in str(app.query_one(VerificationPane).query_one("#summary", Static).content)

            await pilot.press("4")
            assert app.query_one(TabbedContent).active == "checkpoints"
            assert "0" in table_keys(app.query_one(CheckpointsPane))  # version 0, made by the coordinator
            await pilot.press("5")
            assert sorted(table_keys(app.query_one(CreditPane))) == sorted(n.node_id for n in snap.nodes)
            await pilot.press("6")
            events_log = app.query_one(LogsPane).query_one(EventLog)
            await until(pilot, lambda: sum("joined" in e.text for e, _, first in events_log.rows if first) >= 2,
                        10, "both joins in the log")

    asyncio.run(run())


def test_live_reconnects_after_the_coordinator_restarts(swarm):
    async def run():
        app = live_app(swarm)
        async with app.run_test(size=(80, 24)) as pilot:
            bar = app.query_one(LinkBar)
            await until(pilot, lambda: app.state.link is Link.CONNECTED, 30, "connected")
            await asyncio.to_thread(swarm.coordinator.stop)
            await until(pilot, lambda: "disconnected — retrying in" in str(bar.content), 30, "the disconnected banner")
            assert bar.has_class("-disconnected") and app.state.snapshot is not None  # the last state stays shown
            swarm.coordinator = await asyncio.to_thread(
                Coordinator, "test", swarm.data, swarm.logs, "coordinator-restarted", swarm.address)
            await until(pilot, lambda: app.state.link is Link.CONNECTED, 30, "reconnected by itself")
            await until(pilot, lambda: str(bar.content).startswith("● "), 5, "the banner cleared")
            assert not bar.has_class("-disconnected")

    asyncio.run(run())
