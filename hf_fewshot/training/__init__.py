"""Training: SAM math, `FewShotTrainingArguments`, the SAM-enabled `transformers.Trainer` and the episodic trainer.

The arguments and trainers import transformers' Trainer (and through it PEFT), which takes seconds: they load on
first use (PEP 562), so that the optimisers can be registered with the methods at `import hf_fewshot`.
"""

from hf_fewshot.lazy import lazy_exports

from .optimization import ChainedOptimizer, protonet_optimizer, smat_optimizer
from .sam import perturbed_weights, sam_perturbation

__getattr__ = lazy_exports(
    __name__,
    {
        "FewShotTrainingArguments": ".arguments",
        "ReliableTrainer": ".trainer",
        "SAMTrainer": ".trainer",
        "EpisodicTrainer": ".trainer",
    },
)


__all__ = [
    "ChainedOptimizer",
    "EpisodicTrainer",
    "FewShotTrainingArguments",
    "ReliableTrainer",
    "SAMTrainer",
    "perturbed_weights",
    "protonet_optimizer",
    "sam_perturbation",
    "smat_optimizer",
]
