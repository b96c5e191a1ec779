"""Image transforms (docs/data.md, "Image transforms") with PIL and torch only (no torchvision).

A transform takes the decoded images of one episode and a numpy `Generator` (seeded by the episode)
and returns one normalised float tensor `(n, 3, size, size)`. Training crops resize once, with a PIL
`resize(box=...)` call per image; colour jitter runs once on the stacked batch. Evaluation repeats the
stock transformers image processor step by step (`EvalTransform.to_image_processor`), so a saved model's
processor and the library give the same pixels (docs/data.md, "Image transforms").
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from transformers import BitImageProcessorPil

from hf_fewshot.models.image_processing import (
    EVAL_RESIZE_RATIO,
    IMAGENET_MEAN,
    IMAGENET_STD,
    eval_image_processor,
    to_rgb,
)


def _to_unit_tensor(images: Sequence[Image.Image]) -> torch.Tensor:
    """Stack same-size RGB images into a `(n, 3, H, W)` float tensor in [0, 1]."""
    array = np.stack([np.asarray(image, dtype=np.uint8) for image in images])
    return torch.from_numpy(array).permute(0, 3, 1, 2).float().div_(255.0)


def _rgb(image: Image.Image) -> Image.Image:
    """Decoded images are RGB already; any other mode goes through the one decoding rule (`to_rgb`)."""
    return image if image.mode == "RGB" else to_rgb(image)


def _standardise(pixels: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    mean_t = torch.tensor(mean, dtype=pixels.dtype).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=pixels.dtype).view(1, 3, 1, 1)
    return pixels.sub_(mean_t).div_(std_t)


class EvalTransform:
    """Resize the shorter side to `round(size · resize_ratio)`, centre-crop `size` (146 → 128 at 128 px), normalise.

    These are the steps of transformers' `BitImageProcessor` (PIL backend) with the same settings, done
    the same way: a bilinear resize whose longer side is truncated, then an integer-offset centre crop of
    the 8-bit result. `to_image_processor()` returns that processor, which every saved model carries.
    """

    def __init__(
        self,
        size: int,
        resize_ratio: float = EVAL_RESIZE_RATIO,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        if isinstance(size, bool) or not (isinstance(size, numbers.Integral) and size > 0):
            raise ValueError(f"size must be a positive number of pixels, got {size!r}.")
        if not (math.isfinite(resize_ratio) and resize_ratio >= 1):
            raise ValueError(f"resize_ratio must be ≥ 1 (the crop lies inside the resized image), got {resize_ratio}.")
        self.size, self.resize_ratio, self.mean, self.std = int(size), resize_ratio, mean, std
        self.shortest_edge = round(self.size * resize_ratio)

    def __call__(self, images: Sequence[Image.Image], rng: np.random.Generator | None = None) -> torch.Tensor:
        return _standardise(_to_unit_tensor([self._crop(image) for image in images]), self.mean, self.std)

    def _crop(self, image: Image.Image) -> Image.Image:
        image = _rgb(image)  # first: EXIF may swap width and height
        width, height = image.size
        if width <= height:
            resized = (self.shortest_edge, int(self.shortest_edge * height / width))
        else:
            resized = (int(self.shortest_edge * width / height), self.shortest_edge)
        image = image.resize(resized, Image.Resampling.BILINEAR)
        left, top = (resized[0] - self.size) // 2, (resized[1] - self.size) // 2
        return image.crop((left, top, left + self.size, top + self.size))

    def to_image_processor(self) -> BitImageProcessorPil:
        """The transformers image processor that computes these pixels (saved beside every model)."""
        return eval_image_processor(self.size, self.resize_ratio, self.mean, self.std)


class TrainTransform:
    """Random resized crop, horizontal flip and colour jitter (brightness, contrast, saturation), normalised.

    The crop follows torchvision's `RandomResizedCrop` (area `scale`, aspect `ratio`, 10 tries then a
    centre crop); jitter factors are drawn from [1 − jitter, 1 + jitter] and applied in a fixed order.
    """

    def __init__(
        self,
        size: int,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        jitter: float = 0.4,
        flip_probability: float = 0.5,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        self.size, self.scale, self.ratio = size, scale, ratio
        self.jitter, self.flip_probability, self.mean, self.std = jitter, flip_probability, mean, std

    def __call__(self, images: Sequence[Image.Image], rng: np.random.Generator) -> torch.Tensor:
        crops = []
        for image in map(_rgb, images):  # before the crop box: EXIF may swap width and height
            crop = image.resize((self.size, self.size), Image.Resampling.BILINEAR, box=self._crop_box(image.size, rng))
            if rng.uniform() < self.flip_probability:
                crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            crops.append(crop)
        pixels = _to_unit_tensor(crops)
        if self.jitter > 0:
            pixels = self._colour_jitter(pixels, rng)
        return _standardise(pixels, self.mean, self.std)

    def _crop_box(self, image_size: tuple[int, int], rng: np.random.Generator) -> tuple[float, float, float, float]:
        width, height = image_size
        area = width * height
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target_area = area * rng.uniform(*self.scale)
            aspect = math.exp(rng.uniform(*log_ratio))
            crop_w = math.sqrt(target_area * aspect)
            crop_h = math.sqrt(target_area / aspect)
            if crop_w <= width and crop_h <= height:
                left = rng.uniform(0, width - crop_w)
                top = rng.uniform(0, height - crop_h)
                return left, top, left + crop_w, top + crop_h
        side = min(width, height)
        left, top = (width - side) / 2, (height - side) / 2
        return left, top, left + side, top + side

    def _colour_jitter(self, pixels: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """Per-image brightness, contrast and saturation factors, applied to the whole batch at once."""
        factors = rng.uniform(1 - self.jitter, 1 + self.jitter, size=(3, pixels.shape[0], 1, 1, 1))
        return jitter_colours(pixels, torch.from_numpy(factors).float())


def jitter_colours(pixels: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Brightness, contrast and saturation of images in [0, 1] scaled by `factors` `(3, n, 1, 1, 1)`, in that order."""
    brightness, contrast, saturation = factors.to(pixels)
    luma_weights = torch.tensor([0.299, 0.587, 0.114], dtype=pixels.dtype, device=pixels.device).view(1, 3, 1, 1)
    pixels = (pixels * brightness).clamp_(0, 1)
    mean_luma = (pixels * luma_weights).sum(1, keepdim=True).mean((2, 3), keepdim=True)
    pixels = (pixels * contrast + mean_luma * (1 - contrast)).clamp_(0, 1)
    luma = (pixels * luma_weights).sum(1, keepdim=True)
    return (pixels * saturation + luma * (1 - saturation)).clamp_(0, 1)
