"""The volunteer's view of `potluck node join`: this node's role, work, version, rate, verified and
rejected work, credit, a progress bar for set-up steps, and its own log.

It is a thin consumer: it redraws from a NodeStatus a few times a second and never talks to the
coordinator; join.py, the node's client and the Watch stream fill the NodeStatus (node/view.py).
"""
from __future__ import annotations

from collections.abc import Callable

from rich.table import Table
from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.widgets import Footer, Label, Log, ProgressBar, Static

from ..status import LOG_LINES, NodeStatus
from . import fmt

REDRAW_S = 0.25
STATE_STYLES = {"generating": "bold green", "training": "bold green", "verifying": "bold green",
                "evaluating": "bold magenta", "fetching": "bold cyan", "waiting": "yellow", "leaving": "bold red"}


def title(status: NodeStatus) -> Text:
    who = f"{status.name} ({fmt.short_id(status.node_id)})" if status.name else fmt.short_id(status.node_id)
    text = Text.assemble(("potluck node ", "bold"), who or "…")
    if status.role:
        text.append(f" · {status.role}")
    if status.run_name:
        text.append(" · run ", style="dim").append(status.run_name)
    return text


def link(status: NodeStatus) -> Text:
    swarm = "" if status.swarm_online is None else f" · swarm {status.swarm_online} online"
    if status.link == "connected":
        return Text.assemble(("● ", "bold green"), f"connected to {status.address}{swarm}")
    if status.link == "connecting":
        return Text(f"… connecting to {status.address}")
    return Text.assemble(("✖ ", "bold red"), f"{status.address} unreachable: {status.link}{swarm}")


def version(status: NodeStatus) -> Text:
    held = "—" if status.held_version is None else f"v{status.held_version}"
    if status.latest_version is None:
        return Text(held)
    behind = status.held_version is not None and status.held_version < status.latest_version
    return Text.assemble(held, (f"  latest v{status.latest_version}", "yellow" if behind else "dim"))


def work(status: NodeStatus) -> tuple[str, Text]:
    """What this node's work earned so far: rollouts judged for inference, rounds for a trainer."""
    if status.role == "trainer":
        return "rounds", Text(f"{status.rounds:,}")
    if status.role == "validator":  # it judges others' rollouts: its credit is its work
        return "work", Text("re-checks others' rollouts, credit per token checked", "dim")
    judged = status.accepted + status.rejected
    share = f"  ({fmt.percent(status.accepted / judged)} accepted)" if judged else ""
    return "rollouts", Text.assemble((f"{status.accepted:,} ✔", "green"), "  ",
                                     (f"{status.rejected:,} ✖", "red" if status.rejected else "dim"), (share, "dim"))


def facts(status: NodeStatus) -> Table:
    grid = Table.grid(padding=(0, 2), expand=True)
    for style, ratio in (("dim", None), ("", 3), ("dim", None), ("", 2)):
        grid.add_column(style=style, ratio=ratio, no_wrap=True)
    label, earned = work(status)
    grid.add_row("state", Text(status.state, STATE_STYLES.get(status.state, "bold")),
                 "tokens/s", fmt.rate(status.tokens_per_s))
    grid.add_row("version", version(status), "credit", Text(f"{status.credit:,.0f}", "bold"))
    grid.add_row(label, earned, "", "")
    return grid


def last_result(status: NodeStatus) -> Text:
    # Its own line, as wide as the screen: it is the longest thing shown. Aligned with the grid above.
    return Text.assemble(("last      ", "dim"), status.last_result or "no work submitted yet")


class VolunteerView(App[None]):
    TITLE = "potluck node"
    CSS = """
    #title { height: 1; padding: 0 1; background: $panel; text-wrap: nowrap; text-overflow: ellipsis; }
    #link { height: 1; padding: 0 1; text-wrap: nowrap; text-overflow: ellipsis; }
    #facts { height: auto; padding: 0 1; margin: 1 0 0 0; }
    #last { height: 1; padding: 0 1; text-wrap: nowrap; text-overflow: ellipsis; }
    #setup { height: 1; padding: 0 1; margin: 1 0 0 0; display: none; }
    #setup.-active { display: block; }
    #setup Label { width: auto; margin: 0 2 0 0; }
    #log { height: 1fr; margin: 1 0 0 0; border-top: solid $panel-lighten-2; border-title-color: $text-muted; }
    """
    # Leaving returns this node's leases first, so the app closes when the node is done, not at once.
    BINDINGS = [Binding("q", "leave", "Leave the run"), Binding("ctrl+c", "leave", "Leave", show=False)]

    def __init__(self, status: NodeStatus, leave: Callable[[], None]) -> None:
        super().__init__()
        self.status, self.leave = status, leave
        self.lines_shown = 0  # status.lines_total when the log was last brought up to date

    def compose(self) -> ComposeResult:
        yield Static(id="title")
        yield Static(id="link")
        yield Static(id="facts")
        yield Static(id="last")
        with Horizontal(id="setup"):
            yield Label(id="setup-label")
            yield ProgressBar(show_eta=False)
        yield Log(id="log", max_lines=LOG_LINES)
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#log", Log).border_title = "log"
        self.redraw()
        self.set_interval(REDRAW_S, self.redraw)

    def action_leave(self) -> None:
        self.leave()

    def redraw(self) -> None:
        if not self.is_running:  # shutting down: the widgets may be gone before this timer stops
            return
        status = self.status
        self.query_one("#title", Static).update(title(status))
        self.query_one("#link", Static).update(link(status))
        self.query_one("#facts", Static).update(facts(status))
        self.query_one("#last", Static).update(last_result(status))
        setup = self.query_one("#setup")
        setup.set_class(status.progress is not None, "-active")
        if status.progress is not None:
            self.query_one("#setup-label", Label).update(status.progress.label)
            self.query_one(ProgressBar).update(total=status.progress.total, progress=status.progress.done)
        new = min(status.lines_total - self.lines_shown, len(status.lines))
        if new:
            self.query_one("#log", Log).write_lines(list(status.lines)[-new:])
            self.lines_shown = status.lines_total
