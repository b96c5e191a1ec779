"""Domain splits from wherever a user keeps them: `load_domain`, and the checks every split passes.

A domain split is one `datasets.Dataset` with the columns of `hf_fewshot.data.schema`; classes of the train /
validation / test splits are disjoint (docs/data.md, "The schema"). `load_domain` accepts every place a user keeps
such data (the Hub, a parquet or `save_to_disk` folder, an image folder, or the MiniMeta copy that ships with the
package) and checks the schema before any episode is sampled, so that a wrong column fails here with a message instead
of deep inside a training step. The small readers of a split (`column_as_numpy`, `domain_of`) go through Arrow, so no
image is decoded to learn a label or a domain.
"""

from __future__ import annotations

from pathlib import Path

import datasets
import numpy as np
import pyarrow.parquet

from hf_fewshot.data.schema import NO_SUPERCLASS, REQUIRED_COLUMNS, SPLITS, domain_features


def load_domain(source: str | Path, domain: str, split: str = "train") -> datasets.Dataset:
    """Load one split of one domain as a schema-checked `datasets.Dataset`.

    `source` is one of:
    - `"minimeta"`: the offline benchmark that ships with the package (`hf_fewshot.data.minimeta`);
    - a local folder holding `{domain}/{split}.parquet` (or `{domain}/{split}-*.parquet`);
    - a local `save_to_disk` folder of a `DatasetDict` (or `{source}/{domain}` being one);
    - a local image folder `{source}/{domain}/{split}/{class_name}/*.png|jpg` (labels follow the
      sorted class-folder names);
    - a Hub dataset id with one config per domain (`datasets.load_dataset(source, domain, split=split)`).

    Missing `class_name`, `superclass` and `domain` columns are filled with `str(label)`, -1 and
    `domain`; a missing `image` or `label` column, non-integer labels or an empty split raise `ValueError`.
    """
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}; expected one of {SPLITS}.")
    check_path_component(domain, "domain")
    if str(source) == "minimeta":
        from hf_fewshot.data import minimeta  # here: MiniMeta builds on this module, not the reverse

        return minimeta.load_split(domain, split)
    path = Path(source)
    dataset = _load_local(path, domain, split) if path.exists() else _load_hub(str(source), domain, split)
    return validate_domain_split(dataset, domain, split, origin=str(source))


IN_MEMORY_BYTES = 2**30
"""Local parquet splits smaller than this load into memory; larger ones are memory-mapped (Arrow cache)."""


def _load_local(path: Path, domain: str, split: str) -> datasets.Dataset:
    domain_dir = path / domain
    parquet_files = sorted(domain_dir.glob(f"{split}.parquet")) + sorted(domain_dir.glob(f"{split}-*.parquet"))
    if parquet_files:
        if sum(pyarrow.parquet.read_metadata(f).num_rows for f in parquet_files) == 0:
            raise ValueError(f"{domain_dir} ({domain}/{split}) is empty: its parquet files hold no rows.")
        # Small splits stay in memory; a converted ImageNet (100+ GB) is memory-mapped from the datasets cache.
        small = sum(f.stat().st_size for f in parquet_files) < IN_MEMORY_BYTES
        return datasets.Dataset.from_parquet([str(f) for f in parquet_files], keep_in_memory=small)
    for candidate in (domain_dir, path):
        if (candidate / "dataset_dict.json").exists():
            saved = datasets.load_from_disk(str(candidate))
            if split not in saved:
                raise ValueError(f"{candidate} has no split {split!r}; it has {sorted(saved)}.")
            return saved[split]
    if (domain_dir / split).is_dir():
        return _load_image_folder(domain_dir / split, domain, path)
    raise ValueError(
        f"Found no data for domain {domain!r}, split {split!r} under {path}: expected "
        f"{domain}/{split}.parquet, a save_to_disk DatasetDict, or an image folder {domain}/{split}/<class>/."
    )


_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def check_path_component(name: str, what: str) -> str:
    """`name` if it is one plain file or folder name; `..`, separators and absolute paths would lead a domain or
    a converted dataset's name outside the folder it belongs in."""
    if (
        not isinstance(name, str)
        or name in ("", ".", "..")
        or any(c in name for c in "/\\\0")
        or Path(name).is_absolute()
    ):
        raise ValueError(f"{what} {name!r} is not a plain name: it must not hold path separators or be '.' / '..'.")
    return name


def _inside(path: Path, root: Path) -> bool:
    return path.resolve().is_relative_to(root.resolve())


def _load_image_folder(split_dir: Path, domain: str, root: Path) -> datasets.Dataset:
    """Read `<class_name>/<image>` files; labels number the sorted class folders from 0. Symlinks that lead out of
    `root` are refused: a folder of images must not pull in files from elsewhere (and embed them on conversion)."""
    outside = []
    class_dirs = []
    for candidate in sorted(p for p in split_dir.iterdir() if p.is_dir()):
        (class_dirs if _inside(candidate, root) else outside).append(candidate)
    rows: dict[str, list] = {column: [] for column in ("image", "label", "class_name", "superclass", "domain")}
    for label, class_dir in enumerate(class_dirs):
        for file in sorted(p for p in class_dir.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES):
            if not _inside(file, root):
                outside.append(file)
                continue
            rows["image"].append(str(file))
            rows["label"].append(label)
            rows["class_name"].append(class_dir.name)
            rows["superclass"].append(NO_SUPERCLASS)
            rows["domain"].append(domain)
    if outside:  # refused, not skipped: a split silently missing images or classes is a wrong result too
        raise ValueError(
            f"{len(outside)} image or class-folder symlink(s) lead out of {root} (e.g. "
            f"{', '.join(map(str, outside[:3]))}): nothing outside the source folder is read. Copy the files in, or "
            "give the folder they live in as the source."
        )
    return datasets.Dataset.from_dict(rows, features=domain_features())


def _load_hub(repo_id: str, domain: str, split: str) -> datasets.Dataset:
    from hf_fewshot.data.metadataset import resolve_domain  # the registry builds on this module, not the reverse

    info = resolve_domain(domain)
    if info is not None and not info.has_split(split):
        raise ValueError(
            f"Meta-Dataset domain {info.name!r} has no {split!r} classes (classes per split: {info.num_classes})."
        )
    try:
        return datasets.load_dataset(repo_id, domain, split=split)
    except (FileNotFoundError, ConnectionError, datasets.exceptions.DatasetNotFoundError) as error:
        raise ValueError(
            f"{repo_id!r} is neither a local folder nor a reachable Hub dataset with a config {domain!r}: {error}"
        ) from error


def validate_domain_split(
    dataset: datasets.Dataset, domain: str, split: str, origin: str = "the dataset"
) -> datasets.Dataset:
    """Check the schema of a domain split and fill the optional columns; raise `ValueError` on bad data."""
    where = f"{origin} ({domain}/{split})"
    missing = [column for column in REQUIRED_COLUMNS if column not in dataset.column_names]
    if missing:
        raise ValueError(
            f"{where} lacks the column(s) {missing}; it has {dataset.column_names}. "
            "Rename your columns, e.g. dataset.rename_column('img', 'image')."
        )
    if len(dataset) == 0:
        raise ValueError(f"{where} is empty: a split needs at least one class with images.")
    if not isinstance(dataset.features["image"], datasets.Image):
        raise ValueError(
            f"{where}: column 'image' is {dataset.features['image']!r}, not a datasets.Image; "
            "cast it with dataset.cast_column('image', datasets.Image())."
        )
    label_feature = dataset.features["label"]
    label_dtype = getattr(label_feature, "dtype", None)
    if not (isinstance(label_feature, datasets.ClassLabel) or str(label_dtype).startswith(("int", "uint"))):
        raise ValueError(
            f"{where}: column 'label' has type {label_dtype or label_feature!r}; labels must be integer class ids. "
            "Map names to ids first, e.g. dataset.class_encode_column('label')."
        )
    if dataset.with_format("arrow")["label"].null_count:  # the rows of this view (after filter / select)
        raise ValueError(f"{where}: column 'label' has missing (null) values; every image needs a class id.")
    labels = column_as_numpy(dataset, "label")
    if labels.min() < 0:
        raise ValueError(f"{where}: labels must be ≥ 0, found {int(labels.min())}.")
    defaults = {
        "class_name": lambda: [str(label) for label in labels],
        "superclass": lambda: np.full(len(labels), NO_SUPERCLASS, dtype=np.int64),
        "domain": lambda: [domain] * len(labels),
    }
    for column, values in defaults.items():
        if column not in dataset.column_names:
            dataset = dataset.add_column(column, values(), feature=domain_features()[column])
    return dataset


def column_as_numpy(dataset: datasets.Dataset, column: str) -> np.ndarray:
    """A whole column as a numpy array, read through Arrow: no image is decoded, select()/shuffle() views hold.

    (The "numpy" format builds the array row by row: ~1000× slower on a 300k-row split.)
    """
    return dataset.with_format("arrow")[column].to_numpy()


def domain_of(dataset: datasets.Dataset) -> str | None:
    """The domain a split belongs to: its `domain` column read from the first row (Arrow, no image decoded), or
    None when it has no such column or no row."""
    if "domain" not in dataset.column_names or len(dataset) == 0:
        return None
    return dataset.with_format("arrow")[:1]["domain"][0].as_py()


__all__ = [
    "IN_MEMORY_BYTES",
    "check_path_component",
    "column_as_numpy",
    "domain_of",
    "load_domain",
    "validate_domain_split",
]
