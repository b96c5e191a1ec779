"""Evaluate few-shot models on fixed test episodes: per-domain accuracy ± 95% CI, ID / OOD averages, one table.

    hf-fewshot evaluate                                           # the main job's models on MiniMeta
    hf-fewshot evaluate --models runs/minimeta-smat/model facebook/dino-vits16 \
        --data_source data/metadataset --domains ilsvrc_2012 omniglot traffic_sign --image_size 128
    hf-fewshot evaluate --finetune_mode lora --finetune_steps 50  # fine-tune on each support set first

A model is a saved `SmatModel` / `ProtoNetModel` (folder or Hub id) or a plain HF backbone (evaluated with
cosine prototypes, scale 10). All models see the same episodes. The table goes to stdout and `--output`.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from hf_fewshot import evaluate_episodes, load_domain
from hf_fewshot.allocator import reuse_freed_cpu_memory
from hf_fewshot.data.minimeta import DOMAINS, TRAIN_DOMAINS
from hf_fewshot.defaults import DEFAULT_BACKBONE, DEFAULT_MODEL, require_main_job_output
from hf_fewshot.evaluation import results_table
from hf_fewshot.models import load_fewshot_model
from hf_fewshot.training.cli import parse_recipe_arguments


@dataclass
class EvaluateArguments:
    models: list[str] = field(
        default_factory=lambda: [DEFAULT_BACKBONE, DEFAULT_MODEL],
        metadata={"help": "Saved few-shot models or HF backbones (folders or Hub ids), one table column each."},
    )
    data_source: str = field(default="minimeta", metadata={"help": "'minimeta', a converted folder or a Hub id."})
    domains: list[str] = field(default_factory=lambda: list(DOMAINS), metadata={"help": "Test domains."})
    in_domain: list[str] = field(
        default_factory=lambda: list(TRAIN_DOMAINS), metadata={"help": "Domains counted as ID (meta-training)."}
    )
    num_episodes: int = field(default=600, metadata={"help": "Episodes per domain."})
    protocol: str = field(default="md", metadata={"help": "Episode protocol: md, fixed or md_5shot."})
    n_way: int | None = None
    n_shot: int | None = None
    n_query: int | None = None
    max_ways: int = field(default=50, metadata={"help": "Most classes in an md / md_5shot episode."})
    image_size: int = field(default=32, metadata={"help": "Image side fed to the models (128 for DINO ViT-S/16)."})
    seed: int = field(default=0, metadata={"help": "Seed of the episodes: the same seed gives the same tasks."})
    finetune_mode: str | None = field(default=None, metadata={"help": "'full' or 'lora' fine-tuning per task."})
    finetune_learning_rate: float | None = field(default=None, metadata={"help": "None: chosen on each support."})
    finetune_steps: int = 50
    output: str = field(default="runs/evaluation.md", metadata={"help": "Markdown table (+ .json beside it)."})


def run(args: EvaluateArguments) -> str:
    for name in args.models:
        require_main_job_output(name, "--models")
    test = {domain: load_domain(args.data_source, domain, "test") for domain in args.domains}
    finetune = None
    if args.finetune_mode is not None:
        finetune = {"mode": args.finetune_mode, "steps": args.finetune_steps}
        finetune["learning_rate"] = "auto" if args.finetune_learning_rate is None else args.finetune_learning_rate
    settings = dict(
        in_domain=[d for d in args.in_domain if d in test],
        protocol=args.protocol,
        n_way=args.n_way,
        n_shot=args.n_shot,
        n_query=args.n_query,
        max_ways=args.max_ways,
        image_size=args.image_size,
        seed=args.seed,
        finetune=finetune,
    )
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        reuse_freed_cpu_memory()  # each task's merged model and activations reuse the last task's memory
    results = {
        name: evaluate_episodes(load_fewshot_model(name).to(device), test, args.num_episodes, **settings)
        for name in args.models
    }
    table = results_table(results)
    print(f"\nTest accuracy (%), {args.num_episodes} episodes per domain, mean ± 95% CI:\n\n{table}\n")
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(table + "\n")
    output.with_suffix(".json").write_text(
        json.dumps({name: result.to_dict() for name, result in results.items()}, indent=2) + "\n"
    )
    return table


def main(argv: list[str] | None = None, prog: str = "hf-fewshot evaluate") -> str:
    (args,) = parse_recipe_arguments((EvaluateArguments,), {}, argv, prog=prog)
    return run(args)
