"""How the few-shot models see images: one decoding rule (`to_rgb`) and the evaluation image processor.

This file is copied next to the modeling files when a model is saved with remote code, so it imports nothing
from `hf_fewshot`; `hf_fewshot.data` builds its transforms on it (docs/data.md, "Image transforms").

Decoding (docs/reliability.md, "Images"):

`PIL.Image.convert("RGB")` alone is wrong for several common files: a 16-bit PNG comes out all white, a 32-bit
integer or float TIFF all black or all white, transparent pixels take whatever colour is stored under them (often
black), and the EXIF orientation of a phone photo is ignored while `datasets.Image` and the transformers pipeline
apply it. `to_rgb` handles every mode the same way everywhere: training, evaluation and adaptation decode through
it, and it composites transparency onto white as transformers' image processors do.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageOps
from transformers import BitImageProcessorPil
from transformers.image_utils import PILImageResampling

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
EVAL_RESIZE_RATIO = 146 / 128  # P>M>F's evaluation: shorter side to 146 px, centre crop 128

_HIGH_BIT_DEPTH = {"I;16": 65535, "I;16L": 65535, "I;16B": 65535, "I;16N": 65535}


def to_rgb(image: Image.Image) -> Image.Image:
    """`image` as 8-bit RGB: EXIF orientation applied, high bit depths scaled to 0–255 (not clipped), alpha and
    palette transparency composited onto white."""
    image = ImageOps.exif_transpose(image)
    if image.mode in _HIGH_BIT_DEPTH or image.mode in ("I", "F"):
        return Image.fromarray(_scaled_to_8_bit(image)).convert("RGB")
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return image.convert("RGB")


def _scaled_to_8_bit(image: Image.Image) -> np.ndarray:
    """A single-channel high-bit-depth image as uint8. 16-bit modes use their full range; 32-bit integers use the
    8-bit range when their values fit it (an 8-bit array stored as int32), else the 16-bit range when they fit it
    (how PIL opens 16-bit PNGs), else the int32 range; floats are taken as [0, 1] when they lie in it, else as
    [0, 255]."""
    values = np.asarray(image, dtype=np.float64)
    if image.mode == "F":
        finite = values[np.isfinite(values)]
        top = 1.0 if finite.size == 0 or (finite.min() >= 0 and finite.max() <= 1) else 255.0
    elif image.mode == "I":  # how PIL holds 8-bit arrays (datasets stores ints as int32) and 16-bit PNGs alike
        fits = values.min() >= 0
        top = 255.0 if fits and values.max() <= 255 else 65535.0 if fits and values.max() <= 65535 else 2**31 - 1.0
    else:
        top = float(_HIGH_BIT_DEPTH[image.mode])
    values = np.nan_to_num(values, nan=0.0, posinf=top, neginf=0.0)
    return np.clip(np.rint(values / top * 255.0), 0, 255).astype(np.uint8)


def open_images(images: Sequence[Image.Image | str | os.PathLike]) -> list[Image.Image]:
    """PIL images or paths to image files, as the RGB pictures `to_rgb` makes of them."""
    if isinstance(images, (str, os.PathLike, Image.Image)):
        raise TypeError("Pass a list of images (PIL images or paths), not a single one.")
    opened = []
    for image in images:
        if isinstance(image, (str, os.PathLike)):
            with Image.open(image) as file:
                file.load()
                image = file
        elif not isinstance(image, Image.Image):
            raise TypeError(f"Images must be PIL images or paths to image files, got {type(image).__name__}.")
        opened.append(to_rgb(image))
    return opened


def eval_image_processor(
    size: int,
    resize_ratio: float = EVAL_RESIZE_RATIO,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> BitImageProcessorPil:
    """The transformers image processor of evaluation: shorter side to `round(size · resize_ratio)` (bilinear), a
    `size` centre crop, normalised. Saved beside every model; `hf_fewshot.data.EvalTransform` computes the same
    pixels faster."""
    return BitImageProcessorPil(
        size={"shortest_edge": round(size * resize_ratio)},
        crop_size={"height": size, "width": size},
        resample=PILImageResampling.BILINEAR,
        image_mean=list(mean),
        image_std=list(std),
    )


__all__ = ["EVAL_RESIZE_RATIO", "IMAGENET_MEAN", "IMAGENET_STD", "eval_image_processor", "open_images", "to_rgb"]
