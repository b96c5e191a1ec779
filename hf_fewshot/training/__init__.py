"""Training: SAM math, `FewShotTrainingArguments`, the SAM-enabled `transformers.Trainer` and the episodic trainer.

The arguments and trainers import transformers' Trainer (and through it PEFT), which takes seconds: they load on
first use (PEP 562), so that the optimisers can be registered with the methods at `import hf_fewshot`.
"""

from .optimization import ChainedOptimizer, protonet_optimizer, smat_optimizer
from .sam import perturbed_weights, sam_perturbation

_LAZY = {"FewShotTrainingArguments": "arguments", "EpisodicTrainer": "trainer", "SAMTrainer": "trainer"}
_LAZY["ReliableTrainer"] = "trainer"


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
