"""The policy both sides must build identically: base model + LoRA adapter (or, in full-parameter
mode, the base model alone, every parameter trained), and its blob encoding.

The coordinator uses it to create version 0 (the base model with a fresh, seeded adapter) and to
check rounds; nodes use it for every version. "Adapter state" below means the trained tensors: the
LoRA adapter, or every parameter of the model in full mode.
"""
from __future__ import annotations

import torch
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from transformers import AutoModelForCausalLM, AutoTokenizer

from .checkpoint import BLOB_FORMAT, FULL_BLOB_FORMAT, MOMENTUM_PREFIX, PARAM_PREFIXES, blob_format
from .config import RunConfig
from .models import resolve_model

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_tokenizer(model_name: str):
    return AutoTokenizer.from_pretrained(resolve_model(model_name))


def version_format(config: RunConfig) -> str:
    return FULL_BLOB_FORMAT if config.training.mode == "full" else BLOB_FORMAT


def load_policy(config: RunConfig, device: str = "cpu"):
    """The base model with the run's LoRA attached (adapter freshly initialised from the run seed),
    or in full mode the base model with every parameter trainable."""
    base = AutoModelForCausalLM.from_pretrained(resolve_model(config.model.name),
                                                dtype=DTYPES[config.model.dtype]).to(device)
    if config.training.mode == "full":
        base.requires_grad_(True)
        base.eval()
        return base
    lora = config.lora
    torch.manual_seed(config.seed)
    peft_config = PeftLoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                 target_modules=list(lora.target_modules), task_type="CAUSAL_LM")
    model = get_peft_model(base, peft_config)
    model.eval()
    return model


def adapter_state(model) -> dict[str, torch.Tensor]:
    """A detached float32 CPU copy of the trained tensors (tied weights once, under their first name)."""
    state = get_peft_model_state_dict(model) if isinstance(model, PeftModel) else dict(model.named_parameters())
    return {k: v.detach().to("cpu", torch.float32).clone() for k, v in state.items()}


def adapter_grads(model) -> dict[str, torch.Tensor]:
    """The gradients of the trained tensors after a backward pass, under adapter_state's names."""
    grads = {k: p.grad for k, p in model.named_parameters() if p.grad is not None}
    state = get_peft_model_state_dict(model, state_dict=grads) if isinstance(model, PeftModel) else grads
    return {k: v.detach().to("cpu", torch.float32).clone() for k, v in state.items()}


def load_adapter_state(model, state: dict[str, torch.Tensor]) -> None:
    if not isinstance(model, PeftModel):
        _load_parameters(model, state)
        return
    result = set_peft_model_state_dict(model, state)
    unexpected = [k for k in result.unexpected_keys if "lora_" in k]
    if unexpected:
        raise ValueError(f"adapter has tensors the model lacks: {unexpected[:3]}")


def _load_parameters(model, state: dict[str, torch.Tensor]) -> None:
    """Full mode: every named parameter from `state`, which must hold exactly those, shapes equal."""
    params = dict(model.named_parameters())
    if set(state) != set(params):
        raise ValueError(f"weights do not match the model's parameters: "
                         f"{sorted(set(state) ^ set(params))[:3]}")
    wrong = [k for k, v in state.items() if v.shape != params[k].shape]
    if wrong:
        raise ValueError(f"weights of the wrong shape: {wrong[:3]}")
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)


def encode_blob(adapter: dict[str, torch.Tensor], momentum: dict[str, torch.Tensor] | None = None,
                fmt: str = BLOB_FORMAT) -> bytes:
    """fmt: BLOB_FORMAT for an adapter, FULL_BLOB_FORMAT for full weights (version_format(config))."""
    prefix = PARAM_PREFIXES[fmt]
    tensors = {prefix + k: v.contiguous() for k, v in adapter.items()}
    for k, v in (momentum or {}).items():
        tensors[MOMENTUM_PREFIX + k] = v.contiguous()
    return save_tensors(tensors, metadata={"format": fmt})


def decode_blob(blob: bytes) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(trained tensors, outer momentum) of a blob of either format."""
    prefix = PARAM_PREFIXES[blob_format(blob)]
    tensors = load_tensors(blob)
    adapter = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    momentum = {k[len(MOMENTUM_PREFIX):]: v for k, v in tensors.items() if k.startswith(MOMENTUM_PREFIX)}
    return adapter, momentum


def initial_blob(config: RunConfig) -> bytes:
    """Version 0: the base model with a fresh adapter (LoRA's B is zero, so it equals the base), or
    in full mode the base model's weights."""
    model = load_policy(config)
    adapter = adapter_state(model)
    return encode_blob(adapter, {k: torch.zeros_like(v) for k, v in adapter.items()}, version_format(config))
