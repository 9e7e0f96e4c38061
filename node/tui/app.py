"""The TUI's shell: a link bar, one tab per pane, a footer of keys; fed by any async iterator of updates.

In production the updates come from feed.watch (the live Watch stream); tests pass a fixed list,
so the app runs without a coordinator.
"""
from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable

from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.signal import Signal
from textual.widgets import DataTable, Footer, TabbedContent, TabPane

from .details import NodeDetails
from .feed import Update
from .help import HelpScreen
from .panes.checkpoints import CheckpointsPane
from .panes.credit import CreditPane
from .panes.logs import LogsPane
from .panes.nodes import NodesPane
from .panes.overview import OverviewPane
from .panes.verification import VerificationPane
from .state import Link, SwarmState
from .status import LinkBar

PANES = (("overview", "Overview", OverviewPane), ("nodes", "Nodes", NodesPane),
         ("verification", "Verification", VerificationPane), ("checkpoints", "Checkpoints", CheckpointsPane),
         ("credit", "Credit", CreditPane), ("logs", "Logs", LogsPane))


class PotluckTui(App[None]):
    TITLE = "potluck"
    # Panes fill the space between the link bar and the footer at any terminal size.
    CSS = """
    TabbedContent, TabbedContent > ContentSwitcher, TabPane { height: 1fr; }
    TabPane { padding: 0; }
    /* While disconnected, what is shown is the last thing known: dim it. */
    .-disconnected TabbedContent { opacity: 60%; }
    """
    BINDINGS = [
        *(Binding(str(i), f"pane('{pane_id}')", title, show=False) for i, (pane_id, title, _) in enumerate(PANES, 1)),
        Binding("question_mark", "help", "Help"),
        Binding("q", "quit", "Quit"),
        # Ctrl-C stops every other potluck command; Textual's default only says to press ctrl+q.
        Binding("ctrl+c", "quit", "Quit", show=False),
    ]

    def __init__(self, updates: AsyncIterator[Update], address: str,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.updates, self.address, self.clock = updates, address, clock
        self.state = SwarmState()
        self.swarm_updated: Signal[SwarmState] = Signal(self, "swarm_updated")
        self.feed_ended = False

    def compose(self) -> ComposeResult:
        yield LinkBar(self.address, self.clock)
        with TabbedContent():
            for i, (pane_id, title, pane) in enumerate(PANES, 1):
                with TabPane(f"{i} {title}", id=pane_id):
                    yield pane()
        yield Footer()

    def on_mount(self) -> None:
        self._consume()

    @work(exclusive=True)
    async def _consume(self) -> None:
        async for update in self.updates:
            self.state.apply(update, self.clock())
            self.screen_stack[0].set_class(self.state.link is Link.DISCONNECTED, "-disconnected")
            self.swarm_updated.publish(self.state)
        self.feed_ended = True

    @on(TabbedContent.TabActivated)
    def _focus_pane(self, event: TabbedContent.TabActivated) -> None:
        # Focus lands on the pane's table or log, so its keys work at once and the footer lists them.
        targets = event.pane.query("DataTable, EventLog")
        self.set_focus(targets.first() if targets else None)

    @on(DataTable.RowSelected, "NodesTable")
    def _open_node(self, event: DataTable.RowSelected) -> None:
        self.push_screen(NodeDetails(str(event.row_key.value)))

    def action_pane(self, pane_id: str) -> None:
        self.query_one(TabbedContent).active = pane_id

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())
