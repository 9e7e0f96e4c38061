"""The top line: connected to what, and, when the coordinator is unreachable, that and when the next try is."""
from __future__ import annotations

import math
from collections.abc import Callable

from rich.text import Text
from textual.widgets import Static

from . import fmt
from .panes.base import follow
from .state import Link, SwarmState


def link_text(state: SwarmState, address: str, now: float) -> Text:
    snapshot = state.snapshot
    since = "" if state.received_at is None else f" · last update {fmt.age(int(1000 * (now - state.received_at)))} ago"
    if state.link is Link.CONNECTING:
        return Text(f"… connecting to {address}")
    if state.lost is not None:
        wait = math.ceil(state.lost.retry_at - now)
        retry = f"retrying in {wait}s" if wait > 0 else "reconnecting…"
        return Text(f"✖ disconnected — {retry} · {address}{since} · {state.lost.reason}")
    assert snapshot is not None
    return Text.assemble(("● ", "bold green"), f"{snapshot.run_name} · version {snapshot.current_version} · ",
                         (f"{address}{since}", "dim"))


class LinkBar(Static):
    DEFAULT_CSS = """
    LinkBar { height: 1; padding: 0 1; background: $panel; text-wrap: nowrap; text-overflow: ellipsis; }
    LinkBar.-connecting { background: $warning-muted; }
    LinkBar.-disconnected { background: $error; color: $text; text-style: bold; }
    """

    def __init__(self, address: str, clock: Callable[[], float]) -> None:
        super().__init__()
        self.address, self.clock = address, clock
        self.state = SwarmState()

    def on_mount(self) -> None:
        follow(self, self.show)
        # Between snapshots the bar still counts down to the next reconnect and ages the last update.
        self.set_interval(1.0, self._redraw)

    def show(self, state: SwarmState) -> None:
        self.state = state
        self._redraw()

    def _redraw(self) -> None:
        self.set_class(self.state.link is Link.CONNECTING, "-connecting")
        self.set_class(self.state.link is Link.DISCONNECTED, "-disconnected")
        self.update(link_text(self.state, self.address, self.clock()))
