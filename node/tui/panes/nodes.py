"""Every node of the run in a table you can sort (keys or a header click) and filter; Enter opens one."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rich.text import Text
from textual import events, on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Input

from protocol.v1 import coordinator_pb2 as pb

from .. import fmt
from ..state import SwarmState
from ..table import Column, Row, SwarmTable
from .base import SwarmPane


@dataclass(frozen=True)
class Field:
    key: str
    label: str
    text: Callable[[pb.NodeInfo, int], str]  # (node, server time in ms)
    order: Callable[[pb.NodeInfo], Any]
    numeric: bool = False  # numbers sort biggest first on the first press, and align right
    narrow: bool = True  # shown in a narrow pane too
    style: Callable[[pb.NodeInfo], str] = lambda n: ""


# Below this width the ID and REP columns go (the name falls back to the id; details and the filter
# have both), so the rest fits an 80-column terminal.
WIDE = 100
QUARANTINED = "bold red"


def state_style(node: pb.NodeInfo) -> str:
    return QUARANTINED if node.quarantined else ""


FIELDS = (
    Field("id", "ID", lambda n, _: fmt.short_id(n.node_id), lambda n: fmt.short_id(n.node_id), narrow=False),
    Field("name", "NAME", lambda n, _: fmt.node_label(n), lambda n: fmt.node_label(n).lower()),
    Field("role", "ROLE", lambda n, _: fmt.role_name(n.role), lambda n: fmt.role_name(n.role)),
    Field("hardware", "HARDWARE", lambda n, _: fmt.hardware(n.hardware), lambda n: fmt.hardware(n.hardware)),
    Field("state", "STATE", lambda n, _: fmt.node_state(n), fmt.node_state, style=state_style),
    Field("online", "ON", lambda n, _: "●" if n.online else "○", lambda n: n.online, numeric=True),
    Field("tokens", "TOK/S", lambda n, _: fmt.rate(n.tokens_per_s), lambda n: n.tokens_per_s, numeric=True),
    Field("reputation", "REP", lambda n, _: f"{n.reputation:.2f}", lambda n: n.reputation, numeric=True,
          narrow=False, style=state_style),
    Field("credit", "CREDIT", lambda n, _: f"{n.credit:,.0f}", lambda n: n.credit, numeric=True),
    Field("seen", "SEEN", lambda n, now: fmt.age(now - n.last_seen_ms), lambda n: n.last_seen_ms, numeric=True),
)
BY_KEY = {f.key: f for f in FIELDS}


def matches(node: pb.NodeInfo, query: str) -> bool:
    """Every word of the query appears in one of the node's fields (case-insensitive)."""
    haystack = " ".join((node.node_id, node.name, fmt.role_name(node.role), fmt.node_state(node),
                         fmt.hardware(node.hardware), "online" if node.online else "offline")).lower()
    return all(word in haystack for word in query.lower().split())


def ordered(nodes: list[pb.NodeInfo], field: Field, descending: bool) -> list[pb.NodeInfo]:
    by_name = sorted(nodes, key=lambda n: (n.name.lower(), n.node_id))  # ties read alphabetically
    return sorted(by_name, key=field.order, reverse=descending)


def row(node: pb.NodeInfo, now_ms: int, fields: list[Field]) -> Row:
    dim = "" if node.online else "dim"
    cells = [Text(f.text(node, now_ms), style=f"{dim} {f.style(node)}".strip(),
                  justify="right" if f.numeric else "left") for f in fields]
    return node.node_id, cells


class NodesTable(SwarmTable):
    BINDINGS = [Binding("enter", "select_cursor", "Details")]


class NodesPane(SwarmPane):
    BINDINGS = [
        Binding("slash", "filter", "Filter"),
        Binding("s", "sort_next", "Sort"),
        Binding("r", "reverse", "Reverse"),
        Binding("escape", "leave_filter", "Table", show=False),
    ]
    DEFAULT_CSS = """
    NodesPane #filter { border: none; height: 1; padding: 0 1; }
    NodesPane NodesTable { height: 1fr; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.sort_key, self.descending = "name", False
        self.nodes: list[pb.NodeInfo] = []
        self.now_ms = 0
        self.fields = list(FIELDS)

    def compose(self) -> ComposeResult:
        yield Input(placeholder="/ filter: name, id, role, state, hardware, online…", id="filter")
        yield NodesTable()

    def on_resize(self, event: events.Resize) -> None:
        fields = [f for f in FIELDS if f.narrow or event.size.width >= WIDE]
        if fields != self.fields:
            self.fields = fields
            self._fill()

    def show(self, state: SwarmState) -> None:
        if state.snapshot is not None:
            self.nodes, self.now_ms = list(state.snapshot.nodes), state.snapshot.server_time_ms
            self._fill()

    def shown_nodes(self) -> list[pb.NodeInfo]:
        query = self.query_one("#filter", Input).value
        kept = [n for n in self.nodes if matches(n, query)]
        return ordered(kept, BY_KEY[self.sort_key], self.descending)

    def sort_by(self, key: str, descending: bool) -> None:
        self.sort_key, self.descending = key, descending
        self._fill()

    def _fill(self) -> None:
        columns = [Column(f.key, f.label + self._arrow(f.key), f.numeric) for f in self.fields]
        self.query_one(NodesTable).show(columns, [row(n, self.now_ms, self.fields) for n in self.shown_nodes()])

    def _arrow(self, key: str) -> str:
        return (" ▼" if self.descending else " ▲") if key == self.sort_key else ""

    @on(DataTable.HeaderSelected)
    def _header_clicked(self, event: DataTable.HeaderSelected) -> None:
        key = str(event.column_key.value)
        if key == self.sort_key:
            self.sort_by(key, not self.descending)
        else:
            self.sort_by(key, BY_KEY[key].numeric)

    @on(Input.Changed, "#filter")
    def _filter_changed(self) -> None:
        self._fill()

    @on(Input.Submitted, "#filter")
    def action_leave_filter(self) -> None:
        self.query_one(NodesTable).focus()

    def action_filter(self) -> None:
        self.query_one("#filter", Input).focus()

    def action_sort_next(self) -> None:
        keys = [f.key for f in self.fields]
        key = keys[(keys.index(self.sort_key) + 1) % len(keys)] if self.sort_key in keys else keys[0]
        self.sort_by(key, BY_KEY[key].numeric)

    def action_reverse(self) -> None:
        self.sort_by(self.sort_key, not self.descending)
