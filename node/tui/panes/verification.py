"""What verification decided: accepted, pending and rejected work, the recent verdicts with the
check that failed and why, and the nodes quarantined for it.

The Watch stream carries the last verdicts and the last rejections (rejections are rare and what a
host looks for, so a busy run does not push them out); the highlighted verdict's detail is shown
in full under the table, and Enter opens its node.
"""
from __future__ import annotations

from rich.text import Text
from textual import events, on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Static

from protocol.v1 import coordinator_pb2 as pb

from .. import fmt
from ..details import NodeDetails
from ..state import SwarmState, acceptance, nodes_by_id
from ..table import Column, Row, SwarmTable
from .base import SwarmPane

REJECTED = "red"
# From this width on, the tables also show node ids, roles and validators.
WIDE = 120

VERDICT_COLUMNS = (Column("time", "TIME"), Column("node", "NODE"), Column("id", "ID"), Column("kind", "KIND"),
                   Column("version", "VER", right=True), Column("rollouts", "N", right=True),
                   Column("verdict", "✔/✖"), Column("check", "CHECK"), Column("validator", "VALIDATOR"),
                   Column("detail", "DETAIL", fill=True))
QUARANTINE_COLUMNS = (Column("name", "NAME"), Column("id", "ID"), Column("role", "ROLE"),
                      Column("reputation", "REP", right=True), Column("rejected", "REJECTED", right=True),
                      Column("check", "CAUGHT BY"), Column("time", "WHEN"), Column("detail", "DETAIL", fill=True))
WIDE_ONLY = {"id", "validator", "role"}


def node_name(node_id: str, nodes: dict[str, pb.NodeInfo]) -> str:
    node = nodes.get(node_id)
    return fmt.node_label(node) if node is not None else fmt.short_id(node_id)


def verdict_row(v: pb.VerdictInfo, nodes: dict[str, pb.NodeInfo]) -> Row:
    style = "" if v.accepted else REJECTED
    cells = {
        "time": Text(fmt.hms(v.time_ms), style="dim"),
        "node": Text(node_name(v.node_id, nodes), style=style),
        "id": Text(fmt.short_id(v.node_id), style=style),
        "kind": Text(v.kind or "—"),
        "version": Text(str(v.version), justify="right"),
        "rollouts": Text(f"{v.rollouts:,}", justify="right"),
        "verdict": Text("✔", style="green") if v.accepted else Text("✖", style=f"bold {REJECTED}"),
        "check": Text(v.check or ("—" if v.accepted else "?"), style="dim" if v.accepted else f"bold {REJECTED}"),
        "validator": Text(fmt.node_ref(v.validator, nodes)),
        "detail": Text(v.detail, style=style),
    }
    return str(v.id), [cells[c.key] for c in VERDICT_COLUMNS]


def caught_by(verdicts: list[pb.VerdictInfo]) -> dict[str, pb.VerdictInfo]:
    """Each node's first rejection among the verdicts shown: the check that got it quarantined."""
    first: dict[str, pb.VerdictInfo] = {}
    for v in verdicts:
        if not v.accepted:
            first.setdefault(v.node_id, v)
    return first


def quarantine_rows(snapshot: pb.SwarmSnapshot) -> list[Row]:
    caught = caught_by(list(snapshot.verdicts))
    rows: list[Row] = []
    for n in sorted((n for n in snapshot.nodes if n.quarantined), key=lambda n: (n.name.lower(), n.node_id)):
        v = caught.get(n.node_id)
        cells = {
            "name": Text(fmt.node_label(n), style=f"bold {REJECTED}"),
            "id": Text(fmt.short_id(n.node_id)),
            "role": Text(fmt.role_name(n.role)),
            "reputation": Text(f"{n.reputation:.2f}", justify="right"),
            "rejected": Text(f"{n.rollouts_rejected:,}", justify="right", style=REJECTED),
            "check": Text(v.check if v else "—", style=f"bold {REJECTED}" if v else "dim"),
            "time": Text(fmt.hms(v.time_ms) if v else "—", style="dim"),
            "detail": Text(v.detail if v else "no verdict on it in the latest snapshot", style="" if v else "dim"),
        }
        rows.append((n.node_id, [cells[c.key] for c in QUARANTINE_COLUMNS]))
    return rows


def summary(snapshot: pb.SwarmSnapshot) -> Text:
    quarantined = sum(n.quarantined for n in snapshot.nodes)

    def count(n: int, alarm: str) -> tuple[str, str]:
        return f"{n:,}", f"bold {alarm}" if n else "bold"

    return Text.assemble(
        ("accepted ", "dim"), count(snapshot.rollouts_accepted, "green"),
        ("  pending ", "dim"), count(snapshot.rollouts_pending, "yellow"),
        ("  rejected ", "dim"), count(snapshot.rollouts_rejected, REJECTED),
        ("  acceptance ", "dim"), (fmt.percent(acceptance(snapshot)), "bold"),
        ("  quarantined ", "dim"), count(quarantined, REJECTED))


def verdict_detail(v: pb.VerdictInfo, nodes: dict[str, pb.NodeInfo]) -> Text:
    """The highlighted verdict in full, as the table has no room for it."""
    who = f"{fmt.node_ref(v.node_id, nodes)}, v{v.version} {v.kind or 'work'}"
    validator = fmt.node_ref(v.validator, nodes)
    if v.accepted:
        return Text.assemble(("✔ ", "green"), who, (f": {v.rollouts:,} rollouts passed every check of ", "dim"),
                             validator)
    return Text.assemble((f"✖ {v.check or 'rejected'} ", f"bold {REJECTED}"), who,
                         (f", checked by {validator}: ", "dim"), v.detail)


class VerdictsTable(SwarmTable):
    BINDINGS = [Binding("enter", "select_cursor", "Node")]


class VerificationPane(SwarmPane):
    BINDINGS = [Binding("x", "rejections_only", "Rejections only")]
    DEFAULT_CSS = """
    VerificationPane #summary { height: 1; padding: 0 1; }
    VerificationPane VerdictsTable { height: 1fr; }
    VerificationPane #verdict { height: auto; max-height: 3; padding: 0 1; background: $boost; }
    VerificationPane #quarantine-title { height: 1; padding: 0 1; color: $text-muted; }
    VerificationPane #quarantined { height: auto; max-height: 35%; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.rejections_only = False
        self.wide = False
        self.snapshot: pb.SwarmSnapshot | None = None

    def compose(self) -> ComposeResult:
        yield Static("waiting for the first snapshot…", id="summary")
        yield VerdictsTable()
        yield Static(id="verdict")
        yield Static(id="quarantine-title")
        yield SwarmTable(id="quarantined")

    def on_resize(self, event: events.Resize) -> None:
        if (event.size.width >= WIDE) != self.wide:
            self.wide = event.size.width >= WIDE
            self._fill()

    def show(self, state: SwarmState) -> None:
        self.snapshot = state.snapshot
        self._fill()

    def shown_verdicts(self) -> list[pb.VerdictInfo]:
        """Newest first."""
        verdicts = list(self.snapshot.verdicts) if self.snapshot else []
        return [v for v in reversed(verdicts) if not (self.rejections_only and v.accepted)]

    def _fill(self) -> None:
        snapshot = self.snapshot
        if snapshot is None:
            return
        nodes = nodes_by_id(snapshot)
        self.query_one("#summary", Static).update(summary(snapshot))
        verdicts = self.query_one(VerdictsTable)
        newest = verdicts.cursor_row == 0  # the cursor on the newest verdict stays on the newest
        self._show(verdicts, VERDICT_COLUMNS, [verdict_row(v, nodes) for v in self.shown_verdicts()])
        if newest:
            verdicts.move_cursor(row=0, animate=False)
        quarantined = self.query_one("#quarantined", SwarmTable)
        rows = quarantine_rows(snapshot)
        self._show(quarantined, QUARANTINE_COLUMNS, rows)
        quarantined.display = bool(rows)
        self.query_one("#quarantine-title", Static).update(
            f"quarantined nodes: {len(rows)} (no more work; their unchecked work void)" if rows
            else "no node quarantined")
        self._describe_highlighted()

    def _show(self, table: SwarmTable, columns: tuple[Column, ...], rows: list[Row]) -> None:
        keep = [i for i, c in enumerate(columns) if self.wide or c.key not in WIDE_ONLY]
        table.show([columns[i] for i in keep], [(key, [cells[i] for i in keep]) for key, cells in rows])

    def _describe_highlighted(self) -> None:
        table = self.query_one(VerdictsTable)
        key = table.selected_key()
        verdict = next((v for v in self.shown_verdicts() if str(v.id) == key), None)
        box = self.query_one("#verdict", Static)
        box.display = verdict is not None
        if verdict is not None and self.snapshot is not None:
            box.update(verdict_detail(verdict, nodes_by_id(self.snapshot)))

    @on(DataTable.RowHighlighted, "VerdictsTable")
    def _highlighted(self) -> None:
        self._describe_highlighted()

    @on(DataTable.RowSelected)
    def _open_node(self, event: DataTable.RowSelected) -> None:
        key = str(event.row_key.value)
        verdict = next((v for v in self.shown_verdicts() if str(v.id) == key), None)
        self.app.push_screen(NodeDetails(verdict.node_id if verdict is not None else key))

    def action_rejections_only(self) -> None:
        self.rejections_only = not self.rejections_only
        self._fill()
