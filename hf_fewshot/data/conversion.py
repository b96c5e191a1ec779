"""Converting data into self-contained parquet splits, one config per domain, with a dataset card.

`convert_domain` turns one domain folder of the official Meta-Dataset release (TFRecords + `dataset_spec.json`, read
by `metadataset.MetaDatasetSpec` and `tfrecord.py`) into `{output}/{domain}/{split}.parquet`; `write_split` writes
any loaded split (e.g. an image folder from `load_domain`) the same way, images embedded; `dataset_card` describes
the converted folder. Every file is written whole or not at all (`hf_fewshot.files`), so a rerun resumes safely.
"""

from __future__ import annotations

import io
import logging
import struct
from collections.abc import Iterator
from pathlib import Path

import datasets
import datasets.table
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image
from tqdm.auto import tqdm

from hf_fewshot.data.cards import domain_configs, write_dataset_card
from hf_fewshot.data.metadataset import SPEC_SPLITS, MetaDatasetSpec, resolve_domain
from hf_fewshot.data.schema import split_features
from hf_fewshot.data.tfrecord import CorruptRecord, parse_example, read_records
from hf_fewshot.files import staged_file

logger = logging.getLogger(__name__)


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
        ancestors = _ancestors(spec.hierarchies[split]) if spec.hierarchies else None
        features = split_features(ancestors is not None)
        with staged_file(target) as partial, pq.ParquetWriter(partial, features.arrow_schema) as writer:
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
    for record in corrupt:
        logger.warning("Skipped a corrupt record: %s", record)
    return written, corrupt


def write_split(dataset: datasets.Dataset, target: str | Path) -> Path:
    """Write one split as a self-contained parquet file: images referenced by local paths are embedded as bytes
    (the file must survive moving or pushing), written under a temporary name and renamed when complete."""
    target = Path(target)
    table = datasets.table.embed_table_storage(dataset.with_format("arrow")[:])
    with staged_file(target) as partial:
        pq.write_table(table.replace_schema_metadata(dataset.features.arrow_schema.metadata), partial)
    return target


def dataset_card(output_dir: str | Path, title: str = "Meta-Dataset (converted with hf-fewshot)") -> Path:
    """`README.md` at the root of a converted folder: one config per domain listing its split files (so
    `datasets.load_dataset(folder_or_repo, domain)` works), and a table of classes, images and each domain's
    licence — they differ per domain, and the conversion does not change them."""
    output_dir = Path(output_dir)
    files, rows = {}, []
    for domain_dir in sorted(p for p in output_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        splits = {f.stem: f for f in sorted(domain_dir.glob("*.parquet"))}
        if not splits:
            continue
        files[domain_dir.name] = {split: f"{domain_dir.name}/{f.name}" for split, f in splits.items()}
        counts = {split: pq.read_metadata(f).num_rows for split, f in splits.items()}
        info = resolve_domain(domain_dir.name)
        licence = info.license if info is not None else "see the source dataset"
        cells = " | ".join(str(counts.get(split, "–")) for split in ("train", "validation", "test"))
        rows.append(f"| {domain_dir.name} | {cells} | {licence} |")
    metadata = {"configs": domain_configs(files), "license": "other", "tags": ["few-shot-learning", "meta-dataset"]}
    body = (
        f"# {title}\n\nOne config per domain; splits hold disjoint classes. Columns: `image`, `label` (domain-global "
        "class id), `class_name`, `superclass` (−1 if none), `domain`, and `ancestors` (WordNet nodes above the "
        "class) for ImageNet. Rows are sorted by class and shuffled once within each class.\n\n"
        "| domain | train images | validation images | test images | licence |\n|---|---:|---:|---:|---|\n"
        + "\n".join(rows)
        + "\n\nEach domain keeps the licence and terms of its source dataset; check them before use.\n"
    )
    return write_dataset_card(output_dir, metadata, body)


__all__ = [  # MetaDatasetSpec, SPEC_SPLITS and split_features are re-exported: they lived here before
    "SPEC_SPLITS",
    "MetaDatasetSpec",
    "convert_domain",
    "dataset_card",
    "split_features",
    "write_split",
]
