"""hf-fewshot: few-shot image classification on the Hugging Face stack (SMAT, P>M>F, flat SAM backbones)."""

from hf_fewshot.adaptation import finetune_on_support
from hf_fewshot.data import EpisodeCollator, EpisodeSampler, load_domain
from hf_fewshot.diagnostics import SmatDiagnostics, smat_diagnostics
from hf_fewshot.evaluation import evaluate_episodes
from hf_fewshot.models import ProtoNetConfig, ProtoNetModel, SmatConfig, SmatModel
from hf_fewshot.models.image_processing import open_images
from hf_fewshot.pipelines import FewShotImageClassificationPipeline
from hf_fewshot.training import EpisodicTrainer, FewShotTrainingArguments, SAMTrainer

__version__ = "0.1.0.dev0"

__all__ = [
    "EpisodeCollator",
    "EpisodeSampler",
    "EpisodicTrainer",
    "FewShotImageClassificationPipeline",
    "FewShotTrainingArguments",
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
    "smat_diagnostics",
]
