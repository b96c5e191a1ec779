"""Benchmark SAM's overhead: SAMTrainer step time / Trainer step time, same model, batch and process.

    python bench/training.py [--repeats 5] [--steps 6] [--threads 2]

A tiny ViT image classifier (192 wide, 6 layers, patch 4, 32 px, batch 32) is trained by `Trainer` and by
`SAMTrainer` (ρ = 0.05) in alternating runs (A B, then B A) in one process; each run's steps are timed with a
callback (on_step_begin → on_step_end) after the first step. Prints medians and the ratio (target ≤ 2.1×).
"""

import argparse
import statistics
import tempfile
import time

import torch
from shapes import TINY_VIT_32PX
from tqdm.auto import tqdm
from transformers import Trainer, TrainerCallback, ViTConfig, ViTForImageClassification

from hf_fewshot import FewShotTrainingArguments, SAMTrainer


class StepTimer(TrainerCallback):
    def __init__(self):
        self.seconds = []

    def on_step_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.seconds.append(time.perf_counter() - self.start)


class RandomImages(torch.utils.data.Dataset):
    def __init__(self, count: int):
        generator = torch.Generator().manual_seed(0)
        self.pixels = torch.randn(count, 3, 32, 32, generator=generator)
        self.labels = torch.randint(0, 10, (count,), generator=generator)

    def __len__(self):
        return len(self.pixels)

    def __getitem__(self, index):
        return {"pixel_values": self.pixels[index], "labels": self.labels[index]}


def step_seconds(trainer_class, rho: float, steps: int, folder: str) -> list[float]:
    torch.manual_seed(0)
    config = ViTConfig(**TINY_VIT_32PX, num_labels=10)
    args = FewShotTrainingArguments(
        output_dir=folder,
        per_device_train_batch_size=32,
        max_steps=steps,
        optim="sgd",
        learning_rate=0.01,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        sam_rho=rho,
        logging_strategy="no",
    )
    timer = StepTimer()
    trainer = trainer_class(
        model=ViTForImageClassification(config), args=args, train_dataset=RandomImages(32 * steps), callbacks=[timer]
    )
    trainer.train()
    return timer.seconds[1:]  # the first step warms up


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    runs = {"Trainer": (Trainer, 0.0), "SAMTrainer": (SAMTrainer, 0.05)}
    medians = {name: [] for name in runs}
    order = list(runs)
    with tempfile.TemporaryDirectory() as folder, tqdm(total=2 * args.repeats, desc="bench/training") as progress:
        for _ in range(args.repeats):
            for name in order:
                medians[name].append(statistics.median(step_seconds(*runs[name], args.steps, folder)))
                progress.update()
            order.reverse()
    ratios = [sam / erm for sam, erm in zip(medians["SAMTrainer"], medians["Trainer"], strict=True)]
    print(
        f"\nSAM overhead ({args.threads} threads, tiny ViT 32 px, batch 32, ρ = 0.05; medians of {args.repeats} "
        f"alternating runs of {args.steps} steps)\n"
    )
    print("| measure | median | min–max | target |")
    print("|---|---:|---:|---|")
    for name, values in medians.items():
        print(f"| {name} step, s | {statistics.median(values):.3f} | {min(values):.3f}–{max(values):.3f} | |")
    print(
        f"| SAMTrainer / Trainer step | {statistics.median(ratios):.2f}× | {min(ratios):.2f}–{max(ratios):.2f} "
        "| ≤ 2.1× (2× = two passes) |"
    )


if __name__ == "__main__":
    main()
