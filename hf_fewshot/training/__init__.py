"""Training: SAM math, `FewShotTrainingArguments` and the SAM-enabled `transformers.Trainer`."""

from .arguments import FewShotTrainingArguments
from .sam import perturbed_weights, sam_perturbation
from .trainer import SAMTrainer

__all__ = ["FewShotTrainingArguments", "SAMTrainer", "perturbed_weights", "sam_perturbation"]
