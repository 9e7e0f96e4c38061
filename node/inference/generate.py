"""Batched autoregressive generation with a KV cache (the transformers backend).

Sampling is seeded Gumbel-max (protocol/sampling.py): each row has its own seed and the noise for
(seed, position, token) is the same on any device, so a validator can check every choice. Returns,
per sequence, the generated token ids and the behaviour log-probability of each under the sampling
distribution softmax(logits / T); the trainer's importance ratio is taken against these.

It also keeps the final hidden states a TOPLOC proof commits to (protocol/proofs.py): per sequence,
its prompt block, then one vector per decode step (each generated token but the last is fed back).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from protocol.sampling import sample


@dataclass
class Generation:
    completion_ids: list[list[int]]  # includes the EOS token when the sequence finished
    logprobs: list[list[float]]
    finished: list[bool]
    activations: list[list[torch.Tensor]]  # per sequence: [prompt block [P, H], then [H] per decode step]


def left_pad(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, width - len(seq):] = torch.tensor(seq, dtype=torch.long)
        mask[row, width - len(seq):] = 1
    return ids, mask


@torch.no_grad()
def generate(model, prompts: list[list[int]], *, max_new_tokens: int, eos_id: int, pad_id: int,
             temperature: float = 1.0, greedy: bool = False, seeds: list[int] | None = None) -> Generation:
    """Greedy, or sampled with one seed per prompt row."""
    if not prompts:
        return Generation([], [], [], [])
    if not greedy and (seeds is None or len(seeds) != len(prompts)):
        raise ValueError("sampling needs one seed per prompt")
    if not greedy and temperature <= 0:
        raise ValueError("temperature must be positive when sampling")
    device = next(model.parameters()).device
    ids, mask = left_pad(prompts, pad_id)
    ids, mask = ids.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                output_hidden_states=True)
    cache, logits = out.past_key_values, out.logits[:, -1, :].float()
    prompt_hidden = out.hidden_states[-1].cpu()
    decode_hidden = []
    next_position = positions[:, -1] + 1

    batch = len(prompts)
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    tokens, token_logprobs = [], []
    row_seeds = None if greedy else torch.tensor(seeds, dtype=torch.int64, device=device)
    for step in range(max_new_tokens):
        logp = torch.log_softmax(logits / (1.0 if greedy else temperature), dim=-1)
        if greedy:
            token = logp.argmax(-1)
        else:
            token = sample(logits, row_seeds, torch.full_like(row_seeds, step), temperature)
        token = torch.where(done, torch.full_like(token, pad_id), token)
        tokens.append(token)
        token_logprobs.append(logp.gather(-1, token[:, None]).squeeze(-1))
        done = done | (token == eos_id)
        if bool(done.all()):
            break
        mask = torch.cat([mask, torch.ones((batch, 1), dtype=mask.dtype, device=device)], dim=-1)
        out = model(input_ids=token[:, None], attention_mask=mask, position_ids=next_position[:, None],
                    past_key_values=cache, use_cache=True, output_hidden_states=True)
        cache, logits = out.past_key_values, out.logits[:, -1, :].float()
        decode_hidden.append(out.hidden_states[-1][:, -1, :].cpu())
        next_position = next_position + 1

    token_matrix = torch.stack(tokens, dim=1).cpu()
    logprob_matrix = torch.stack(token_logprobs, dim=1).float().cpu()
    completions, logprobs, finished, activations = [], [], [], []
    for row in range(batch):
        row_tokens = token_matrix[row].tolist()
        end = row_tokens.index(eos_id) + 1 if eos_id in row_tokens else len(row_tokens)
        completions.append(row_tokens[:end])
        logprobs.append(logprob_matrix[row, :end].tolist())
        finished.append(eos_id in row_tokens)
        activations.append([prompt_hidden[row, -len(prompts[row]):], *(h[row] for h in decode_hidden[:end - 1])])
    return Generation(completions, logprobs, finished, activations)
