"""The policy both sides must build identically: base model + LoRA adapter, and its blob encoding.

The coordinator uses it once, to create version 0 (the base model with a fresh, seeded adapter);
nodes use it for every version after.
"""
from __future__ import annotations

import torch
from peft import LoraConfig as PeftLoraConfig
from peft import get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from transformers import AutoModelForCausalLM, AutoTokenizer

from .checkpoint import ADAPTER_PREFIX, BLOB_FORMAT, MOMENTUM_PREFIX
from .config import RunConfig
from .models import resolve_model

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_tokenizer(model_name: str):
    return AutoTokenizer.from_pretrained(resolve_model(model_name))


def load_policy(config: RunConfig, device: str = "cpu"):
    """The base model with the run's LoRA attached (adapter freshly initialised from the run seed)."""
    base = AutoModelForCausalLM.from_pretrained(resolve_model(config.model.name),
                                                dtype=DTYPES[config.model.dtype]).to(device)
    lora = config.lora
    torch.manual_seed(config.seed)
    peft_config = PeftLoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                 target_modules=list(lora.target_modules), task_type="CAUSAL_LM")
    model = get_peft_model(base, peft_config)
    model.eval()
    return model


def adapter_state(model) -> dict[str, torch.Tensor]:
    """A detached float32 CPU copy of the trainable adapter tensors."""
    return {k: v.detach().to("cpu", torch.float32).clone() for k, v in get_peft_model_state_dict(model).items()}


def load_adapter_state(model, state: dict[str, torch.Tensor]) -> None:
    result = set_peft_model_state_dict(model, state)
    unexpected = [k for k in result.unexpected_keys if "lora_" in k]
    if unexpected:
        raise ValueError(f"adapter has tensors the model lacks: {unexpected[:3]}")


def encode_blob(adapter: dict[str, torch.Tensor], momentum: dict[str, torch.Tensor] | None = None) -> bytes:
    tensors = {ADAPTER_PREFIX + k: v.contiguous() for k, v in adapter.items()}
    for k, v in (momentum or {}).items():
        tensors[MOMENTUM_PREFIX + k] = v.contiguous()
    return save_tensors(tensors, metadata={"format": BLOB_FORMAT})


def decode_blob(blob: bytes) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    tensors = load_tensors(blob)
    adapter = {k[len(ADAPTER_PREFIX):]: v for k, v in tensors.items() if k.startswith(ADAPTER_PREFIX)}
    momentum = {k[len(MOMENTUM_PREFIX):]: v for k, v in tensors.items() if k.startswith(MOMENTUM_PREFIX)}
    return adapter, momentum


def initial_blob(config: RunConfig) -> bytes:
    """Version 0: the base model with a fresh adapter (LoRA's B is zero, so it equals the base)."""
    model = load_policy(config)
    adapter = adapter_state(model)
    return encode_blob(adapter, {k: torch.zeros_like(v) for k, v in adapter.items()})
