"""`potluck node join --coordinator HOST:PORT [--role auto|inference|trainer] [--device cpu|cuda] [--plain]`."""
from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from protocol.identity import default_home


def add_commands(subparsers) -> None:
    parser = subparsers.add_parser("node", help="contribute this machine to a run")
    commands = parser.add_subparsers(dest="node_command", required=True)
    join = commands.add_parser("join", help="join a run and work for it until Ctrl-C")
    join.add_argument("--coordinator", required=True, help="HOST:PORT of the run's coordinator")
    join.add_argument("--role", choices=["auto", "inference", "trainer"], default="auto")
    join.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    join.add_argument("--home", type=Path, default=None,
                      help="identity key and version cache (default $POTLUCK_HOME or ~/.config/potluck)")
    join.add_argument("--name", default="", help="a label shown to the run's host")
    join.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    join.add_argument("--plain", action="store_true",
                      help="line logs instead of the live view (the default when not on a terminal)")
    join.set_defaults(handler=_join)


def _join(args: argparse.Namespace) -> int:
    from .join import configure_threads, join

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    configure_threads(args.threads)
    # The live view needs a terminal both ways; under systemd, a pipe or a log file, it is line logs.
    interactive = not args.plain and sys.stdin.isatty() and sys.stdout.isatty()
    home = args.home or default_home()
    try:
        if interactive:
            from .view import join_with_view  # Textual loads only for the view

            return asyncio.run(join_with_view(args.coordinator, args.role, args.device, home, args.name))
        return asyncio.run(join(args.coordinator, args.role, args.device, home, args.name))
    except ValueError as exc:
        logging.getLogger("potluck.node").error("%s", exc)
        return 2
