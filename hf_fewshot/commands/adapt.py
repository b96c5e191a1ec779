"""Adapt a few-shot model to your own labelled images: a LoRA adapter (or fully fine-tuned weights) and a plain
`ViTForImageClassification` that runs in `pipeline("image-classification")` with no custom code.

    hf-fewshot adapt --images my_photos/            # my_photos/{class_name}/*.jpg, a few per class
    hf-fewshot adapt --images user/my-dataset --model runs/minimeta-smat/model --mode full
    hf-fewshot adapt --images my_photos/ --hub_repo_id me/my-classifier   # push classifier + adapter

Every image is a support image. The model is a saved SMAT / ProtoNet (folder or Hub id) or a plain backbone.
Writes `{output_dir}/classifier` (model + image processor) and, for LoRA, `{output_dir}/adapter` (the backbone the
adapter was trained on, with the PEFT adapter in `adapter/lora`).
"""

import math
from dataclasses import dataclass, field
from pathlib import Path

from hf_fewshot.adaptation import choose_learning_rate, finetune_on_support
from hf_fewshot.data.labelled_images import load_labelled_images
from hf_fewshot.data.transforms import EvalTransform
from hf_fewshot.defaults import DEFAULT_MODEL, require_main_job_output
from hf_fewshot.hub import adapter_card, push_adapter_folder, push_model_folder
from hf_fewshot.models import load_fewshot_model
from hf_fewshot.training.cli import parse_recipe_arguments


@dataclass
class AdaptArguments:
    images: str = field(metadata={"help": "An image folder ({class_name}/*.png) or a datasets id (image + label)."})
    model: str = field(default=DEFAULT_MODEL, metadata={"help": "Few-shot model or backbone."})
    split: str = field(default="train", metadata={"help": "Split of a datasets id to read."})
    mode: str = field(default="lora", metadata={"help": "'lora' (a PEFT adapter) or 'full' fine-tuning."})
    learning_rate: float | None = field(default=None, metadata={"help": "None: chosen on the images themselves."})
    steps: int = 50
    seed: int = field(default=0, metadata={"help": "Seeds the augmentation and LoRA's initialisation."})
    image_size: int | None = field(default=None, metadata={"help": "Default: the backbone's configured size."})
    output_dir: str = "runs/adapted"
    hub_repo_id: str | None = field(default=None, metadata={"help": "Push the classifier here, the adapter to -lora."})


def run(args: AdaptArguments) -> Path:
    require_main_job_output(args.model, "--model")
    model = load_fewshot_model(args.model)
    images, labels, id2label = load_labelled_images(args.images, args.split)
    size = args.image_size or model.config.backbone_config.image_size
    support = EvalTransform(size)(images)
    task_learning_rate = args.learning_rate
    if task_learning_rate is None:
        task_learning_rate = choose_learning_rate(
            model, support, labels, args.mode, args.steps, seed=args.seed, progress=True
        )
        print(f"Learning rate chosen on the images themselves: {task_learning_rate}")
    task = finetune_on_support(
        model, support, labels, args.mode, task_learning_rate, args.steps, seed=args.seed, progress=True
    )
    output = Path(args.output_dir)
    task.save_image_classifier(output / "classifier", id2label)  # with its processor: pipeline-ready
    if args.mode == "lora":
        # The adapter only makes sense on the weights it was trained on (for SMAT, the experts merged for these
        # images), so they travel with it: the base backbone at the folder's root, the PEFT adapter in lora/.
        task.save_adapter(output / "adapter")
        adapter_card(
            f"{args.hub_repo_id}-lora" if args.hub_repo_id else "adapter",
            args.model,
            model.config.backbone_name_or_path,
            id2label,
            learning_rate=task_learning_rate,
            steps=args.steps,
            support_size=len(images),
        ).save(output / "adapter" / "README.md")
    accuracy = (task(support).argmax(-1) == labels).float().mean().item()
    print(f"{len(images)} images, {len(id2label)} classes; support accuracy {100 * accuracy:.1f}%; saved to {output}")
    if args.hub_repo_id:
        push_model_folder(output / "classifier", args.hub_repo_id)
        if args.mode == "lora":
            push_adapter_folder(output / "adapter", f"{args.hub_repo_id}-lora")
        print(f"Pushed to {args.hub_repo_id}" + (f" and {args.hub_repo_id}-lora" if args.mode == "lora" else ""))
    return output


def main(argv: list[str] | None = None, prog: str = "hf-fewshot adapt") -> Path:
    (args,) = parse_recipe_arguments((AdaptArguments,), {}, argv, prog=prog)
    if args.mode not in ("lora", "full"):
        raise ValueError(f"mode must be 'lora' or 'full', got {args.mode!r}.")
    if args.learning_rate is not None and not (math.isfinite(args.learning_rate) and args.learning_rate >= 0):
        raise ValueError(f"learning_rate must be a finite number ≥ 0, got {args.learning_rate}.")
    if args.steps < 0:
        raise ValueError(f"steps must be ≥ 0, got {args.steps}.")
    return run(args)
