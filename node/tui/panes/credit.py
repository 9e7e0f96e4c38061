"""The leaderboard: nodes by credit earned, with the rollouts accepted and rejected behind it."""
from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult

from protocol.v1 import coordinator_pb2 as pb

from .. import fmt
from ..state import SwarmState
from ..table import Column, Row, SwarmTable
from .base import SwarmPane

COLUMNS = (Column("rank", "#", right=True), Column("name", "NAME"), Column("id", "ID"), Column("role", "ROLE"),
           Column("credit", "CREDIT", right=True), Column("share", "SHARE", right=True),
           Column("accepted", "ACCEPTED", right=True), Column("rejected", "REJECTED", right=True))


def leaderboard(nodes: list[pb.NodeInfo]) -> list[Row]:
    total = sum(n.credit for n in nodes)
    ranked = sorted(nodes, key=lambda n: (-n.credit, n.name.lower(), n.node_id))
    return [(n.node_id, (
        Text(str(rank), justify="right"),
        Text(n.name or "—", style="bold" if rank <= 3 else ""),
        Text(fmt.short_id(n.node_id)),
        Text(fmt.role_name(n.role)),
        Text(f"{n.credit:,.1f}", justify="right"),
        Text(fmt.percent(n.credit / total if total else None), justify="right"),
        Text(f"{n.rollouts_accepted:,}", justify="right"),
        Text(f"{n.rollouts_rejected:,}", justify="right", style="red" if n.rollouts_rejected else ""),
    )) for rank, n in enumerate(ranked, start=1)]


class CreditPane(SwarmPane):
    DEFAULT_CSS = "CreditPane SwarmTable { height: 1fr; }"

    def compose(self) -> ComposeResult:
        yield SwarmTable()

    def show(self, state: SwarmState) -> None:
        if state.snapshot is not None:
            self.query_one(SwarmTable).show(COLUMNS, leaderboard(list(state.snapshot.nodes)))
