"""Meta-tune SMAT or P>M>F (ProtoNet) on episodes, then compare it with the un-tuned backbone on every test domain.

    python recipes/meta_tune.py                        # embedded default: MiniMeta + tiny ViT, SMAT, ~10 minutes
    python recipes/meta_tune.py recipes/configs/smat_vits16_metadataset.yaml
    python recipes/meta_tune.py --method protonet --output_dir runs/minimeta-pmf
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

import pretrain
from accelerate import PartialState
from transformers import set_seed

from hf_fewshot import (
    EpisodicTrainer,
    FewShotTrainingArguments,
    ProtoNetModel,
    SmatModel,
    evaluate_episodes,
    load_domain,
)
from hf_fewshot.data.minimeta import DOMAINS, TRAIN_DOMAINS
from hf_fewshot.diagnostics import SmatDiagnostics, smat_diagnostics
from hf_fewshot.evaluation import results_table
from hf_fewshot.hub import finished_model_repo, push_model_folder
from hf_fewshot.models import from_pretrained_strictly
from hf_fewshot.models.configuration_smat import router_tau_decay_for
from hf_fewshot.training.checkpoints import last_complete_checkpoint, run_is_finished, save_pretrained_atomically
from hf_fewshot.training.cli import parse_recipe_arguments
from hf_fewshot.viz import plot_domain_accuracy, plot_expert_density, plot_expert_overlap

METHODS = {"smat": SmatModel, "protonet": ProtoNetModel}
DEFAULT_BACKBONE = str(Path(pretrain.DEFAULTS["output_dir"]) / "backbone")


@dataclass
class MetaTuneArguments:
    method: str = field(default="smat", metadata={"help": f"One of {sorted(METHODS)} (protonet = P>M>F)."})
    backbone: str = field(
        default=DEFAULT_BACKBONE,
        metadata={"help": "Hub id or folder of the pre-trained backbone (e.g. facebook/dino-vits16)."},
    )
    model_config: dict | str | None = field(
        default=None,
        metadata={
            "help": "SmatConfig / ProtoNetConfig fields, as a mapping (YAML) or a JSON string. Not given: the demo's "
            "settings of the method (DEMO_MODEL_CONFIGS)."
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


# The embedded demo is 800 tasks, 1.6% of the paper's; three settings differ from the paper's so that the experts
# saturate and specialise within it (docs/smat.md, "At a small budget"): eval gates = training gates (β_eval = β),
# a 100× gate lr (log α's gradient is ~1e-5 of the clip here, so the paper's lr barely moves it) and a 100×
# smaller multiplier lr (the same Lagrangian push per step). router_tau_decay_tasks: from the training length.
DEMO_MODEL_CONFIGS = {"smat": {"num_experts": 4, "sparsity_target": 0.5, "gate_beta_eval": 2 / 3}, "protonet": {}}
DEFAULTS = dict(
    output_dir="runs/minimeta-smat",
    max_steps=400,
    train_episodes_per_epoch=600,
    gradient_accumulation_steps=2,
    learning_rate=0.01,
    weight_decay=1e-4,
    router_learning_rate=1e-3,
    gate_learning_rate=1e8,
    multiplier_learning_rate=5e-4,
    max_grad_norm=0.0,
    warmup_steps=0.05,
    lr_scheduler_type="cosine",
    episode_protocol="md",
    max_ways=10,
    image_size=32,
    crop_scale_min=0.6,
    eval_episodes=50,
    eval_strategy="steps",
    eval_steps=100,
    save_strategy="steps",
    save_steps=100,
    save_total_limit=2,
    load_best_model_at_end=True,
    metric_for_best_model="accuracy",
    logging_steps=50,
    report_to="none",
    dataloader_pin_memory=False,  # CPU demo: nothing to pin to
    ddp_find_unused_parameters=False,  # every trainable tensor gets a gradient in every task
)


def run(args: MetaTuneArguments, training_args: FewShotTrainingArguments) -> str:
    """Meta-tune, save the model, evaluate it and the un-tuned backbone; returns the Markdown results table."""
    if args.backbone == DEFAULT_BACKBONE and not Path(args.backbone).is_dir():
        print(f"No backbone at {args.backbone}: pre-training it first with recipes/pretrain.py's defaults.")
        pretrain.main([])
    model_config = dict(DEMO_MODEL_CONFIGS[args.method] if args.model_config is None else args.model_config)
    if args.method == "smat" and "router_tau_decay_tasks" not in model_config:
        tasks = meta_training_tasks(training_args)
        model_config["router_tau_decay_tasks"] = router_tau_decay_for(
            tasks, model_config.get("router_tau_start", 5.0), model_config.get("router_tau_min", 0.5)
        )
        if PartialState().is_main_process:
            print(
                f"Router temperature decay {model_config['router_tau_decay_tasks']:g} tasks, from the training length "
                f"({tasks} tasks): τ_r reaches its minimum after 36% of them, as in the paper."
            )
    args.model_config = model_config
    args.hub_repo_id = finished_model_repo(args.hub_repo_id, training_args)
    output_dir, is_main = Path(training_args.output_dir), PartialState().is_main_process
    settings = {**recipe_settings(args), **training_args.run_settings()}
    finished = run_is_finished(output_dir / "model", settings)
    if finished:  # a rerun of a finished run changes nothing
        print(f"{output_dir / 'model'} holds this run's finished model: reused, not trained again.")
        model = from_pretrained_strictly(METHODS[args.method], str(output_dir / "model")).to(training_args.device)
    else:
        if is_main:  # results of an earlier model must never be shown for this one
            (output_dir / "results.json").unlink(missing_ok=True)
        model = train(args, training_args)
    if not is_main:
        return ""
    evaluation = {"test_domains": args.test_domains, "test_episodes": args.test_episodes}
    previous = json.loads((output_dir / "results.json").read_text()) if (output_dir / "results.json").is_file() else {}
    if finished and previous.get("evaluation_settings") == evaluation and (output_dir / "results.md").is_file():
        table = (output_dir / "results.md").read_text().strip()
        print(f"\nTest accuracy (%), as evaluated by the finished run:\n\n{table}\n")
        return table
    if args.test_episodes == 0:  # evaluated elsewhere (e.g. by reproduce_minimeta.py on its own episodes)
        write_card(model, args, training_args, {})
        push_finished_model(output_dir / "model", args.hub_repo_id)
        return ""

    test = {domain: load_domain(args.data_source, domain, "test") for domain in args.test_domains}
    settings = dict(
        in_domain=[d for d in args.test_domains if d in args.train_domains],
        image_size=training_args.image_size,
        progress=not training_args.disable_tqdm,
        **training_args.episode_settings(),
    )
    results = {
        "backbone (no meta-tuning)": evaluate_episodes(
            ProtoNetModel.from_backbone(args.backbone).to(training_args.device), test, args.test_episodes, **settings
        ),
        args.method: evaluate_episodes(model, test, args.test_episodes, **settings),
    }
    table = results_table(results)
    print(f"\nTest accuracy (%), {args.test_episodes} episodes per domain, mean ± 95% CI:\n\n{table}\n")
    # Flat metrics for a glance, and every episode (`domains`) so that `EvaluationResults.from_json_dict` and the card
    # can be rebuilt from the file.
    summary = {name: {**result.to_dict(), **result.to_json_dict()} for name, result in results.items()}
    diagnostics = None
    if args.method == "smat":
        routing = {domain.domain: domain.expert_weights for domain in results[args.method].domains}
        diagnostics = smat_diagnostics(model, routing)
        summary["smat_diagnostics"] = diagnostics.to_dict(prefix="")
        print(f"SMAT's mechanism on the test episodes:\n\n{diagnostics.to_markdown()}\n")
    write_card(model, args, training_args, results, diagnostics)
    (output_dir / "results.md").write_text(table + "\n")
    summary["evaluation_settings"] = evaluation
    (output_dir / "results.json").write_text(json.dumps(summary, indent=2) + "\n")  # last: marks the run evaluated
    push_finished_model(output_dir / "model", args.hub_repo_id)
    return table


def push_finished_model(folder: Path, repo_id: str | None) -> None:
    if repo_id:
        print(f"Pushed: {push_model_folder(folder, repo_id)}")


def train(args: MetaTuneArguments, training_args: FewShotTrainingArguments):
    """Meta-tune (resuming from the last complete checkpoint), save `{output_dir}/model` and the training log."""
    set_seed(training_args.seed)  # gate logits, router keys and skill tokens are drawn here, before the Trainer seeds
    model = METHODS[args.method].from_backbone(args.backbone, **args.model_config)
    splits = {
        split: {d: load_domain(args.data_source, d, split) for d in args.train_domains}
        for split in ("train", "validation")
    }
    trainer = EpisodicTrainer(model, training_args, train_dataset=splits["train"], eval_dataset=splits["validation"])
    if trainer.is_world_process_zero():
        print(f"Meta-tuning {args.method} from {args.backbone}, processes: {training_args.world_size}")
    train_output = trainer.train(resume_from_checkpoint=last_complete_checkpoint(training_args.output_dir))
    output_dir = Path(training_args.output_dir)
    trainer.save_metrics("train", train_output.metrics)  # train_results.json / all_results.json, the Trainer's way
    trainer.save_state()
    if trainer.is_world_process_zero():
        (output_dir / "log_history.json").write_text(json.dumps(trainer.state.log_history, indent=1) + "\n")
    if training_args.should_save:
        save_pretrained_atomically(trainer.model, output_dir / "model", repo_id=card_name(args, training_args))
    PartialState().wait_for_everyone()
    return trainer.model


def recipe_settings(args: MetaTuneArguments) -> dict:
    """What of the recipe's arguments decides the trained model (the test domains and episodes do not)."""
    return {
        name: value
        for name, value in asdict(args).items()
        if name not in ("test_domains", "test_episodes", "hub_repo_id")
    }


def card_name(args: MetaTuneArguments, training_args: FewShotTrainingArguments) -> str:
    """The card's model name: the Hub repo when pushing, else the run's folder (`minimeta-smat`)."""
    return args.hub_repo_id or Path(training_args.output_dir).resolve().name


def meta_training_tasks(training_args: FewShotTrainingArguments) -> int:
    """The number of meta-training tasks the arguments describe (all processes together)."""
    if training_args.max_steps > 0:
        return training_args.max_steps * training_args.gradient_accumulation_steps * training_args.world_size
    return int(training_args.num_train_epochs * training_args.train_episodes_per_epoch)


def write_card(
    model,
    args: MetaTuneArguments,
    training_args: FewShotTrainingArguments,
    results: dict,
    diagnostics: SmatDiagnostics | None = None,
) -> None:
    """The model card (results as model-index, training settings, SMAT's diagnostics) and its plots, in the saved
    model folder."""
    folder = Path(training_args.output_dir) / "model"
    plots = [plot_domain_accuracy(results, folder / "accuracy.png")] if results else []
    if args.method == "smat":
        plots += [plot_expert_density(model, folder / "expert_density.png")]
        plots += [plot_expert_overlap(model, folder / "expert_overlap.png")]
    training = {
        "meta-training domains": ", ".join(args.train_domains),
        "tasks": meta_training_tasks(training_args),
        "episodes": f"{training_args.episode_protocol}, {training_args.image_size} px",
        "learning rate": training_args.learning_rate,
        "model settings": json.dumps(args.model_config or {}),
        "SAM ρ": training_args.sam_rho,
    }
    model.card_details.update(
        results=results.get(args.method),
        dataset_id=args.data_source,
        protocol=training_args.episode_protocol,
        training=training,
        plots=[plot.name for plot in plots],
        diagnostics=diagnostics,
    )
    model.model_card(card_name(args, training_args)).save(folder / "README.md")


def main(argv: list[str] | None = None) -> str:
    return run(*parse_recipe_arguments((MetaTuneArguments, FewShotTrainingArguments), DEFAULTS, argv))


if __name__ == "__main__":
    main()
