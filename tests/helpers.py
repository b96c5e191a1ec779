"""Builders the tests share: small PNGs that encode a value, schema-conforming splits, a tiny ViT configuration."""

import io
import math

import datasets
import numpy as np
import torch
from PIL import Image
from transformers import ViTConfig

from hf_fewshot.data.schema import domain_features


def png_bytes(value: int, size: int = 12) -> bytes:
    """A small PNG whose pixels encode `value`, so tests can tell images apart after decoding."""
    rng = np.random.default_rng(value)
    pixels = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def make_split(
    class_sizes: list[int],
    domain: str = "toy",
    superclasses: list[int] | None = None,
    corrupt_rows: set[int] = frozenset(),
) -> datasets.Dataset:
    """A schema-conforming split with `class_sizes[c]` distinct images of class c (rows in class order)."""
    rows = {"image": [], "label": [], "class_name": [], "superclass": [], "domain": []}
    for label, size in enumerate(class_sizes):
        for k in range(size):
            image = b"not a png" if len(rows["label"]) in corrupt_rows else png_bytes(label * 10_000 + k)
            rows["image"].append({"bytes": image, "path": None})
            rows["label"].append(label)
            rows["class_name"].append(f"class_{label}")
            rows["superclass"].append(-1 if superclasses is None else superclasses[label])
            rows["domain"].append(domain)
    return datasets.Dataset.from_dict(rows, features=domain_features())


def tiny_vit_config(**changes) -> ViTConfig:
    """A 16-px ViT small enough for unit tests.

    Its weights start with std 0.2 instead of 0.02: a random ViT at 0.02 has a CLS feature that barely depends on
    the image (the residual stream is the CLS embedding), so a cosine head sees one point and nothing can learn; at
    0.2 the features depend on the image, as a pre-trained backbone's do.
    """
    defaults = dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=16,
        patch_size=4,
        initializer_range=0.2,
    )
    return ViTConfig(**{**defaults, **changes})


def saturate_gates(smat, fractional: int = 0, fractional_std: float = 0.5, delta_std: float = 0.0) -> None:
    """A SmatModel's gates as after training (bench/models.py): log α at ln 0.01 / ln 100, 90% closed; the first
    `fractional` elements still fractional (log α ~ N(0, `fractional_std`²)); with `delta_std`, a non-zero delta."""
    with torch.no_grad():
        if delta_std:
            smat.delta.normal_(0, delta_std)
        closed = torch.rand(smat.gate_logits.shape) < 0.9
        smat.gate_logits.copy_(torch.where(closed, math.log(0.01), math.log(100.0)))
        smat.gate_logits[:, :fractional] = torch.randn(smat.gate_logits.shape[0], fractional) * fractional_std
