"""The `potluck` command: one entry point that wires the coordinator's and the node's commands.

This is the only module that knows both sides; `node` and `coordinator` never import each other.
"""
from __future__ import annotations

import argparse
import sys

from coordinator.cli import add_commands as add_coordinator_commands
from node.cli import add_commands as add_node_commands
from node.tui.cli import add_commands as add_tui_commands

from .admin import add_commands as add_admin_commands
from .demo import add_commands as add_demo_commands


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="potluck", description="Decentralized RL post-training: "
                                     "everyone brings a dish.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_coordinator_commands(subparsers)
    add_node_commands(subparsers)
    add_demo_commands(subparsers)
    add_tui_commands(subparsers)
    add_admin_commands(subparsers)
    args = parser.parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
