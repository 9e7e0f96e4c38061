"""`potluck node join --coordinator HOST:PORT [--fingerprint sha256:… | --ca FILE] [--join-token T]
[--role auto|inference|trainer] [--device cpu|cuda] [--plain]`."""
from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from protocol.identity import default_home


def add_connection_args(parser: argparse.ArgumentParser) -> None:
    """How to reach a coordinator: shared by every command that talks to one."""
    parser.add_argument("--fingerprint", default=None, metavar="sha256:HEX",
                        help="pin the coordinator's TLS certificate (printed by `potluck coordinator serve --tls`)")
    parser.add_argument("--ca", type=Path, default=None, metavar="FILE",
                        help="verify the coordinator's TLS certificate against this CA bundle (PEM)")


def security_of(args: argparse.Namespace):
    from protocol.channel import Security

    return Security(fingerprint=args.fingerprint, ca=args.ca)


def add_commands(subparsers) -> None:
    parser = subparsers.add_parser("node", help="contribute this machine to a run")
    commands = parser.add_subparsers(dest="node_command", required=True)
    join = commands.add_parser("join", help="join a run and work for it until Ctrl-C")
    join.add_argument("--coordinator", required=True, help="HOST:PORT of the run's coordinator")
    add_connection_args(join)
    join.add_argument("--join-token", default="", help="the run's join token, if its host requires one")
    join.add_argument("--role", choices=["auto", "inference", "trainer", "validator"], default="auto",
                      help="validator: re-check others' rollouts (the run's host must admit this node)")
    join.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    join.add_argument("--home", type=Path, default=None,
                      help="identity key and version cache (default $POTLUCK_HOME or ~/.config/potluck)")
    join.add_argument("--name", default="", help="a label shown to the run's host")
    join.add_argument("--p2p-listen", action="append", default=None, metavar="MULTIADDR",
                      help="where this node's p2p peer listens, for the versions it serves and (trainers) "
                           "all-reduce; repeatable (default /ip4/127.0.0.1/tcp/0: this machine only)")
    join.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    join.add_argument("--plain", action="store_true",
                      help="line logs instead of the live view (the default when not on a terminal)")
    join.add_argument("--log-format", choices=["text", "json"], default="text",
                      help="with --plain or off a terminal: json gives one JSON object per line")
    join.set_defaults(handler=_join)
    doctor = commands.add_parser("doctor", help="check whether this machine can join, and explain why not")
    doctor.add_argument("--coordinator", default=None, help="HOST:PORT of a run's coordinator to check against")
    add_connection_args(doctor)
    doctor.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    doctor.add_argument("--home", type=Path, default=None, help="where versions would be cached (disk check)")
    doctor.add_argument("--p2p-timeout", type=float, default=60.0, help="seconds the p2p check may take")
    doctor.set_defaults(handler=_doctor)


def _doctor(args: argparse.Namespace) -> int:
    from .doctor import diagnose, exit_code, report
    from .hardware import pick_device

    try:
        findings = diagnose(args.coordinator, args.home or default_home(), pick_device(args.device),
                            security_of(args), args.p2p_timeout)
    except ValueError as exc:  # a bad --fingerprint, --device cuda without a GPU
        print(f"cannot check: {exc}", file=sys.stderr)
        return 2
    print(report(findings))
    return exit_code(findings)


def _join(args: argparse.Namespace) -> int:
    import grpc

    from protocol.logs import configure

    from .client import error_reason
    from .join import configure_threads, join
    from .p2p import listen_maddrs

    configure(args.log_format)
    configure_threads(args.threads)
    # The live view needs a terminal both ways; under systemd, a pipe or a log file, it is line logs.
    interactive = not args.plain and sys.stdin.isatty() and sys.stdout.isatty()
    home = args.home or default_home()
    log = logging.getLogger("potluck.node")
    try:
        security = security_of(args)
        p2p_listen = listen_maddrs(args.p2p_listen)
        if interactive:
            from .view import join_with_view  # Textual loads only for the view

            return asyncio.run(join_with_view(args.coordinator, args.role, args.device, home, args.name,
                                              security, args.join_token, p2p_listen))
        return asyncio.run(join(args.coordinator, args.role, args.device, home, args.name,
                                security=security, join_token=args.join_token, p2p_listen=p2p_listen))
    except ValueError as exc:
        log.error("%s", exc)
        return 2
    except grpc.aio.AioRpcError as err:  # refused at registration: a token, an allowlist, a ban
        log.error("the coordinator refused this node (%s): %s", error_reason(err) or err.code().name.lower(),
                  err.details())
        return 2
