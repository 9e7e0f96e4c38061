"""Which role a node gets with `--role auto`, from its capability and the run's needs.

Both sides use it: the coordinator to decide at registration, `potluck node doctor` to predict.
Memory needs are rough rules for LoRA training and KV-cached generation, in multiples of the
base model's weight bytes: inference holds the weights plus a KV cache and activations; a trainer
holds the weights, activations kept for the backward pass, and the adapter's optimizer state.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from .models import resolve_model
from .v1 import coordinator_pb2 as pb

GIB = 1 << 30
# The yardstick a node's speed is measured with (node/hardware.py): the shipped tiny model, present
# on every node, so figures compare across machines.
YARDSTICK_MODEL = "potluck/tiny-arith"
INFERENCE_FACTOR, INFERENCE_OVERHEAD = 2.0, GIB // 4
TRAINER_FACTOR, TRAINER_OVERHEAD = 4.0, GIB // 2


@lru_cache(maxsize=16)  # asked on every lease; a model's files do not change under a running run
def model_weight_bytes(name: str) -> int:
    """Bytes of a local model's weight files (0 when the model is not on this disk)."""
    path = Path(resolve_model(name))
    if not path.is_dir():
        return 0
    return sum(f.stat().st_size for f in path.iterdir() if f.suffix in (".safetensors", ".bin"))


def memory_needed(role: int, weight_bytes: int) -> int:
    if role == pb.ROLE_TRAINER:
        return int(TRAINER_FACTOR * weight_bytes) + TRAINER_OVERHEAD
    return int(INFERENCE_FACTOR * weight_bytes) + INFERENCE_OVERHEAD


def usable_memory(hardware: pb.Hardware) -> int:
    """The memory the model would live in: the largest GPU on cuda, else the RAM free now (the total
    when the node did not report what is free)."""
    if hardware.device == "cuda" and hardware.gpus:
        return max(gpu.memory_bytes for gpu in hardware.gpus)
    return hardware.ram_available_bytes or hardware.ram_bytes


@dataclass(frozen=True)
class RunNeeds:
    trainers_active: int  # trainers registered and not gone
    trainers_wanted: int  # the run's [diloco] trainers_per_round
    weight_bytes: int  # the run's base model (0: unknown, memory is then not a bar)
    may_train: bool  # admission lets this node take the trainer role


@dataclass(frozen=True)
class RoleChoice:
    role: int
    reason: str


def choose_role(hardware: pb.Hardware, needs: RunNeeds) -> RoleChoice:
    """Trainer while the run is short of trainers for a round and the node has the memory for
    training; inference otherwise. Never validator: the host names its validators."""
    memory = usable_memory(hardware)
    trainer_bytes = memory_needed(pb.ROLE_TRAINER, needs.weight_bytes)
    if not needs.may_train:
        return RoleChoice(pb.ROLE_INFERENCE, "the run admits only listed or credited trainers")
    if needs.trainers_active >= needs.trainers_wanted:
        return RoleChoice(pb.ROLE_INFERENCE, f"the run has the {needs.trainers_wanted} trainer(s) a round needs")
    if needs.weight_bytes and memory < trainer_bytes:
        return RoleChoice(pb.ROLE_INFERENCE, f"training needs about {trainer_bytes / GIB:.1f} GiB; "
                                             f"this node has {memory / GIB:.1f} GiB")
    return RoleChoice(pb.ROLE_TRAINER, f"the run has {needs.trainers_active} of the "
                                       f"{needs.trainers_wanted} trainer(s) a round needs")
