"""A real node process that cheats: `python -m tests.cheat_node KIND --coordinator HOST:PORT --home DIR`.

It is `potluck node join --role inference` with the shard work swapped for one of tests/adversary.py's
cheats (or, for `stale_version`, honest work held back until it is too old to use), as a modified
client would be.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
from pathlib import Path

import grpc

import node.inference.worker as inference_worker
from node.join import join
from protocol.v1 import coordinator_pb2 as pb
from protocol.v1 import coordinator_pb2_grpc as pb_grpc
from tests.adversary import CHEATS


def held_until_stale(address: str, max_async_level: int):
    """Honest rollouts, the first shard's submitted only once the run has moved past max_async_level
    newer versions."""
    honest = inference_worker.rollouts_for
    held = []

    def cheat(lease, model, tokenizer, env):
        rollouts = honest(lease, model, tokenizer, env)
        if held:
            return rollouts
        held.append(lease.lease_id)
        with grpc.insecure_channel(address) as channel:
            for snapshot in pb_grpc.CoordinatorStub(channel).Watch(pb.WatchRequest(), timeout=300):
                if snapshot.current_version > lease.version + max_async_level:
                    break
        return rollouts
    return cheat


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=[*CHEATS, "stale_version"])
    parser.add_argument("--coordinator", required=True)
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--max-async-level", type=int, default=1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # The worker looks the function up on its module for every shard.
    inference_worker.rollouts_for = (held_until_stale(args.coordinator, args.max_async_level)
                                     if args.kind == "stale_version" else CHEATS[args.kind])
    return asyncio.run(join(args.coordinator, "inference", "cpu", args.home, f"cheat-{args.kind}"))


if __name__ == "__main__":
    raise SystemExit(main())
