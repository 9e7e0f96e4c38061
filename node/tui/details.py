"""One node in full, over the nodes table; it follows live updates until closed."""
from __future__ import annotations

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Footer, Static

from protocol.v1 import coordinator_pb2 as pb

from . import fmt
from .panes.base import follow
from .panes.logs import kind_label
from .state import LogEvent, SwarmState, nodes_by_id

RECENT_EVENTS = 8


def quarantine(node: pb.NodeInfo, snapshot: pb.SwarmSnapshot) -> Text:
    if not node.quarantined:
        return Text("no")
    caught = next((v for v in snapshot.verdicts if v.node_id == node.node_id and not v.accepted), None)
    text = Text("yes: no more work, its unchecked work void", style="bold red")
    if caught is not None:
        text.append(f"\nfailed the {caught.check} check at {fmt.hms(caught.time_ms)}, v{caught.version} "
                    f"{caught.kind or 'work'} checked by {fmt.node_ref(caught.validator, nodes_by_id(snapshot))}: "
                    f"{caught.detail}", style="red")
    return text


def held(node: pb.NodeInfo, current: int) -> str:
    """The version the node last said it has loaded, and how far that is behind the current one."""
    if not node.HasField("holding_version"):
        return "none reported yet"
    v = node.holding_version
    if v == current:
        return f"v{v} (current)"
    return f"v{v} ({current - v} behind v{current})" if v < current else f"v{v}"


def describe(node: pb.NodeInfo, snapshot: pb.SwarmSnapshot, events: list[LogEvent]) -> RenderableType:
    now_ms, hw = snapshot.server_time_ms, node.hardware
    judged = node.rollouts_accepted + node.rollouts_rejected
    fields: dict[str, str | Text] = {
        "id": node.node_id,
        "name": node.name or "—",
        "role": fmt.role_name(node.role),
        "state": f"{node.state} ({'online' if node.online else 'offline'})",
        "holds": held(node, snapshot.current_version),
        "reputation": f"{node.reputation:.2f} (0–1, from its verified and failed work)",
        "quarantined": quarantine(node, snapshot),
        "last seen": f"{fmt.age(now_ms - node.last_seen_ms)} ago, {fmt.clock_time(node.last_seen_ms)}",
        "credit": f"{node.credit:,.1f}",
        "tokens/s": fmt.rate(node.tokens_per_s),
        "rollouts": f"{node.rollouts_accepted:,} accepted, {node.rollouts_rejected:,} rejected "
                    f"({fmt.percent(node.rollouts_accepted / judged if judged else None)} accepted)",
        "device": hw.device or "?",
        "cpus / RAM": f"{hw.cpu_count} / {fmt.size(hw.ram_bytes)}",
        "disk free": fmt.size(hw.disk_free_bytes),
        "platform": hw.platform or "?",
    }
    for i, gpu in enumerate(hw.gpus):
        fields[f"gpu {i}"] = f"{gpu.name}, {fmt.size(gpu.memory_bytes)}, compute {gpu.compute_capability}"
    table = Table.grid(padding=(0, 2))
    table.add_column(style="dim", no_wrap=True)
    table.add_column()
    for name, value in fields.items():
        table.add_row(name, value)
    # The coordinator's events name a node by its short id.
    mine = [e for e in events if fmt.short_id(node.node_id) in e.text][-RECENT_EVENTS:]
    log = Text("\nrecent events\n", style="dim")
    for e in mine:
        log.append(f"{fmt.hms(e.time_ms)} ", style="dim").append_text(kind_label(e.kind)).append(e.text + "\n")
    return Group(table, log if mine else Text("\nno events name this node yet", style="dim"))


class NodeDetails(ModalScreen[None]):
    BINDINGS = [Binding("escape,q,enter", "dismiss", "Close")]
    DEFAULT_CSS = """
    NodeDetails { align: center middle; }
    NodeDetails > VerticalScroll {
        width: 100; max-width: 95%; height: auto; max-height: 90%;
        border: round $accent; padding: 0 1; background: $surface;
    }
    """

    def __init__(self, node_id: str) -> None:
        super().__init__()
        self.node_id = node_id

    def compose(self) -> ComposeResult:
        with VerticalScroll() as box:
            box.border_title = f"node {fmt.short_id(self.node_id)}"
            box.border_subtitle = "esc to close"
            yield Static(id="body")
        yield Footer()

    def on_mount(self) -> None:
        follow(self, self.show)

    def show(self, state: SwarmState) -> None:
        snapshot = state.snapshot
        node = next((n for n in snapshot.nodes if n.node_id == self.node_id), None) if snapshot else None
        body = self.query_one("#body", Static)
        if snapshot is None or node is None:
            body.update(Text("this node is not in the latest snapshot", style="dim"))
            return
        self.query_one(VerticalScroll).border_title = f"node {node.name or fmt.short_id(node.node_id)}"
        body.update(describe(node, snapshot, state.events))
