"""The four MiniMeta domains: the packages each is rendered from, how its classes are chosen (a plan per domain)
and how one image of a class is drawn (a renderer per domain).

`DOMAIN_RENDERERS[domain]` is `(plan, render)`: `plan(rng)` returns the classes per split as `ClassSpec`s (a name
and candidate payloads); `render(payload, rng, image_size)` draws one image, or None when the payload gives
nothing usable. `minimeta.build` runs them, seeded, and writes the parquet files and the card.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
import warnings
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

from hf_fewshot.data.schema import SPLITS

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

_TRAIN_FRACTION, _VALIDATION_FRACTION = 0.6, 0.1
_MIN_LETTERS_PER_SCRIPT, _MAX_LETTERS_PER_SCRIPT = 8, 16
_GLYPH_INSTANCES, _GLYPH_ATTEMPTS = 12, 48
_GLYPH_FONT_SIZE, _GLYPH_CANVAS = 48, 64
_MIN_EMOJI_PER_CLASS, _MAX_EMOJI_PER_CLASS = 6, 40
_EMOJI_FONT_SIZE = 109  # the size of Noto Color Emoji's only bitmap strike
_SKIN_TONE_MODIFIERS = range(0x1F3FB, 0x1F400)
_MIN_CLIPART_PER_CLASS, _MAX_CLIPART_PER_CLASS = 20, 30
_CLIPART_EXCLUDED = ("unsorted",)  # a folder of leftovers, not a category
_MAX_CLIPART_PIXELS = 4096 * 4096  # 19 of the 8,121 source PNGs are ~170 Mpx posters; they are skipped


@dataclass
class ClassSpec:
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


def require_sources(domain: str) -> None:
    """Fail early, naming the package to install, when a source of `domain` is missing."""
    for package, path in _DEBIAN_SOURCES[domain]:
        if not path.exists():
            raise FileNotFoundError(f"{package} is not installed: apt-get install {package} (needs {path})")
    for distribution, module in _PYPI_SOURCES.get(domain, ()):
        if find_spec(module) is None:
            raise ModuleNotFoundError(f"{distribution} is not installed: pip install {distribution}")


def source_versions(domain: str) -> list[dict[str, str]]:
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


def _plan_glyphs(rng: np.random.Generator) -> dict[str, list[ClassSpec]]:
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
            ClassSpec(
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


def _plan_emoji(rng: np.random.Generator) -> dict[str, list[ClassSpec]]:
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
        split: [ClassSpec(name, _seeded_subset(rng, emoji_of[name], _MAX_EMOJI_PER_CLASS)) for name in names]
        for split, names in _split_classes(subgroups, rng).items()
    }


def _render_emoji(emoji: str, rng: np.random.Generator, image_size: int) -> Image.Image | None:
    """The colour bitmap of `emoji`, centred on white."""
    canvas = Image.new("RGBA", (4 * _EMOJI_FONT_SIZE, 2 * _EMOJI_FONT_SIZE), (0, 0, 0, 0))
    font = _font(EMOJI_FONT, _EMOJI_FONT_SIZE)
    ImageDraw.Draw(canvas).text((_EMOJI_FONT_SIZE // 4,) * 2, emoji, font=font, embedded_color=True)
    return _square_on_white(canvas, image_size)


def _plan_clipart(rng: np.random.Generator) -> dict[str, list[ClassSpec]]:
    """Folders holding 20 or more PNG files, each read in a seeded order until 30 succeed. Test-only."""
    classes = []
    for directory in sorted(path for path in CLIPART_DIR.rglob("*") if path.is_dir()):
        files = sorted(file for file in directory.glob("*.[pP][nN][gG]") if file.is_file())
        name = directory.relative_to(CLIPART_DIR).as_posix()
        if len(files) >= _MIN_CLIPART_PER_CLASS and name not in _CLIPART_EXCLUDED:
            payloads = _seeded_subset(rng, files)
            classes.append(ClassSpec(name, payloads, _MAX_CLIPART_PER_CLASS, _MIN_CLIPART_PER_CLASS))
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


def _plan_digits(rng: np.random.Generator) -> dict[str, list[ClassSpec]]:
    """The 10 classes of scikit-learn's copy of the UCI digits, all in the test split."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    classes = [ClassSpec(str(digit), list(digits.images[digits.target == digit])) for digit in range(10)]
    return {"train": [], "validation": [], "test": classes}


def _render_digit(pixels: np.ndarray, rng: np.random.Generator, image_size: int) -> Image.Image:
    """An 8x8 UCI digit as dark ink on white, upsampled smoothly."""
    ink_on_white = np.round(255 - pixels * (255 / 16)).astype(np.uint8)  # UCI intensities are 0..16
    return Image.fromarray(ink_on_white).resize((image_size, image_size), Image.Resampling.BILINEAR)


Renderer = Callable[[Any, np.random.Generator, int], Image.Image | None]
DOMAIN_RENDERERS: dict[str, tuple[Callable[[np.random.Generator], dict[str, list[ClassSpec]]], Renderer]] = {
    "glyphs": (_plan_glyphs, _render_glyph),
    "emoji": (_plan_emoji, _render_emoji),
    "clipart": (_plan_clipart, _render_clipart),
    "digits": (_plan_digits, _render_digit),
}


__all__ = [
    "DOMAIN_RENDERERS",
    "ClassSpec",
    "Renderer",
    "require_sources",
    "source_packages_available",
    "source_versions",
]
