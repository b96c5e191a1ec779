"""Every stored image decodes to the RGB picture a viewer shows: bit depths, transparency, EXIF orientation."""

import io

import numpy as np
import pytest
from PIL import Image

from hf_fewshot.data.images import decode_image
from hf_fewshot.data.transforms import EvalTransform


def stored(image: Image.Image, format: str = "PNG", **options) -> dict:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return {"bytes": buffer.getvalue(), "path": None}


def decoded(record: dict) -> np.ndarray:
    image = decode_image(record, 0, "test")
    assert image.mode == "RGB"
    return np.asarray(image)


@pytest.mark.parametrize(
    "image, format",
    [
        (Image.fromarray(np.full((4, 4), 32768, dtype=np.uint16)), "PNG"),  # 16-bit PNG: was all white
        (Image.fromarray(np.full((4, 4), 2**30, dtype=np.int32)), "TIFF"),  # 32-bit integer TIFF
        (Image.fromarray(np.full((4, 4), 0.5, dtype=np.float32)), "TIFF"),  # float TIFF in [0, 1]: was black
        (Image.fromarray(np.full((4, 4), 128, dtype=np.int32)), "TIFF"),  # an 8-bit array stored as int32 (datasets)
    ],
)
def test_high_bit_depths_are_scaled_not_clipped(image, format):
    pixels = decoded(stored(image, format))
    assert np.all(np.abs(pixels.astype(int) - 128) <= 1), pixels[0, 0]


def test_transparency_is_composited_on_white():
    red_but_transparent = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert np.all(decoded(stored(red_but_transparent)) == 255)
    half = Image.new("LA", (4, 4), (0, 128))  # black at half opacity → mid grey
    assert np.all(np.abs(decoded(stored(half)).astype(int) - 127) <= 1)
    palette = Image.new("P", (4, 4), 1)
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    assert np.all(decoded(stored(palette, transparency=1)) == 255), "the transparent palette entry is white"


def test_exif_orientation_is_applied_as_datasets_and_pipelines_do():
    image = Image.new("RGB", (6, 2), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    record = stored(image, "JPEG", exif=exif.tobytes())
    assert decoded(record).shape == (6, 2, 3)


def test_transforms_decode_non_rgb_images_the_same_way():
    pixels = EvalTransform(4, resize_ratio=1.0, mean=(0, 0, 0), std=(1, 1, 1))(
        [Image.new("RGBA", (4, 4), (9, 9, 9, 0))]
    )
    assert np.allclose(pixels.numpy(), 1.0)


@pytest.mark.parametrize("size", [16, 32, 128])
def test_eval_transform_gives_the_pixels_of_its_transformers_processor(size):
    rng = np.random.default_rng(size)
    shapes = [(size, size), (37, 53), (211, 97), (9, 300), (round(size * 146 / 128),) * 2, (size + 1, size)]
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in shapes]
    transform = EvalTransform(size)
    expected = transform.to_image_processor()(images, return_tensors="pt")["pixel_values"]
    assert (transform(images) - expected).abs().max() <= 1e-5


def test_eval_transform_refuses_sizes_it_cannot_crop():
    with pytest.raises(ValueError, match="positive number of pixels"):
        EvalTransform(0)
    with pytest.raises(ValueError, match="resize_ratio must be ≥ 1"):
        EvalTransform(32, resize_ratio=0.5)
