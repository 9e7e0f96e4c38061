"""Multi-digit addition and subtraction with non-negative answers: `73+05=` -> `78`.

Operands are zero-padded to a fixed width, so every prompt has the same length and digits line up
by position; the answer is written plainly.
"""
from __future__ import annotations

import hashlib
import random

from .base import Environment, Task


def _stable_hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


class Arithmetic(Environment):
    name = "arithmetic"

    # The defaults are the split the built-in tiny model was warmed up on: its held-out problems
    # were never trained on.
    def __init__(self, digits: int = 2, eval_size: int = 512, eval_fraction: int = 16,
                 format_reward: float = 0.0, seed: int = 0) -> None:
        if not 1 <= digits <= 6:
            raise ValueError("digits must be between 1 and 6")
        if not 0.0 <= format_reward < 1.0:
            raise ValueError("format_reward must be in [0, 1)")
        self.digits = digits
        self.base = 10 ** digits
        self.size = 2 * self.base * self.base
        self.eval_fraction = eval_fraction
        self.format_reward = format_reward
        self.seed = seed
        # Answer digits plus EOS, with room for one extra digit of carry.
        self.max_new_tokens = digits + 2
        self._eval_ids = self._pick_eval_ids(eval_size)

    def _operands(self, task_id: int) -> tuple[int, str, int]:
        if not 0 <= task_id < self.size:
            raise ValueError(f"task id {task_id} out of range [0, {self.size})")
        op = "+-"[task_id // (self.base * self.base)]
        a, b = divmod(task_id % (self.base * self.base), self.base)
        if op == "-" and a < b:
            a, b = b, a
        return a, op, b

    def task(self, task_id: int) -> Task:
        a, op, b = self._operands(task_id)
        answer = a + b if op == "+" else a - b
        return Task(task_id, f"{a:0{self.digits}d}{op}{b:0{self.digits}d}=", str(answer))

    def is_eval(self, task_id: int) -> bool:
        # Split by the problem itself, so `5-3` and its swapped id `3-5` land on the same side.
        a, op, b = self._operands(task_id)
        return _stable_hash(f"{self.seed}:{a}{op}{b}") % self.eval_fraction == 0

    def _pick_eval_ids(self, n: int) -> list[int]:
        rng = random.Random(f"eval:{self.seed}")
        chosen: dict[str, int] = {}
        # Draws are bounded: with few digits the split may simply hold fewer than n problems.
        for _ in range(64 * n * self.eval_fraction):
            task_id = rng.randrange(self.size)
            if self.is_eval(task_id):
                chosen.setdefault(self.task(task_id).prompt, task_id)
                if len(chosen) == n:
                    return list(chosen.values())
        raise ValueError(f"the eval split of {self.digits}-digit problems has fewer than {n} problems; "
                         f"lower eval_size or eval_fraction")

    def eval_ids(self) -> list[int]:
        return list(self._eval_ids)

    def sample_train_ids(self, rng: random.Random, n: int) -> list[int]:
        ids: dict[int, None] = {}  # distinct, in draw order
        while len(ids) < n:
            task_id = rng.randrange(self.size)
            if not self.is_eval(task_id):
                ids[task_id] = None
        return list(ids)

    def reward(self, task: Task, completion: str, finished: bool) -> float:
        if finished and completion == task.answer:
            return 1.0
        if finished and completion.isdigit():
            return self.format_reward
        return 0.0
