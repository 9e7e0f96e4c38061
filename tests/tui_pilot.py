"""Driving the TUI in tests: fixed update streams, waiting on conditions, SVG snapshots."""
from __future__ import annotations

import asyncio
import io
import os
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path

from rich.console import Console
from textual.pilot import Pilot
from textual.widgets import DataTable

from node.tui.feed import Update

SNAPSHOTS = Path(__file__).resolve().parent / "snapshots" / "tui"
# Set to 1 to (re)write the committed snapshots instead of comparing with them; review the SVGs.
UPDATE_ENV = "POTLUCK_UPDATE_SNAPSHOTS"


async def replay(updates: Iterable[Update]) -> AsyncIterator[Update]:
    for update in updates:
        yield update


async def until(pilot: Pilot, predicate: Callable[[], object], timeout: float, what: str) -> None:
    """Let the app run until predicate() holds; fail with `what` after timeout seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached in {timeout}s: {what}")
        await pilot.pause(0.05)


async def settle(pilot: Pilot) -> None:
    """Wait until queued messages, signal callbacks and layout are done, for a stable screenshot."""
    for _ in range(3):
        await pilot.pause()
    await pilot.wait_for_scheduled_animations()
    await asyncio.sleep(0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def column(table: DataTable, key: str) -> int:
    return [c.key.value for c in table.ordered_columns].index(key)


def names(table: DataTable) -> list[str]:
    """The NAME column, top to bottom."""
    return [table.get_row_at(i)[column(table, "name")].plain for i in range(table.row_count)]


def cell(table: DataTable, name: str, key: str) -> str:
    """What the row of the node called name shows in column key."""
    return table.get_row_at(names(table).index(name))[column(table, key)].plain


def header(table: DataTable, key: str) -> tuple[int, int]:
    """Where to click on a column's header."""
    columns = [c.key.value for c in table.ordered_columns]
    return sum(c.get_render_width(table) for c in table.ordered_columns[:columns.index(key)]) + 2, 0


def plain(renderable: object, width: int = 120) -> str:
    """What a renderable reads as, without styles."""
    console = Console(width=width, file=io.StringIO(), record=True, color_system=None)
    console.print(renderable)
    return console.export_text()


def check_snapshot(svg: str, name: str, out_dir: Path) -> str | None:
    """None when svg equals the committed snapshot `name`, else why not (the new SVG is kept in out_dir)."""
    path = SNAPSHOTS / f"{name}.svg"
    if os.environ.get(UPDATE_ENV) == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(svg)
        return None
    if not path.exists():
        return f"{name}: no snapshot at {path}; run with {UPDATE_ENV}=1 and review it"
    if path.read_text() != svg:
        actual = out_dir / f"{name}.svg"
        actual.write_text(svg)
        return f"{name}: differs from {path}; this run's screen is {actual} (accept with {UPDATE_ENV}=1)"
    return None
