"""`potluck node join` on a terminal: the node's work loop and the volunteer view on one event loop.

The node fills a NodeStatus (its workers' state, its submissions' replies, the Watch stream) and
the view draws it. The first q / Ctrl-C asks the node to leave: it returns its leases as it does on
SIGINT, and the view closes once it has; a second one stops waiting for the coordinator.
"""
from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Iterator
from contextlib import aclosing, contextmanager
from pathlib import Path

from protocol.channel import PLAINTEXT, Security

from .join import join
from .p2p import LOOPBACK
from .status import NodeStatus, StatusLogHandler
from .tui.feed import Disconnected, watch
from .tui.volunteer import VolunteerView

LINES_AFTER_EXIT = 5  # the view's last lines stay on the terminal: how the node left, or why it failed


async def follow_watch(status: NodeStatus, address: str, security: Security = PLAINTEXT) -> None:
    """The run's current version, the swarm's size and this node's credit, from the Watch stream."""
    async with aclosing(watch(address, security=security)) as feed:
        async for update in feed:
            if isinstance(update, Disconnected):
                status.link = update.reason
            else:
                status.saw_snapshot(update)


@contextmanager
def logs_into(status: NodeStatus) -> Iterator[None]:
    """While the view owns the terminal, log lines go to its log pane and nowhere else."""
    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers[:] = [StatusLogHandler(status)]
    try:
        yield
    finally:
        root.handlers[:] = saved


def start(status: NodeStatus, role: str, device: str, home: Path, name: str, security: Security = PLAINTEXT,
          join_token: str = "", p2p_listen: tuple[str, ...] = (LOOPBACK,)) -> tuple[VolunteerView, asyncio.Task[int]]:
    """The view and the node's task, wired together; the caller runs the view (tests use run_test)."""
    stop = asyncio.Event()
    node = asyncio.create_task(join(status.address, role, device, home, name, status, stop, security, join_token,
                                    p2p_listen))

    def leave() -> None:
        if stop.is_set():
            node.cancel()
        stop.set()

    view = VolunteerView(status, leave)
    node.add_done_callback(lambda _: view.exit())
    return view, node


async def join_with_view(address: str, role: str, device: str, home: Path, name: str,
                         security: Security = PLAINTEXT, join_token: str = "",
                         p2p_listen: tuple[str, ...] = (LOOPBACK,)) -> int:
    status = NodeStatus(address)
    with logs_into(status):
        view, node = start(status, role, device, home, name, security, join_token, p2p_listen)
        watcher = asyncio.create_task(follow_watch(status, address, security))
        try:
            await view.run_async()
        finally:
            watcher.cancel()
            if not node.done():  # the view closed some other way: leave as on Ctrl-C, without it
                view.leave()
    for line in list(status.lines)[-LINES_AFTER_EXIT:]:
        print(line, file=sys.stderr)
    try:
        return await node
    except asyncio.CancelledError:
        print("left without waiting for the coordinator", file=sys.stderr)
        return 130
