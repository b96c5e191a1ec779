"""Stored images, read lazily: a split's image column as undecoded records, and the one rule that opens a record.

Collators and datasets hold `raw_images(split)` and decode only the rows a step needs (`decode_image`), so that a
training step never pays for `datasets`' decoding of rows it does not use, and every image is opened the same way
(`hf_fewshot.models.image_processing.to_rgb`: EXIF orientation, bit depth, transparency).
"""

from __future__ import annotations

import io

import datasets
from PIL import Image

from hf_fewshot.models.image_processing import to_rgb


def raw_images(dataset: datasets.Dataset, column: str = "image") -> datasets.Dataset:
    """Only the `column` of `dataset`, undecoded and in Arrow format: rows read as `{"bytes", "path"}` records
    (`raw_images(split)[rows][column].to_pylist()`), views (select / shuffle) kept."""
    raw = dataset.select_columns([column]).cast_column(column, datasets.Image(decode=False))
    return raw.with_format("arrow")


def decode_image(record: dict, row: int, domain: str | None) -> Image.Image:
    """Open one stored image (bytes or a path) as RGB (`to_rgb`: EXIF, bit depth, transparency), naming the row when
    it cannot be read."""
    try:
        source = io.BytesIO(record["bytes"]) if record.get("bytes") is not None else record["path"]
        with Image.open(source) as image:
            return to_rgb(image)
    except Exception as error:  # PIL raises several types for corrupt data; report them all the same way
        raise ValueError(f"Cannot decode the image of row {row} (domain {domain!r}): {error}") from error


__all__ = ["decode_image", "raw_images"]
