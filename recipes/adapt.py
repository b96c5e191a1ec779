"""Adapt a few-shot model to your own labelled images: a LoRA adapter (or fully fine-tuned weights) and a plain
`ViTForImageClassification` that runs in `pipeline("image-classification")` with no custom code.

    python recipes/adapt.py --images my_photos/            # my_photos/{class_name}/*.jpg, a few per class
    python recipes/adapt.py --images user/my-dataset --model runs/minimeta-smat/model --mode full
    python recipes/adapt.py --images my_photos/ --hub_repo_id me/my-classifier   # push classifier + adapter

Every image is a support image. The model is a saved SMAT / ProtoNet (folder or Hub id) or a plain backbone.
Writes `{output_dir}/classifier` (model + image processor) and, for LoRA, `{output_dir}/adapter` (the backbone the
adapter was trained on, with the PEFT adapter in `adapter/lora`).
"""

import math
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import meta_tune
import torch

from hf_fewshot.adaptation import choose_learning_rate, finetune_on_support
from hf_fewshot.data.episodes import decode_image
from hf_fewshot.data.transforms import EvalTransform
from hf_fewshot.hub import adapter_card, push_adapter_folder, push_model_folder
from hf_fewshot.models import load_fewshot_model
from hf_fewshot.training.cli import parse_recipe_arguments


@dataclass
class AdaptArguments:
    images: str = field(metadata={"help": "An image folder ({class_name}/*.png) or a datasets id (image + label)."})
    model: str = field(
        default=str(Path(meta_tune.DEFAULTS["output_dir"]) / "model"), metadata={"help": "Few-shot model or backbone."}
    )
    split: str = field(default="train", metadata={"help": "Split of a datasets id to read."})
    mode: str = field(default="lora", metadata={"help": "'lora' (a PEFT adapter) or 'full' fine-tuning."})
    learning_rate: float | None = field(default=None, metadata={"help": "None: chosen on the images themselves."})
    steps: int = 50
    seed: int = field(default=0, metadata={"help": "Seeds the augmentation and LoRA's initialisation."})
    image_size: int | None = field(default=None, metadata={"help": "Default: the backbone's configured size."})
    output_dir: str = "runs/adapted"
    hub_repo_id: str | None = field(default=None, metadata={"help": "Push the classifier here, the adapter to -lora."})


def labelled_images(source: str, split: str) -> tuple[list, torch.Tensor, dict[int, str]]:
    """Decoded images, labels 0..C-1 and their names, from an image folder or a `datasets` id."""
    if Path(source).is_dir():
        dataset = datasets.load_dataset("imagefolder", data_dir=source, split="train")
    else:
        dataset = datasets.load_dataset(source, split=split)
    missing = {"image", "label"} - set(dataset.column_names)
    if Path(source).is_dir() and missing == {"label"}:  # imagefolder gives no labels for a single class folder
        raise ValueError(f"{source} needs one sub-folder of images per class, at least 2 classes.")
    if missing:
        raise ValueError(f"{source} has no column(s) {sorted(missing)}; it has {dataset.column_names}.")
    names = dataset.features["label"].names if hasattr(dataset.features["label"], "names") else None
    raw = dataset.cast_column("image", datasets.Image(decode=False))
    images = [decode_image(record, row, source) for row, record in enumerate(raw["image"])]
    classes, labels = torch.unique(torch.as_tensor(dataset["label"]), return_inverse=True)
    if len(classes) < 2:
        raise ValueError(f"{source} holds {len(classes)} class(es); a classifier needs at least 2.")
    id2label = {i: names[c] if names else str(c) for i, c in enumerate(classes.tolist())}
    return images, labels, id2label


def run(args: AdaptArguments) -> Path:
    model = load_fewshot_model(args.model)
    images, labels, id2label = labelled_images(args.images, args.split)
    size = args.image_size or model.config.backbone_config.image_size
    support = EvalTransform(size)(images)
    task_learning_rate = args.learning_rate
    if task_learning_rate is None:
        task_learning_rate = choose_learning_rate(model, support, labels, args.mode, args.steps, seed=args.seed)
        print(f"Learning rate chosen on the images themselves: {task_learning_rate}")
    task = finetune_on_support(model, support, labels, args.mode, task_learning_rate, args.steps, seed=args.seed)
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


def main(argv: list[str] | None = None) -> Path:
    (args,) = parse_recipe_arguments((AdaptArguments,), {}, argv)
    if args.mode not in ("lora", "full"):
        raise ValueError(f"mode must be 'lora' or 'full', got {args.mode!r}.")
    if args.learning_rate is not None and not (math.isfinite(args.learning_rate) and args.learning_rate >= 0):
        raise ValueError(f"learning_rate must be a finite number ≥ 0, got {args.learning_rate}.")
    if args.steps < 0:
        raise ValueError(f"steps must be ≥ 0, got {args.steps}.")
    return run(args)


if __name__ == "__main__":
    main()
