"""The inference backend against the trainer's view of the same tokens, on the built-in model."""
import pytest
import torch

from node.inference.generate import generate
from protocol.config import load_run_config
from protocol.envs import make_environment
from protocol.policy import adapter_state, decode_blob, initial_blob, load_adapter_state, load_policy, load_tokenizer
from protocol.train_batch import build_batch, token_logprobs
from protocol.v1 import coordinator_pb2 as pb


@pytest.fixture(scope="module")
def policy():
    config = load_run_config("test")
    model = load_policy(config)
    # Give the adapter non-zero B so it changes outputs, as a trained version does.
    torch.manual_seed(3)
    load_adapter_state(model, {k: torch.randn_like(v) * 0.05 for k, v in adapter_state(model).items()})
    return config, model, load_tokenizer(config.model.name), make_environment("arithmetic")


def prompts(tokenizer, env, n):
    return [tokenizer(env.task(i).prompt)["input_ids"] for i in env.eval_ids()[:n]]


def test_behaviour_logprobs_match_a_full_forward(policy):
    config, model, tok, env = policy
    # Prompts of two lengths, so left padding is exercised.
    three_digits = make_environment("arithmetic", {"digits": 3, "eval_fraction": 32})
    batch_prompts = prompts(tok, env, 3) + prompts(tok, three_digits, 3)
    assert len({len(p) for p in batch_prompts}) == 2
    gen = generate(model, batch_prompts, max_new_tokens=env.max_new_tokens, eos_id=tok.eos_token_id,
                   pad_id=tok.pad_token_id, temperature=0.7, seeds=list(range(6)))
    samples = [pb.TrainingSample(group_id=i // 2, prompt_ids=p, completion_ids=c, logprobs=lp, reward=float(i % 2))
               for i, (p, c, lp) in enumerate(zip(batch_prompts, gen.completion_ids, gen.logprobs))]
    batch = build_batch(samples, tok.pad_token_id, normalize_std=True)
    with torch.no_grad():
        logp = token_logprobs(model, batch, temperature=0.7)
    mask = batch.target_mask
    assert mask.sum().item() == sum(len(c) for c in gen.completion_ids)
    assert torch.allclose(logp[mask], batch.behaviour_logp[mask], atol=1e-4)


def test_sampling_is_seeded_and_greedy_is_deterministic(policy):
    _, model, tok, env = policy
    batch_prompts = prompts(tok, env, 8)
    kwargs = dict(max_new_tokens=env.max_new_tokens, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id)
    seeds = list(range(100, 108))
    a = generate(model, batch_prompts, seeds=seeds, **kwargs)
    b = generate(model, batch_prompts[2:], seeds=seeds[2:], **kwargs)
    assert a.completion_ids[2:] == b.completion_ids  # a row's sample depends on its seed, not its batch
    g1 = generate(model, batch_prompts, greedy=True, **kwargs)
    g2 = generate(model, batch_prompts[:3], greedy=True, **kwargs)
    assert g1.completion_ids[:3] == g2.completion_ids  # batch composition does not change greedy output
    for ids, finished in zip(g1.completion_ids, g1.finished):
        assert (ids[-1] == tok.eos_token_id) == finished
        assert finished or len(ids) == env.max_new_tokens


def test_version_zero_adapter_leaves_the_base_model_unchanged(policy):
    config, _, tok, env = policy
    model = load_policy(config)
    adapter, momentum = decode_blob(initial_blob(config))
    assert all(torch.count_nonzero(v) == 0 for k, v in adapter.items() if "lora_B" in k)
    assert all(torch.count_nonzero(v) == 0 for v in momentum.values())
    ids = torch.tensor([prompts(tok, env, 1)[0]])
    with torch.no_grad():
        with_adapter = model(input_ids=ids).logits
        with model.disable_adapter():
            base = model(input_ids=ids).logits
    assert torch.equal(with_adapter, base)
