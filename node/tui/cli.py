"""`potluck tui [--coordinator HOST:PORT] [--fingerprint sha256:… | --ca FILE]`: watch a run live;
read-only, so no key is needed."""
from __future__ import annotations

import argparse

from ..cli import add_connection_args, security_of


def add_commands(subparsers) -> None:
    tui = subparsers.add_parser("tui", help="watch a run live in the terminal")
    tui.add_argument("--coordinator", default="127.0.0.1:7420",
                     help="HOST:PORT of the run's coordinator (default: the coordinator's own default)")
    add_connection_args(tui)
    tui.set_defaults(handler=_tui)


def _tui(args: argparse.Namespace) -> int:
    # Textual and gRPC load only when the command runs, so `potluck --help` stays quick.
    from .app import PotluckTui
    from .feed import watch

    try:
        security = security_of(args)
    except ValueError as exc:  # a malformed fingerprint, both --fingerprint and --ca
        print(f"potluck tui: {exc}")
        return 2
    PotluckTui(watch(args.coordinator, security=security), args.coordinator).run()
    return 0
