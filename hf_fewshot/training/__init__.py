"""Training: SAM math, `FewShotTrainingArguments`, the SAM-enabled `transformers.Trainer` and the episodic trainer."""

from .arguments import FewShotTrainingArguments
from .optimization import ChainedOptimizer, protonet_optimizer, smat_optimizer
from .sam import perturbed_weights, sam_perturbation
from .trainer import EpisodicTrainer, SAMTrainer

__all__ = [
    "ChainedOptimizer",
    "EpisodicTrainer",
    "FewShotTrainingArguments",
    "SAMTrainer",
    "perturbed_weights",
    "protonet_optimizer",
    "sam_perturbation",
    "smat_optimizer",
]
