"""Which role a node gets with `--role auto`, from its capability and the run's needs, and when such a
node is moved to another role later.

Both sides use it: the coordinator to decide at registration and between rounds, `potluck node
doctor` to predict.
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
RAN_OUT_TRAINING = "this node ran out of memory training"


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
    inference_active: int = 0  # inference nodes online, this one excluded (who keeps the pool fed)
    ran_out_training: bool = False  # this node ran out of memory training once: it is not made a trainer again


@dataclass(frozen=True)
class RoleChoice:
    role: int
    reason: str


def choose_role(hardware: pb.Hardware, needs: RunNeeds) -> RoleChoice:
    """Trainer while the run is short of trainers for a round and the node has the memory for
    training; inference otherwise. Never validator: the host names its validators."""
    memory = usable_memory(hardware)
    trainer_bytes = memory_needed(pb.ROLE_TRAINER, needs.weight_bytes)
    if needs.ran_out_training:
        return RoleChoice(pb.ROLE_INFERENCE, RAN_OUT_TRAINING)
    if not needs.may_train:
        return RoleChoice(pb.ROLE_INFERENCE, "the run admits only listed or credited trainers")
    if needs.trainers_active >= needs.trainers_wanted:
        return RoleChoice(pb.ROLE_INFERENCE, f"the run has the {needs.trainers_wanted} trainer(s) a round needs")
    if needs.weight_bytes and memory < trainer_bytes:
        return RoleChoice(pb.ROLE_INFERENCE, f"training needs about {trainer_bytes / GIB:.1f} GiB; "
                                             f"this node has {memory / GIB:.1f} GiB")
    return RoleChoice(pb.ROLE_TRAINER, f"the run has {needs.trainers_active} of the "
                                       f"{needs.trainers_wanted} trainer(s) a round needs")


def rebalanced_role(role: int, hardware: pb.Hardware, needs: RunNeeds, held_s: float,
                    hold_s: float) -> RoleChoice | None:
    """The role an auto node should move to now, or None to stay. needs counts the others only.

    Hysteresis: a node holds a role at least hold_s; an inference node becomes a trainer only while
    the others are short of a round's trainers, and a trainer goes back only once the others alone
    fill the round (or no one is left to generate rollouts), so at exactly the wanted number of
    trainers nothing moves either way."""
    if held_s < hold_s:
        return None
    if role == pb.ROLE_INFERENCE:
        choice = choose_role(hardware, needs)
        if choice.role != pb.ROLE_TRAINER or needs.inference_active < 1:
            return None  # no need, no memory, no admission, or the pool would have no one feeding it
        return RoleChoice(pb.ROLE_TRAINER, f"a round needs {needs.trainers_wanted} trainer(s) and has "
                                           f"{needs.trainers_active}; {needs.inference_active} other "
                                           "inference node(s) keep generating")
    if role == pb.ROLE_TRAINER:
        if needs.ran_out_training:
            return RoleChoice(pb.ROLE_INFERENCE, RAN_OUT_TRAINING)
        if not needs.may_train:
            return RoleChoice(pb.ROLE_INFERENCE, "the run admits only listed or credited trainers")
        if needs.trainers_active >= needs.trainers_wanted:
            return RoleChoice(pb.ROLE_INFERENCE, f"the other {needs.trainers_active} trainer(s) fill a round "
                                                 f"of {needs.trainers_wanted}")
        if needs.inference_active == 0 and needs.trainers_active >= 1:
            return RoleChoice(pb.ROLE_INFERENCE, "no inference node is generating rollouts; "
                                                 f"{needs.trainers_active} other trainer(s) remain")
    return None
