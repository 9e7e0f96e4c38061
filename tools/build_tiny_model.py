"""Build potluck's tiny offline model: a Llama-style causal LM with a character-level tokenizer,
warmed up on the arithmetic environment's train split until its held-out greedy accuracy first
reaches --target, then saved as a standard Hugging Face model directory.

Deterministic for a given seed and thread count. The result ships in protocol/models/tiny-arith,
so nobody needs to run this; it documents and reproduces how that file was made:

    python tools/build_tiny_model.py --out protocol/models/tiny-arith
"""
from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from node.inference.generate import generate
from protocol.envs import Arithmetic

SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]
CHARS = list("0123456789+-=")


def build_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {token: i for i, token in enumerate(SPECIALS + CHARS)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    core.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", vocab["<bos>"])])
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<bos>", eos_token="<eos>",
                                   pad_token="<pad>", unk_token="<unk>")


def encode_batch(tok, env: Arithmetic, task_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded prompt+answer+EOS sequences and labels that score only the answer and EOS."""
    rows = []
    for task_id in task_ids:
        task = env.task(task_id)
        prompt = tok(task.prompt)["input_ids"]
        answer = tok(task.answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        rows.append((prompt + answer, [-100] * len(prompt) + answer))
    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), tok.pad_token_id)
    labels = torch.full((len(rows), width), -100)
    for i, (seq, lab) in enumerate(rows):
        ids[i, :len(seq)] = torch.tensor(seq)
        labels[i, :len(lab)] = torch.tensor(lab)
    return ids, labels


def greedy_accuracy(model, tok, env: Arithmetic) -> float:
    tasks = [env.task(i) for i in env.eval_ids()]
    gen = generate(model, [tok(t.prompt)["input_ids"] for t in tasks], max_new_tokens=env.max_new_tokens,
                   eos_id=tok.eos_token_id, pad_id=tok.pad_token_id, greedy=True)
    texts = [tok.decode(ids, skip_special_tokens=True) for ids in gen.completion_ids]
    return sum(env.reward(t, text, fin) for t, text, fin in zip(tasks, texts, gen.finished)) / len(tasks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--digits", type=int, default=2, help="operand digits of the arithmetic task")
    parser.add_argument("--eval-fraction", type=int, default=16, help="1 in N problems is held out")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--intermediate", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--target", type=float, default=0.2, help="stop at the first eval at or above this")
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--max-steps", type=int, default=3000)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    env = Arithmetic(digits=args.digits, eval_fraction=args.eval_fraction)
    tok = build_tokenizer()
    config = LlamaConfig(vocab_size=len(tok), hidden_size=args.hidden, num_hidden_layers=args.layers,
                         num_attention_heads=args.heads, num_key_value_heads=args.heads,
                         intermediate_size=args.intermediate, max_position_embeddings=64,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, tie_word_embeddings=True)
    model = LlamaForCausalLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    rng = random.Random(args.seed)
    history, start = [], time.time()
    for step in range(1, args.max_steps + 1):
        ids, labels = encode_batch(tok, env, env.sample_train_ids(rng, args.batch))
        loss = model(input_ids=ids, attention_mask=(ids != tok.pad_token_id).long(), labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % args.eval_every == 0:
            model.eval()
            acc = greedy_accuracy(model, tok, env)
            model.train()
            history.append({"step": step, "loss": round(loss.item(), 4), "eval_accuracy": acc})
            print(json.dumps(history[-1] | {"elapsed_s": round(time.time() - start, 1)}), flush=True)
            if acc >= args.target:
                break

    args.out.mkdir(parents=True, exist_ok=True)
    model.to(torch.bfloat16).save_pretrained(args.out)
    tok.save_pretrained(args.out)
    reloaded = LlamaForCausalLM.from_pretrained(args.out, dtype=torch.float32).eval()
    final = greedy_accuracy(reloaded, tok, env)
    card = {"seed": args.seed, "digits": args.digits, "eval_fraction": args.eval_fraction, "steps": history[-1]["step"], "eval_accuracy_saved": final,
            "parameters": sum(p.numel() for p in model.parameters()), "history": history}
    (args.out / "potluck_build.json").write_text(json.dumps(card, indent=1) + "\n")
    print(json.dumps({k: v for k, v in card.items() if k != "history"}))


if __name__ == "__main__":
    main()
