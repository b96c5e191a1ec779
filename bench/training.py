"""Benchmark training: SAM's overhead, and SMAT vs P>M>F time per meta-training task in `EpisodicTrainer`.

    python bench/training.py [--repeats 5] [--steps 6] [--threads 2] [--backbones tiny vits]

1. A tiny ViT image classifier (192 wide, 6 layers, patch 4, 32 px, batch 32) is trained by `Trainer` and by
   `SAMTrainer` (ρ = 0.05) in alternating runs (A B, then B A) in one process. Target ≤ 2.1×.
2. `EpisodicTrainer` meta-trains a `SmatModel` and a `ProtoNetModel` (random backbone of each shape, docs/smat.md,
"Optimisation"
   optimisers, 4 tasks per update as the paper) on the same MiniMeta episodes: 5-way 5-shot 10-query from the
   digits split (the domain with enough images per class), alternating runs; time per task = update time / 4,
   optimizer step included; SMAT with fresh gates (as a run starts) and trained-like ones (saturated, 90% closed).
   Target SMAT / ProtoNet ≤ 2.5× in both.
Each run's steps are timed with a callback (on_step_begin → on_step_end) after the first step. The whole process keeps
freed memory for reuse, as the trainers do on CPU (`hf_fewshot.reuse_freed_cpu_memory`), so that the stock Trainer
is measured in the same setting; `--glibc-defaults` measures every run without it.
"""

import argparse
import statistics
import tempfile
import time

import torch
from shapes import TINY_VIT_32PX, VIT_S_16_84PX, saturate_gates
from tqdm.auto import tqdm
from transformers import Trainer, TrainerCallback, ViTConfig, ViTForImageClassification

from hf_fewshot import (
    EpisodicTrainer,
    FewShotTrainingArguments,
    ProtoNetModel,
    SAMTrainer,
    SmatModel,
    load_domain,
    reuse_freed_cpu_memory,
)

BACKBONES = {"tiny": TINY_VIT_32PX, "vits": VIT_S_16_84PX}
TASKS_PER_UPDATE = 4


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


def step_seconds(trainer_class, rho: float, steps: int, folder: str, reuse_memory: bool) -> list[float]:
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
        reuse_freed_cpu_memory=reuse_memory,
    )
    timer = StepTimer()
    trainer = trainer_class(
        model=ViTForImageClassification(config), args=args, train_dataset=RandomImages(32 * steps), callbacks=[timer]
    )
    trainer.train()
    return timer.seconds[1:]  # the first step warms up


def task_seconds(
    model_class, shape: dict, steps: int, folder: str, reuse_memory: bool, trained_gates: bool = False
) -> list[float]:
    """Seconds per meta-training task of `model_class` in EpisodicTrainer (4 tasks per optimizer step); SMAT's gates
    fresh (as a run starts) or, with `trained_gates`, saturated as after training (bench/shapes.py)."""
    torch.manual_seed(0)
    model = model_class.from_backbone(ViTConfig(**shape))
    if trained_gates:
        saturate_gates(model)
    args = FewShotTrainingArguments(
        output_dir=folder,
        max_steps=steps,
        gradient_accumulation_steps=TASKS_PER_UPDATE,
        learning_rate=1e-4,
        max_grad_norm=0.0,
        episode_protocol="fixed",
        n_way=5,
        n_shot=5,
        n_query=10,
        image_size=shape["image_size"],
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        logging_strategy="no",
        reuse_freed_cpu_memory=reuse_memory,
    )
    timer = StepTimer()
    digits = load_domain("minimeta", "digits", "test")
    EpisodicTrainer(model, args, train_dataset={"digits": digits}, callbacks=[timer]).train()
    return [seconds / TASKS_PER_UPDATE for seconds in timer.seconds[1:]]  # the first update warms up


def alternate(runs: dict, repeats: int, progress) -> dict[str, list[float]]:
    """Median seconds of each run, alternating the order (A B, B A, …) to spread the CPU's drift."""
    medians = {name: [] for name in runs}
    order = list(runs)
    for _ in range(repeats):
        for name in order:
            medians[name].append(statistics.median(runs[name]()))
            progress.update()
        order.reverse()
    return medians


def print_rows(medians: dict[str, list[float]], unit: str) -> None:
    for name, values in medians.items():
        print(f"| {name}, {unit} | {statistics.median(values):.3f} | {min(values):.3f}–{max(values):.3f} | |")


def print_ratio(label: str, numerator: list[float], denominator: list[float], target: str) -> None:
    ratios = [a / b for a, b in zip(numerator, denominator, strict=True)]
    print(f"| {label} | {statistics.median(ratios):.2f}× | {min(ratios):.2f}–{max(ratios):.2f} | {target} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--backbones", nargs="+", choices=sorted(BACKBONES), default=["tiny"])
    parser.add_argument(
        "--glibc-defaults",
        action="store_true",
        help="leave glibc's allocator settings as they are (reuse_freed_cpu_memory=False in every run)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    reuse = not args.glibc_defaults
    if reuse:
        reuse_freed_cpu_memory()
    with (
        tempfile.TemporaryDirectory() as folder,
        tqdm(total=args.repeats * (2 + 3 * len(args.backbones)), desc="bench/training") as progress,
    ):
        sam = alternate(
            {
                "Trainer step": lambda: step_seconds(Trainer, 0.0, args.steps, folder, reuse),
                "SAMTrainer step": lambda: step_seconds(SAMTrainer, 0.05, args.steps, folder, reuse),
            },
            args.repeats,
            progress,
        )
        tasks = {
            name: alternate(
                {
                    f"P>M>F (ProtoNet) task, {name}": lambda shape=BACKBONES[name]: task_seconds(
                        ProtoNetModel, shape, args.steps, folder, reuse
                    ),
                    f"SMAT task, fresh gates, {name}": lambda shape=BACKBONES[name]: task_seconds(
                        SmatModel, shape, args.steps, folder, reuse
                    ),
                    f"SMAT task, trained-like gates, {name}": lambda shape=BACKBONES[name]: task_seconds(
                        SmatModel, shape, args.steps, folder, reuse, trained_gates=True
                    ),
                },
                args.repeats,
                progress,
            )
            for name in args.backbones
        }
    print(
        f"\nTraining ({args.threads} threads; medians of {args.repeats} alternating runs of {args.steps} steps; "
        "SAM: tiny ViT classifier 32 px, batch 32, ρ = 0.05; tasks: 5-way 5-shot 10-query MiniMeta digits; "
        f"{'glibc defaults' if args.glibc_defaults else 'freed memory reused'})\n"
    )
    print("| measure | median | min–max | target |")
    print("|---|---:|---:|---|")
    print_rows(sam, "s")
    print_ratio("SAMTrainer / Trainer step", sam["SAMTrainer step"], sam["Trainer step"], "≤ 2.1× (2× = two passes)")
    for name, medians in tasks.items():
        print_rows(medians, "s")
        protonet, fresh, trained = medians.values()
        print_ratio(f"SMAT / P>M>F per task, fresh gates, {name}", fresh, protonet, "≤ 2.5×")
        print_ratio(f"SMAT / P>M>F per task, trained-like gates, {name}", trained, protonet, "≤ 2.5×")


if __name__ == "__main__":
    main()
