"""The column schema every domain split follows (docs/data.md, "The schema"), shared by loaders, converters, builders
and samplers."""

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


def split_features(hierarchical: bool) -> datasets.Features:
    """The schema of docs/data.md, "The schema", plus `ancestors` (the WordNet nodes above each class) for
    hierarchical domains: the hierarchy travels with the rows, through parquet, `save_to_disk` and the Hub alike (the
    Meta-Dataset converter writes it, `EpisodeSampler.from_dataset` reads it)."""
    features = domain_features()
    if hierarchical:
        features["ancestors"] = datasets.List(datasets.Value("string"))
    return features
