"""`FewShotTrainingArguments`: `transformers.TrainingArguments` plus SAM, episodes and SMAT's optimiser groups."""

import enum
import math
from dataclasses import dataclass, field

from transformers import TrainingArguments

from hf_fewshot.data.episodes import PROTOCOLS

_RUN_DEFINING = (  # TrainingArguments fields that change the trained weights
    "learning_rate",
    "weight_decay",
    "max_steps",
    "num_train_epochs",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "lr_scheduler_type",
    "warmup_steps",
    "seed",
    "bf16",
    "fp16",
)
_SPEED_ONLY = ("reuse_freed_cpu_memory",)  # FewShotTrainingArguments fields that leave the trained weights alone
_NON_NEGATIVE = (
    "learning_rate",
    "weight_decay",
    "sam_rho",
    "momentum",
    "gate_learning_rate",
    "gate_max_grad_norm",
    "multiplier_learning_rate",
    "router_learning_rate",
    "router_weight_decay",
    "router_max_grad_norm",
)


@dataclass
class FewShotTrainingArguments(TrainingArguments):
    """TrainingArguments with sharpness-aware minimisation (docs/sam.md) and episodic training (`EpisodicTrainer`).

    `sam_rho = 0` (the default) trains exactly like `transformers.Trainer`. The episode fields are read by
    `EpisodicTrainer` only: one micro-batch is one episode (task), so `gradient_accumulation_steps` ×
    processes is the number of tasks per update. The `gate_*`, `multiplier_*` and `router_*` fields are
    the optimiser groups of SMAT (docs/smat.md, "Optimisation"); `learning_rate` / `weight_decay` / `momentum` drive
    the dense delta of SMAT and the whole backbone of P>M>F.
    """

    max_grad_norm: float | None = field(
        default=None,
        metadata={
            "help": "Whole-model gradient-norm clip (0 = none). Not given: 1.0 (the Trainer's default), which "
            "SAMTrainer / EpisodicTrainer turn off for SMAT, whose optimiser groups clip themselves (docs/smat.md)."
        },
    )
    sam_rho: float = field(default=0.0, metadata={"help": "SAM neighbourhood radius ρ; 0 turns SAM off."})
    sam_adaptive: bool = field(default=False, metadata={"help": "ASAM: scale the perturbation by |w|."})
    sam_interval: int = field(default=1, metadata={"help": "Apply SAM every k optimizer steps (ERM otherwise)."})

    episode_protocol: str = field(
        default="md", metadata={"help": f"Episode protocol for training and validation: one of {PROTOCOLS}."}
    )
    n_way: int | None = field(default=None, metadata={"help": "Ways of 'fixed' episodes."})
    n_shot: int | None = field(default=None, metadata={"help": "Shots per class of 'fixed' episodes."})
    n_query: int | None = field(default=None, metadata={"help": "Queries per class of 'fixed' episodes."})
    max_ways: int = field(default=50, metadata={"help": "Most classes in an 'md' / 'md_5shot' episode."})
    max_support: int = field(default=500, metadata={"help": "Most support images in an 'md' episode."})
    train_episodes_per_epoch: int = field(default=2000, metadata={"help": "Training tasks per epoch (all ranks)."})
    eval_episodes: int = field(default=120, metadata={"help": "Fixed validation episodes per domain."})
    image_size: int = field(default=128, metadata={"help": "Side of the square images fed to the backbone."})
    crop_scale_min: float = field(
        default=0.08, metadata={"help": "Smallest area fraction of the training random resized crop."}
    )

    momentum: float = field(default=0.9, metadata={"help": "SGD momentum of SMAT's delta and of P>M>F."})
    gate_learning_rate: float = field(default=1e6, metadata={"help": "SMAT: SGD lr of the gate logits log α."})
    gate_max_grad_norm: float = field(default=5.0, metadata={"help": "SMAT: gradient-norm clip of the gate logits."})
    multiplier_learning_rate: float = field(default=0.002, metadata={"help": "SMAT: SGD lr of the multipliers λ."})
    router_learning_rate: float = field(default=1e-4, metadata={"help": "SMAT: AdamW lr of the router."})
    router_weight_decay: float = field(default=1e-2, metadata={"help": "SMAT: AdamW weight decay of the router."})
    router_max_grad_norm: float = field(default=1.0, metadata={"help": "SMAT: gradient-norm clip of the router."})

    reuse_freed_cpu_memory: bool = field(
        default=True,
        metadata={
            "help": "Training on CPU: keep freed memory in the process for the next tasks instead of returning it to "
            "the system (glibc; `hf_fewshot.allocator`): SMAT tasks ≈ 10 % faster, same peak memory."
        },
    )

    def episode_settings(self) -> dict:
        """The `EpisodeSampler` keyword arguments these settings describe (protocol, ways, shots, seed)."""
        return dict(
            protocol=self.episode_protocol,
            n_way=self.n_way,
            n_shot=self.n_shot,
            n_query=self.n_query,
            max_ways=self.max_ways,
            max_support=self.max_support,
            seed=self.seed,
        )

    def run_settings(self) -> dict:
        """The settings that decide what a training run produces (not where it logs or saves): a finished run is
        only reused by a rerun with the same ones."""
        names = [*FewShotTrainingArguments.__annotations__, *_RUN_DEFINING]
        return {name: _plain(getattr(self, name)) for name in names if name not in _SPEED_ONLY}

    def __post_init__(self):
        super().__post_init__()
        # Not given: 1.0 here, so that a stock Trainer behaves as always; EpisodicTrainer turns it off for SMAT.
        self._max_grad_norm_given = self.max_grad_norm is not None
        if self.max_grad_norm is None:
            self.max_grad_norm = 1.0
        if not self.max_grad_norm >= 0:
            raise ValueError(f"max_grad_norm must be ≥ 0 (0 = no whole-model clip), got {self.max_grad_norm}.")
        for name in _NON_NEGATIVE:  # NaN passes `< 0`: test finiteness as well
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number ≥ 0, got {value}.")
        if self.sam_interval < 1:
            raise ValueError(f"sam_interval must be ≥ 1, got {self.sam_interval}.")
        if self.episode_protocol not in PROTOCOLS:
            raise ValueError(f"episode_protocol must be one of {PROTOCOLS}, got {self.episode_protocol!r}.")
        sizes = {name: getattr(self, name) for name in ("n_way", "n_shot", "n_query")}
        if self.episode_protocol == "fixed" and None in sizes.values():
            raise ValueError("The 'fixed' episode protocol needs n_way, n_shot and n_query.")
        given = [name for name, value in sizes.items() if value is not None]
        if self.episode_protocol != "fixed" and given:  # else silently ignored: 'md' draws its own sizes
            raise ValueError(
                f"{', '.join(given)} apply to the 'fixed' episode protocol only; {self.episode_protocol!r} draws "
                "each episode's ways and shots (bound them with max_ways / max_support)."
            )
        for name in ("train_episodes_per_epoch", "eval_episodes", "image_size", "max_ways", "max_support"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be ≥ 1, got {getattr(self, name)}.")
        if not 0 < self.crop_scale_min <= 1:
            raise ValueError(f"crop_scale_min must lie in (0, 1], got {self.crop_scale_min}.")


def _plain(value):
    """A JSON-comparable form of an argument value (enums by value)."""
    return value.value if isinstance(value, enum.Enum) else value
