"""The direction check on the real tiny model (screening.py): each honest pseudo-gradient is a
descent direction of its own shard's GRPO loss at the parent version and its sign flip is not, in
LoRA and full-parameter mode, on shards as small as the test runs' (2 groups)."""
import random

import pytest

from bench.convergence import Task
from coordinator.screening import direction_offenders
from node.trainer.round import apply_outer, inner_optimizer, inner_steps
from protocol.config import load_run_config
from protocol.objective import shard_gradient
from protocol.policy import adapter_state, load_adapter_state, load_policy
from protocol.train_batch import build_batch

SHARDS = 3


@pytest.mark.parametrize("mode, group_size, groups_per_shard", [("lora", 4, 2), ("full", 8, 2)])
def test_honest_pseudo_gradients_pass_and_their_sign_flips_do_not(mode, group_size, groups_per_shard):
    base = load_run_config("demo")
    config = base.model_copy(update={
        "training": base.training.model_copy(update={"mode": mode}),
        "rollouts": base.rollouts.model_copy(update={"group_size": group_size}),
        "grpo": base.grpo.model_copy(update={"lr": 1e-3 if mode == "lora" else 1e-4})})
    task = Task(config, eval_size=1)
    model = load_policy(config)
    pad = task.tok.pad_token_id
    rng = random.Random(5)
    for version in range(2):  # version 0 (LoRA's B is zero) and the version one outer step made
        samples = task.rollouts(model, rng, SHARDS * groups_per_shard)
        start = adapter_state(model)
        slopes, deltas, silent = {}, [], set()
        for i in range(SHARDS):
            shard = [s for s in samples if i * groups_per_shard <= s.group_id < (i + 1) * groups_per_shard]
            load_adapter_state(model, start)
            delta = inner_steps(model, shard, config, inner_optimizer(model, config), pad).delta
            grad = shard_gradient(model, build_batch(shard, pad, config.grpo.normalize_std), start, config)
            slopes[f"shard{i}"] = sum(float((grad[k] * delta[k]).sum()) for k in delta)
            deltas.append(delta)
            if all(float(v.abs().max()) == 0 for v in delta.values()):
                silent.add(f"shard{i}")  # no group with a reward spread: no step, nothing to flip
        assert direction_offenders(slopes) == {}, (version, slopes)
        assert set(direction_offenders({n: -s for n, s in slopes.items()})) == set(slopes) - silent
        assert len(silent) < SHARDS and all(slopes[n] == 0 for n in silent)
        mean = {k: sum(d[k] for d in deltas) / SHARDS for k in deltas[0]}
        apply_outer(model, start, mean, {}, config)
