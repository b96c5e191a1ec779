"""Building MiniMeta: render every domain (`minimeta.render`), seeded, into `{domain}/{split}.parquet`, with
`metadata.json` (class names, label ranges, source versions) and the dataset card; and the command line
(`python -m hf_fewshot.data.minimeta --output DIR [--seed N]`).

A build is byte-reproducible for the same package versions, and replaces its output folder whole or not at all.
"""

from __future__ import annotations

import argparse
import io
import json
import warnings
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from hf_fewshot.data.cards import domain_configs, write_dataset_card
from hf_fewshot.data.minimeta import BUILDER_VERSION, DOMAINS, IMAGE_SIZE, PREBUILT_DIR, TEST_ONLY_DOMAINS
from hf_fewshot.data.minimeta.render import DOMAIN_RENDERERS, ClassSpec, Renderer, require_sources, source_versions
from hf_fewshot.data.schema import NO_SUPERCLASS, SPLITS, domain_features
from hf_fewshot.files import staged_folder

_LICENSES = {
    "glyphs": "SIL Open Font License 1.1 (Noto fonts); Unicode License (Unicode Character Database)",
    "emoji": "SIL Open Font License 1.1 (Noto Color Emoji); Unicode License (emoji-test.txt sub-groups)",
    "clipart": "Public domain (Open Clip Art Library)",
    "digits": "CC BY 4.0 (UCI Optical Recognition of Handwritten Digits, as shipped by scikit-learn)",
}
_DESCRIPTIONS = {
    "glyphs": "Omniglot-like. Class = a letter, superclass = its script; instances vary font family and "
    "weight, stroke width, affine and elastic distortion. Split by script.",
    "emoji": "Class = a Unicode emoji sub-group (e.g. animal-mammal), instances = its fully-qualified "
    "emoji without skin-tone variants, in colour.",
    "clipart": "Class = an Open Clip Art folder with at least 20 images (e.g. food/fruit). Test-only.",
    "digits": "The 8x8 UCI handwritten digits, upsampled. Test-only.",
}

_MIN_LIMITED_SPLIT_CLASSES = 5
_GRAY_STEP = 17  # grayscale PNGs keep 16 levels (0, 17, ..., 255): half the bytes, no visible change


def _limit_classes(plan: dict[str, list[ClassSpec]], max_classes: int | None) -> dict[str, list[ClassSpec]]:
    """Keep about `max_classes` classes, split in proportion, 5 or more in a split that has 5.

    A superclass is kept whole, so that superclass-first episodes (docs/data.md, "Episodes") still find 5 classes in
    it.
    """
    total = sum(map(len, plan.values()))
    if max_classes is None or total <= max_classes:
        return plan
    limited = {}
    for split, classes in plan.items():
        keep = max(round(max_classes * len(classes) / total), min(len(classes), _MIN_LIMITED_SPLIT_CLASSES))
        while 0 < keep < len(classes) and classes[keep].superclass_name is not None:
            if classes[keep].superclass_name != classes[keep - 1].superclass_name:
                break
            keep += 1
        limited[split] = classes[:keep]
    return limited


def _png_bytes(image: Image.Image) -> bytes:
    """The image as an optimised PNG, grayscale reduced to 16 levels to halve the committed size."""
    if image.mode == "L":
        image = image.point(lambda v: _GRAY_STEP * round(v / _GRAY_STEP))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def _render_class(spec: ClassSpec, render: Renderer, rng: np.random.Generator, size: int) -> list[bytes]:
    """PNGs of the payloads of `spec`, tried in order, skipping failures, until there are `max_images`."""
    images: list[bytes] = []
    for payload in spec.payloads:
        if len(images) == spec.max_images:
            break
        image = render(payload, rng, size)
        if image is not None:
            images.append(_png_bytes(image))
    return images


def _build_domain(
    domain: str, out_dir: Path, seed: int, image_size: int, max_classes: int | None, show_progress: bool
) -> dict[str, Any]:
    """Render one domain into `{out_dir}/{domain}/{split}.parquet` and return its metadata entry."""
    rng = np.random.default_rng([seed, DOMAINS.index(domain)])
    plan_classes, render = DOMAIN_RENDERERS[domain]
    plan = _limit_classes(plan_classes(rng), max_classes)
    class_names: list[str] = []
    superclass_ids: dict[str, int] = {}
    splits: dict[str, dict[str, Any]] = {}
    num_classes = sum(map(len, plan.values()))
    with tqdm(total=num_classes, desc=f"MiniMeta {domain}", unit="class", disable=not show_progress) as bar:
        for split in SPLITS:
            rows: dict[str, list[Any]] = {column: [] for column in domain_features()}
            first_label = len(class_names)
            for spec in plan[split]:
                images = _render_class(spec, render, rng, image_size)
                bar.update()
                if len(images) < spec.min_images:
                    message = f"MiniMeta {domain}: dropped class {spec.name!r} ({len(images)} usable images)"
                    warnings.warn(message, stacklevel=2)
                    continue
                superclass = NO_SUPERCLASS
                if spec.superclass_name is not None:
                    superclass = superclass_ids.setdefault(spec.superclass_name, len(superclass_ids))
                class_names.append(spec.name)
                for index in rng.permutation(len(images)):
                    rows["image"].append({"bytes": images[index], "path": None})
                    rows["label"].append(len(class_names) - 1)
                    rows["class_name"].append(spec.name)
                    rows["superclass"].append(superclass)
                    rows["domain"].append(domain)
            if rows["label"]:
                (out_dir / domain).mkdir(exist_ok=True)
                dataset = datasets.Dataset.from_dict(rows, features=domain_features())
                dataset.to_parquet(str(out_dir / domain / f"{split}.parquet"))
                splits[split] = {
                    "classes": [first_label, len(class_names)],
                    "num_classes": len(class_names) - first_label,
                    "num_images": len(rows["label"]),
                }
    return {
        "class_names": class_names,
        "superclass_names": list(superclass_ids),
        "splits": splits,
        "sources": source_versions(domain),
        "license": _LICENSES[domain],
    }


def _write_card(folder: Path, meta: dict[str, Any], command: str) -> Path:
    """The Hugging Face dataset card: one config per domain, split sizes, sources, licences, how to rebuild."""
    files, table, sources = {}, "", ""
    for domain, entry in meta["domains"].items():
        files[domain] = {split: f"{domain}/{split}.parquet" for split in entry["splits"]}
        sizes = [entry["splits"].get(split) for split in SPLITS]
        cells = [f"{size['num_classes']} / {size['num_images']}" if size else "–" for size in sizes]
        table += f"| {domain} | {' | '.join(cells)} | {len(entry['superclass_names']) or '–'} |\n"
        packages = ", ".join(f"{s['package']} {s['version']} ({s['registry']})" for s in entry["sources"])
        sources += f"- **{domain}**: {_DESCRIPTIONS[domain]} From {packages}. Licence: {entry['license']}.\n"
    card_metadata = {
        "license": "other",
        "pretty_name": "MiniMeta",
        "task_categories": ["image-classification"],
        "configs": domain_configs(files),
    }
    body = f"""# MiniMeta

A small, offline, multi-domain few-shot image classification benchmark in the layout of Meta-Dataset,
built by `hf_fewshot` from real data that ships in Debian and PyPI packages ({meta["image_size"]} px PNG).
Columns: `image`, `label` (global within a domain), `class_name`, `superclass` (-1 if none), `domain`.
**Splits are class-disjoint**: no class is in two splits of a domain (glyphs are split by script). Labels
number the train classes first, then validation, then test; `metadata.json` has the class names and the
label range of each split. {", ".join(TEST_ONLY_DOMAINS)} are test-only (out-of-domain).

| domain | train classes / images | validation | test | superclasses |
|---|---|---|---|---|
{table}
## Sources and licences

{sources}
The licence of the whole is therefore `other`: SIL OFL 1.1 for renderings of the Noto fonts, the Unicode
License for the Unicode Character Database and emoji-test.txt, public domain for Open Clip Art, CC BY 4.0
for the UCI digits.

## How it was built

Deterministically (seed {meta["seed"]}, builder {meta["builder_version"]}; the same package versions give
byte-identical parquet files) with

```
{command}
```
"""
    return write_dataset_card(folder, card_metadata, body)


def build_minimeta(
    output_dir: str | Path,
    *,
    seed: int = 0,
    image_size: int = IMAGE_SIZE,
    domains: Sequence[str] = DOMAINS,
    max_classes_per_domain: int | None = None,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Build MiniMeta into `output_dir`: `{domain}/{split}.parquet`, `metadata.json` and `README.md`.

    The copy is built in a folder beside `output_dir` and moved into place at the end (`staged_folder`), so a
    failed build leaves no half-written copy. `max_classes_per_domain` makes a tiny copy quickly (tests). Returns the
    metadata written to `metadata.json`.
    """
    unknown = sorted(set(domains) - set(DOMAINS))
    if unknown:
        raise ValueError(f"unknown MiniMeta domains {unknown}; choose from {DOMAINS}")
    domains = tuple(dict.fromkeys(domains))
    for domain in domains:
        require_sources(domain)
    output_dir = Path(output_dir)
    with staged_folder(output_dir) as staging:
        meta = {
            "name": "MiniMeta",
            "builder_version": BUILDER_VERSION,
            "seed": seed,
            "image_size": image_size,
            "software": {name: metadata.version(name) for name in ("pillow", "numpy", "datasets", "pyarrow")},
            "domains": {
                name: _build_domain(name, staging, seed, image_size, max_classes_per_domain, show_progress)
                for name in domains
            },
        }
        (staging / "metadata.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", "utf-8")
        if (image_size, domains, max_classes_per_domain) == (IMAGE_SIZE, DOMAINS, None):
            output = "" if output_dir.resolve() == PREBUILT_DIR.resolve() else f" --output {output_dir}"
            command = f"python -m hf_fewshot.data.minimeta{output} --seed {seed}"
        else:
            command = (
                "from hf_fewshot.data.minimeta import build_minimeta\n"
                f"build_minimeta({str(output_dir)!r}, seed={seed}, image_size={image_size}, "
                f"domains={domains!r}, max_classes_per_domain={max_classes_per_domain})"
            )
        _write_card(staging, meta, command)
    return meta


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: build MiniMeta, by default into the package's prebuilt folder."""
    parser = argparse.ArgumentParser(
        prog="python -m hf_fewshot.data.minimeta",
        description="Build the MiniMeta few-shot benchmark from packaged data.",
    )
    parser.add_argument("--output", type=Path, default=PREBUILT_DIR, help="output folder (replaced)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random choice")
    args = parser.parse_args(argv)
    meta = build_minimeta(args.output, seed=args.seed)
    for domain, entry in meta["domains"].items():
        sizes = [f"{split} {n['num_classes']}/{n['num_images']}" for split, n in entry["splits"].items()]
        print(f"{domain} (classes/images): {', '.join(sizes)}")


__all__ = ["build_minimeta", "main"]
