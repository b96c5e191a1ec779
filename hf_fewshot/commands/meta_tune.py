"""Meta-tune SMAT or P>M>F (ProtoNet) on episodes, then compare it with the un-tuned backbone on every test domain.

    hf-fewshot meta-tune                        # embedded default: MiniMeta + tiny ViT, SMAT, ~10 minutes
    hf-fewshot meta-tune recipes/configs/smat_vits16_metadataset.yaml
    hf-fewshot meta-tune --method protonet --output_dir runs/minimeta-pmf
    ACCELERATE_USE_CPU=1 accelerate launch --config_file accelerate_config.yaml recipes/meta_tune.py   # 2 CPU ranks

With the default `--backbone` and no backbone there yet, recipes/pretrain.py runs first with its own defaults.
The meta-tuned model is saved to `{output_dir}/model` (the best validation checkpoint when
`load_best_model_at_end`); the results table goes to stdout and `{output_dir}/results.md` / `results.json`,
the training log to `{output_dir}/log_history.json`.
A rerun resumes from the last complete checkpoint in `output_dir`; a rerun of a finished run trains nothing (and
evaluates only if its results are missing or the test settings changed).
"""

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from accelerate import PartialState

from hf_fewshot.data.minimeta import DOMAINS, TRAIN_DOMAINS
from hf_fewshot.defaults import DEFAULT_BACKBONE
from hf_fewshot.defaults import META_TUNE_DEFAULTS as DEFAULTS
from hf_fewshot.evaluation import results_table
from hf_fewshot.hub import finished_model_repo
from hf_fewshot.methods import METHODS
from hf_fewshot.runs import (
    evaluate_against_backbone,
    meta_tune_run,
    method_settings,
    pretrain_demo_backbone,
    push_finished_model,
    record_results,
    recorded_results_table,
    run_name,
    training_summary,
    write_run_card,
)
from hf_fewshot.training import FewShotTrainingArguments
from hf_fewshot.training.cli import parse_recipe_arguments


@dataclass
class MetaTuneArguments:
    method: str = field(
        default="smat", metadata={"help": f"One of {sorted(METHODS)} (protonet = P>M>F), or any registered method."}
    )
    backbone: str = field(
        default=DEFAULT_BACKBONE,
        metadata={"help": "Hub id or folder of the pre-trained backbone (e.g. facebook/dino-vits16)."},
    )
    model_config: dict | str | None = field(
        default=None,
        metadata={
            "help": "SmatConfig / ProtoNetConfig fields, as a mapping (YAML) or a JSON string. Not given: the demo's "
            "settings of the method (its `demo_settings` in hf_fewshot.methods)."
        },
    )
    data_source: str = field(
        default="minimeta", metadata={"help": "'minimeta', a converted Meta-Dataset folder, or a Hub dataset id."}
    )
    train_domains: list[str] = field(
        default_factory=lambda: list(TRAIN_DOMAINS), metadata={"help": "Meta-training domains (train + validation)."}
    )
    test_domains: list[str] = field(
        default_factory=lambda: list(DOMAINS), metadata={"help": "Domains of the final table (test splits)."}
    )
    test_episodes: int = field(
        default=100, metadata={"help": "Test episodes per domain (600 in the papers); 0 skips the final evaluation."}
    )
    hub_repo_id: str | None = field(
        default=None,
        metadata={"help": "Push the finished model, its card and plots here (or: --push_to_hub true --hub_model_id)."},
    )

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {sorted(METHODS)}, got {self.method!r}.")
        if isinstance(self.model_config, str):
            self.model_config = json.loads(self.model_config)
        if self.test_episodes < 0:
            raise ValueError(f"test_episodes must be ≥ 0 (0 skips the final evaluation), got {self.test_episodes}.")


def run(args: MetaTuneArguments, training_args: FewShotTrainingArguments) -> str:
    """Meta-tune, save the model, evaluate it and the un-tuned backbone; returns the Markdown results table."""
    if args.backbone == DEFAULT_BACKBONE and not Path(args.backbone).is_dir():
        print(f"No backbone at {args.backbone}: pre-training it first with recipes/pretrain.py's defaults.")
        pretrain_demo_backbone()
    args.model_config = method_settings(args.method, args.model_config, training_args)
    args.hub_repo_id = finished_model_repo(args.hub_repo_id, training_args)
    settings = {name: value for name, value in asdict(args).items() if name not in NOT_RUN_DEFINING}
    model, finished = meta_tune_run(
        args.method, args.backbone, args.model_config, args.data_source, args.train_domains, training_args, settings
    )
    if not PartialState().is_main_process:
        return ""
    output_dir = Path(training_args.output_dir)
    evaluation = {"test_domains": args.test_domains, "test_episodes": args.test_episodes}
    if finished and (table := recorded_results_table(output_dir, evaluation)) is not None:
        print(f"\nTest accuracy (%), as evaluated by the finished run:\n\n{table}\n")
        return table
    results, diagnostics, table = {}, None, ""
    if args.test_episodes > 0:  # 0: evaluated elsewhere (e.g. by reproduce_minimeta.py on its own episodes)
        results, diagnostics = evaluate_against_backbone(
            model, args.method, args.backbone, args.data_source, args.test_domains, args.train_domains,
            args.test_episodes, training_args,
        )  # fmt: skip
        table = results_table_printed(results, diagnostics, args.test_episodes)
    training = training_summary(args.train_domains, args.model_config, training_args)
    name = run_name(training_args, args.hub_repo_id)
    write_run_card(
        model, output_dir / "model", args.method, results, diagnostics, training, args.data_source,
        training_args.episode_protocol, name,
    )  # fmt: skip
    if results:
        record_results(output_dir, results, diagnostics, evaluation)
    push_finished_model(output_dir / "model", args.hub_repo_id)
    return table


# What of the recipe's arguments does not decide the trained model.
NOT_RUN_DEFINING = ("test_domains", "test_episodes", "hub_repo_id")


def results_table_printed(results, diagnostics, num_episodes: int) -> str:
    table = results_table(results)
    print(f"\nTest accuracy (%), {num_episodes} episodes per domain, mean ± 95% CI:\n\n{table}\n")
    if diagnostics is not None:
        print(f"SMAT's mechanism on the test episodes:\n\n{diagnostics.to_markdown()}\n")
    return table


def main(argv: list[str] | None = None, prog: str = "hf-fewshot meta-tune") -> str:
    return run(*parse_recipe_arguments((MetaTuneArguments, FewShotTrainingArguments), DEFAULTS, argv, prog=prog))
