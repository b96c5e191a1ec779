"""`FewShotTrainingArguments`: `transformers.TrainingArguments` plus the settings of SAM."""

from dataclasses import dataclass, field

from transformers import TrainingArguments


@dataclass
class FewShotTrainingArguments(TrainingArguments):
    """TrainingArguments with sharpness-aware minimisation (SAM.md).

    `sam_rho = 0` (the default) trains exactly like `transformers.Trainer`.
    """

    sam_rho: float = field(default=0.0, metadata={"help": "SAM neighbourhood radius ρ; 0 turns SAM off."})
    sam_adaptive: bool = field(default=False, metadata={"help": "ASAM: scale the perturbation by |w|."})
    sam_interval: int = field(default=1, metadata={"help": "Apply SAM every k optimizer steps (ERM otherwise)."})

    def __post_init__(self):
        super().__post_init__()
        if self.sam_rho < 0:
            raise ValueError(f"sam_rho must be ≥ 0, got {self.sam_rho}.")
        if self.sam_interval < 1:
            raise ValueError(f"sam_interval must be ≥ 1, got {self.sam_interval}.")
