"""Save SVG screenshots of potluck's terminal views on a live run, e.g. for the README:

    potluck demo --minutes 2 --data /tmp/potluck-demo &      # or any running coordinator
    python tools/tui_screenshot.py --coordinator $(cat /tmp/potluck-demo/coordinator/coordinator.addr) \\
        --min-version 4 --pane overview --out docs/tui-host.svg
    python -m tests.cheat_node ignore_seed --coordinator ... --home /tmp/cheat &   # something to reject
    python tools/tui_screenshot.py --coordinator ... --min-version 4 --pane verification \\
        --out docs/tui-host-verification.svg
    python tools/tui_screenshot.py --coordinator ... --view volunteer --min-version 2 --out docs/tui-volunteer.svg

--view host runs `potluck tui` headless on the live Watch stream, waits until the run has published
--min-version, shows --pane and writes what a terminal of --size would show. --view volunteer joins
the run as one more inference node (named --name) under the volunteer view of `potluck node join`,
waits until that node works on --min-version or newer with credited work, shoots, and leaves the run.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout, like build_tiny_model

import torch  # noqa: E402
from textual.app import App  # noqa: E402
from textual.pilot import Pilot  # noqa: E402

from node.status import NodeStatus  # noqa: E402
from node.tui.app import PANES, PotluckTui  # noqa: E402
from node.tui.feed import watch  # noqa: E402
from node.view import follow_watch, logs_into, start  # noqa: E402


async def wait_for(pilot: Pilot, ready: Callable[[], bool], args: argparse.Namespace) -> bool:
    deadline = time.monotonic() + args.timeout
    while not ready():
        if time.monotonic() > deadline:
            return False
        await pilot.pause(0.5)
    return True


def save(app: App, args: argparse.Namespace, title: str) -> None:
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(app.export_screenshot(title=title, simplify=True))


async def shoot_host(pilot: Pilot, args: argparse.Namespace) -> None:
    app = pilot.app
    assert isinstance(app, PotluckTui)
    if not await wait_for(pilot, lambda: app.state.snapshot is not None and
                          app.state.snapshot.current_version >= args.min_version, args):
        app.exit(return_code=1, message=f"version {args.min_version} not reached in {args.timeout:.0f}s")
        return
    await pilot.press(str([pane_id for pane_id, _, _ in PANES].index(args.pane) + 1))
    await pilot.pause(0.5)  # one more snapshot and a full layout
    save(app, args, f"potluck tui — {args.pane}")
    app.exit()


def host(args: argparse.Namespace, size: tuple[int, int]) -> int:
    app = PotluckTui(watch(args.coordinator), args.coordinator)
    app.animation_level = "none"
    app.run(headless=True, size=size, auto_pilot=lambda pilot: shoot_host(pilot, args))
    return app.return_code or 0


async def volunteer(args: argparse.Namespace, size: tuple[int, int]) -> int:
    torch.set_num_threads(1)  # one more node beside the run's own, on the same machine
    logging.basicConfig(level=logging.INFO)
    status = NodeStatus(args.coordinator)
    shot = False

    async def shoot(pilot: Pilot) -> None:
        nonlocal shot
        # Credited work and a version past the first: the view has something to show.
        if await wait_for(pilot, lambda: (status.held_version or 0) >= args.min_version and status.accepted > 0
                          and bool(status.last_result) and status.state != "fetching", args):
            await pilot.pause(1.0)  # a redraw with the latest rate and log lines
            save(pilot.app, args, "potluck node join")
            shot = True
        await pilot.press("q")  # leave the run: the view closes once the node has returned its leases

    with tempfile.TemporaryDirectory(prefix="potluck-screenshot-") as home, logs_into(status):
        view, node = start(status, "inference", "cpu", Path(home), args.name)
        view.animation_level = "none"
        watcher = asyncio.create_task(follow_watch(status, args.coordinator))
        try:
            await view.run_async(headless=True, size=size, auto_pilot=shoot)
        finally:
            watcher.cancel()
        await node
    return 0 if shot else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--coordinator", required=True, help="HOST:PORT of a running coordinator")
    parser.add_argument("--view", choices=["host", "volunteer"], default="host")
    parser.add_argument("--out", type=Path, default=Path("docs/tui-host.svg"))
    parser.add_argument("--pane", choices=[pane_id for pane_id, _, _ in PANES], default="overview",
                        help="the host view's pane")
    parser.add_argument("--name", default="kitchen-laptop", help="the volunteer node's name")
    parser.add_argument("--size", default="120x36", help="terminal COLUMNSxROWS")
    parser.add_argument("--min-version", type=int, default=0, help="wait until the run has published this version")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds to wait for --min-version")
    args = parser.parse_args()
    width, height = (int(n) for n in args.size.lower().split("x"))
    code = host(args, (width, height)) if args.view == "host" else asyncio.run(volunteer(args, (width, height)))
    if code:
        print(f"no screenshot: version {args.min_version} not reached in {args.timeout:.0f}s", file=sys.stderr)
        return code
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
