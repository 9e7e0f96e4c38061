"""The coordinator's side of the direction check (screening.py): for each trainer, the slope of its
own shard's loss along its pseudo-gradient at the parent version, with one copy of the policy
model loaded on first use and kept for the run."""
from __future__ import annotations

import functools

from protocol.config import RunConfig
from protocol.diloco import Tensors
from protocol.objective import shard_gradient
from protocol.policy import load_policy
from protocol.train_batch import build_batch

from .context import RunContext
from .rounds import shard_samples


@functools.lru_cache(maxsize=1)
def _policy(config_json: str):
    return load_policy(RunConfig.model_validate_json(config_json))


def descent_slopes(ctx: RunContext, parent: Tensors, deltas: dict[str, Tensors],
                   shards: dict[str, list[int]]) -> dict[str, float]:
    """node id -> gradient . delta on that node's shard at the parent version: how fast the step
    theta - delta lowers the loss there, to first order."""
    config = ctx.config
    model = _policy(config.model_dump_json())
    slopes = {}
    for node, delta in deltas.items():
        batch = build_batch(shard_samples(ctx, shards[node]), ctx.tokenizer.pad_token_id, config.grpo.normalize_std)
        grad = shard_gradient(model, batch, parent, config)
        slopes[node] = sum(float((grad[k].double() * delta[k].double()).sum()) for k in delta)
    return slopes
