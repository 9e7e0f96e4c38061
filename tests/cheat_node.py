"""Real cheating nodes in one process:
`python -m tests.cheat_node KIND [KIND ...] --coordinator HOST:PORT --home-root DIR`.

Each KIND is its own node (its own key under DIR/cheat-KIND, its own client and model, named
cheat-KIND) running `potluck node join --role inference` with the shard work swapped for one of
tests/adversary.py's cheats, as a modified client would; `stale_version` does honest work but holds
its first shard back until it is too old to use. One process keeps the test light on a small machine.
"""
from __future__ import annotations

import argparse
import asyncio
import contextvars
import logging
import threading
from pathlib import Path

import grpc

import node.inference.worker as inference_worker
import node.join as node_join
from protocol.v1 import coordinator_pb2 as pb
from protocol.v1 import coordinator_pb2_grpc as pb_grpc
from tests.adversary import CHEATS

HONEST = inference_worker.rollouts_for
KIND = contextvars.ContextVar("kind")  # which node's shard this is: asyncio.to_thread carries it along


def held_until_stale(address: str, max_async_level: int):
    """Honest rollouts, the first shard's submitted only once the run has moved past max_async_level
    newer versions."""
    held = []

    def cheat(lease, model, tokenizer, env):
        rollouts = HONEST(lease, model, tokenizer, env)
        if held:
            return rollouts
        held.append(lease.lease_id)
        with grpc.insecure_channel(address) as channel:
            for snapshot in pb_grpc.CoordinatorStub(channel).Watch(pb.WatchRequest(), timeout=300):
                if snapshot.current_version > lease.version + max_async_level:
                    break
        return rollouts
    return cheat


async def run(kinds: list[str], address: str, home_root: Path, max_async_level: int) -> int:
    cheats = {**CHEATS, "stale_version": held_until_stale(address, max_async_level)}
    # The worker looks the function up on its module for every shard.
    # (a cheat takes no row cap: it runs on a machine with the memory for it)
    inference_worker.rollouts_for = lambda lease, model, tok, env, *_: cheats[KIND.get()](lease, model, tok, env)
    # transformers' from_pretrained is not safe in several threads at once; one node per process
    # never needs it to be.
    loading, load_policy = threading.Lock(), node_join.load_policy

    def load_one_at_a_time(*args, **kwargs):
        with loading:
            return load_policy(*args, **kwargs)
    node_join.load_policy = load_one_at_a_time
    stop = asyncio.Event()  # one for all: each join's signal handler sets it

    async def one(kind: str) -> int:
        KIND.set(kind)
        return await node_join.join(address, "inference", "cpu", home_root / f"cheat-{kind}", f"cheat-{kind}",
                                    stop=stop)

    return max(await asyncio.gather(*(one(kind) for kind in kinds)))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("kinds", nargs="+", choices=[*CHEATS, "stale_version"])
    parser.add_argument("--coordinator", required=True)
    parser.add_argument("--home-root", type=Path, required=True)
    parser.add_argument("--max-async-level", type=int, default=1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return asyncio.run(run(args.kinds, args.coordinator, args.home_root, args.max_async_level))


if __name__ == "__main__":
    raise SystemExit(main())
