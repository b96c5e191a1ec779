"""Benchmark the models: meta-training cost per task, task preparation, task-model inference, memory, checkpoint.

    python bench/models.py [--backbones tiny vits] [--repeats 5] [--threads 2]

Backbones have random weights: `vits` = ViT-S/16 at 84 px, `tiny` = 192 wide, 6 layers, patch 4, 32 px. SMAT's
gates are set as after training (saturated, 90% closed) and its delta is non-zero. Tasks are 5-way 5-shot
10-query; meta-training is timed per update of 4 tasks (SGD step included) and reported per task. Every
measurement runs in its own process, so peak memory (max RSS) belongs to it alone. Prints a Markdown table
of medians and min–max over `--repeats` after a warm-up.
"""

import argparse
import copy
import math
import multiprocessing
import resource
import statistics
import tempfile
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

BACKBONES = {
    "vits": dict(
        hidden_size=384,
        num_hidden_layers=12,
        num_attention_heads=6,
        intermediate_size=1536,
        patch_size=16,
        image_size=84,
    ),
    "tiny": dict(
        hidden_size=192, num_hidden_layers=6, num_attention_heads=3, intermediate_size=768, patch_size=4, image_size=32
    ),
}
WAYS, SHOTS, QUERIES = 5, 5, 10
TASKS_PER_UPDATE = 4


def make_episode(image_size: int):
    generator = torch.Generator().manual_seed(0)
    support = torch.randn(WAYS * SHOTS, 3, image_size, image_size, generator=generator)
    query = torch.randn(WAYS * QUERIES, 3, image_size, image_size, generator=generator)
    return support, torch.arange(WAYS).repeat(SHOTS), query, torch.arange(WAYS).repeat(QUERIES)


def build(kind: str, backbone: str):
    from transformers import ViTConfig

    from hf_fewshot import ProtoNetModel, SmatModel

    config = ViTConfig(**BACKBONES[backbone])
    torch.manual_seed(0)
    if kind == "smat":
        model = SmatModel.from_backbone(config)
        with torch.no_grad():  # as after training: a non-zero delta, gates saturated, 90% closed (τ = 0.9)
            model.delta.normal_(0, 1e-3)
            closed = torch.rand(model.gate_logits.shape) < model.config.sparsity_target
            model.gate_logits.copy_(torch.where(closed, math.log(0.01), math.log(100.0)))
        return model
    if kind == "protonet":
        return ProtoNetModel.from_backbone(config)
    from transformers import ViTModel

    return ViTModel(config, add_pooling_layer=False)


def measure(case: str, backbone: str, repeats: int, threads: int, queue) -> None:
    """Run one case in this (fresh) process and put (seconds per repeat, peak RSS in bytes, extra) on `queue`."""
    torch.set_num_threads(threads)
    support, support_labels, query, query_labels = make_episode(BACKBONES[backbone]["image_size"])
    extra = None
    if case in ("smat_train", "protonet_train"):
        model = build(case.split("_")[0], backbone).train()
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-9)

        def work():  # one update of TASKS_PER_UPDATE tasks (gradient accumulation), as SMAT.md §6
            for _ in range(TASKS_PER_UPDATE):
                model(support, support_labels, query, query_labels).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    elif case == "smat_prepare":
        model = build("smat", backbone).eval()

        def work():
            model.prepare_task(support, support_labels)
    elif case == "smat_route_merge":  # prepare_task without its two backbone passes over the support set
        model = build("smat", backbone).eval()
        task_backbone = copy.deepcopy(model.backbone)
        with torch.no_grad():
            features = model.embed(support)

        def work():
            with torch.no_grad():
                model.merge_task_weights_into(task_backbone, model._route(features, support_labels, WAYS)[2])
    elif case == "inference":  # the merged task model against a plain ViTModel, interleaved in one process
        model = build("smat", backbone).eval()
        networks = [build("plain", backbone).eval(), model.prepare_task(support, support_labels).backbone]
        images = torch.cat([query] * 4)
        extra = ([], [])

        def work():
            for network, times in zip(networks, extra, strict=True):
                start = time.perf_counter()
                with torch.no_grad():
                    network(pixel_values=images)
                times.append(time.perf_counter() - start)
    elif case == "checkpoint":
        model = build("smat", backbone)
        with tempfile.TemporaryDirectory() as folder:
            model.save_pretrained(folder)
            extra = sum(f.stat().st_size for f in Path(folder).glob("*.safetensors"))

        def work():
            pass

    work()  # warm-up
    if case == "inference":
        extra[0].clear(), extra[1].clear()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        seconds.append(time.perf_counter() - start)
    queue.put((seconds, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, extra))


def run_case(case: str, backbone: str, repeats: int, threads: int):
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=measure, args=(case, backbone, repeats, threads, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", nargs="+", default=["tiny", "vits"], choices=sorted(BACKBONES))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    cases = ["protonet_train", "smat_train", "smat_route_merge", "smat_prepare", "inference", "checkpoint"]
    results = {}
    with tqdm(total=len(cases) * len(args.backbones), desc="bench/models", unit="case") as progress:
        for backbone in args.backbones:
            for case in cases:
                results[backbone, case] = run_case(case, backbone, args.repeats, args.threads)
                progress.update()

    def median(backbone, case):
        return statistics.median(results[backbone, case][0])

    def spread(backbone, case, scale=1.0, digits=3):
        times = results[backbone, case][0]
        low, mid, high = (value * scale for value in (min(times), median(backbone, case), max(times)))
        return f"{mid:.{digits}f} ({low:.{digits}f}–{high:.{digits}f})"

    images = 4 * WAYS * QUERIES
    print(
        f"\nModels benchmark ({args.threads} threads, {WAYS}-way {SHOTS}-shot {QUERIES}-query, random weights, "
        f"trained-like gates, median (min–max) of {args.repeats})\n"
    )
    print("| measure | " + " | ".join(args.backbones) + " | target |")
    print("|---|" + "---:|" * len(args.backbones) + "---|")
    rows = [
        ("ProtoNet meta-training, s / task", lambda b: spread(b, "protonet_train", 1 / TASKS_PER_UPDATE), ""),
        ("SMAT meta-training, s / task", lambda b: spread(b, "smat_train", 1 / TASKS_PER_UPDATE), ""),
        (
            "SMAT / ProtoNet per task",
            lambda b: f"{median(b, 'smat_train') / median(b, 'protonet_train'):.2f}×",
            "≤ 2.4×",
        ),
        ("SMAT training peak RSS, GiB", lambda b: f"{results[b, 'smat_train'][1] / 2**30:.2f}", "≤ 3 GiB (vits)"),
        ("ProtoNet training peak RSS, GiB", lambda b: f"{results[b, 'protonet_train'][1] / 2**30:.2f}", ""),
        (
            "SMAT route + merge into a backbone copy, ms",
            lambda b: spread(b, "smat_route_merge", 1000, 1),
            "≤ 50 ms (vits)",
        ),
        ("SMAT prepare_task (+ copy, 2 support passes), ms", lambda b: spread(b, "smat_prepare", 1000, 1), ""),
        (
            "plain ViTModel inference, images / s",
            lambda b: f"{images / statistics.median(results[b, 'inference'][2][0]):.0f}",
            "",
        ),
        (
            "task model / plain ViTModel speed (same process)",
            lambda b: f"{statistics.median(p / t for p, t in zip(*results[b, 'inference'][2], strict=True)):.3f}×",
            "≥ 0.98×",
        ),
        ("SMAT checkpoint (8 experts), MB", lambda b: f"{results[b, 'checkpoint'][2] / 1e6:.1f}", "report"),
    ]
    for label, cell, target in rows:
        print(f"| {label} | " + " | ".join(cell(b) for b in args.backbones) + f" | {target} |")


if __name__ == "__main__":
    main()
