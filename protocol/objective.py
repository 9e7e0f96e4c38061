"""A trainer's objective on its shard as a function of the trained tensors: the GRPO loss its inner
steps minimise. The coordinator takes its gradient at the parent version to check that a submitted
pseudo-gradient is a descent direction on the shard its trainer was leased (coordinator/screening.py)."""
from __future__ import annotations

from .config import RunConfig
from .diloco import Tensors
from .grpo import clipped_token_loss
from .policy import adapter_grads, load_adapter_state
from .train_batch import TrainBatch, token_logprobs


def shard_gradient(model, batch: TrainBatch, params: Tensors, config: RunConfig) -> Tensors:
    """d loss / d params on the batch, at `params` (loaded into `model`, which is left holding them)."""
    grpo = config.grpo
    load_adapter_state(model, params)
    model.zero_grad(set_to_none=True)
    logp = token_logprobs(model, batch, config.sampling.temperature)
    loss, _ = clipped_token_loss(logp, batch.behaviour_logp, batch.advantages, batch.target_mask,
                                 grpo.clip_low, grpo.clip_high, grpo.ratio_mask)
    loss.backward()
    grads = adapter_grads(model)
    model.zero_grad(set_to_none=True)
    return grads
