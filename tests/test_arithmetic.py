import random

import pytest

from protocol.envs import make_environment


def test_tasks_are_deterministic_and_correct():
    env = make_environment("arithmetic", {"digits": 3})
    for task_id in random.Random(0).sample(range(env.size), 200):
        task = env.task(task_id)
        op = "+" if "+" in task.prompt else "-"
        a, b = (int(x) for x in task.prompt[:-1].split(op))
        assert len(task.prompt) == 2 * env.digits + 2  # zero-padded operands: one prompt length
        assert int(task.answer) == (a + b if op == "+" else a - b) >= 0
        assert task.answer == str(int(task.answer))
        assert env.task(task_id) == task


def test_reward_is_exact_match_with_eos():
    env = make_environment("arithmetic", {"format_reward": 0.1})
    task = env.task(12_345)
    assert env.reward(task, task.answer, finished=True) == 1.0
    assert env.reward(task, task.answer, finished=False) == 0.0  # cut off before EOS
    assert env.reward(task, task.answer + "0", finished=True) == 0.1  # well-formed but wrong
    assert env.reward(task, "1+1", finished=True) == 0.0
    assert env.reward(task, "", finished=True) == 0.0


def test_train_and_eval_splits_are_disjoint_problems():
    env = make_environment("arithmetic", {"eval_size": 256})
    eval_prompts = {env.task(i).prompt for i in env.eval_ids()}
    assert len(eval_prompts) == 256 and all(env.is_eval(i) for i in env.eval_ids())
    train = env.sample_train_ids(random.Random(1), 5000)
    assert len(set(train)) == 5000  # distinct: a shard never holds a prompt twice
    assert not eval_prompts & {env.task(i).prompt for i in train}
    assert env.eval_ids() == make_environment("arithmetic", {"eval_size": 256}).eval_ids()


def test_bad_ids_and_params_are_refused():
    env = make_environment("arithmetic")
    with pytest.raises(ValueError):
        env.task(env.size)
    with pytest.raises(ValueError):
        make_environment("arithmetic", {"digits": 0})
    with pytest.raises(ValueError, match="unknown environment"):
        make_environment("chess")


def test_an_eval_split_too_small_is_an_error_not_a_hang():
    with pytest.raises(ValueError, match="fewer than"):
        make_environment("arithmetic", {"digits": 1, "eval_size": 50})
