"""Every published version, newest first: its digest, size, age, how many peers hold it, who trained it on
what, how it scored."""
from __future__ import annotations

from collections import Counter

from rich.text import Text
from textual.app import ComposeResult
from textual.widgets import Static

from protocol.v1 import coordinator_pb2 as pb

from .. import fmt
from ..state import SwarmState, nodes_by_id
from ..table import Column, Row, SwarmTable
from .base import SwarmPane

SHA_SHOWN = 12  # as in the coordinator's "version N published (sha…)" events
COLUMNS = (Column("version", "VER"), Column("sha256", "SHA256"), Column("size", "SIZE", right=True),
           Column("age", "AGE", right=True), Column("held", "HELD", right=True), Column("trainer", "TRAINER"),
           Column("used", "USED", right=True), Column("reward", "REWARD", right=True),
           Column("eval", "EVAL", right=True))
# The coordinator keeps every listed version's blob: counted in HELD it would only add one to each row.
LEGEND = "● current  HELD: online nodes holding it, + the coordinator, which keeps all"


def holders(snapshot: pb.SwarmSnapshot) -> Counter[int]:
    """How many online nodes hold each version, from their heartbeats."""
    return Counter(n.holding_version for n in snapshot.nodes if n.online and n.HasField("holding_version"))


def row(v: pb.VersionInfo, snapshot: pb.SwarmSnapshot, nodes: dict[str, pb.NodeInfo], held: Counter[int]) -> Row:
    current = v.version == snapshot.current_version
    cells = (
        Text(f"{'●' if current else ' '} {v.version}", style="bold" if current else ""),
        Text(v.sha256[:SHA_SHOWN]),
        Text(fmt.size(v.size), justify="right"),
        Text(fmt.age(snapshot.server_time_ms - v.created_ms), justify="right"),
        Text(str(held[v.version]), justify="right", style="" if held[v.version] else "dim"),
        Text(fmt.node_ref(v.trainer, nodes)),
        Text(f"{v.rollouts_used:,}", justify="right"),
        Text(f"{v.reward_mean:.3f}" if v.rollouts_generated else "—", justify="right"),
        Text(f"{v.eval_accuracy:.3f}" if v.has_eval else "—", justify="right"),
    )
    return str(v.version), cells


class CheckpointsPane(SwarmPane):
    DEFAULT_CSS = """
    CheckpointsPane SwarmTable { height: 1fr; }
    CheckpointsPane #legend { height: 1; padding: 0 1; color: $text-muted; }
    """

    def compose(self) -> ComposeResult:
        yield SwarmTable()
        yield Static(LEGEND, id="legend")

    def show(self, state: SwarmState) -> None:
        snapshot = state.snapshot
        if snapshot is None:
            return
        nodes, held = nodes_by_id(snapshot), holders(snapshot)
        rows = [row(v, snapshot, nodes, held) for v in sorted(snapshot.versions, key=lambda v: -v.version)]
        self.query_one(SwarmTable).show(COLUMNS, rows)
