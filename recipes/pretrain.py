"""Supervised backbone training with SAM or ERM on the training classes of one or more domains (SAM.md §3).

    python recipes/pretrain.py                                 # tiny ViT on MiniMeta's training domains, SAM
    python recipes/pretrain.py --sam_rho 0 --output_dir runs/minimeta-pretrain-erm
    python recipes/pretrain.py recipes/configs/pretrain_vits16_sam.yaml --domains omniglot
    accelerate launch --config_file accelerate_config.yaml recipes/pretrain.py [config.yaml] [--flag value ...]

The backbone (e.g. a `ViTModel`) is saved to `{output_dir}/backbone`, ready for `--backbone` of meta_tune.py or
`SmatModel.from_backbone`. A rerun resumes from the last complete checkpoint in `output_dir`; a rerun of a finished
run trains nothing.
"""

from dataclasses import asdict, dataclass, field
from pathlib import Path

from accelerate import PartialState
from transformers import ViTConfig

from hf_fewshot import FewShotTrainingArguments, load_domain
from hf_fewshot.data import EvalTransform
from hf_fewshot.data.minimeta import TRAIN_DOMAINS
from hf_fewshot.training.checkpoints import last_complete_checkpoint, run_is_finished, save_pretrained_atomically
from hf_fewshot.training.cli import parse_recipe_arguments
from hf_fewshot.training.pretraining import pretrain_backbone

TINY_VIT = "tiny-vit"
# The MiniMeta demo backbone: 32 px images in 8-px patches (16 tokens), 4 layers of width 128.
TINY_VIT_CONFIG = dict(
    hidden_size=128, num_hidden_layers=4, num_attention_heads=4, intermediate_size=256, image_size=32, patch_size=8
)


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


DEFAULTS = dict(
    output_dir="runs/minimeta-pretrain",
    num_train_epochs=10,
    per_device_train_batch_size=32,
    learning_rate=1e-3,
    weight_decay=0.05,
    warmup_steps=0.05,
    lr_scheduler_type="cosine",
    sam_rho=0.05,
    image_size=32,
    crop_scale_min=0.6,
    logging_steps=100,
    save_strategy="epoch",
    save_total_limit=1,
    report_to="none",
    dataloader_pin_memory=False,  # CPU demo: nothing to pin to
)


def run(args: PretrainArguments, training_args: FewShotTrainingArguments) -> Path:
    """Train, save `{output_dir}/backbone` (rank 0), and return its path. A rerun of a finished run reuses it."""
    destination = Path(training_args.output_dir) / "backbone"
    if run_is_finished(destination, {**asdict(args), **training_args.run_settings()}):
        print(f"{destination} holds this run's finished backbone: reused, not trained again.")
        return destination
    splits = {domain: load_domain(args.data_source, domain, "train") for domain in args.domains}
    backbone = ViTConfig(**TINY_VIT_CONFIG) if args.backbone == TINY_VIT else args.backbone
    model = pretrain_backbone(
        backbone, splits, training_args, resume_from_checkpoint=last_complete_checkpoint(training_args.output_dir)
    )
    if training_args.should_save:
        processor = EvalTransform(training_args.image_size).to_image_processor()  # AutoImageProcessor loads it
        save_pretrained_atomically(model, destination, image_processor=processor)
        print(f"Backbone saved to {destination}")
    PartialState().wait_for_everyone()
    return destination


def main(argv: list[str] | None = None) -> Path:
    return run(*parse_recipe_arguments((PretrainArguments, FewShotTrainingArguments), DEFAULTS, argv))


if __name__ == "__main__":
    main()
