"""What the recipes do, as library calls: train a backbone or meta-tune a method to a finished model (reusing a
finished run, resuming an interrupted one), evaluate it against its backbone, record results and the card.

A recipe in `recipes/` parses its arguments, calls these, prints. Every step keeps the guarantees of
docs/reliability.md: a rerun of a finished run changes nothing, one with other settings is refused, saves are
atomic, and results of an earlier model are never shown for a retrained one.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from accelerate import PartialState
from transformers import PreTrainedModel, ViTConfig, set_seed

from hf_fewshot.data import EvalTransform, load_domain
from hf_fewshot.defaults import PRETRAIN_DEFAULTS, TINY_VIT, TINY_VIT_CONFIG
from hf_fewshot.diagnostics import SmatDiagnostics, smat_diagnostics
from hf_fewshot.evaluation import EvaluationResults, evaluate_episodes, results_table
from hf_fewshot.files import write_atomically
from hf_fewshot.hub import push_model_folder
from hf_fewshot.methods import get_method
from hf_fewshot.models import ProtoNetModel, SmatModel, from_pretrained_strictly
from hf_fewshot.training.checkpoints import last_complete_checkpoint, run_is_finished, save_pretrained_atomically
from hf_fewshot.viz import plot_domain_accuracy, plot_expert_density, plot_expert_overlap

if TYPE_CHECKING:  # the Trainer's arguments cost a second to import
    from hf_fewshot.training import FewShotTrainingArguments

BASELINE = "backbone (no meta-tuning)"


def pretrain_run(
    backbone: str | ViTConfig,
    data_source: str,
    domains: Sequence[str],
    training_args: FewShotTrainingArguments,
    settings: Mapping[str, Any],
) -> Path:
    """Train a backbone on the training classes of `domains` (SAM when `sam_rho` > 0) and save it, with its image
    processor, to `{output_dir}/backbone`; returns that folder. A finished run with these `settings` is reused."""
    from hf_fewshot.training.pretraining import pretrain_backbone

    destination = Path(training_args.output_dir) / "backbone"
    if run_is_finished(destination, {**settings, **training_args.run_settings()}):
        print(f"{destination} holds this run's finished backbone: reused, not trained again.")
        return destination
    splits = {domain: load_domain(data_source, domain, "train") for domain in domains}
    resume = last_complete_checkpoint(training_args.output_dir)
    model = pretrain_backbone(backbone, splits, training_args, resume_from_checkpoint=resume)
    if training_args.should_save:
        processor = EvalTransform(training_args.image_size).to_image_processor()  # AutoImageProcessor loads it
        save_pretrained_atomically(model, destination, image_processor=processor)
        print(f"Backbone saved to {destination}")
    PartialState().wait_for_everyone()
    return destination


def pretrain_demo_backbone() -> Path:
    """`recipes/pretrain.py` with its defaults: the tiny ViT with SAM on MiniMeta's training domains, into
    `DEFAULT_BACKBONE` (what the meta-tuning recipe needs when its default backbone is not there yet)."""
    from hf_fewshot.data.minimeta import TRAIN_DOMAINS
    from hf_fewshot.training.arguments import FewShotTrainingArguments
    from hf_fewshot.training.cli import parse_recipe_arguments

    (training_args,) = parse_recipe_arguments((FewShotTrainingArguments,), PRETRAIN_DEFAULTS, [])
    settings = {"backbone": TINY_VIT, "data_source": "minimeta", "domains": list(TRAIN_DOMAINS)}  # the recipe's
    return pretrain_run(ViTConfig(**TINY_VIT_CONFIG), "minimeta", TRAIN_DOMAINS, training_args, settings)


def meta_training_tasks(training_args: FewShotTrainingArguments) -> int:
    """The number of meta-training tasks the arguments describe (all processes together)."""
    if training_args.max_steps > 0:
        return training_args.max_steps * training_args.gradient_accumulation_steps * training_args.world_size
    return int(training_args.num_train_epochs * training_args.train_episodes_per_epoch)


def method_settings(method: str, given: Mapping[str, Any] | None, training_args: FewShotTrainingArguments) -> dict:
    """The configuration values of a run: `given`, else the method's demo settings, completed by what depends on
    the training length (SMAT: the router temperature's decay, `SmatConfig.settings_for_training`)."""
    config_class = get_method(method).config_class
    settings = dict(get_method(method).demo_settings if given is None else given)
    completed = config_class.settings_for_training(settings, meta_training_tasks(training_args))
    if PartialState().is_main_process:
        for name in sorted(completed.keys() - settings.keys()):
            print(
                f"{name} = {completed[name]:g}, from the training length ({meta_training_tasks(training_args)} tasks)."
            )
    return completed


def meta_tune_run(
    method: str,
    backbone: str,
    model_settings: Mapping[str, Any],
    data_source: str,
    train_domains: Sequence[str],
    training_args: FewShotTrainingArguments,
    settings: Mapping[str, Any],
) -> tuple[PreTrainedModel, bool]:
    """Meta-tune `method` from `backbone` on the train / validation splits of `train_domains`, resuming from the
    last complete checkpoint, and save `{output_dir}/model`; returns the model and whether it is a finished run's
    (then nothing was trained). `settings` identify the run (`run_is_finished`)."""
    output_dir = Path(training_args.output_dir)
    model_class = get_method(method).model_class
    if run_is_finished(output_dir / "model", {**settings, **training_args.run_settings()}):
        print(f"{output_dir / 'model'} holds this run's finished model: reused, not trained again.")
        return from_pretrained_strictly(model_class, str(output_dir / "model")).to(training_args.device), True
    if PartialState().is_main_process:  # results of an earlier model must never be shown for this one
        (output_dir / "results.json").unlink(missing_ok=True)
    from hf_fewshot.training import EpisodicTrainer

    set_seed(training_args.seed)  # gate logits, router keys and skill tokens are drawn here, before the Trainer seeds
    model = model_class.from_backbone(backbone, **model_settings)
    splits = {
        split: {d: load_domain(data_source, d, split) for d in train_domains} for split in ("train", "validation")
    }
    trainer = EpisodicTrainer(model, training_args, train_dataset=splits["train"], eval_dataset=splits["validation"])
    if trainer.is_world_process_zero():
        print(f"Meta-tuning {method} from {backbone}, processes: {training_args.world_size}")
    train_output = trainer.train(resume_from_checkpoint=last_complete_checkpoint(training_args.output_dir))
    trainer.save_metrics("train", train_output.metrics)  # train_results.json / all_results.json, the Trainer's way
    trainer.save_state()
    if trainer.is_world_process_zero():
        write_atomically(output_dir / "log_history.json", json.dumps(trainer.state.log_history, indent=1) + "\n")
    if training_args.should_save:
        save_pretrained_atomically(trainer.model, output_dir / "model", repo_id=run_name(training_args))
    PartialState().wait_for_everyone()
    return trainer.model, False


def run_name(training_args: FewShotTrainingArguments, hub_repo_id: str | None = None) -> str:
    """A run's name on its card: the Hub repo when pushing, else the run's folder (`minimeta-smat`)."""
    return hub_repo_id or Path(training_args.output_dir).resolve().name


def recorded_results_table(output_dir: str | Path, evaluation_settings: Mapping[str, Any]) -> str | None:
    """The results table a finished run wrote for these evaluation settings, or None (not evaluated, or otherwise)."""
    output_dir = Path(output_dir)
    if not (output_dir / "results.json").is_file() or not (output_dir / "results.md").is_file():
        return None
    recorded = json.loads((output_dir / "results.json").read_text())
    if recorded.get("evaluation_settings") != dict(evaluation_settings):
        return None
    return (output_dir / "results.md").read_text().strip()


def evaluate_against_backbone(
    model: PreTrainedModel,
    name: str,
    backbone: str,
    data_source: str,
    test_domains: Sequence[str],
    train_domains: Sequence[str],
    num_episodes: int,
    training_args: FewShotTrainingArguments,
) -> tuple[dict[str, EvaluationResults], SmatDiagnostics | None]:
    """`model` (as column `name`) and its un-tuned backbone on the same test episodes of every domain; for SMAT also
    its diagnostics measured on them."""
    test = {domain: load_domain(data_source, domain, "test") for domain in test_domains}
    settings = dict(
        in_domain=[d for d in test_domains if d in train_domains],
        image_size=training_args.image_size,
        progress=not training_args.disable_tqdm,
        **training_args.episode_settings(),
    )
    baseline = ProtoNetModel.from_backbone(backbone).to(training_args.device)
    results = {
        BASELINE: evaluate_episodes(baseline, test, num_episodes, **settings),
        name: evaluate_episodes(model, test, num_episodes, **settings),
    }
    diagnostics = None
    if isinstance(model, SmatModel):
        diagnostics = smat_diagnostics(model, {d.domain: d.expert_weights for d in results[name].domains})
    return results, diagnostics


def record_results(
    output_dir: str | Path,
    results: Mapping[str, EvaluationResults],
    diagnostics: SmatDiagnostics | None,
    evaluation_settings: Mapping[str, Any],
) -> str:
    """Write `results.md` (the table) and `results.json` (flat metrics and every episode, from which
    `EvaluationResults.from_json_dict` and the card can be rebuilt; written last, it marks the run evaluated)."""
    output_dir = Path(output_dir)
    table = results_table(results)
    summary: dict[str, Any] = {name: {**result.to_dict(), **result.to_json_dict()} for name, result in results.items()}
    if diagnostics is not None:
        summary["smat_diagnostics"] = diagnostics.to_dict(prefix="")
    summary["evaluation_settings"] = dict(evaluation_settings)
    write_atomically(output_dir / "results.md", table + "\n")
    write_atomically(output_dir / "results.json", json.dumps(summary, indent=2) + "\n")
    return table


def training_summary(
    train_domains: Sequence[str], model_settings: Mapping[str, Any], training_args: FewShotTrainingArguments
) -> dict[str, Any]:
    """The card's training table."""
    return {
        "meta-training domains": ", ".join(train_domains),
        "tasks": meta_training_tasks(training_args),
        "episodes": f"{training_args.episode_protocol}, {training_args.image_size} px",
        "learning rate": training_args.learning_rate,
        "model settings": json.dumps(dict(model_settings)),
        "SAM ρ": training_args.sam_rho,
    }


def write_run_card(
    model: PreTrainedModel,
    folder: str | Path,
    name: str,
    results: Mapping[str, EvaluationResults],
    diagnostics: SmatDiagnostics | None,
    training: Mapping[str, Any],
    data_source: str,
    protocol: str,
    card_name: str,
) -> None:
    """The model card (the results of column `name` as model-index, training settings, SMAT's diagnostics) and its
    plots (every column of `results`, may be empty), in `folder`; the card is named `card_name`."""
    folder = Path(folder)
    plots = [plot_domain_accuracy(results, folder / "accuracy.png")] if results else []
    if isinstance(model, SmatModel):
        plots += [plot_expert_density(model, folder / "expert_density.png")]
        plots += [plot_expert_overlap(model, folder / "expert_overlap.png")]
    model.card_details.update(
        results=results.get(name),
        dataset_id=data_source,
        protocol=protocol,
        training=dict(training),
        plots=[plot.name for plot in plots],
        diagnostics=diagnostics,
    )
    model.model_card(card_name).save(folder / "README.md")


def push_finished_model(folder: str | Path, repo_id: str | None) -> None:
    """Upload a finished model folder (weights, code, processor, card, plots) when a repo is given."""
    if repo_id:
        print(f"Pushed: {push_model_folder(folder, repo_id)}")


__all__ = [
    "BASELINE",
    "evaluate_against_backbone",
    "meta_training_tasks",
    "meta_tune_run",
    "method_settings",
    "pretrain_demo_backbone",
    "pretrain_run",
    "push_finished_model",
    "record_results",
    "recorded_results_table",
    "run_name",
    "training_summary",
    "write_run_card",
]
