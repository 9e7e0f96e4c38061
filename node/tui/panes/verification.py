"""What verification refused: rejections per node and the coordinator's reject events.

The Watch stream does not carry per-check verdicts (proof, sampling, log-prob) yet; this pane shows
what it does carry and grows with it.
"""
from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.widgets import Static

from protocol.v1 import coordinator_pb2 as pb

from .. import fmt
from ..state import SwarmState, acceptance
from ..table import Column, Row, SwarmTable
from .base import SwarmPane
from .logs import EventLog

COLUMNS = (Column("name", "NAME"), Column("id", "ID"), Column("role", "ROLE"),
           Column("accepted", "ACCEPTED", right=True), Column("rejected", "REJECTED", right=True),
           Column("share", "REJECTED %", right=True))


def rejections(nodes: list[pb.NodeInfo]) -> list[Row]:
    """Nodes that submitted rollouts, most rejected first."""
    judged = [n for n in nodes if n.rollouts_accepted + n.rollouts_rejected]
    ranked = sorted(judged, key=lambda n: (-n.rollouts_rejected, n.name.lower(), n.node_id))
    rows: list[Row] = []
    for n in ranked:
        share = n.rollouts_rejected / (n.rollouts_accepted + n.rollouts_rejected)
        style = "red" if n.rollouts_rejected else ""
        rows.append((n.node_id, (
            Text(n.name or "—"), Text(fmt.short_id(n.node_id)), Text(fmt.role_name(n.role)),
            Text(f"{n.rollouts_accepted:,}", justify="right"),
            Text(f"{n.rollouts_rejected:,}", justify="right", style=style),
            Text(fmt.percent(share), justify="right", style=style))))
    return rows


def summary(snapshot: pb.SwarmSnapshot) -> Text:
    return Text.assemble(
        ("accepted ", "dim"), (f"{snapshot.rollouts_accepted:,}", "bold"),
        ("  rejected ", "dim"), (f"{snapshot.rollouts_rejected:,}", "bold red" if snapshot.rollouts_rejected else "bold"),
        ("  acceptance ", "dim"), (fmt.percent(acceptance(snapshot)), "bold"))


class VerificationPane(SwarmPane):
    DEFAULT_CSS = """
    VerificationPane #summary { height: auto; padding: 0 1; }
    VerificationPane SwarmTable { height: 1fr; }
    VerificationPane #rejects-title { height: 1; padding: 0 1; color: $text-muted; }
    VerificationPane EventLog { height: 1fr; padding: 0 1; }
    """

    def compose(self) -> ComposeResult:
        yield Static(id="summary")
        yield SwarmTable()
        yield Static("reject events", id="rejects-title")
        yield EventLog()

    def show(self, state: SwarmState) -> None:
        if state.snapshot is None:
            return
        self.query_one("#summary", Static).update(summary(state.snapshot))
        self.query_one(SwarmTable).show(COLUMNS, rejections(list(state.snapshot.nodes)))
        self.query_one(EventLog).show([e for e in state.events if e.kind == "reject"], "")
