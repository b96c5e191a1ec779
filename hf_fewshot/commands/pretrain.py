"""Supervised backbone training with SAM or ERM on the training classes of one or more domains.

See docs/sam.md, "Pre-training a backbone".

    hf-fewshot pretrain                                 # tiny ViT on MiniMeta's training domains, SAM
    hf-fewshot pretrain --sam_rho 0 --output_dir runs/minimeta-pretrain-erm
    hf-fewshot pretrain recipes/configs/pretrain_vits16_sam.yaml --domains omniglot
    accelerate launch --config_file accelerate_config.yaml recipes/pretrain.py [config.yaml] [--flag value ...]

The backbone (e.g. a `ViTModel`) is saved to `{output_dir}/backbone`, ready for `--backbone` of meta_tune.py or
`SmatModel.from_backbone`. A rerun resumes from the last complete checkpoint in `output_dir`; a rerun of a finished
run trains nothing.
"""

from dataclasses import asdict, dataclass, field
from pathlib import Path

from transformers import ViTConfig

from hf_fewshot.data.minimeta import TRAIN_DOMAINS
from hf_fewshot.defaults import PRETRAIN_DEFAULTS as DEFAULTS
from hf_fewshot.defaults import TINY_VIT, TINY_VIT_CONFIG
from hf_fewshot.runs import pretrain_run
from hf_fewshot.training import FewShotTrainingArguments
from hf_fewshot.training.cli import parse_recipe_arguments


@dataclass
class PretrainArguments:
    backbone: str = field(
        default=TINY_VIT,
        metadata={
            "help": f"Hub id or folder to start from (information fusion), or {TINY_VIT!r} for a random tiny ViT."
        },
    )
    data_source: str = field(
        default="minimeta", metadata={"help": "'minimeta', a converted Meta-Dataset folder, or a Hub dataset id."}
    )
    domains: list[str] = field(
        default_factory=lambda: list(TRAIN_DOMAINS),
        metadata={"help": "Domains whose training classes form the classifier (one per backbone in the paper)."},
    )


def run(args: PretrainArguments, training_args: FewShotTrainingArguments) -> Path:
    """Train, save `{output_dir}/backbone` (rank 0), and return its path. A rerun of a finished run reuses it."""
    backbone = ViTConfig(**TINY_VIT_CONFIG) if args.backbone == TINY_VIT else args.backbone
    return pretrain_run(backbone, args.data_source, args.domains, training_args, asdict(args))


def main(argv: list[str] | None = None, prog: str = "hf-fewshot pretrain") -> Path:
    return run(*parse_recipe_arguments((PretrainArguments, FewShotTrainingArguments), DEFAULTS, argv, prog=prog))
