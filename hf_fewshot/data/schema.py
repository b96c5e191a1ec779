"""The column schema every domain split follows (DATA.md §1), shared by loaders, converters and builders."""

from __future__ import annotations

import datasets

REQUIRED_COLUMNS: tuple[str, ...] = ("image", "label")
"""Columns a user's dataset must have; the others of the schema get defaults when absent."""

SCHEMA_COLUMNS: tuple[str, ...] = ("image", "label", "class_name", "superclass", "domain")

SPLITS: tuple[str, ...] = ("train", "validation", "test")

NO_SUPERCLASS = -1


def domain_features() -> datasets.Features:
    """The `datasets.Features` of one domain split: an image, its domain-global class id and names."""
    return datasets.Features(
        {
            "image": datasets.Image(),
            "label": datasets.Value("int64"),
            "class_name": datasets.Value("string"),
            "superclass": datasets.Value("int64"),
            "domain": datasets.Value("string"),
        }
    )
