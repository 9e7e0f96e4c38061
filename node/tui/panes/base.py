"""What every view shares: it redraws itself from the whole SwarmState on every update."""
from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, cast

from textual.dom import DOMNode
from textual.signal import Signal
from textual.widget import Widget

from ..state import SwarmState


class SwarmSource(Protocol):
    """The part of the app that views read (PotluckTui implements it)."""

    state: SwarmState
    swarm_updated: Signal[SwarmState]


def follow(node: DOMNode, show: Callable[[SwarmState], None]) -> None:
    """Call show(state) now and on every update. Snapshots come every couple of seconds, so a
    redraw from the whole state is cheap and leaves no partial state to drift."""
    source = cast(SwarmSource, node.app)
    source.swarm_updated.subscribe(node, show)
    show(source.state)


class SwarmPane(Widget):
    DEFAULT_CSS = "SwarmPane { height: 1fr; }"

    def on_mount(self) -> None:
        follow(self, self.show)

    def show(self, state: SwarmState) -> None:
        raise NotImplementedError
