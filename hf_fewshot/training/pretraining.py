"""Supervised backbone training, the flat-backbone protocol of docs/sam.md, "Pre-training a backbone": classify a
domain's training classes with SAM (or ERM), optionally starting from another backbone, and keep the backbone for
few-shot use.

The rows it trains on are `hf_fewshot.data.labelled_images.LabelledImages` (also importable from here)."""

from __future__ import annotations

import copy
from collections.abc import Mapping

import datasets
from transformers import (
    AutoModelForImageClassification,
    PreTrainedConfig,
    PreTrainedModel,
    TrainerCallback,
    set_seed,
)

from hf_fewshot.data.labelled_images import LabelledImages  # re-exported: it lived here
from hf_fewshot.data.transforms import TrainTransform

from .arguments import FewShotTrainingArguments
from .trainer import SAMTrainer


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


__all__ = ["LabelledImages", "pretrain_backbone"]
