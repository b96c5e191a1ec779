"""hf-fewshot: few-shot image classification on the Hugging Face stack (SMAT, P>M>F, flat SAM backbones)."""

from hf_fewshot.adaptation import finetune_on_support
from hf_fewshot.data import EpisodeCollator, EpisodeSampler, load_domain
from hf_fewshot.diagnostics import SmatDiagnostics, smat_diagnostics
from hf_fewshot.evaluation import evaluate_episodes
from hf_fewshot.methods import METHODS, register_fewshot_method
from hf_fewshot.models import ProtoNetConfig, ProtoNetModel, SmatConfig, SmatModel
from hf_fewshot.models.image_processing import open_images
from hf_fewshot.pipelines import FewShotImageClassificationPipeline

__version__ = "0.1.0.dev0"

# The training classes import transformers' Trainer (and through it PEFT): loaded on first use, so that
# `import hf_fewshot` for inference stays light (PEP 562).
_TRAINING = ("EpisodicTrainer", "FewShotTrainingArguments", "SAMTrainer")


def __getattr__(name: str):
    if name in _TRAINING:
        from hf_fewshot import training

        return getattr(training, name)
    raise AttributeError(f"module 'hf_fewshot' has no attribute {name!r}")


__all__ = [
    "EpisodeCollator",
    "EpisodeSampler",
    "EpisodicTrainer",
    "FewShotImageClassificationPipeline",
    "FewShotTrainingArguments",
    "METHODS",
    "ProtoNetConfig",
    "ProtoNetModel",
    "SAMTrainer",
    "SmatConfig",
    "SmatDiagnostics",
    "SmatModel",
    "evaluate_episodes",
    "finetune_on_support",
    "load_domain",
    "open_images",
    "register_fewshot_method",
    "smat_diagnostics",
]
