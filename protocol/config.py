"""The run config: one TOML file defines a run. Validated with pydantic; unknown keys are errors.

The coordinator sends the whole config to every node at registration, so both sides read the same
numbers from the same schema.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

PRESETS_DIR = Path(__file__).resolve().parent / "presets"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelConfig(_Strict):
    name: str = "potluck/tiny-arith"  # a built-in model, a Hugging Face id or a local directory
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"


class EnvironmentConfig(_Strict):
    name: str = "arithmetic"
    params: dict[str, int | float | str | bool] = Field(default_factory=dict)


class SamplingConfig(_Strict):
    temperature: float = Field(1.0, gt=0.0, le=10.0)
    max_new_tokens: int | None = Field(None, ge=1, le=32768)  # None: the environment's limit


class RolloutConfig(_Strict):
    group_size: int = Field(8, ge=2, le=256)
    prompts_per_shard: int = Field(16, ge=1, le=4096)
    batch_groups: int = Field(32, ge=1, le=65536)  # groups (prompts) per outer step
    max_async_level: int = Field(1, ge=0, le=8)  # how many versions rollouts may lag the trainer
    skip_zero_variance_groups: bool = True  # such groups carry no GRPO signal
    lease_seconds: float = Field(60.0, gt=0, le=86400)
    # A shard's deadline scales with the node's measured speed (coordinator/leases.py), within
    # [min_lease_seconds, lease_seconds].
    min_lease_seconds: float = Field(30.0, gt=0, le=86400)


class LoraConfig(_Strict):
    rank: int = Field(16, ge=1, le=1024)
    alpha: float = Field(32.0, gt=0)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                       "down_proj")


class TrainingConfig(_Strict):
    """What trainers train: "lora" (the [lora] adapter; small versions, the default) or "full" (every
    parameter of the model; versions as large as the model, plus its outer momentum)."""
    mode: Literal["lora", "full"] = "lora"


class GrpoConfig(_Strict):
    lr: float = Field(1e-3, gt=0, le=1.0)
    inner_steps: int = Field(2, ge=1, le=10000)  # H: local AdamW steps per outer step
    clip_low: float = Field(0.2, ge=0.0, lt=1.0)
    clip_high: float = Field(0.28, ge=0.0, le=10.0)
    normalize_std: bool = True
    max_grad_norm: float = Field(1.0, gt=0)
    weight_decay: float = Field(0.0, ge=0.0)
    lease_seconds: float = Field(600.0, gt=0, le=86400)
    # Tokens whose importance ratio pi/behaviour leaves [1/ratio_mask, ratio_mask] are masked out
    # of the loss: stale rollouts whose behaviour policy drifted too far carry no reliable signal.
    ratio_mask: float = Field(8.0, gt=1.0)
    # Keep the inner AdamW's state from one round to the next while a trainer trains consecutive
    # versions (DiLoCo's way). Off, each round starts a fresh AdamW: its pseudo-gradient then depends
    # on its version and shard alone, which diloco.direction_check needs. With a small H a fresh
    # AdamW is close to sign descent and learns slower (README "Training across trainers").
    carry_optimizer: bool = False


class DilocoConfig(_Strict):
    """Outer step over the pseudo-gradient theta_v - theta_local. lr 1, momentum 0 is plain
    continued training; DiLoCo's usual values are lr 0.7, momentum 0.9 with Nesterov."""
    outer_lr: float = Field(1.0, gt=0.0, le=10.0)
    outer_momentum: float = Field(0.0, ge=0.0, lt=1.0)
    nesterov: bool = True
    # A round: one version's batch cut into shards for up to trainers_per_round trainers, who
    # all-reduce their pseudo-gradients peer to peer (README "Training across trainers").
    trainers_per_round: int = Field(1, ge=1, le=256)
    min_trainers: int = Field(1, ge=1, le=256)  # a forming round waits for at least this many
    join_seconds: float = Field(1.0, ge=0.0, le=3600)  # how long a forming round waits for more
    averaging_wait_seconds: float = Field(3.0, gt=0, le=600)  # matchmaking wait for round-mates
    compression: Literal["fp16", "int8", "none"] = "fp16"  # pseudo-gradients on the wire
    quorum: float = Field(0.5, gt=0.0, le=1.0)  # fraction of a round's trainers that must agree
    agreement_rtol: float = Field(0.1, gt=0.0, le=1.0)  # |candidate - expected| / |expected update|
    # Screening of each trainer's pseudo-gradient before a round may publish: an absolute norm
    # cap, a cap relative to the median of recently accepted ones, and (3+ trainers) a floor on
    # the cosine with the other trainers' mean; -1 turns that off, the default, because shards of
    # a small GRPO batch give nearly orthogonal pseudo-gradients (cosine ~0 measured on the demo).
    max_delta_norm: float = Field(50.0, gt=0.0)
    max_norm_ratio: float = Field(8.0, gt=1.0)
    min_cosine: float = Field(-1.0, ge=-1.0, le=1.0)
    # A member named in others' all-reduce that has not submitted stops holding the round once it is
    # offline (no heartbeat for 3 intervals) or submit_grace_seconds after the round's first result.
    submit_grace_seconds: float = Field(60.0, gt=0.0, le=86400)
    # Each pseudo-gradient must point downhill on its own trainer's shard: the coordinator checks
    # gradient . delta > 0 at the parent version (one forward and backward pass per shard), which a
    # sign flip of an honest pseudo-gradient fails by construction (screening.py).
    direction_check: bool = True

    @model_validator(mode="after")
    def _min_fits(self) -> "DilocoConfig":
        if self.min_trainers > self.trainers_per_round:
            raise ValueError("diloco.min_trainers must not exceed diloco.trainers_per_round")
        return self


class CheckpointConfig(_Strict):
    """Which version blobs the coordinator keeps: the last `keep_last`, and every `keep_every`-th
    as a milestone (0: none). Manifests of all versions are kept."""
    keep_last: int = Field(8, ge=2, le=1_000_000)
    keep_every: int = Field(50, ge=0, le=1_000_000)


class EvalConfig(_Strict):
    every: int = Field(1, ge=0, le=1_000_000)  # evaluate every Nth version; 0: never


class VerificationConfig(_Strict):
    """How rollouts are checked before they count (README "Verified rollouts"). Tolerances are in
    the units of each check; the defaults suit float32 models and are loose enough for the
    differences between batch sizes, thread counts and padding (bench.verification measures it)."""
    rate: float = Field(1.0, gt=0.0, le=1.0)  # fraction of submissions a validator prefills
    embedded: bool = True  # the coordinator validates itself (small runs); else validator nodes do
    logit_margin: float = Field(0.02, ge=0.0, le=10.0)  # sampling: near-tie allowance, logit units
    logprob_tolerance: float = Field(0.01, ge=0.0, le=10.0)  # |reported - recomputed| per token
    max_exp_mismatch_fraction: float = Field(90 / 128, ge=0.0, le=1.0)  # TOPLOC's published limits
    max_mant_err_mean: float = Field(10.0, ge=0.0)
    max_mant_err_median: float = Field(8.0, ge=0.0)
    lease_seconds: float = Field(60.0, gt=0, le=86400)


class AdmissionConfig(_Strict):
    """Who may join, and who may take the trainer and validator roles. Host-side only: never sent to
    nodes, and it may change between restarts of a run. A role is open when it has neither an
    allowlist nor a credit threshold; otherwise a node needs to be listed or to have earned the credit."""
    join_token_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")  # `potluck coordinator token`
    trainers: tuple[str, ...] = ()  # node ids
    validators: tuple[str, ...] = ()
    trainer_min_credit: float = Field(0.0, ge=0.0)
    validator_min_credit: float = Field(0.0, ge=0.0)
    clock_skew_seconds: float = Field(300.0, gt=0, le=86400)  # how far a request's nonce time may stray


class LimitsConfig(_Strict):
    """Per-node and per-server limits (host-side only, like [admission])."""
    rate_per_s: float = Field(20.0, gt=0, le=1e6)  # signed calls per node per second, sustained
    burst: int = Field(60, ge=1, le=1_000_000)
    max_streams: int = Field(256, ge=1, le=100_000)  # concurrent Watch + FetchVersion streams
    heartbeat_target_rps: float = Field(200.0, gt=0, le=1e6)  # heartbeat interval grows past this rate


class RolesConfig(_Strict):
    """Moving --role auto nodes between inference and trainer as the run's needs change
    (coordinator/roles.py). A node keeps a role at least hold_seconds, so roles do not flap."""
    rebalance: bool = True
    hold_seconds: float = Field(60.0, ge=0, le=86400)


HOST_ONLY = {"admission", "limits"}


class RunConfig(_Strict):
    name: str = Field("potluck-run", min_length=1, max_length=128)
    seed: int = Field(0, ge=0, lt=2**63)
    heartbeat_seconds: float = Field(5.0, gt=0, le=3600)
    model: ModelConfig = ModelConfig()
    environment: EnvironmentConfig = EnvironmentConfig()
    sampling: SamplingConfig = SamplingConfig()
    rollouts: RolloutConfig = RolloutConfig()
    lora: LoraConfig = LoraConfig()
    training: TrainingConfig = TrainingConfig()
    grpo: GrpoConfig = GrpoConfig()
    diloco: DilocoConfig = DilocoConfig()
    eval: EvalConfig = EvalConfig()
    checkpoints: CheckpointConfig = CheckpointConfig()
    verification: VerificationConfig = VerificationConfig()
    admission: AdmissionConfig = AdmissionConfig()
    limits: LimitsConfig = LimitsConfig()
    roles: RolesConfig = RolesConfig()

    @model_validator(mode="after")
    def _shards_fit_batch(self) -> "RunConfig":
        if self.rollouts.prompts_per_shard > self.rollouts.batch_groups:
            raise ValueError("rollouts.prompts_per_shard must not exceed rollouts.batch_groups")
        if self.grpo.carry_optimizer and self.diloco.direction_check:
            raise ValueError("grpo.carry_optimizer needs diloco.direction_check = false: a carried-over "
                             "AdamW's pseudo-gradient also follows earlier rounds' shards, so honest ones "
                             "can fail the check")
        return self


def parse_run_config(text: str) -> RunConfig:
    return RunConfig.model_validate(tomllib.loads(text))


def load_run_config(name_or_path: str) -> RunConfig:
    """A preset name (`demo`, `test`) or a path to a TOML file."""
    path = Path(name_or_path)
    if not path.exists():
        preset = PRESETS_DIR / f"{name_or_path}.toml"
        if not preset.exists():
            presets = sorted(p.stem for p in PRESETS_DIR.glob("*.toml"))
            raise FileNotFoundError(f"no run file {name_or_path!r} and no such preset; presets: {presets}")
        path = preset
    return parse_run_config(path.read_text())
