"""MiniMeta: a small offline multi-domain few-shot image benchmark built from packaged real data (docs/data.md,
"MiniMeta").

Every domain is rendered from data that ships in Debian or PyPI packages, so the default benchmark of the
library can be rebuilt without a network. The build is seeded and byte-reproducible for the same package
versions; a prebuilt copy lives in `PREBUILT_DIR`. Rebuild it with

    python -m hf_fewshot.data.minimeta --output DIR [--seed N]

This module is the registry (the domains, where the prebuilt copy is) and reads a split of that copy
(`load_domain("minimeta", ...)` comes here); `render.py` draws the four domains and `build.py` builds the copy.
Those load on first use (`build_minimeta`, `main`, `source_packages_available`), so reading MiniMeta stays light.
"""

from __future__ import annotations

from pathlib import Path

import datasets

from hf_fewshot.data.domains import validate_domain_split
from hf_fewshot.data.schema import domain_features
from hf_fewshot.lazy import lazy_exports

DOMAINS = ("glyphs", "emoji", "clipart", "digits")
TRAIN_DOMAINS = ("glyphs", "emoji")
TEST_ONLY_DOMAINS = ("clipart", "digits")
PREBUILT_DIR = Path(__file__).parent.parent / "minimeta_data"
IMAGE_SIZE = 32
BUILDER_VERSION = "1.0.0"


def load_split(domain: str, split: str) -> datasets.Dataset:
    """One split of the prebuilt copy, in memory and schema-checked; errors name the domains and splits there are."""
    if domain not in DOMAINS:
        raise ValueError(f"MiniMeta has no domain {domain!r}; its domains are {DOMAINS}.")
    file = PREBUILT_DIR / domain / f"{split}.parquet"
    if not file.exists():
        available = sorted(p.stem for p in (PREBUILT_DIR / domain).glob("*.parquet"))
        hint = " (it is test-only)" if domain in TEST_ONLY_DOMAINS else ""
        raise ValueError(f"MiniMeta domain {domain!r} has no {split!r} split{hint}; available splits: {available}.")
    dataset = datasets.Dataset.from_parquet(str(file), features=domain_features(), keep_in_memory=True)
    return validate_domain_split(dataset, domain, split, origin="minimeta")


__getattr__ = lazy_exports(
    __name__, {"build_minimeta": ".build", "main": ".build", "source_packages_available": ".render"}
)


__all__ = [
    "DOMAINS",
    "IMAGE_SIZE",
    "PREBUILT_DIR",
    "TEST_ONLY_DOMAINS",
    "TRAIN_DOMAINS",
    "build_minimeta",
    "load_split",
    "main",
    "source_packages_available",
]
