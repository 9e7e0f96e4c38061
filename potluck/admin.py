"""`potluck admin pause|resume|ban|unban|export --coordinator HOST:PORT --key FILE`: a run's host
operating it from anywhere. Calls are signed with the admin key (the coordinator's own key,
DATA/coordinator.key); this client knows only the wire contract (protocol/), not the coordinator.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import grpc

from protocol.channel import ChannelError, Security, sync_channel
from protocol.identity import Identity
from protocol.signing import NonceClock, admin_method, sign_request
from protocol.v1 import admin_pb2 as apb
from protocol.v1 import admin_pb2_grpc as apb_grpc

TIMEOUT_S = 30.0


def add_commands(subparsers) -> None:
    parser = subparsers.add_parser("admin", help="operate a run: pause, resume, ban, unban, export")
    commands = parser.add_subparsers(dest="admin_command", required=True)
    for name, text in (("pause", "hand out no new work"), ("resume", "hand out work again"),
                       ("ban", "refuse a node's calls and take back its leases"), ("unban", "lift a ban"),
                       ("export", "the run's state as JSON")):
        command = commands.add_parser(name, help=text)
        command.add_argument("--coordinator", required=True, help="HOST:PORT of the run's coordinator")
        command.add_argument("--key", type=Path, required=True,
                             help="the admin key: the coordinator's DATA/coordinator.key")
        command.add_argument("--fingerprint", default=None, metavar="sha256:HEX", help="pin its TLS certificate")
        command.add_argument("--ca", type=Path, default=None, metavar="FILE", help="or verify it against a CA")
        if name in ("ban", "unban"):
            command.add_argument("node_id", help="the node's id (its libp2p peer id)")
        if name in ("pause", "resume", "ban"):
            command.add_argument("--reason", default="", help="recorded in the run's events")
        if name == "export":
            command.add_argument("--out", type=Path, default=None, help="write here instead of stdout")
        command.set_defaults(handler=_admin)


def _request(command: str, args: argparse.Namespace):
    """(RPC name, body) for a command."""
    if command in ("pause", "resume"):
        return command.capitalize(), apb.PauseBody(reason=args.reason)
    if command == "ban":
        return "Ban", apb.BanBody(node_id=args.node_id, reason=args.reason)
    if command == "unban":
        return "Unban", apb.BanBody(node_id=args.node_id)
    return "Export", apb.ExportBody()


def call(address: str, security: Security, admin: Identity, method: str, body):
    """Sign one admin call and send it; the reply, or grpc.RpcError with the coordinator's reason."""
    request = sign_request(admin, NonceClock(), admin_method(method), body)
    with sync_channel(address, security) as channel:
        return getattr(apb_grpc.AdminStub(channel), method)(request, timeout=TIMEOUT_S)


def _admin(args: argparse.Namespace) -> int:
    method, body = _request(args.admin_command, args)
    try:
        if not args.key.exists():
            raise ValueError(f"no admin key at {args.key}")
        reply = call(args.coordinator, Security(args.fingerprint, args.ca), Identity.load_or_create(args.key),
                     method, body)
    except (ValueError, ChannelError, OSError) as exc:
        print(f"potluck admin: {exc}", file=sys.stderr)
        return 2
    except grpc.RpcError as err:
        reason = dict(err.trailing_metadata() or ()).get("potluck-reason", err.code().name.lower())
        print(f"potluck admin: refused ({reason}): {err.details()}", file=sys.stderr)
        return 1
    if method != "Export":
        print(reply.message)
    elif args.out:
        args.out.write_text(json.dumps(json.loads(reply.state_json), indent=2) + "\n")
        print(f"wrote {args.out}")
    else:
        print(json.dumps(json.loads(reply.state_json), indent=2))
    return 0
