"""Dataset cards: the `README.md` at the root of a dataset folder, the one way every builder here writes one.

A card is YAML front matter (the Hub's dataset-card metadata, with one config per domain listing its split files,
so that `datasets.load_dataset(folder_or_repo, domain)` finds them) followed by a Markdown body. The converted
Meta-Dataset (`conversion.dataset_card`) and MiniMeta (`minimeta.build`) differ only in what they pass.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from hf_fewshot.files import write_atomically


def domain_configs(files: Mapping[str, Mapping[str, str]]) -> list[dict[str, Any]]:
    """The `configs` entry of a card's metadata from `{domain: {split: path relative to the folder}}`."""
    return [
        {"config_name": domain, "data_files": [{"split": split, "path": path} for split, path in splits.items()]}
        for domain, splits in files.items()
    ]


def write_dataset_card(folder: str | os.PathLike, metadata: Mapping[str, Any], body: str) -> Path:
    """Write `{folder}/README.md`: `metadata` as YAML front matter (keys in the order given), then `body`."""
    front_matter = yaml.safe_dump(dict(metadata), sort_keys=False, allow_unicode=True, width=1000)
    return write_atomically(Path(folder) / "README.md", f"---\n{front_matter}---\n\n{body}")


__all__ = ["domain_configs", "write_dataset_card"]
