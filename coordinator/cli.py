"""`potluck coordinator serve --run FILE.toml [--listen HOST:PORT] [--data DIR] [--tls ...]` and
`potluck coordinator token` (a fresh join token and the line that makes a run require it)."""
from __future__ import annotations

import argparse
import asyncio
import logging
import secrets
from pathlib import Path

from protocol.config import load_run_config
from protocol.logs import configure

TOKEN_BYTES = 24


def add_commands(subparsers) -> None:
    parser = subparsers.add_parser("coordinator", help="host a run")
    commands = parser.add_subparsers(dest="coordinator_command", required=True)
    serve = commands.add_parser("serve", help="serve a run over gRPC")
    serve.add_argument("--run", required=True, help="run file (TOML) or preset name: demo, test")
    serve.add_argument("--listen", default="127.0.0.1:7420", help="HOST:PORT (port 0 picks a free one)")
    serve.add_argument("--data", type=Path, default=Path("potluck-data"), help="state and blobs of the run")
    serve.add_argument("--tls", action="store_true",
                       help="serve TLS: a self-signed certificate made once in DATA (tls.crt, tls.key; its "
                            "fingerprint in DATA/tls.fingerprint), or --tls-cert/--tls-key")
    serve.add_argument("--tls-cert", type=Path, default=None, help="PEM certificate (chain) to serve")
    serve.add_argument("--tls-key", type=Path, default=None, help="PEM private key of --tls-cert")
    serve.add_argument("--insecure", action="store_true", help="allow plaintext on a non-loopback address")
    serve.add_argument("--metrics", default=None, metavar="HOST:PORT",
                       help="serve Prometheus metrics here (port 0 picks one; written to DATA/metrics.addr)")
    serve.add_argument("--log-format", choices=["text", "json"], default="text",
                       help="json: one JSON object per line, for log collectors")
    serve.set_defaults(handler=_serve)
    token = commands.add_parser("token", help="make a join token; the run file keeps only its sha256")
    token.set_defaults(handler=_token)


def _serve(args: argparse.Namespace) -> int:
    from .server import RunMismatch, check_listen, serve

    configure(args.log_format)
    use_tls = args.tls or args.tls_cert is not None
    try:
        check_listen(args.listen, args.insecure, use_tls)
        config = load_run_config(args.run)
        asyncio.run(serve(config, args.listen, args.data, args.metrics, use_tls, args.tls_cert, args.tls_key))
    except (ValueError, OSError, RunMismatch) as exc:
        logging.getLogger("potluck.coordinator").error("%s", exc)
        return 2
    return 0


def _token(args: argparse.Namespace) -> int:
    from .admission import token_hash

    value = secrets.token_urlsafe(TOKEN_BYTES)
    print(f"join token (give it to your volunteers: potluck node join ... --join-token {value}):")
    print(value)
    print("in the run file:")
    print(f'[admission]\njoin_token_sha256 = "{token_hash(value)}"')
    return 0
