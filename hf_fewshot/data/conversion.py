"""Converting the official Meta-Dataset release (TFRecords + `dataset_spec.json` per domain) into `datasets`.

This module reads the specification; `tfrecord.py` reads the records. The spec comes in three kinds
(google-research/meta-dataset, `data/dataset_spec.py`), all with one `{class id}.tfrecords` file per class and
class ids contiguous in the order train, validation, test:
- `DatasetSpecification`: `classes_per_split` counts (keys `"TRAIN"`, `"VALID"`, `"TEST"`), `class_names`.
- `BiLevelDatasetSpecification` (Omniglot): `superclasses_per_split`, `classes_per_superclass`, `superclass_names`;
  superclass s owns the next `classes_per_superclass[s]` class ids.
- `HierarchicalDatasetSpecification` (ImageNet): `split_subgraphs[split]`, a list of WordNet nodes
  `{wn_id, children_ids, ...}`; its leaves are the split's classes (`class_names` maps id → wn_id).
"""

from __future__ import annotations

import io
import json
import logging
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import datasets
import datasets.table
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image
from tqdm.auto import tqdm

from hf_fewshot.data.metadataset import check_path_component, resolve_domain
from hf_fewshot.data.schema import NO_SUPERCLASS, domain_features
from hf_fewshot.data.tfrecord import CorruptRecord, parse_example, read_records

logger = logging.getLogger(__name__)

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


def _ancestors(hierarchy: dict[str, list]) -> dict[int, list[str]]:
    """For every class id (leaf), the internal nodes above it in the DAG, sorted."""
    above: dict[int, set[str]] = {}

    def visit(node: str, path: tuple[str, ...]) -> None:
        for child in hierarchy.get(node, []):
            if isinstance(child, int):
                above.setdefault(child, set()).update((*path, node))
            else:
                visit(child, (*path, node))

    children = {child for kids in hierarchy.values() for child in kids}
    for root in hierarchy.keys() - children:
        visit(root, ())
    return {class_id: sorted(nodes) for class_id, nodes in above.items()}


def split_features(hierarchical: bool) -> datasets.Features:
    """The schema of DATA.md §1, plus `ancestors` (the WordNet nodes above each class) for hierarchical domains:
    the hierarchy travels with the rows, through parquet, `save_to_disk` and the Hub alike."""
    features = domain_features()
    if hierarchical:
        features["ancestors"] = datasets.List(datasets.Value("string"))
    return features


def _class_rows(path: Path, class_id: int, corrupt: list[CorruptRecord]) -> Iterator[bytes]:
    """The image bytes of one class file; unreadable records are appended to `corrupt` and skipped."""
    for offset, data in read_records(path):
        if isinstance(data, CorruptRecord):
            corrupt.append(data)
            continue
        try:
            example = parse_example(data)
            image, label = example["image"][0], int(example["label"][0])
        except (ValueError, KeyError, IndexError, TypeError, struct.error) as error:
            corrupt.append(CorruptRecord(str(path), offset, f"not an Example with image and label ({error!r})"))
            continue
        if label != class_id:
            corrupt.append(CorruptRecord(str(path), offset, f"label {label} in the file of class {class_id}"))
            continue
        try:  # the header only: cheap, and enough to catch bytes that are no image at all
            with Image.open(io.BytesIO(image)):
                pass
        except (OSError, ValueError, Image.DecompressionBombError) as error:
            corrupt.append(CorruptRecord(str(path), offset, f"not an image ({error})"))
            continue
        yield image


def convert_domain(
    records_dir: str | Path, output_dir: str | Path, seed: int = 0, progress: bool = True
) -> tuple[dict[str, Path], list[CorruptRecord]]:
    """Write `{output_dir}/{domain}/{split}.parquet` from one domain folder of the official release.

    Rows are sorted by class and shuffled once within each class (seeded by `(seed, class id)`); one class is in
    memory at a time. A split whose parquet file exists is kept (resume); each file is written under a temporary
    name and renamed when complete. Returns the files and every corrupt record (file, offset, reason), which
    are also logged: none is dropped silently.
    """
    records_dir, output_dir = Path(records_dir), Path(output_dir)
    spec = MetaDatasetSpec.from_json(records_dir / "dataset_spec.json")
    written, corrupt = {}, []
    for split, class_ids in spec.split_classes.items():
        if not class_ids:
            continue
        target = output_dir / spec.name / f"{split}.parquet"
        written[split] = target
        if target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        ancestors = _ancestors(spec.hierarchies[split]) if spec.hierarchies else None
        features = split_features(ancestors is not None)
        partial = target.with_name(f".{target.name}.partial")
        with pq.ParquetWriter(partial, features.arrow_schema) as writer:
            for class_id in tqdm(class_ids, desc=f"{spec.name}/{split}", disable=not progress, leave=False):
                path = records_dir / spec.file_pattern.format(class_id)
                if not path.is_file():
                    raise FileNotFoundError(f"Class {class_id} of {spec.name} has no record file {path}.")
                if not path.resolve().is_relative_to(records_dir.resolve()):
                    raise ValueError(f"{path} is a symlink out of {records_dir}: records are read from inside only.")
                images = list(_class_rows(path, class_id, corrupt))
                if not images:  # reported like a corrupt record: the class is missing from the split
                    corrupt.append(CorruptRecord(str(path), 0, f"no readable image: class {class_id} is left out"))
                order = np.random.default_rng((seed, class_id)).permutation(len(images))
                rows = {
                    "image": [{"bytes": images[k], "path": None} for k in order],
                    "label": [class_id] * len(images),
                    "class_name": [spec.class_names.get(class_id, str(class_id))] * len(images),
                    "superclass": [spec.superclass_of(class_id)] * len(images),
                    "domain": [spec.name] * len(images),
                }
                if ancestors is not None:
                    rows["ancestors"] = [ancestors.get(class_id, [])] * len(images)
                writer.write_table(pa.Table.from_pydict(rows, schema=features.arrow_schema))
        os.replace(partial, target)
    for record in corrupt:
        logger.warning("Skipped a corrupt record: %s", record)
    return written, corrupt


def write_split(dataset: datasets.Dataset, target: str | Path) -> Path:
    """Write one split as a self-contained parquet file: images referenced by local paths are embedded as bytes
    (the file must survive moving or pushing), written under a temporary name and renamed when complete."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    table = datasets.table.embed_table_storage(dataset.with_format("arrow")[:])
    pq.write_table(table.replace_schema_metadata(dataset.features.arrow_schema.metadata), partial)
    os.replace(partial, target)
    return target


def dataset_card(output_dir: str | Path, title: str = "Meta-Dataset (converted with hf-fewshot)") -> Path:
    """`README.md` at the root of a converted folder: one config per domain listing its split files (so
    `datasets.load_dataset(folder_or_repo, domain)` works), and a table of classes, images and each domain's
    licence — they differ per domain, and the conversion does not change them."""
    output_dir = Path(output_dir)
    configs, rows = [], []
    for domain_dir in sorted(p for p in output_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = {f.stem: f for f in sorted(domain_dir.glob("*.parquet"))}
        if not files:
            continue
        configs.append(
            f"- config_name: {domain_dir.name}\n  data_files:\n"
            + "".join(f"  - split: {split}\n    path: {domain_dir.name}/{f.name}\n" for split, f in files.items())
        )
        counts = {split: pq.read_metadata(f).num_rows for split, f in files.items()}
        info = resolve_domain(domain_dir.name)
        licence = info.license if info is not None else "see the source dataset"
        cells = " | ".join(str(counts.get(split, "–")) for split in ("train", "validation", "test"))
        rows.append(f"| {domain_dir.name} | {cells} | {licence} |")
    card = (
        "---\nconfigs:\n" + "".join(configs) + "license: other\ntags:\n- few-shot-learning\n- meta-dataset\n---\n\n"
        f"# {title}\n\nOne config per domain; splits hold disjoint classes. Columns: `image`, `label` (domain-global "
        "class id), `class_name`, `superclass` (−1 if none), `domain`, and `ancestors` (WordNet nodes above the "
        "class) for ImageNet. Rows are sorted by class and shuffled once within each class.\n\n"
        "| domain | train images | validation images | test images | licence |\n|---|---:|---:|---:|---|\n"
        + "\n".join(rows)
        + "\n\nEach domain keeps the licence and terms of its source dataset; check them before use.\n"
    )
    path = output_dir / "README.md"
    path.write_text(card)
    return path


__all__ = ["MetaDatasetSpec", "SPEC_SPLITS", "convert_domain", "dataset_card", "split_features", "write_split"]
