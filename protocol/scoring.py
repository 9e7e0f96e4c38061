"""Turning generated token ids into a reward, identically on the node and the coordinator."""
from __future__ import annotations

from .envs import Environment


def completion_text(tokenizer, completion_ids: list[int], eos_id: int) -> tuple[str, bool]:
    """The text before EOS (special tokens kept, so they never pass for an answer), and whether
    the completion ended with EOS."""
    finished = bool(completion_ids) and completion_ids[-1] == eos_id
    body = completion_ids[:-1] if finished else completion_ids
    return tokenizer.decode(body, skip_special_tokens=False), finished


def score(env: Environment, tokenizer, task_id: int, completion_ids: list[int], eos_id: int) -> float:
    text, finished = completion_text(tokenizer, completion_ids, eos_id)
    return env.reward(env.task(task_id), text, finished)
