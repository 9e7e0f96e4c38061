"""Every published version, newest first: its digest, size, age, who trained it on what, how it scored."""
from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult

from protocol.v1 import coordinator_pb2 as pb

from .. import fmt
from ..state import SwarmState, nodes_by_id
from ..table import Column, Row, SwarmTable
from .base import SwarmPane

SHA_SHOWN = 12  # as in the coordinator's "version N published (sha…)" events
COLUMNS = (Column("version", "VER"), Column("sha256", "SHA256"), Column("size", "SIZE", right=True),
           Column("age", "AGE", right=True), Column("trainer", "TRAINER"), Column("used", "USED", right=True),
           Column("reward", "REWARD", right=True), Column("eval", "EVAL", right=True))


def row(v: pb.VersionInfo, snapshot: pb.SwarmSnapshot, nodes: dict[str, pb.NodeInfo]) -> Row:
    current = v.version == snapshot.current_version
    cells = (
        Text(f"{'●' if current else ' '} {v.version}", style="bold" if current else ""),
        Text(v.sha256[:SHA_SHOWN]),
        Text(fmt.size(v.size), justify="right"),
        Text(fmt.age(snapshot.server_time_ms - v.created_ms), justify="right"),
        Text(fmt.node_ref(v.trainer, nodes)),
        Text(f"{v.rollouts_used:,}", justify="right"),
        Text(f"{v.reward_mean:.3f}" if v.rollouts_generated else "—", justify="right"),
        Text(f"{v.eval_accuracy:.3f}" if v.has_eval else "—", justify="right"),
    )
    return str(v.version), cells


class CheckpointsPane(SwarmPane):
    DEFAULT_CSS = "CheckpointsPane SwarmTable { height: 1fr; }"

    def compose(self) -> ComposeResult:
        yield SwarmTable()

    def show(self, state: SwarmState) -> None:
        snapshot = state.snapshot
        if snapshot is None:
            return
        nodes = nodes_by_id(snapshot)
        rows = [row(v, snapshot, nodes) for v in sorted(snapshot.versions, key=lambda v: -v.version)]
        self.query_one(SwarmTable).show(COLUMNS, rows)
