"""Throughput of the two halves of an outer step on this machine, with the built-in model:
generating a rollout shard (seeded sampling, KV cache) and one GRPO round on a training shard.

    python -m bench.rollouts --json
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import time

import torch

from node.inference.generate import generate
from node.trainer.round import run_round, trainable
from protocol.config import load_run_config
from protocol.envs import make_environment
from protocol.policy import load_policy, load_tokenizer
from protocol.sampling import rollout_seed
from protocol.scoring import score
from protocol.v1 import coordinator_pb2 as pb


def timed(fn, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="demo")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, as a demo node uses")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    config = load_run_config(args.run)
    model, tok = load_policy(config), load_tokenizer(config.model.name)
    env = make_environment(config.environment.name, config.environment.params)
    group = config.rollouts.group_size
    task_ids = env.sample_train_ids(random.Random(0), config.rollouts.prompts_per_shard)
    prompts = [tok(env.task(t).prompt)["input_ids"] for t in task_ids for _ in range(group)]
    seeds = [rollout_seed(7, t, i) for t in task_ids for i in range(group)]

    def shard():
        return generate(model, prompts, max_new_tokens=env.max_new_tokens, eos_id=tok.eos_token_id,
                        pad_id=tok.pad_token_id, temperature=config.sampling.temperature, seeds=seeds)

    gen_s, gen = timed(shard, args.repeats)
    tokens = sum(len(c) for c in gen.completion_ids)

    # A training shard of batch_groups groups built from real generations.
    samples = []
    while len(samples) < config.rollouts.batch_groups * group:
        g = shard()
        for row, (ids, lps) in enumerate(zip(g.completion_ids, g.logprobs)):
            task = task_ids[row // group]
            samples.append(pb.TrainingSample(group_id=len(samples) // group, prompt_ids=prompts[row],
                                             completion_ids=ids, logprobs=lps,
                                             reward=score(env, tok, task, ids, tok.eos_token_id)))
    samples = samples[:config.rollouts.batch_groups * group]
    optimizer = torch.optim.AdamW(trainable(model), lr=config.grpo.lr)
    train_s, _ = timed(lambda: run_round(model, samples, config, {}, optimizer, tok.pad_token_id), args.repeats)

    result = {
        "threads": args.threads,
        "shard_rollouts": len(prompts),
        "generate_shard_s": round(gen_s, 4),
        "rollouts_per_s": round(len(prompts) / gen_s, 1),
        "tokens_per_s": round(tokens / gen_s, 1),
        "train_round_samples": len(samples),
        "train_round_s": round(train_s, 4),
        "inner_steps": config.grpo.inner_steps,
    }
    if not args.json:
        for key, value in result.items():
            print(f"{key:>20}: {value}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
