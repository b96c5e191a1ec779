"""Supervised backbone training, the flat-backbone protocol of SAM.md §3: classify a domain's training classes
with SAM (or ERM), optionally starting from another backbone, and keep the backbone for few-shot use."""

from __future__ import annotations

import copy
from collections.abc import Mapping

import datasets
import numpy as np
import torch
from transformers import (
    AutoModelForImageClassification,
    PreTrainedConfig,
    PreTrainedModel,
    TrainerCallback,
    set_seed,
)

from hf_fewshot.data.episodes import decode_image
from hf_fewshot.data.metadataset import column_as_numpy
from hf_fewshot.data.transforms import TrainTransform

from .arguments import FewShotTrainingArguments
from .trainer import SAMTrainer


class LabelledImages(torch.utils.data.Dataset):
    """The rows of one or more domain splits as `{"pixel_values", "labels"}` for image classification.

    Each domain's labels are renumbered to 0..C-1 and offset after the previous domains', so several
    domains train one joint classifier; `id2label` names the classes `"{domain}/{class_name}"`.
    Augmentation draws from torch's generator, which the Trainer seeds and checkpoints.
    """

    def __init__(self, splits: Mapping[str, datasets.Dataset], transform: TrainTransform):
        self.transform = transform
        self.images, self.domains, labels, self.id2label = [], [], [], {}
        for domain, split in splits.items():
            split_labels = column_as_numpy(split, "label")
            classes, local = np.unique(split_labels, return_inverse=True)
            names = dict(zip(split_labels.tolist(), split.with_format("arrow")["class_name"].to_pylist(), strict=True))
            offset = len(self.id2label)
            self.id2label.update({offset + i: f"{domain}/{names[c]}" for i, c in enumerate(classes.tolist())})
            labels.append(local + offset)
            raw = split.select_columns(["image"]).cast_column("image", datasets.Image(decode=False))
            self.images.append(raw.with_format("arrow"))
            self.domains.append(domain)
        self.labels = np.concatenate(labels)
        self.starts = np.cumsum([0] + [len(images) for images in self.images])

    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        part = int(np.searchsorted(self.starts, index, side="right")) - 1
        row = index - int(self.starts[part])
        record = self.images[part][row : row + 1]["image"][0].as_py()
        image = decode_image(record, row, self.domains[part])
        rng = np.random.default_rng(int(torch.randint(2**62, ())))
        return {"pixel_values": self.transform([image], rng)[0], "labels": int(self.labels[index])}


def pretrain_backbone(
    backbone: str | PreTrainedConfig,
    splits: Mapping[str, datasets.Dataset],
    args: FewShotTrainingArguments,
    callbacks: list[TrainerCallback] | None = None,
    resume_from_checkpoint: str | bool | None = None,
) -> PreTrainedModel:
    """Train an image classifier over the training classes of `splits` (domain → split) with `SAMTrainer`
    (`args.sam_rho` > 0 for SAM, 0 for ERM) and return its backbone (e.g. the `ViTModel`), ready for
    `SmatModel.from_backbone` / `ProtoNetModel.from_backbone` once saved.

    `backbone` is a Hub id or folder to start from (the paper's information fusion: a domain backbone
    initialised from another one), or a config for a random start. The classifier head is always new.
    """
    dataset = LabelledImages(splits, TrainTransform(args.image_size, scale=(args.crop_scale_min, 1.0)))
    labels = {"num_labels": dataset.num_labels, "id2label": dataset.id2label}
    labels["label2id"] = {name: index for index, name in dataset.id2label.items()}
    set_seed(args.seed)  # the new classifier head (and a random backbone) are drawn before the Trainer seeds
    if isinstance(backbone, PreTrainedConfig):
        config = backbone.__class__.from_dict({**backbone.to_dict(), **labels})
        model = AutoModelForImageClassification.from_config(config)
    else:
        model = AutoModelForImageClassification.from_pretrained(backbone, ignore_mismatched_sizes=True, **labels)
    trainer = SAMTrainer(model=model, args=args, train_dataset=dataset, callbacks=callbacks)
    trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    backbone = model.base_model
    # The classifier's class names are not the backbone's: a fresh default label set keeps every config that
    # nests this backbone (SMAT, ProtoNet) small.
    backbone.config = copy.deepcopy(backbone.config)
    backbone.config.num_labels = 2
    return backbone
