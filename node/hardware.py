"""What this machine has, as the node reports it at registration: devices, memory, disk, and a short
measured throughput (so the coordinator can size leases and pick roles from a number, not a guess)."""
from __future__ import annotations

import json
import os
import platform
import shutil
import threading
import time
from pathlib import Path

import torch

from protocol.models import resolve_model
from protocol.roles import YARDSTICK_MODEL
from protocol.v1 import coordinator_pb2 as pb

BENCH_BATCH, BENCH_TOKENS, BENCH_PASSES = 8, 32, 3
SPEED_FILE = "speed.json"
SPEED_MAX_AGE_S = 24 * 3600  # a machine's speed changes with its load and drivers: measure daily
# One model load at a time per process (measurements and policies, node/join.py): concurrent
# from_pretrained calls in threads race inside transformers (meta tensors).
MODEL_LOADING = threading.Lock()
# Batches are sized to this share of the memory free when they start: the rest is room for the
# allocator's slack, the proofs kept on the side, and whatever else runs on the machine.
MEMORY_FRACTION = 0.5


def ram_available_bytes() -> int:
    """Memory the kernel could hand out now (MemAvailable counts reclaimable cache; free pages do not)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def free_memory_bytes(device: str) -> int:
    """Memory a batch could take now on device: free GPU memory on cuda, available RAM on cpu."""
    if device.startswith("cuda"):
        return torch.cuda.mem_get_info()[0]
    return ram_available_bytes()


def sequence_bytes(model_config, length: int, dtype_bytes: int) -> int:
    """Rough peak memory of one sequence being generated to `length` tokens (node/inference/generate.py):
    its KV cache, every layer's hidden states from the prefill (kept for the proofs), the prefill's
    attention scores, and a step's logits in float32."""
    layers, hidden = model_config.num_hidden_layers, model_config.hidden_size
    heads = model_config.num_attention_heads
    kv_heads = getattr(model_config, "num_key_value_heads", None) or heads
    head_dim = getattr(model_config, "head_dim", None) or hidden // heads
    kv_cache = 2 * layers * kv_heads * head_dim * length * dtype_bytes
    hidden_states = (layers + 1) * length * hidden * dtype_bytes
    attention = heads * length * length * 4
    logits = 2 * model_config.vocab_size * 4
    return kv_cache + hidden_states + attention + logits


def rows_that_fit(free_bytes: int, per_row: int, fraction: float = MEMORY_FRACTION) -> int:
    """How many sequences to generate at once with `fraction` of the free memory (at least one: a
    node that cannot hold one finds out, reports it and gets smaller work; see node/inference)."""
    return max(1, int(free_bytes * fraction) // max(per_row, 1))


def measure_tokens_per_s(device: str) -> float:
    """Tokens per second through forward passes of the yardstick model on device (about a second on
    a laptop CPU). One warm-up pass first, so lazy initialisation is not counted."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(resolve_model(YARDSTICK_MODEL), dtype=torch.float32).to(device)
    model.eval()
    ids = torch.randint(3, model.config.vocab_size, (BENCH_BATCH, BENCH_TOKENS), device=device,
                        generator=torch.Generator(device=device).manual_seed(0))
    with torch.inference_mode():
        model(ids)
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(BENCH_PASSES):
            model(ids)
        if device == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
    return BENCH_PASSES * BENCH_BATCH * BENCH_TOKENS / max(elapsed, 1e-9)


def cached_tokens_per_s(device: str, home: Path) -> float:
    """measure_tokens_per_s, remembered in home for a day so a node that restarts joins at once."""
    key = {"device": device, "torch": torch.__version__, "cpus": os.cpu_count(),
           "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]}
    path = home / SPEED_FILE
    try:
        saved = json.loads(path.read_text())
        if saved["key"] == key and 0 <= time.time() - saved["measured_at"] < SPEED_MAX_AGE_S:
            return float(saved["tokens_per_s"])
    except (OSError, ValueError, KeyError, TypeError):
        pass  # absent or unreadable: measure afresh
    with MODEL_LOADING:
        rate = measure_tokens_per_s(device)
    path.write_text(json.dumps({"key": key, "measured_at": time.time(), "tokens_per_s": rate}))
    return rate


def probe(device: str, home: Path, measure: bool = True) -> pb.Hardware:
    gpus = []
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            gpus.append(pb.Gpu(name=props.name, memory_bytes=props.total_memory,
                               compute_capability=f"{props.major}.{props.minor}"))
    home.mkdir(parents=True, exist_ok=True)
    return pb.Hardware(device=device, cpu_count=os.cpu_count() or 1,
                       ram_bytes=os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), gpus=gpus,
                       disk_free_bytes=shutil.disk_usage(home).free,
                       platform=f"{platform.system()} {platform.machine()} python {platform.python_version()}",
                       measured_tokens_per_s=cached_tokens_per_s(device, home) if measure else 0.0,
                       ram_available_bytes=ram_available_bytes())


def pick_device(requested: str) -> str:
    if requested == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but torch sees no CUDA device")
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested
