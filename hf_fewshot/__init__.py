"""hf-fewshot: few-shot image classification on the Hugging Face stack (SMAT, P>M>F, flat SAM backbones)."""

from hf_fewshot.adaptation import finetune_on_support
from hf_fewshot.allocator import reuse_freed_cpu_memory
from hf_fewshot.data import EpisodeCollator, EpisodeSampler, load_domain
from hf_fewshot.diagnostics import SmatDiagnostics, smat_diagnostics
from hf_fewshot.evaluation import evaluate_episodes
from hf_fewshot.lazy import lazy_exports
from hf_fewshot.methods import METHODS, register_fewshot_method
from hf_fewshot.models import ProtoNetConfig, ProtoNetModel, SmatConfig, SmatModel
from hf_fewshot.models.image_processing import open_images
from hf_fewshot.pipelines import FewShotImageClassificationPipeline

__version__ = "0.1.0.dev0"

# The training classes import transformers' Trainer (and through it PEFT): loaded on first use, so that
# `import hf_fewshot` for inference stays light (PEP 562).
__getattr__ = lazy_exports(
    __name__, {name: ".training" for name in ("EpisodicTrainer", "FewShotTrainingArguments", "SAMTrainer")}
)

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
    "reuse_freed_cpu_memory",
    "smat_diagnostics",
]
