"""Benchmark the Meta-Dataset converter: images per second from official-format TFRecords to parquet.

    python bench/convert.py [--classes 20] [--images 200] [--size 84] [--repeats 3]

Writes a flat domain in the official layout (dataset_spec.json + one `{class}.tfrecords` per class of JPEG
examples, as the official converter stores them) into a temporary folder, then times `convert_domain` (CRC checks,
Example decoding, within-class shuffle, parquet writing). Prints the median and min–max over repeats.
"""

import argparse
import io
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from hf_fewshot.data.conversion import convert_domain
from hf_fewshot.data.tfrecord import frame_record, serialize_example


def write_domain(folder: Path, classes: int, images: int, size: int) -> int:
    rng = np.random.default_rng(0)
    spec = {"__class__": "DatasetSpecification", "name": "bench", "file_pattern": "{}.tfrecords",
            "classes_per_split": {"TRAIN": classes, "VALID": 0, "TEST": 0},
            "class_names": {str(k): f"class-{k}" for k in range(classes)}}  # fmt: skip
    folder.mkdir(parents=True)
    (folder / "dataset_spec.json").write_text(json.dumps(spec))
    total_bytes = 0
    for class_id in range(classes):
        blobs = []
        for _ in range(images):
            buffer = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buffer, format="JPEG")
            blobs.append(frame_record(serialize_example(buffer.getvalue(), class_id)))
        data = b"".join(blobs)
        total_bytes += len(data)
        (folder / f"{class_id}.tfrecords").write_bytes(data)
    return total_bytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--size", type=int, default=84)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        records = Path(folder) / "records" / "bench"
        total_bytes = write_domain(records, args.classes, args.images, args.size)
        seconds = []
        for repeat in range(args.repeats):
            start = time.perf_counter()
            convert_domain(records, Path(folder) / f"out{repeat}", progress=False)
            seconds.append(time.perf_counter() - start)
    count = args.classes * args.images
    rates = [count / s for s in seconds]
    print(f"\nConversion of {count} JPEG records ({args.size} px, {total_bytes / 1e6:.1f} MB), {args.repeats} runs\n")
    print("| measure | median | min–max |")
    print("|---|---:|---:|")
    print(f"| images / s | {statistics.median(rates):,.0f} | {min(rates):,.0f}–{max(rates):,.0f} |")
    print(f"| MB / s | {statistics.median(rates) * total_bytes / count / 1e6:,.1f} | |")


if __name__ == "__main__":
    main()
