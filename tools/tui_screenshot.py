"""Save an SVG screenshot of `potluck tui` watching a live run, e.g. for the README:

    potluck demo --minutes 10 --data /tmp/potluck-demo &      # or any running coordinator
    python tools/tui_screenshot.py --coordinator $(cat /tmp/potluck-demo/coordinator/coordinator.addr) \\
        --min-version 4 --pane overview --out docs/tui-host.svg

It runs the real app headless on the live Watch stream, waits until the run has published
--min-version, shows --pane and writes what a terminal of --size would show.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout, like build_tiny_model

from textual.pilot import Pilot  # noqa: E402

from node.tui.app import PANES, PotluckTui  # noqa: E402
from node.tui.feed import watch  # noqa: E402


async def shoot(pilot: Pilot, args: argparse.Namespace) -> None:
    app = pilot.app
    assert isinstance(app, PotluckTui)
    deadline = time.monotonic() + args.timeout
    while app.state.snapshot is None or app.state.snapshot.current_version < args.min_version:
        if time.monotonic() > deadline:
            app.exit(return_code=1, message=f"version {args.min_version} not reached in {args.timeout:.0f}s")
            return
        await pilot.pause(0.5)
    await pilot.press(str([pane_id for pane_id, _, _ in PANES].index(args.pane) + 1))
    await pilot.pause(0.5)  # one more snapshot and a full layout
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(app.export_screenshot(title=f"potluck tui — {args.pane}", simplify=True))
    app.exit()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--coordinator", required=True, help="HOST:PORT of a running coordinator")
    parser.add_argument("--out", type=Path, default=Path("docs/tui-host.svg"))
    parser.add_argument("--pane", choices=[pane_id for pane_id, _, _ in PANES], default="overview")
    parser.add_argument("--size", default="120x36", help="terminal COLUMNSxROWS")
    parser.add_argument("--min-version", type=int, default=0, help="wait until the run has published this version")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds to wait for --min-version")
    args = parser.parse_args()
    width, height = (int(n) for n in args.size.lower().split("x"))
    app = PotluckTui(watch(args.coordinator), args.coordinator)
    app.animation_level = "none"
    app.run(headless=True, size=(width, height), auto_pilot=lambda pilot: shoot(pilot, args))
    if app.return_code:
        return app.return_code
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
