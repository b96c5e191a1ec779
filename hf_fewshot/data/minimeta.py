"""MiniMeta: a small offline multi-domain few-shot image benchmark built from packaged real data (DATA.md §3).

Every domain is rendered from data that ships in Debian or PyPI packages, so the default benchmark of the
library can be rebuilt without a network. The build is seeded and byte-reproducible for the same package
versions; a prebuilt copy lives in `PREBUILT_DIR`. Rebuild it with

    python -m hf_fewshot.data.minimeta --output DIR [--seed N]
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import shutil
import subprocess
import tempfile
import warnings
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps
from tqdm.auto import tqdm

from hf_fewshot.data.schema import NO_SUPERCLASS, SPLITS, domain_features

DOMAINS = ("glyphs", "emoji", "clipart", "digits")
TRAIN_DOMAINS = ("glyphs", "emoji")
TEST_ONLY_DOMAINS = ("clipart", "digits")
PREBUILT_DIR = Path(__file__).parent / "minimeta_data"
IMAGE_SIZE = 32
BUILDER_VERSION = "1.0.0"

NOTO_DIR = Path("/usr/share/fonts/truetype/noto")
EMOJI_FONT = NOTO_DIR / "NotoColorEmoji.ttf"
UNICODE_DIR = Path("/usr/share/unicode")
UNICODE_DATA = UNICODE_DIR / "UnicodeData.txt"
EMOJI_TEST = UNICODE_DIR / "emoji" / "emoji-test.txt"
CLIPART_DIR = Path("/usr/share/openclipart/png")

_DEBIAN_SOURCES: dict[str, tuple[tuple[str, Path], ...]] = {  # (package, a file it installs)
    "glyphs": (("fonts-noto-core", NOTO_DIR / "NotoSans-Regular.ttf"), ("unicode-data", UNICODE_DATA)),
    "emoji": (("fonts-noto-color-emoji", EMOJI_FONT), ("unicode-data", EMOJI_TEST)),
    "clipart": (("openclipart-png", CLIPART_DIR),),
    "digits": (),
}
# (distribution, module) pairs
_PYPI_SOURCES = {"glyphs": (("fonttools", "fontTools"),), "digits": (("scikit-learn", "sklearn"),)}
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

_TRAIN_FRACTION, _VALIDATION_FRACTION = 0.6, 0.1
_MIN_LIMITED_SPLIT_CLASSES = 5
_MIN_LETTERS_PER_SCRIPT, _MAX_LETTERS_PER_SCRIPT = 8, 16
_GLYPH_INSTANCES, _GLYPH_ATTEMPTS = 12, 48
_GLYPH_FONT_SIZE, _GLYPH_CANVAS = 48, 64
_MIN_EMOJI_PER_CLASS, _MAX_EMOJI_PER_CLASS = 6, 40
_EMOJI_FONT_SIZE = 109  # the size of Noto Color Emoji's only bitmap strike
_SKIN_TONE_MODIFIERS = range(0x1F3FB, 0x1F400)
_MIN_CLIPART_PER_CLASS, _MAX_CLIPART_PER_CLASS = 20, 30
_CLIPART_EXCLUDED = ("unsorted",)  # a folder of leftovers, not a category
_MAX_CLIPART_PIXELS = 4096 * 4096  # 19 of the 8,121 source PNGs are ~170 Mpx posters; they are skipped
_GRAY_STEP = 17  # grayscale PNGs keep 16 levels (0, 17, ..., 255): half the bytes, no visible change


@dataclass
class _ClassSpec:
    """A class to render: candidate payloads tried in order until `max_images` succeed (fewer than
    `min_images` drop the class)."""

    name: str
    payloads: list[Any]
    max_images: int | None = None
    min_images: int = 1
    superclass_name: str | None = None


def source_packages_available(domain: str) -> bool:
    """Whether the packages the builder of `domain` reads from are installed here."""
    return all(path.exists() for _, path in _DEBIAN_SOURCES[domain]) and all(
        find_spec(module) is not None for _, module in _PYPI_SOURCES.get(domain, ())
    )


def _require_sources(domain: str) -> None:
    """Fail early, naming the package to install, when a source of `domain` is missing."""
    for package, path in _DEBIAN_SOURCES[domain]:
        if not path.exists():
            raise FileNotFoundError(f"{package} is not installed: apt-get install {package} (needs {path})")
    for distribution, module in _PYPI_SOURCES.get(domain, ()):
        if find_spec(module) is None:
            raise ModuleNotFoundError(f"{distribution} is not installed: pip install {distribution}")


def _sources(domain: str) -> list[dict[str, str]]:
    """The packages `domain` is built from, with their installed versions."""
    sources = []
    for package in dict.fromkeys(package for package, _ in _DEBIAN_SOURCES[domain]):
        query = ["dpkg-query", "-W", "-f=${Version}", package]
        found = shutil.which(query[0]) and subprocess.run(query, capture_output=True, text=True, check=False)
        version = found.stdout.strip() if found and found.returncode == 0 else "unknown"
        sources.append({"registry": "debian", "package": package, "version": version})
    for package, _ in _PYPI_SOURCES.get(domain, ()):
        sources.append({"registry": "pypi", "package": package, "version": metadata.version(package)})
    return sources


def _split_classes(items: list[Any], rng: np.random.Generator) -> dict[str, list[Any]]:
    """Seeded ~60/10/30 train/validation/test split of `items`, each part keeping the original order."""
    order = rng.permutation(len(items))
    n_train = round(_TRAIN_FRACTION * len(items))
    n_validation = max(1, round(_VALIDATION_FRACTION * len(items)))
    parts = (order[:n_train], order[n_train : n_train + n_validation], order[n_train + n_validation :])
    return {split: [items[i] for i in sorted(part)] for split, part in zip(SPLITS, parts, strict=True)}


def _limit_classes(plan: dict[str, list[_ClassSpec]], max_classes: int | None) -> dict[str, list[_ClassSpec]]:
    """Keep about `max_classes` classes, split in proportion, 5 or more in a split that has 5.

    A superclass is kept whole, so that superclass-first episodes (DATA.md §2) still find 5 classes in it.
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


def _seeded_subset(rng: np.random.Generator, items: Sequence[Any], limit: int | None = None) -> list[Any]:
    """`items` in a seeded random order, cut to `limit`."""
    return [items[i] for i in rng.permutation(len(items))[:limit]]


@functools.cache
def _font(path: Path, size: int) -> ImageFont.FreeTypeFont:
    """A font, loaded once: glyph instances pick among a few hundred fonts thousands of times."""
    return ImageFont.truetype(str(path), size)


def _square_on_white(rgba: Image.Image, image_size: int) -> Image.Image | None:
    """Crop to the opaque part, composite on white, pad to a square and resize; None if nothing is opaque."""
    bbox = rgba.getchannel("A").getbbox()
    if bbox is None:
        return None
    content = rgba.crop(bbox)
    side = max(content.size)
    square = Image.new("RGBA", (side, side), (255, 255, 255, 255))
    square.alpha_composite(content, ((side - content.width) // 2, (side - content.height) // 2))
    return square.convert("RGB").resize((image_size, image_size), Image.Resampling.LANCZOS)


def _unicode_letters() -> dict[int, tuple[str, str]]:
    """Code point -> (script, name) of the distinct letters in the Unicode Character Database.

    Kept: categories Lu and Lo, and Ll where the letter has no capital (a cased pair is one class: its
    capital); no decomposition (accented letters would be near-duplicates); a script of its own.
    """
    script_of: dict[int, str] = {}
    for line in (UNICODE_DIR / "Scripts.txt").read_text(encoding="utf-8").splitlines():
        fields = line.split("#", 1)[0].split(";")
        if len(fields) == 2:
            first, _, last = fields[0].strip().partition("..")
            code_points = range(int(first, 16), int(last or first, 16) + 1)
            script_of.update(dict.fromkeys(code_points, fields[1].strip()))
    letters: dict[int, tuple[str, str]] = {}
    range_start = 0
    for line in UNICODE_DATA.read_text(encoding="utf-8").splitlines():
        fields = line.split(";")
        code_point, name, category = int(fields[0], 16), fields[1], fields[2]
        if name.endswith(", First>"):
            range_start = code_point
            continue
        names = {code_point: name}
        if name.endswith(", Last>"):  # e.g. Tangut ideographs: named "TANGUT IDEOGRAPH-17000" by rule
            prefix = name[1:].removesuffix(", Last>").upper()
            names = {cp: f"{prefix}-{cp:04X}" for cp in range(range_start, code_point + 1)}
        if (category in ("Lu", "Lo") or (category == "Ll" and not fields[12])) and not fields[5]:
            for cp, cp_name in names.items():
                if script_of.get(cp, "Common") not in ("Common", "Inherited", "Unknown"):
                    letters[cp] = (script_of[cp], cp_name)
    return letters


def _draw_ink(char: str, font_path: Path, stroke_width: float) -> Image.Image | None:
    """`char` as white ink on black, cropped to the ink; None when the font draws nothing."""
    size = _GLYPH_FONT_SIZE
    canvas = Image.new("L", (6 * size, 4 * size), 0)
    draw, font = ImageDraw.Draw(canvas), _font(font_path, size)
    draw.text((3 * size, 2 * size), char, 255, font, anchor="mm", stroke_width=stroke_width, stroke_fill=255)
    bbox = canvas.getbbox()
    return canvas.crop(bbox) if bbox else None


def _plan_glyphs(rng: np.random.Generator) -> dict[str, list[_ClassSpec]]:
    """Up to 16 renderable, visually distinct letters per script the Noto fonts cover; split by script."""
    from fontTools.ttLib import TTFont

    letters = _unicode_letters()
    fonts_of: dict[int, list[Path]] = defaultdict(list)
    for path in sorted(NOTO_DIR.glob("*.ttf")):
        if path != EMOJI_FONT:
            with TTFont(path, lazy=True) as font:
                for code_point in sorted(set(font.getBestCmap() or {}) & letters.keys()):
                    fonts_of[code_point].append(path)
    code_points_of: dict[str, list[int]] = defaultdict(list)
    for code_point in sorted(fonts_of):
        code_points_of[letters[code_point][0]].append(code_point)
    chosen_of: dict[str, list[int]] = {}
    seen_shapes: set[bytes] = set()  # drops look-alikes, e.g. Latin A, Greek Alpha and Cyrillic A
    for script in sorted(code_points_of):
        chosen: list[int] = []
        for code_point in _seeded_subset(rng, code_points_of[script]):
            ink = _draw_ink(chr(code_point), fonts_of[code_point][0], stroke_width=0)
            thumbnail = ink and ink.resize((12, 12), Image.Resampling.BOX)
            shape = thumbnail and thumbnail.point(lambda v: 255 * (v > 99)).tobytes()
            if shape and shape not in seen_shapes:
                seen_shapes.add(shape)
                chosen.append(code_point)
                if len(chosen) == _MAX_LETTERS_PER_SCRIPT:
                    break
        if len(chosen) >= _MIN_LETTERS_PER_SCRIPT:
            chosen_of[script] = sorted(chosen)
    return {
        split: [
            _ClassSpec(
                name=f"U+{cp:04X} {letters[cp][1]}",
                payloads=[(chr(cp), tuple(fonts_of[cp]))] * _GLYPH_ATTEMPTS,
                max_images=_GLYPH_INSTANCES,
                superclass_name=script,
            )
            for script in scripts
            for cp in chosen_of[script]
        ]
        for split, scripts in _split_classes(list(chosen_of), rng).items()
    }


def _random_warp_mesh(rng: np.random.Generator, size: int, cells: int = 4) -> list[tuple[tuple, tuple]]:
    """PIL MESH data for a random affine map (rotation, scale, shear, shift) plus a mild elastic distortion.

    Each vertex of a `cells` x `cells` target grid samples the source at its inverse-affine image plus
    Gaussian noise; PIL interpolates bilinearly between vertices, so the displacement field is smooth.
    """
    angle = np.deg2rad(rng.uniform(-15, 15))
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    forward = rng.uniform(0.8, 1.1) * rotation @ np.array([[1.0, rng.uniform(-0.25, 0.25)], [0.0, 1.0]])
    shift = rng.uniform(-0.06, 0.06, size=2) * size
    grid = np.linspace(0, size, cells + 1)
    vertices = np.stack(np.meshgrid(grid, grid, indexing="xy"), axis=-1)  # [row, column, (x, y)]
    sources = (vertices - size / 2 - shift) @ np.linalg.inv(forward).T + size / 2
    sources += rng.normal(0.0, 0.03 * size, size=sources.shape)
    quad_corners = ((0, 0), (1, 0), (1, 1), (0, 1))  # PIL order: NW, SW, SE, NE as (row, column) offsets
    return [
        (
            (round(grid[col]), round(grid[row]), round(grid[col + 1]), round(grid[row + 1])),
            tuple(float(v) for dr, dc in quad_corners for v in sources[row + dr, col + dc]),
        )
        for row in range(cells)
        for col in range(cells)
    ]


def _render_glyph(
    payload: tuple[str, tuple[Path, ...]], rng: np.random.Generator, image_size: int
) -> Image.Image | None:
    """One handwriting-like instance: a random covering font and stroke, normalised in size, then warped."""
    char, font_paths = payload
    ink = _draw_ink(char, font_paths[rng.integers(len(font_paths))], stroke_width=rng.uniform(0, 1.5))
    if ink is None:
        return None
    scale = 0.7 * _GLYPH_CANVAS / max(ink.size)
    ink = ink.resize(tuple(max(1, round(side * scale)) for side in ink.size), Image.Resampling.LANCZOS)
    canvas = Image.new("L", (_GLYPH_CANVAS, _GLYPH_CANVAS), 0)
    canvas.paste(ink, ((_GLYPH_CANVAS - ink.width) // 2, (_GLYPH_CANVAS - ink.height) // 2))
    mesh = _random_warp_mesh(rng, _GLYPH_CANVAS)
    warped = canvas.transform(canvas.size, Image.Transform.MESH, mesh, Image.Resampling.BILINEAR)
    return ImageOps.invert(warped.resize((image_size, image_size), Image.Resampling.LANCZOS))


def _plan_emoji(rng: np.random.Generator) -> dict[str, list[_ClassSpec]]:
    """Sub-groups with 6 or more fully-qualified emoji drawn as one glyph (no skin tones); 40 at most."""
    font = _font(EMOJI_FONT, _EMOJI_FONT_SIZE)
    one_glyph_width = font.getlength("\N{GRINNING FACE}")
    emoji_of: dict[str, list[str]] = defaultdict(list)
    subgroup = ""
    for line in EMOJI_TEST.read_text(encoding="utf-8").splitlines():
        if line.startswith("# subgroup:"):
            subgroup = line.split(":", 1)[1].strip()
        fields = line.split("#", 1)[0].split(";")
        if len(fields) != 2 or fields[1].strip() != "fully-qualified":
            continue
        code_points = [int(cp, 16) for cp in fields[0].split()]
        emoji = "".join(map(chr, code_points))
        left, top, right, bottom = font.getbbox(emoji)  # empty for what the font cannot draw
        one_glyph = right > left and bottom > top and font.getlength(emoji) < 1.5 * one_glyph_width
        if one_glyph and not any(cp in _SKIN_TONE_MODIFIERS for cp in code_points):
            emoji_of[subgroup].append(emoji)
    subgroups = [name for name, emoji in emoji_of.items() if len(emoji) >= _MIN_EMOJI_PER_CLASS]
    return {
        split: [_ClassSpec(name, _seeded_subset(rng, emoji_of[name], _MAX_EMOJI_PER_CLASS)) for name in names]
        for split, names in _split_classes(subgroups, rng).items()
    }


def _render_emoji(emoji: str, rng: np.random.Generator, image_size: int) -> Image.Image | None:
    """The colour bitmap of `emoji`, centred on white."""
    canvas = Image.new("RGBA", (4 * _EMOJI_FONT_SIZE, 2 * _EMOJI_FONT_SIZE), (0, 0, 0, 0))
    font = _font(EMOJI_FONT, _EMOJI_FONT_SIZE)
    ImageDraw.Draw(canvas).text((_EMOJI_FONT_SIZE // 4,) * 2, emoji, font=font, embedded_color=True)
    return _square_on_white(canvas, image_size)


def _plan_clipart(rng: np.random.Generator) -> dict[str, list[_ClassSpec]]:
    """Folders holding 20 or more PNG files, each read in a seeded order until 30 succeed. Test-only."""
    classes = []
    for directory in sorted(path for path in CLIPART_DIR.rglob("*") if path.is_dir()):
        files = sorted(file for file in directory.glob("*.[pP][nN][gG]") if file.is_file())
        name = directory.relative_to(CLIPART_DIR).as_posix()
        if len(files) >= _MIN_CLIPART_PER_CLASS and name not in _CLIPART_EXCLUDED:
            payloads = _seeded_subset(rng, files)
            classes.append(_ClassSpec(name, payloads, _MAX_CLIPART_PER_CLASS, _MIN_CLIPART_PER_CLASS))
    return {"train": [], "validation": [], "test": classes}


def _render_clipart(path: Path, rng: np.random.Generator, image_size: int) -> Image.Image | None:
    """The clip art at `path` centred on white; None, with a warning, if it cannot be read quickly."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the size is checked below
            image = Image.open(path)
        with image:
            if image.width * image.height > _MAX_CLIPART_PIXELS:  # PNG has no draft mode to decode it smaller
                raise ValueError(f"{image.width}x{image.height} pixels is too large to decode quickly")
            rgba = image.convert("RGBA")
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        warnings.warn(f"MiniMeta clipart: skipping {path}: {error}", stacklevel=2)
        return None
    rgba.thumbnail((8 * image_size, 8 * image_size), Image.Resampling.LANCZOS)
    return _square_on_white(rgba, image_size)


def _plan_digits(rng: np.random.Generator) -> dict[str, list[_ClassSpec]]:
    """The 10 classes of scikit-learn's copy of the UCI digits, all in the test split."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    classes = [_ClassSpec(str(digit), list(digits.images[digits.target == digit])) for digit in range(10)]
    return {"train": [], "validation": [], "test": classes}


def _render_digit(pixels: np.ndarray, rng: np.random.Generator, image_size: int) -> Image.Image:
    """An 8x8 UCI digit as dark ink on white, upsampled smoothly."""
    ink_on_white = np.round(255 - pixels * (255 / 16)).astype(np.uint8)  # UCI intensities are 0..16
    return Image.fromarray(ink_on_white).resize((image_size, image_size), Image.Resampling.BILINEAR)


_Renderer = Callable[[Any, np.random.Generator, int], Image.Image | None]
_BUILDERS: dict[str, tuple[Callable[[np.random.Generator], dict[str, list[_ClassSpec]]], _Renderer]] = {
    "glyphs": (_plan_glyphs, _render_glyph),
    "emoji": (_plan_emoji, _render_emoji),
    "clipart": (_plan_clipart, _render_clipart),
    "digits": (_plan_digits, _render_digit),
}


def _png_bytes(image: Image.Image) -> bytes:
    """The image as an optimised PNG, grayscale reduced to 16 levels to halve the committed size."""
    if image.mode == "L":
        image = image.point(lambda v: _GRAY_STEP * round(v / _GRAY_STEP))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def _render_class(spec: _ClassSpec, render: _Renderer, rng: np.random.Generator, size: int) -> list[bytes]:
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
    plan_classes, render = _BUILDERS[domain]
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
        "sources": _sources(domain),
        "license": _LICENSES[domain],
    }


def _dataset_card(meta: dict[str, Any], command: str) -> str:
    """A Hugging Face dataset card: one config per domain, split sizes, sources, licences, how to rebuild."""
    configs, table, sources = "", "", ""
    for domain, entry in meta["domains"].items():
        configs += f"- config_name: {domain}\n  data_files:\n" + "".join(
            f"  - split: {split}\n    path: {domain}/{split}.parquet\n" for split in entry["splits"]
        )
        sizes = [entry["splits"].get(split) for split in SPLITS]
        cells = [f"{size['num_classes']} / {size['num_images']}" if size else "–" for size in sizes]
        table += f"| {domain} | {' | '.join(cells)} | {len(entry['superclass_names']) or '–'} |\n"
        packages = ", ".join(f"{s['package']} {s['version']} ({s['registry']})" for s in entry["sources"])
        sources += f"- **{domain}**: {_DESCRIPTIONS[domain]} From {packages}. Licence: {entry['license']}.\n"
    return f"""---
license: other
pretty_name: MiniMeta
task_categories:
- image-classification
configs:
{configs}---

# MiniMeta

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

    The copy is built in a folder beside `output_dir` and moved into place at the end, so a failed build
    leaves no half-written copy. `max_classes_per_domain` makes a tiny copy quickly (tests). Returns the
    metadata written to `metadata.json`.
    """
    unknown = sorted(set(domains) - set(DOMAINS))
    if unknown:
        raise ValueError(f"unknown MiniMeta domains {unknown}; choose from {DOMAINS}")
    domains = tuple(dict.fromkeys(domains))
    for domain in domains:
        _require_sources(domain)
    output_dir = Path(output_dir)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", dir=output_dir.parent))
    try:
        staging.chmod(0o755)
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
        (staging / "README.md").write_text(_dataset_card(meta, command), "utf-8")
        if output_dir.exists():
            previous = staging.with_name(staging.name + ".previous")
            output_dir.rename(previous)
            staging.rename(output_dir)
            shutil.rmtree(previous)
        else:
            staging.rename(output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return meta


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: build MiniMeta, by default into the package's prebuilt folder."""
    parser = argparse.ArgumentParser(description="Build the MiniMeta few-shot benchmark from packaged data.")
    parser.add_argument("--output", type=Path, default=PREBUILT_DIR, help="output folder (replaced)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random choice")
    args = parser.parse_args(argv)
    meta = build_minimeta(args.output, seed=args.seed)
    for domain, entry in meta["domains"].items():
        sizes = [f"{split} {n['num_classes']}/{n['num_images']}" for split, n in entry["splits"].items()]
        print(f"{domain} (classes/images): {', '.join(sizes)}")


__all__ = [
    "DOMAINS",
    "IMAGE_SIZE",
    "PREBUILT_DIR",
    "TEST_ONLY_DOMAINS",
    "TRAIN_DOMAINS",
    "build_minimeta",
    "main",
    "source_packages_available",
]

if __name__ == "__main__":
    main()
