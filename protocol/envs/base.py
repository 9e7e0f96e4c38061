"""The environment API: tasks with a prompt and a checkable answer, and a deterministic reward.

Both sides use it: inference nodes score their own completions, the coordinator recomputes the
reward from the submitted tokens and accepts the rollout only if the two agree.
"""
from __future__ import annotations

import abc
import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Task:
    task_id: int
    prompt: str
    answer: str


class Environment(abc.ABC):
    """A deterministic task source with disjoint train and held-out eval splits."""

    name: str
    max_new_tokens: int

    @abc.abstractmethod
    def task(self, task_id: int) -> Task:
        """The task with this id (train or eval); raises ValueError for an id out of range."""

    @abc.abstractmethod
    def sample_train_ids(self, rng: random.Random, n: int) -> list[int]:
        """n distinct train task ids drawn from rng; never an eval task."""

    @abc.abstractmethod
    def eval_ids(self) -> list[int]:
        """The fixed held-out split, in a fixed order."""

    @abc.abstractmethod
    def is_eval(self, task_id: int) -> bool:
        """Whether the task belongs to the held-out split."""

    @abc.abstractmethod
    def reward(self, task: Task, completion: str, finished: bool) -> float:
        """Reward of a completion (text before EOS); `finished` says whether it ended with EOS."""
