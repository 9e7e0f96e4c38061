"""The TUI without a coordinator: its parts, and pilot and snapshot tests on a fixed, made-up swarm."""
import asyncio
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc
import pytest
from textual.pilot import Pilot
from textual.widgets import Input, Static, TabbedContent

from node.tui import fmt
from node.tui.app import PotluckTui
from node.tui.charts import Series, line_chart
from node.tui.details import NodeDetails, describe
from node.tui.feed import Backoff, Disconnected, watch
from node.tui.help import HelpScreen
from node.tui.panes.checkpoints import CheckpointsPane
from node.tui.panes.logs import EventLog
from node.tui.panes.nodes import NodesTable
from node.tui.panes.overview import round_line
from node.tui.panes.verification import VerdictsTable, VerificationPane
from node.tui.state import Link, SwarmState
from node.tui.status import LinkBar
from node.tui.table import SwarmTable
from protocol.v1 import coordinator_pb2 as pb
from protocol.v1 import coordinator_pb2_grpc as pb_grpc
from tests.tui_data import NOW_MS, ROUND, SAMPLING_DETAIL, peer_id, snapshot
from tests.tui_pilot import cell, check_snapshot, column, free_port, header, names, plain, replay, settle, until

PANES = ("overview", "nodes", "verification", "checkpoints", "credit", "logs")
FROZEN = 1000.0  # the clock the snapshot tests run on: "now" never moves


def make_app(*updates, clock=lambda: FROZEN) -> PotluckTui:
    app = PotluckTui(replay(updates), "127.0.0.1:7420", clock=clock)
    app.animation_level = "none"
    return app


@asynccontextmanager
async def fixed_swarm(size: tuple[int, int]) -> AsyncIterator[tuple[PotluckTui, Pilot]]:
    """The app on the fixed swarm's snapshot, once it has read it."""
    app = make_app(snapshot())
    async with app.run_test(size=size) as pilot:
        await until(pilot, lambda: app.feed_ended, 10, "the fixed feed is read")
        yield app, pilot


# --- parts ---

def test_events_accumulate_by_id_and_restart_with_a_fresh_coordinator():
    state = SwarmState()
    first = pb.SwarmSnapshot(events=[pb.Event(id=i, kind="join", text=f"e{i}") for i in (1, 2, 3)])
    later = pb.SwarmSnapshot(events=[pb.Event(id=i, kind="lease", text=f"e{i}") for i in (2, 3, 4, 5)])
    state.apply(first, 1.0)
    state.apply(later, 2.0)
    assert [e.id for e in state.events] == [1, 2, 3, 4, 5] and state.link is Link.CONNECTED
    state.apply(Disconnected("unavailable: Connection refused", 9.0), 3.0)
    assert state.link is Link.DISCONNECTED and state.snapshot is later  # the last known swarm stays shown
    state.apply(pb.SwarmSnapshot(events=[pb.Event(id=1, kind="version", text="fresh")]), 4.0)
    assert [(e.id, e.text) for e in state.events] == [(1, "fresh")]


def test_backoff_doubles_up_to_its_cap():
    backoff = Backoff(first_s=0.5, max_s=4.0, jitter=0.0)
    assert [backoff.delay(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 4.0, 4.0]


def test_hardware_fits_a_column():
    gpu = pb.Hardware(device="cuda", cpu_count=16, ram_bytes=64 << 30,
                      gpus=[pb.Gpu(name="NVIDIA GeForce RTX 4090", memory_bytes=24 << 30)] * 2)
    assert fmt.hardware(gpu) == "2×RTX 4090 24G 16c"
    assert fmt.hardware(pb.Hardware(device="cpu", cpu_count=2, ram_bytes=8 << 30)) == "cpu 2c 8G"
    assert fmt.gpu_name("NVIDIA A100-SXM4-40GB") == "A100"
    assert [fmt.age(ms) for ms in (999, 42_000, 7 * 60_000, 3 * 3_600_000, 12 * 86_400_000)] == \
        ["0s", "42s", "7m", "3h", "12d"]


def test_percent_never_rounds_a_rejection_away():
    assert [fmt.percent(f) for f in (None, 0.0, 0.0004, 0.5, 0.98765, 0.9997, 1.0)] == \
        ["—", "0.0%", "<0.1%", "50.0%", "98.8%", ">99.9%", "100.0%"]


def test_chart_fills_its_box_and_labels_its_axes():
    series = [Series("reward", "cyan", [(0, 0.0), (1, 0.5), (3, 1.0)]), Series("eval", "magenta", [(3, 0.25)])]
    lines = line_chart(series, 30, 8, (0.0, 1.0)).plain.split("\n")
    assert len(lines) == 8 and all(len(line) == 30 for line in lines)
    assert lines[0].startswith("1.00┤") and lines[6].startswith("0.00┤")
    assert lines[-1].strip().startswith("└v0") and lines[-1].endswith("v3")
    assert lines[0][-1] != " " and lines[6][5] != " "  # (3, 1.0) top right, (0, 0.0) bottom left


def test_watch_reports_an_unreachable_coordinator_and_retries():
    async def first_two():
        feed = watch(f"127.0.0.1:{free_port()}", Backoff(first_s=0.01, max_s=0.02, jitter=0.0), clock=lambda: 50.0)
        return [await anext(feed), await anext(feed)]

    updates = asyncio.run(asyncio.wait_for(first_two(), 30))
    assert all(isinstance(u, Disconnected) and u.reason.startswith("unavailable") for u in updates)
    assert updates[0].retry_at == pytest.approx(50.01)


class SilentAfterOne(pb_grpc.CoordinatorServicer):
    """A coordinator that sends one snapshot per stream, then nothing: a hung host."""

    async def Watch(self, request, context):
        yield pb.SwarmSnapshot(run_name="hung")
        await asyncio.sleep(3600)


def test_watch_drops_a_silent_stream_and_reconnects(monkeypatch):
    monkeypatch.setattr("node.tui.feed.STALE_AFTER_S", 0.3)

    async def run():
        server = grpc.aio.server()
        pb_grpc.add_CoordinatorServicer_to_server(SilentAfterOne(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            feed = watch(f"127.0.0.1:{port}", Backoff(first_s=0.01, max_s=0.01, jitter=0.0))
            return [await anext(feed) for _ in range(3)]
        finally:
            await server.stop(grace=None)

    first, lost, again = asyncio.run(asyncio.wait_for(run(), 30))
    assert first.run_name == "hung" and again.run_name == "hung"
    assert isinstance(lost, Disconnected) and lost.reason == "no update for 0.3s"


def test_round_line_reads_each_state_of_a_round():
    snap = snapshot()
    tag = ROUND.round_id[:8]
    assert round_line(snap).plain == f"round {tag} on v12: training, 2 of 2 trainers leased, 1 of 2 submitted"
    snap.round.state, snap.round.trainers = "forming", 1
    assert round_line(snap).plain == f"round {tag} on v12: forming, 1 of 2 trainers joined"
    snap.round.state, snap.round.trainers, snap.round.outcome = "failed", 2, "no quorum: 1 agreeing of 2 needed"
    assert round_line(snap).plain == f"round {tag} on v12: failed, 1 of 2 submitted: no quorum: 1 agreeing of 2 needed"
    snap.ClearField("round")
    assert round_line(snap).plain.startswith("round none yet")


def test_node_details_say_which_version_it_holds():
    snap = snapshot()
    nodes = {n.name: n for n in snap.nodes}
    assert re.search(r"holds\s+v12 \(current\)", plain(describe(nodes["ada"], snap, [])))
    assert re.search(r"holds\s+v11 \(1 behind v12\)", plain(describe(nodes["hopper"], snap, [])))
    assert re.search(r"holds\s+none reported yet", plain(describe(nodes["knuth"], snap, [])))


# --- pilot tests on the fixed swarm ---

def test_nodes_sort_filter_and_details():
    async def run():
        async with fixed_swarm((120, 30)) as (app, pilot):
            await pilot.press("2")
            table = app.query_one(NodesTable)
            await until(pilot, lambda: table.row_count == 9, 10, "all nodes listed")
            assert app.focused is table
            assert names(table) == ["ada", "bert", "curie", "dijkstra", "euler", "fermi", "gauss", "hopper", "knuth"]
            assert cell(table, "hopper", "role") == "validator"
            await pilot.press("r")
            assert names(table)[0] == "knuth"
            # A click on the CREDIT header sorts by credit, biggest first; a second click reverses.
            await pilot.click(NodesTable, offset=header(table, "credit"))
            assert names(table)[:3] == ["ada", "curie", "gauss"]
            await pilot.click(NodesTable, offset=header(table, "credit"))
            assert names(table)[:3] == ["knuth", "fermi", "dijkstra"]
            await pilot.press("s")  # next column: SEEN, most recent first
            assert names(table)[0] == "ada" and names(table)[-1] == "euler"
            # Filter: every word must match; the cursor row stays the one it was on.
            await pilot.press("slash")
            assert isinstance(app.focused, Input)
            await pilot.press(*"inference cpu")
            assert sorted(names(table)) == ["bert", "dijkstra", "euler", "fermi", "knuth"]
            await pilot.press("escape", "down", "enter")
            assert isinstance(app.screen, NodeDetails) and app.screen.node_id == table.ordered_rows[1].key.value
            await pilot.press("escape")
            assert not isinstance(app.screen, NodeDetails)
            await pilot.press("slash", *"offline", "enter")
            assert names(table) == ["knuth", "euler"] and app.focused is table  # still by SEEN
            # A quarantined node reads so, in red, whatever its worker last reported; details say why.
            await pilot.press("slash", *("ctrl+h",) * 7, *"quarantined", "enter")
            assert names(table) == ["fermi", "knuth"]
            assert cell(table, "fermi", "state") == "quarantined"
            assert "red" in str(table.get_row_at(0)[column(table, "state")].style)
            await pilot.press("up", "enter")
            details = plain(app.screen.query_one("#body", Static).content)
            assert "failed the sampling check" in details and re.search(r"reputation\s+0\.00", details)

    asyncio.run(run())


def test_verification_lists_verdicts_rejections_and_quarantines():
    async def run():
        async with fixed_swarm((80, 24)) as (app, pilot):
            await pilot.press("3")
            pane = app.query_one(VerificationPane)
            verdicts = pane.query_one(VerdictsTable)
            await until(pilot, lambda: verdicts.row_count == 10, 10, "every verdict listed")
            assert app.focused is verdicts
            summary = str(pane.query_one("#summary", Static).content)
            assert "pending 48" in summary and "rejected 128" in summary and "quarantined 2" in summary
            rows = [{c.key.value: cell.plain for c, cell in zip(verdicts.ordered_columns, verdicts.get_row_at(i))}
                    for i in range(verdicts.row_count)]
            assert (rows[0]["time"], rows[0]["node"]) == (fmt.hms(NOW_MS - 20_000), "dijkstra")  # newest first
            fermi = next(r for r in rows if r["node"] == "fermi" and r["verdict"] == "✖")
            # The detail is cut to the room 80 columns leave.
            assert fermi["check"] == "sampling" and fermi["detail"].endswith("…")
            assert SAMPLING_DETAIL.startswith(fermi["detail"][:-1])
            await pilot.press("x")  # rejections only, newest first
            assert [verdicts.get_row_at(i)[column(verdicts, "node")].plain for i in range(verdicts.row_count)] == \
                ["fermi", "knuth"]
            # The highlighted verdict's detail in full, under the table.
            assert "margin 0.05" in plain(pane.query_one("#verdict", Static).content)
            quarantined = pane.query_one("#quarantined", SwarmTable)
            assert names(quarantined) == ["fermi", "knuth"]
            assert [cell(quarantined, n, "check") for n in ("fermi", "knuth")] == ["sampling", "reward_mismatch"]
            await pilot.press("down", "enter")  # Enter opens the verdict's node
            assert isinstance(app.screen, NodeDetails) and app.screen.node_id == peer_id("knuth")

    asyncio.run(run())


def test_overview_shows_the_round_and_checkpoints_who_holds_each_version():
    async def run():
        async with fixed_swarm((80, 24)) as (app, pilot):
            round_shown = app.query_one("#round", Static)
            await until(pilot, lambda: "training" in str(round_shown.content), 10, "the round line")
            assert str(round_shown.content) == \
                f"round {ROUND.round_id[:8]} on v12: training, 2 of 2 trainers leased, 1 of 2 submitted"
            await pilot.press("4")
            pane = app.query_one(CheckpointsPane)
            table = pane.query_one(SwarmTable)
            await until(pilot, lambda: table.row_count == 13, 10, "every version listed")
            held = {row.key.value: table.get_row(row.key)[column(table, "held")].plain for row in table.ordered_rows}
            # Online holders only: euler left holding v4, knuth never said; quarantined fermi is online on v10.
            assert (held["12"], held["11"], held["10"], held["4"], held["0"]) == ("4", "2", "1", "0", "0")
            assert "+ the coordinator" in str(pane.query_one("#legend", Static).content)
            await pilot.press("2", *["down"] * 3, "enter")  # dijkstra, on v11
            assert isinstance(app.screen, NodeDetails) and app.screen.node_id == peer_id("dijkstra")
            assert re.search(r"holds\s+v11 \(1 behind v12\)", plain(app.screen.query_one("#body", Static).content))

    asyncio.run(run())


def test_logs_search_filters_and_keeps_order():
    async def run():
        async with fixed_swarm((80, 24)) as (app, pilot):
            await pilot.press("6", "slash", *"quarantine")
            await settle(pilot)
            log = app.query_one("LogsPane EventLog", EventLog)
            shown = [event for event, _, first in log.rows if first]
            assert [e.kind for e in shown] == ["quarantine"] * 2
            assert [e.id for e in shown] == sorted(e.id for e in shown)  # newest last
            assert "j1yiB3GG quarantined after failing the sampling check" in shown[-1].text

    asyncio.run(run())


# --- snapshots: the panes as they look, at the smallest supported size and a large one ---

@pytest.mark.parametrize("size", [(80, 24), (160, 48)], ids=["80x24", "160x48"])
def test_panes_match_snapshots(size, tmp_path):
    async def run():
        failures = []
        async with fixed_swarm(size) as (app, pilot):
            for key, pane in zip("123456", PANES):
                await pilot.press(key)
                assert app.query_one(TabbedContent).active == pane
                await settle(pilot)
                failures.append(check_snapshot(app.export_screenshot(simplify=True), f"{pane}-{size[0]}x{size[1]}", tmp_path))
        return [f for f in failures if f]

    assert asyncio.run(run()) == []


def test_details_help_and_disconnected_match_snapshots(tmp_path):
    now = [FROZEN - 10]  # the snapshot arrives 10 s before the link drops

    async def run():
        app = make_app(snapshot(), Disconnected("unavailable: Connection refused", FROZEN + 3), clock=lambda: now[0])
        failures = []
        async with app.run_test(size=(80, 24)) as pilot:
            await until(pilot, lambda: app.feed_ended, 10, "the fixed feed is read")
            now[0] = FROZEN
            bar = app.query_one(LinkBar)
            await until(pilot, lambda: "retrying in 3s" in str(bar.content), 5, "the countdown is shown")
            assert str(bar.content).startswith("✖ disconnected — retrying in 3s") and bar.has_class("-disconnected")
            await settle(pilot)
            failures.append(check_snapshot(app.export_screenshot(simplify=True), "disconnected-80x24", tmp_path))
            await pilot.press("2", *["down"] * 5, "enter")  # fermi, quarantined
            await settle(pilot)
            failures.append(check_snapshot(app.export_screenshot(simplify=True), "details-80x24", tmp_path))
            await pilot.press("escape", "question_mark")
            assert isinstance(app.screen, HelpScreen)
            await settle(pilot)
            failures.append(check_snapshot(app.export_screenshot(simplify=True), "help-80x24", tmp_path))
        return [f for f in failures if f]

    assert asyncio.run(run()) == []
