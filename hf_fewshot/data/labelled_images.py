"""Domain splits as an image classification dataset: the rows of one or more splits, labelled for one classifier.

The flat-backbone protocol (docs/sam.md, "Pre-training a backbone", `hf_fewshot.training.pretraining`) trains a plain
classifier over the training classes of several domains; `LabelledImages` is the `torch.utils.data.Dataset` it reads,
decoding only the row asked for. `load_labelled_images` reads a user's own labelled images (a folder or a `datasets`
id) for adaptation.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import datasets
import numpy as np
import torch
from PIL import Image

from hf_fewshot.data.domains import column_as_numpy
from hf_fewshot.data.images import decode_image, raw_images
from hf_fewshot.data.transforms import TrainTransform


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
            self.images.append(raw_images(split))
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


def load_labelled_images(source: str, split: str = "train") -> tuple[list[Image.Image], torch.Tensor, dict[int, str]]:
    """A user's labelled images — an image folder (`{class_name}/*.png`) or a `datasets` id with `image` and `label`
    columns — decoded by the library's rule, with labels renumbered 0..C-1 and their names (`recipes/adapt.py`)."""
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
    images = [decode_image(record, row, source) for row, record in enumerate(raw_images(dataset)["image"].to_pylist())]
    classes, labels = torch.unique(torch.as_tensor(dataset["label"]), return_inverse=True)
    if len(classes) < 2:
        raise ValueError(f"{source} holds {len(classes)} class(es); a classifier needs at least 2.")
    id2label = {i: names[c] if names else str(c) for i, c in enumerate(classes.tolist())}
    return images, labels, id2label


__all__ = ["LabelledImages", "load_labelled_images"]
