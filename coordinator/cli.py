"""`potluck coordinator serve --run FILE.toml [--listen HOST:PORT] [--data DIR]`."""
from __future__ import annotations

import argparse
import asyncio
import logging
from pathlib import Path

from protocol.config import load_run_config


def add_commands(subparsers) -> None:
    parser = subparsers.add_parser("coordinator", help="host a run")
    commands = parser.add_subparsers(dest="coordinator_command", required=True)
    serve = commands.add_parser("serve", help="serve a run over gRPC")
    serve.add_argument("--run", required=True, help="run file (TOML) or preset name: demo, test")
    serve.add_argument("--listen", default="127.0.0.1:7420", help="HOST:PORT (port 0 picks a free one)")
    serve.add_argument("--data", type=Path, default=Path("potluck-data"), help="state and blobs of the run")
    serve.add_argument("--insecure", action="store_true", help="allow plaintext on a non-loopback address")
    serve.add_argument("--metrics", default=None, metavar="HOST:PORT",
                       help="serve Prometheus metrics here (port 0 picks one; written to DATA/metrics.addr)")
    serve.set_defaults(handler=_serve)


def _serve(args: argparse.Namespace) -> int:
    from .server import RunMismatch, check_listen, serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        check_listen(args.listen, args.insecure)
        config = load_run_config(args.run)
        asyncio.run(serve(config, args.listen, args.data, args.metrics))
    except (ValueError, FileNotFoundError, RunMismatch) as exc:
        logging.getLogger("potluck.coordinator").error("%s", exc)
        return 2
    return 0
