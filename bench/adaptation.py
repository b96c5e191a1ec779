"""Benchmark test-time fine-tuning: seconds per task, full vs LoRA, and the adapter's size on disk.

    python bench/adaptation.py [--repeats 3] [--steps 50] [--threads 2] [--backbones tiny vits]

One 5-way 5-shot task with 10 queries per class from MiniMeta digits (test split) at the backbone's image size;
`finetune_on_support` with a fixed learning rate runs `--steps` AdamW steps on a ProtoNet with a random backbone,
then predicts the 50 queries, in fp32 and with bf16 autocast. Full and LoRA (r 8, q_proj / v_proj) runs alternate
(A B, B A, …) in one process.
Sizes: the LoRA adapter folder (`save_pretrained` of the task's PEFT model) against the full backbone's folder.
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from shapes import TINY_VIT_32PX, VIT_S_16_84PX
from tqdm.auto import tqdm
from transformers import ViTConfig

from hf_fewshot import EpisodeCollator, EpisodeSampler, ProtoNetModel, load_domain
from hf_fewshot.adaptation import finetune_on_support
from hf_fewshot.data import EvalTransform

BACKBONES = {"tiny": TINY_VIT_32PX, "vits": VIT_S_16_84PX}
PRECISIONS = {"fp32": None, "bf16 autocast": torch.bfloat16}


def folder_megabytes(folder: Path) -> float:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file()) / 1e6


def task_seconds(model, episode, mode: str, steps: int, autocast: torch.dtype | None) -> float:
    start = time.perf_counter()
    support, labels = episode["support_pixel_values"], episode["support_labels"]
    task = finetune_on_support(model, support, labels, mode, learning_rate=1e-4, steps=steps, autocast=autocast)
    task(episode["query_pixel_values"])
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--backbones", nargs="+", choices=sorted(BACKBONES), default=["tiny"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    digits = load_domain("minimeta", "digits", "test")
    sampler = EpisodeSampler.from_dataset(digits, protocol="fixed", n_way=5, n_shot=5, n_query=10, seed=0)
    rows = []
    with tqdm(total=len(args.backbones) * 4 * args.repeats, desc="bench/adaptation") as progress:
        for name in args.backbones:
            shape = BACKBONES[name]
            torch.manual_seed(0)
            model = ProtoNetModel.from_backbone(ViTConfig(**shape))
            episode = EpisodeCollator(digits, EvalTransform(shape["image_size"]))(sampler.episode(0))
            times = {(mode, precision): [] for precision in PRECISIONS for mode in ("full", "lora")}
            order = list(times)
            for _ in range(args.repeats):
                for mode, precision in order:
                    times[mode, precision].append(
                        task_seconds(model, episode, mode, args.steps, PRECISIONS[precision])
                    )
                    progress.update()
                order.reverse()
            with tempfile.TemporaryDirectory() as folder:
                lora = finetune_on_support(
                    model, episode["support_pixel_values"], episode["support_labels"], "lora", 1e-4, steps=1
                )
                lora.backbone.save_pretrained(Path(folder) / "adapter")
                model.backbone.save_pretrained(Path(folder) / "backbone")
                sizes = folder_megabytes(Path(folder) / "adapter"), folder_megabytes(Path(folder) / "backbone")
            rows.append((name, times, sizes))
    print(
        f"\nTest-time fine-tuning ({args.threads} threads; {args.steps} steps + predicting 50 queries, 5-way 5-shot; "
        f"median and min–max of {args.repeats} alternating runs)\n"
    )
    print("| backbone | precision | full, s / task | LoRA, s / task | LoRA / full | adapter, MB | full backbone, MB |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, times, (adapter_mb, backbone_mb) in rows:
        for precision in PRECISIONS:
            full, lora = times["full", precision], times["lora", precision]
            cells = [f"{statistics.median(v):.2f} ({min(v):.2f}–{max(v):.2f})" for v in (full, lora)]
            ratio = statistics.median(lora) / statistics.median(full)
            sizes = f"{adapter_mb:.3f} | {backbone_mb:.1f}"
            print(f"| {name} | {precision} | {cells[0]} | {cells[1]} | {ratio:.2f}× | {sizes} |")


if __name__ == "__main__":
    main()
