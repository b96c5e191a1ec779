"""Meta-Dataset (Triantafillou et al., 2020): what the library knows of its domains before reading any data.

- The registry (`META_DATASET_DOMAINS`): the official class splits of each domain (docs/data.md, "The schema"), how
the "md"
  protocol samples its classes, its licence; `MD_TRAIN_DOMAINS` and `MD_EVAL_DOMAINS` name the papers' lists.
- The specification of the official release (`MetaDatasetSpec`): one `dataset_spec.json` per domain, in three kinds
  (google-research/meta-dataset, `data/dataset_spec.py`), all with one `{class id}.tfrecords` file per class and
  class ids contiguous in the order train, validation, test:
  - `DatasetSpecification`: `classes_per_split` counts (keys `"TRAIN"`, `"VALID"`, `"TEST"`), `class_names`.
  - `BiLevelDatasetSpecification` (Omniglot): `superclasses_per_split`, `classes_per_superclass`,
    `superclass_names`; superclass s owns the next `classes_per_superclass[s]` class ids.
  - `HierarchicalDatasetSpecification` (ImageNet): `split_subgraphs[split]`, a list of WordNet nodes
    `{wn_id, children_ids, ...}`; its leaves are the split's classes (`class_names` maps id → wn_id).

Reading the records is `tfrecord.py`, writing parquet `conversion.py`, loading any domain `domains.load_domain`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from hf_fewshot.data.domains import (  # re-exported: they lived here before `domains.py`
    check_path_component,
    column_as_numpy,
    load_domain,
    validate_domain_split,
)
from hf_fewshot.data.schema import NO_SUPERCLASS


@dataclass(frozen=True)
class DomainInfo:
    """What the library knows about one domain before reading any data.

    `num_classes` gives the classes per split; a split with 0 classes does not exist (test-only
    domains have only a test split). `sampling` names how the "md" protocol picks an episode's classes:
    `"hierarchy"` (ImageNet's WordNet sub-graph), `"superclass"` (Omniglot's alphabets) or `"flat"`.
    """

    name: str
    num_classes: dict[str, int]
    sampling: str = "flat"
    license: str = ""
    aliases: tuple[str, ...] = field(default=())

    @property
    def is_test_only(self) -> bool:
        """True when the domain has no training classes (it only measures out-of-domain transfer)."""
        return self.num_classes.get("train", 0) == 0

    def has_split(self, split: str) -> bool:
        return self.num_classes.get(split, 0) > 0


def _splits(train: int, validation: int, test: int) -> dict[str, int]:
    return {"train": train, "validation": validation, "test": test}


META_DATASET_DOMAINS: dict[str, DomainInfo] = {
    info.name: info
    for info in (
        DomainInfo("ilsvrc_2012", _splits(712, 158, 130), "hierarchy", "ImageNet terms of access", ("imagenet",)),
        DomainInfo("omniglot", _splits(883, 81, 659), "superclass", "MIT"),
        DomainInfo("aircraft", _splits(70, 15, 15), "flat", "non-commercial research (FGVC-Aircraft)"),
        DomainInfo("cu_birds", _splits(140, 30, 30), "flat", "non-commercial research (CUB-200-2011)"),
        DomainInfo("dtd", _splits(33, 7, 7), "flat", "research only (DTD)", ("textures",)),
        DomainInfo("quickdraw", _splits(241, 52, 52), "flat", "CC BY 4.0"),
        DomainInfo("fungi", _splits(994, 200, 200), "flat", "FGVCx Fungi terms"),
        DomainInfo("vgg_flower", _splits(71, 15, 16), "flat", "research only (Oxford Flowers)", ("flower",)),
        DomainInfo("traffic_sign", _splits(0, 0, 43), "flat", "CC0 (GTSRB)"),
        DomainInfo("mscoco", _splits(0, 40, 40), "flat", "CC BY 4.0 (annotations); images per Flickr terms"),
        DomainInfo("mnist", _splits(0, 0, 10), "flat", "CC BY-SA 3.0"),
        DomainInfo("cifar10", _splits(0, 0, 10), "flat", "MIT-style (CIFAR)"),
        DomainInfo("cifar100", _splits(0, 0, 100), "flat", "MIT-style (CIFAR)"),
    )
}
"""The official Meta-Dataset class splits (docs/data.md, "The schema") plus the extra test-only sets used by papers."""

MD_TRAIN_DOMAINS: tuple[str, ...] = (
    "ilsvrc_2012",
    "omniglot",
    "aircraft",
    "cu_birds",
    "dtd",
    "quickdraw",
    "fungi",
    "vgg_flower",
)
"""The 8 domains meta-training uses ("in-domain" at test time)."""

MD_EVAL_DOMAINS: tuple[str, ...] = MD_TRAIN_DOMAINS + ("traffic_sign", "mscoco", "mnist", "cifar10", "cifar100")
"""The 13-domain evaluation list of the SMAT / P>M>F papers."""


def resolve_domain(name: str) -> DomainInfo | None:
    """The registry entry for a Meta-Dataset domain name or alias, or None for a user's own domain."""
    key = name.lower()
    for info in META_DATASET_DOMAINS.values():
        if key == info.name or key in info.aliases:
            return info
    return None


SPEC_SPLITS = {"TRAIN": "train", "VALID": "validation", "TEST": "test"}


@dataclass(frozen=True)
class MetaDatasetSpec:
    """One domain's classes: ids per split, names, superclass of each class, and per-split WordNet hierarchies
    (node → children, leaves replaced by class ids) for hierarchical domains."""

    name: str
    split_classes: dict[str, list[int]]
    class_names: dict[int, str]
    class_superclass: dict[int, int]
    superclass_names: dict[int, str]
    hierarchies: dict[str, dict[str, list]]
    file_pattern: str = "{}.tfrecords"

    @classmethod
    def from_json(cls, path: str | Path) -> MetaDatasetSpec:
        """Read a `dataset_spec.json` written by the official converter; errors name what is missing."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"No dataset_spec.json at {path}: point to a domain folder of the official records."
            )
        spec = json.loads(path.read_text())
        kind = spec.get("__class__")
        readers = {
            "DatasetSpecification": _flat,
            "BiLevelDatasetSpecification": _bilevel,
            "HierarchicalDatasetSpecification": _hierarchical,
        }
        if kind not in readers:
            raise ValueError(f"{path}: unknown spec type {kind!r}; expected one of {sorted(readers)}.")
        try:
            class_names = {int(k): str(v) for k, v in spec["class_names"].items()}
            split_classes, superclasses, superclass_names, hierarchies = readers[kind](spec, class_names)
        except KeyError as missing:
            raise ValueError(f"{path}: a {kind} needs the key {missing}.") from None
        name = check_path_component(spec.get("name", path.parent.name), f"{path}: the domain name")
        file_pattern = spec.get("file_pattern", "{}.tfrecords")
        check_path_component(file_pattern.format(0), f"{path}: the record file pattern {file_pattern!r} gives")
        return cls(
            name=name,
            split_classes=split_classes,
            class_names=class_names,
            class_superclass=superclasses,
            superclass_names=superclass_names,
            hierarchies=hierarchies,
            file_pattern=file_pattern,
        )

    def superclass_of(self, class_id: int) -> int:
        return self.class_superclass.get(class_id, NO_SUPERCLASS)


def _contiguous(counts: dict[str, int]) -> dict[str, list[int]]:
    """Class ids per split from counts in the order train, validation, test."""
    split_classes, start = {}, 0
    for key, split in SPEC_SPLITS.items():
        count = int(counts.get(key, 0))
        split_classes[split] = list(range(start, start + count))
        start += count
    return split_classes


def _flat(spec: dict, class_names: dict[int, str]):
    return _contiguous(spec["classes_per_split"]), {}, {}, {}


def _bilevel(spec: dict, class_names: dict[int, str]):
    per_superclass = {int(k): int(v) for k, v in spec["classes_per_superclass"].items()}
    superclass_names = {int(k): str(v) for k, v in spec["superclass_names"].items()}
    superclass_splits = _contiguous(spec["superclasses_per_split"])
    class_superclass, split_classes, start = {}, {}, 0
    for split, superclasses in superclass_splits.items():
        split_classes[split] = []
        for superclass in superclasses:
            ids = range(start, start + per_superclass[superclass])
            class_superclass.update(dict.fromkeys(ids, superclass))
            split_classes[split].extend(ids)
            start += per_superclass[superclass]
    return split_classes, class_superclass, superclass_names, {}


def _hierarchical(spec: dict, class_names: dict[int, str]):
    ids_of = {wn_id: class_id for class_id, wn_id in class_names.items()}
    split_classes, hierarchies = {}, {}
    for key, split in SPEC_SPLITS.items():
        nodes = spec["split_subgraphs"].get(key, [])
        leaves = {node["wn_id"] for node in nodes if not node["children_ids"]}
        unknown = sorted(leaves - ids_of.keys())
        if unknown:
            raise ValueError(f"Leaves of the {split} sub-graph have no class id in class_names: {unknown[:5]}.")
        split_classes[split] = sorted(ids_of[leaf] for leaf in leaves)
        hierarchies[split] = {
            node["wn_id"]: [ids_of[child] if child in leaves else child for child in node["children_ids"]]
            for node in nodes
            if node["children_ids"]
        }
    return split_classes, {}, {}, hierarchies


__all__ = [
    "MD_EVAL_DOMAINS",
    "MD_TRAIN_DOMAINS",
    "META_DATASET_DOMAINS",
    "SPEC_SPLITS",
    "DomainInfo",
    "MetaDatasetSpec",
    "check_path_component",
    "column_as_numpy",
    "load_domain",
    "resolve_domain",
    "validate_domain_split",
]
