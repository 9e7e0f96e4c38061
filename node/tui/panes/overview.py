"""The run at a glance: what is trained, how fast, how well, the DiLoCo round, and the reward and accuracy
curves."""
from __future__ import annotations

from rich.console import RenderableType
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.widget import Widget
from textual.widgets import Static

from protocol.v1 import coordinator_pb2 as pb

from .. import fmt
from ..charts import Series, line_chart, value_range
from ..state import SwarmState, acceptance, tokens_per_s
from .base import SwarmPane

REWARD_STYLE, EVAL_STYLE = "bold cyan", "bold magenta"


def curves(snapshot: pb.SwarmSnapshot) -> list[Series]:
    # A version's reward is the mean over rollouts generated with it: none yet for the newest.
    reward = [(v.version, v.reward_mean) for v in snapshot.versions if v.rollouts_generated]
    accuracy = [(v.version, v.eval_accuracy) for v in snapshot.versions if v.has_eval]
    return [Series("reward", REWARD_STYLE, reward), Series("eval accuracy", EVAL_STYLE, accuracy)]


def headline(snapshot: pb.SwarmSnapshot) -> Text:
    return Text.assemble((snapshot.run_name, "bold"), ("  model ", "dim"), snapshot.model,
                         ("  environment ", "dim"), snapshot.environment)


def metrics(snapshot: pb.SwarmSnapshot) -> Table:
    table = Table(box=None, expand=True, header_style="dim", pad_edge=False)
    online = sum(n.online for n in snapshot.nodes)
    judged = f"{snapshot.rollouts_accepted:,}/{snapshot.rollouts_accepted + snapshot.rollouts_rejected:,}"
    # Acceptance is over judged work; what awaits a validator is neither accepted nor rejected yet.
    cells = {"version": str(snapshot.current_version), "rollouts/s": fmt.rate(snapshot.rollouts_per_s),
             "tokens/s": fmt.rate(tokens_per_s(snapshot)),
             "acceptance": f"{fmt.percent(acceptance(snapshot))} ({judged})",
             "pending": f"{snapshot.rollouts_pending:,}",
             "nodes online": f"{online}/{len(snapshot.nodes)}"}
    for name in cells:
        table.add_column(name, no_wrap=True)
    table.add_row(*(Text(value, style="bold") for value in cells.values()))
    return table


def round_line(snapshot: pb.SwarmSnapshot) -> Text:
    """The newest DiLoCo round in one line: which version it trains, its state, its trainers."""
    text = Text("round ", style="dim", no_wrap=True, overflow="ellipsis")
    if not snapshot.HasField("round"):
        return text.append("none yet: one forms when the pool holds a batch and a trainer asks")
    r, expected = snapshot.round, snapshot.trainers_per_round
    # Named by the first 8 characters of its id, as the coordinator's round events name it.
    text.append(r.round_id[:8], style="bold").append(f" on v{r.version}: ").append(r.state, style="bold")
    if r.state == "forming":
        return text.append(f", {r.trainers} of {expected} trainers joined")
    if r.state == "training":
        return text.append(f", {r.trainers} of {expected} trainers leased, {r.submitted} of {r.trainers} submitted")
    return text.append(f", {r.submitted} of {r.trainers} submitted: {r.outcome}")


def legend(series: list[Series]) -> Text:
    text = Text()
    for s in series:
        last = f"{s.points[-1][1]:.3f} at v{s.points[-1][0]:.0f}" if s.points else "no data yet"
        text.append("━━ ", style=s.style).append(f"{s.label} ").append(last + "    ", style="dim")
    return text


class Chart(Widget):
    """The curves, redrawn to whatever size the terminal gives."""

    DEFAULT_CSS = "Chart { height: 1fr; min-height: 4; }"

    def __init__(self) -> None:
        super().__init__()
        self.series: list[Series] = []

    def plot(self, series: list[Series]) -> None:
        self.series = series
        self.refresh()

    def render(self) -> RenderableType:
        size = self.content_size
        return line_chart(self.series, size.width, size.height, value_range(self.series))


class OverviewPane(SwarmPane):
    DEFAULT_CSS = """
    OverviewPane { padding: 0 1; }
    OverviewPane #headline { height: auto; }
    OverviewPane #metrics { height: auto; margin: 1 0 0 0; }
    OverviewPane #round { height: 1; margin: 0 0 1 0; }
    OverviewPane #legend { height: auto; }
    """

    def compose(self) -> ComposeResult:
        yield Static("waiting for the first snapshot…", id="headline")
        yield Static(id="metrics")
        yield Static(id="round")
        yield Static(id="legend")
        yield Chart()

    def show(self, state: SwarmState) -> None:
        if state.snapshot is None:
            return
        series = curves(state.snapshot)
        self.query_one("#headline", Static).update(headline(state.snapshot))
        self.query_one("#metrics", Static).update(metrics(state.snapshot))
        self.query_one("#round", Static).update(round_line(state.snapshot))
        self.query_one("#legend", Static).update(legend(series))
        self.query_one(Chart).plot(series)
