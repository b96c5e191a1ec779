"""Benchmark the models: meta-training cost per task, evaluation, task preparation, inference, memory, checkpoints.

    python bench/models.py [--backbones tiny vits] [--repeats 5] [--threads 2]

Backbones have random weights: `vits` = ViT-S/16 at 84 px, `tiny` = 192 wide, 6 layers, patch 4, 32 px. SMAT's
gates are measured in both states a run goes through: fresh (log α ~ N(0, 0.5²), as at the start of training: every
gate fractional) and trained-like (saturated, 90% closed, a non-zero delta). Tasks are 5-way 5-shot 10-query;
meta-training is timed per update of 4 tasks (SGD step included, λ > 0 so the density term is on) and reported per
task, in fp32 and under bf16 autocast (fp32 master weights). Evaluation = `prepare_task` + predicting the 50 queries.
Every case runs in its own process, so peak memory (max RSS) belongs to it alone; what is compared as a ratio (SMAT
vs ProtoNet, task model vs plain ViT) alternates in one process. Each process keeps freed memory for reuse, as the
trainers and `hf-fewshot evaluate` do on CPU (`hf_fewshot.reuse_freed_cpu_memory`); `--glibc-defaults` measures
without it. Prints a Markdown table of medians and min–max over `--repeats` after a warm-up.
"""

import argparse
import contextlib
import copy
import multiprocessing
import resource
import statistics
import tempfile
import time
from pathlib import Path

import torch
from shapes import TINY_VIT_32PX, VIT_S_16_84PX, saturate_gates
from tqdm.auto import tqdm

BACKBONES = {"vits": VIT_S_16_84PX, "tiny": TINY_VIT_32PX}
WAYS, SHOTS, QUERIES = 5, 5, 10
TASKS_PER_UPDATE = 4


def make_episode(image_size: int):
    generator = torch.Generator().manual_seed(0)
    support = torch.randn(WAYS * SHOTS, 3, image_size, image_size, generator=generator)
    query = torch.randn(WAYS * QUERIES, 3, image_size, image_size, generator=generator)
    return support, torch.arange(WAYS).repeat(SHOTS), query, torch.arange(WAYS).repeat(QUERIES)


def build(kind: str, backbone: str, gates: str = "trained"):
    """A random model of `kind` ("smat", "protonet", "plain" ViTModel); SMAT with `gates` "fresh" or "trained"."""
    from transformers import ViTConfig

    from hf_fewshot import ProtoNetModel, SmatModel

    config = ViTConfig(**BACKBONES[backbone])
    torch.manual_seed(0)
    if kind == "smat":
        model = SmatModel.from_backbone(config)
        if gates == "trained":
            saturate_gates(model)
        with torch.no_grad():  # multipliers switched on, as soon after the start of training: the density term runs
            model.sparsity_multipliers.fill_(0.01)
        return model
    if kind == "protonet":
        return ProtoNetModel.from_backbone(config)
    from transformers import ViTModel

    return ViTModel(config, add_pooling_layer=False)


def training_update(kind: str, backbone: str, episode, gates: str = "trained", autocast: torch.dtype | None = None):
    """One meta-training update of `kind`: TASKS_PER_UPDATE tasks (gradient accumulation) and an SGD step."""
    model = build(kind, backbone, gates).train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-9)
    mixed_precision = torch.autocast("cpu", autocast) if autocast is not None else contextlib.nullcontext()

    def update():
        for _ in range(TASKS_PER_UPDATE):
            with mixed_precision:
                loss = model(*episode).loss
            loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return update


def evaluation(kind: str, backbone: str, episode):
    """One evaluation task of `kind`: `prepare_task` on the support set, then the logits of the 50 queries."""
    model = build(kind, backbone).eval()
    support, support_labels, query, _ = episode

    def evaluate():
        model.prepare_task(support, support_labels)(query)

    return evaluate


def measure(case: str, backbone: str, repeats: int, threads: int, reuse_memory: bool, queue) -> None:
    """Run one case in this (fresh) process; put (seconds per repeat, peak RSS in bytes, extra) on `queue`.

    Cases that compare two things ("train", "inference") alternate them in one process, one run each in
    turn, and return both series in `extra`: their ratio is then free of the drift of a shared CPU.
    """
    torch.set_num_threads(threads)
    if reuse_memory:
        from hf_fewshot import reuse_freed_cpu_memory

        reuse_freed_cpu_memory()
    episode = make_episode(BACKBONES[backbone]["image_size"])
    support, support_labels, query, _ = episode
    extra, compared = None, None
    if case in TRAINING_CASES:
        gates, autocast = TRAINING_CASES[case]
        compared = [training_update(kind, backbone, episode, gates, autocast) for kind in ("protonet", "smat")]
    elif case == "eval":
        compared = [evaluation("protonet", backbone, episode), evaluation("smat", backbone, episode)]
    elif case in ("protonet_memory", "smat_memory"):  # alone in its process, so max RSS is its own
        work = training_update(case.split("_")[0], backbone, episode)
    elif case == "smat_prepare":
        model = build("smat", backbone).eval()

        def work():
            model.prepare_task(support, support_labels)
    elif case == "smat_route_merge":  # prepare_task without the backbone copy and its two support passes
        model = build("smat", backbone).eval()
        task_backbone = copy.deepcopy(model.backbone)
        with torch.no_grad():
            features = model.embed(support)

        def work():
            with torch.no_grad():
                model.merge_task_weights_into(task_backbone, model._route(features, support_labels, WAYS)[2])
    elif case == "inference":  # the merged task model against a plain ViTModel
        model = build("smat", backbone).eval()
        networks = [build("plain", backbone).eval(), model.prepare_task(support, support_labels).backbone]
        images = torch.cat([query] * 4)

        def forward(network):
            def run():
                with torch.no_grad():
                    network(pixel_values=images)

            return run

        compared = [forward(network) for network in networks]
    elif case == "checkpoint":  # safetensors bytes: dense banks, compact experts, compact + backbone referenced
        model = build("smat", backbone)
        model.config.backbone_name_or_path = "facebook/dino-vits16"  # only named: include_backbone=False needs one
        extra = []
        for options in ({"compact": False}, {}, {"include_backbone": False}):
            with tempfile.TemporaryDirectory() as folder:
                model.save_pretrained(folder, **options)
                extra.append(sum(f.stat().st_size for f in Path(folder).glob("*.safetensors")))

        def work():
            pass

    if compared is not None:
        extra = ([], [])

        order = [0, 1]

        def work():  # A B, then B A: neither side always runs first
            for index in order:
                start = time.perf_counter()
                compared[index]()
                extra[index].append(time.perf_counter() - start)
            order.reverse()

    work()  # warm-up
    if compared is not None:
        extra[0].clear(), extra[1].clear()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        seconds.append(time.perf_counter() - start)
    queue.put((seconds, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, extra))


TRAINING_CASES = {  # case: (SMAT's gates, autocast)
    "train": ("trained", None),
    "train_fresh": ("fresh", None),
    "train_bf16": ("trained", torch.bfloat16),
}


ALL_CASES = [*TRAINING_CASES, "protonet_memory", "smat_memory", "eval", "smat_route_merge", "smat_prepare"]
ALL_CASES += ["inference", "checkpoint"]


def run_case(case: str, backbone: str, repeats: int, threads: int, reuse_memory: bool):
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=measure, args=(case, backbone, repeats, threads, reuse_memory, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", nargs="+", default=["tiny", "vits"], choices=sorted(BACKBONES))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--cases",
        nargs="+",
        default=ALL_CASES,
        choices=ALL_CASES,
        help="measure only these (rows of the others print '–'); e.g. leave out train_bf16 on a CPU without native "
        "bf16 matmuls, where it is emulated and runs tens of times slower than fp32",
    )
    parser.add_argument(
        "--glibc-defaults",
        action="store_true",
        help="leave glibc's allocator settings as they are (freed memory goes back to the system, as before "
        "hf_fewshot.reuse_freed_cpu_memory)",
    )
    args = parser.parse_args()
    cases = args.cases
    results = {}
    with tqdm(total=len(cases) * len(args.backbones), desc="bench/models", unit="case") as progress:
        for backbone in args.backbones:
            for case in cases:
                repeats = 3 * args.repeats if case == "inference" else args.repeats  # a small, noisy ratio
                results[backbone, case] = run_case(case, backbone, repeats, args.threads, not args.glibc_defaults)
                progress.update()
    images = 4 * WAYS * QUERIES

    def spread(times, scale=1.0, digits=3):
        low, mid, high = (value * scale for value in (min(times), statistics.median(times), max(times)))
        return f"{mid:.{digits}f} ({low:.{digits}f}–{high:.{digits}f})"

    def ratio(backbone, case, numerator, denominator):
        series = results[backbone, case][2]
        return f"{statistics.median(a / b for a, b in zip(series[numerator], series[denominator], strict=True)):.3f}×"

    def rss(backbone, case):
        return f"{results[backbone, case][1] / 2**30:.2f}"

    def per_task(case, side):
        return lambda b: spread(results[b, case][2][side], 1 / TASKS_PER_UPDATE)

    def milliseconds(case, side):
        return lambda b: spread(results[b, case][2][side], 1e3, 1)

    def megabytes(index):
        return lambda b: f"{results[b, 'checkpoint'][2][index] / 1e6:.1f}"

    rows = [
        ("ProtoNet meta-training, s / task", per_task("train", 0), ""),
        ("SMAT meta-training, trained-like gates, s / task", per_task("train", 1), ""),
        ("SMAT / ProtoNet, trained-like gates (same process)", lambda b: ratio(b, "train", 1, 0), "≤ 2.4×"),
        ("SMAT meta-training, fresh gates, s / task", per_task("train_fresh", 1), ""),
        ("SMAT / ProtoNet, fresh gates (same process)", lambda b: ratio(b, "train_fresh", 1, 0), "≤ 2.5×"),
        ("ProtoNet meta-training, bf16 autocast, s / task", per_task("train_bf16", 0), "report"),
        ("SMAT meta-training, trained-like, bf16 autocast, s / task", per_task("train_bf16", 1), "report"),
        ("SMAT / ProtoNet, bf16 autocast (same process)", lambda b: ratio(b, "train_bf16", 1, 0), ""),
        ("SMAT training peak RSS, GiB", lambda b: rss(b, "smat_memory"), "≤ 3 GiB (vits)"),
        ("ProtoNet training peak RSS, GiB", lambda b: rss(b, "protonet_memory"), ""),
        ("ProtoNet evaluation task (prepare_task + 50 queries), ms", milliseconds("eval", 0), ""),
        ("SMAT evaluation task, ms", milliseconds("eval", 1), ""),
        ("SMAT / ProtoNet evaluation (same process)", lambda b: ratio(b, "eval", 1, 0), "≤ 1.4×"),
        (
            "SMAT route + merge into a backbone copy, ms",
            lambda b: spread(results[b, "smat_route_merge"][0], 1e3, 1),
            "≤ 50 ms (vits)",
        ),
        (
            "SMAT prepare_task (+ copy, 2 support passes), ms",
            lambda b: spread(results[b, "smat_prepare"][0], 1e3, 1),
            "",
        ),
        (
            "plain ViTModel inference, images / s",
            lambda b: f"{images / statistics.median(results[b, 'inference'][2][0]):.0f}",
            "",
        ),
        ("task model / plain ViTModel speed (same process)", lambda b: ratio(b, "inference", 0, 1), "≥ 0.98×"),
        ("SMAT checkpoint, dense banks (8 experts), MB", megabytes(0), "report"),
        ("SMAT checkpoint, compact experts, MB", megabytes(1), "≤ 210 MB (vits)"),
        ("SMAT checkpoint, compact, backbone referenced, MB", megabytes(2), "≤ 110 MB (vits)"),
    ]
    print(
        f"\nModels benchmark ({args.threads} threads, {WAYS}-way {SHOTS}-shot {QUERIES}-query, random weights, "
        f"median (min–max) of {args.repeats}, {'glibc defaults' if args.glibc_defaults else 'freed memory reused'})\n"
    )
    print("| measure | " + " | ".join(args.backbones) + " | target |")
    print("|---|" + "---:|" * len(args.backbones) + "---|")

    left_out = {(backbone, case) for backbone in args.backbones for case in ALL_CASES if case not in cases}

    def measured(cell, backbone):
        try:
            return cell(backbone)
        except KeyError as missing:
            if missing.args[0] in left_out:  # a case left out by --cases
                return "–"
            raise

    for label, cell, target in rows:
        print(f"| {label} | " + " | ".join(measured(cell, b) for b in args.backbones) + f" | {target} |")


if __name__ == "__main__":
    main()
