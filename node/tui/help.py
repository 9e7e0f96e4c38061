"""The `?` screen: every pane and every key in one place."""
from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Footer, Static

PANES = (
    ("1", "Overview", "run, version (= outer step), throughput, acceptance, curves"),
    ("2", "Nodes", "every node: sort, filter, details"),
    ("3", "Verification", "verdicts, failed checks, quarantines"),
    ("4", "Checkpoints", "published versions and their scores"),
    ("5", "Credit", "leaderboard of credit earned"),
    ("6", "Logs", "the coordinator's events, searchable"),
)
KEYS = (
    ("1–6", "switch pane (or click a tab)"),
    ("/", "filter nodes, search logs; esc or enter: back"),
    ("s r", "nodes: sort by next column, reverse (or click a header)"),
    ("enter", "nodes, verification: details of the selected node"),
    ("x", "verification: rejections only, or all verdicts"),
    ("↑ ↓", "move in tables and logs (also pgup, pgdn)"),
    ("?", "this help"),
    ("^p", "command palette: themes, all keys"),
    ("q", "quit"),
)


def help_table() -> Table:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold", no_wrap=True)
    table.add_column()
    table.add_row(Text("panes", style="underline"), "")
    for key, name, what in PANES:
        table.add_row(key, Text.assemble((name, "bold"), (f" — {what}", "dim")))
    table.add_row("", "")
    table.add_row(Text("keys", style="underline"), "")
    for key, what in KEYS:
        table.add_row(key, what)
    return table


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,question_mark,q", "dismiss", "Close")]
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > VerticalScroll {
        width: 72; max-width: 95%; height: auto; max-height: 90%;
        border: round $accent; padding: 0 1; background: $surface;
    }
    """

    def compose(self) -> ComposeResult:
        with VerticalScroll() as box:
            box.border_title = "potluck tui — help"
            box.border_subtitle = "esc to close"
            yield Static(help_table())
        yield Footer()
