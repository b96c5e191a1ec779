"""Benchmark the data path on MiniMeta: episode descriptions/s (sampler alone) and images/s decoded + transformed.

    python bench/episodes.py [--repeats 5] [--episodes 300] [--image-size 32]

Runs on one thread (the per-core figure of docs/performance.md) and prints a Markdown table of medians
with min–max over `--repeats` timed runs, after one warm-up run each.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from hf_fewshot.data import EpisodeCollator, EpisodeSampler, EvalTransform, TrainTransform, load_domain

SAMPLING_TARGET = 1_000  # episode descriptions / s
DECODING_TARGET = 2_000  # images / s / core at 32 px


def timed_rates(work: Callable[[], int], repeats: int, progress: tqdm) -> list[float]:
    """Items per second of `work()` (which returns its item count) over `repeats` runs after a warm-up."""
    work()
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        items = work()
        rates.append(items / (time.perf_counter() - start))
        progress.update()
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--episodes", type=int, default=300, help="episodes per timed run")
    parser.add_argument("--image-size", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(1)

    splits = {
        f"{domain}/{split}": load_domain("minimeta", domain, split)
        for domain, split in (("glyphs", "train"), ("emoji", "train"), ("clipart", "test"), ("digits", "test"))
    }
    imagenet_like = np.repeat(np.arange(712), 1300)  # the label column of Meta-Dataset's ILSVRC train split
    cases: list[tuple[str, str, Callable[[], int], int]] = []

    def sample(sampler: EpisodeSampler) -> Callable[[], int]:
        def work() -> int:
            sampler.set_epoch(sampler.epoch + 1)
            for i in range(args.episodes):
                sampler.episode(i)
            return args.episodes

        return work

    for name, split in splits.items():
        cases.append(
            (f"sample md episodes, {name}", "episodes/s", sample(EpisodeSampler.from_dataset(split)), SAMPLING_TARGET)
        )
    cases.append(
        (
            "sample md episodes, 712 classes × 1300 (ILSVRC-sized)",
            "episodes/s",
            sample(EpisodeSampler(imagenet_like)),
            SAMPLING_TARGET,
        )
    )

    def decode(split_name: str, transform) -> Callable[[], int]:
        split = splits[split_name]
        sampler = EpisodeSampler.from_dataset(split, seed=1)  # Meta-Dataset episodes, as in training
        collator = EpisodeCollator(split, transform)
        episodes = [sampler.episode(i) for i in range(max(1, args.episodes // 10))]

        def work() -> int:
            return sum(
                collator(episode)["query_pixel_values"].shape[0] + len(episode.support_indices) for episode in episodes
            )

        return work

    for name in ("glyphs/train", "emoji/train"):
        cases.append(
            (
                f"decode + eval transform, {name}",
                "images/s",
                decode(name, EvalTransform(args.image_size)),
                DECODING_TARGET,
            )
        )
        cases.append(
            (
                f"decode + train augmentation, {name}",
                "images/s",
                decode(name, TrainTransform(args.image_size)),
                DECODING_TARGET,
            )
        )

    rows = []
    with tqdm(total=len(cases) * args.repeats, desc="bench/episodes", unit="run") as progress:
        for label, unit, work, target in cases:
            rates = timed_rates(work, args.repeats, progress)
            rows.append((label, unit, statistics.median(rates), min(rates), max(rates), target))

    print(f"\nEpisodes benchmark (1 thread, {args.image_size} px, median of {args.repeats} runs)\n")
    print("| what | unit | median | min–max | target |")
    print("|---|---|---:|---:|---:|")
    for label, unit, median, low, high, target in rows:
        verdict = "ok" if median >= target else "MISSED"
        print(f"| {label} | {unit} | {median:,.0f} | {low:,.0f}–{high:,.0f} | ≥ {target:,} ({verdict}) |")


if __name__ == "__main__":
    main()
