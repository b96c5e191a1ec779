"""Model cards and Hub pushes: few-shot models with their results as `model-index`, task adapters, and datasets
with one config per domain."""

from __future__ import annotations

import importlib.resources
import json
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import datasets
from huggingface_hub import DatasetCard, EvalResult, HfApi, ModelCard, ModelCardData
from huggingface_hub.utils import HFValidationError, validate_repo_id
from torch import nn

from hf_fewshot.data import load_domain
from hf_fewshot.diagnostics import SmatDiagnostics
from hf_fewshot.evaluation import EvaluationResults, results_table
from hf_fewshot.models.configuration_fewshot import FewShotConfig

if TYPE_CHECKING:  # the Trainer's module costs a second to import, and only the recipes push
    from transformers import TrainingArguments


def _template(name: str) -> str:
    return importlib.resources.files("hf_fewshot.model_cards").joinpath(name).read_text(encoding="utf-8")


def eval_results(results: EvaluationResults, dataset_id: str, protocol: str) -> list[EvalResult]:
    """One `model-index` entry per domain: mean query accuracy (%) on the domain's test episodes."""
    return [
        EvalResult(
            task_type="image-classification",
            task_name=f"Few-shot image classification ({protocol} episodes)",
            dataset_type=dataset_id,
            dataset_name=f"{domain.domain} ({'in-domain' if domain.in_domain else 'out-of-domain'})",
            dataset_config=domain.domain,
            dataset_split="test",
            metric_type="accuracy",
            metric_name=f"accuracy (%, mean of {domain.num_episodes} episodes, ± {domain.ci95:.2f} at 95%)",
            metric_value=round(domain.mean, 2),
        )
        for domain in results.domains
    ]


def hub_id(name: str | None) -> str | None:
    """`name` if it is a Hub repo id (`facebook/dino-vits16`) and not a folder here, else None: card metadata may only
    name repos on the Hub, and a local path in a card means nothing to its readers."""
    if not name or Path(name).exists():
        return None
    try:
        validate_repo_id(name)
    except HFValidationError:
        return None
    return name


def describe_source(name: str | None, kind: str = "model") -> str:
    """How a card names where something came from: a Hub id as a link, a local path by its last part only."""
    if name is None:
        return "none"
    if (repo := hub_id(name)) is not None:
        return f"[`{repo}`](https://huggingface.co/{'datasets/' if kind == 'dataset' else ''}{repo})"
    return f"`{Path(name).name}` (a local {kind}, not on the Hub)"


def fewshot_model_card(
    model: nn.Module,
    repo_id: str,
    results: EvaluationResults | Mapping[str, Any] | None = None,
    *,
    dataset_id: str = "minimeta",
    protocol: str = "md",
    training: Mapping[str, Any] | None = None,
    plots: Sequence[str] = (),
    diagnostics: SmatDiagnostics | str | None = None,
    license: str = "apache-2.0",
) -> ModelCard:
    """The card of a `SmatModel` / `ProtoNetModel`: method, papers, usage, the results table and `model-index`,
    the training settings (e.g. selected `FewShotTrainingArguments` fields), intended use and limits.

    `results` may be an `EvaluationResults` or its `to_json_dict()` (what `results.json` holds). `plots` are paths
    inside the repo (e.g. PNGs from `hf_fewshot.viz`) shown under the results. `diagnostics` (`smat_diagnostics`
    of a SMAT model, or its Markdown) adds "Is the mechanism at work?". The metadata is valid for the Hub:
    `base_model` and `datasets` only name Hub repos, `model-index` is named after `repo_id`, no local paths.
    """
    config = model.config
    if not isinstance(config, FewShotConfig):
        raise ValueError(
            f"Cards are written for few-shot models (SMAT and ProtoNet, any method), not {config.model_type!r}."
        )
    if isinstance(results, Mapping):
        results = EvaluationResults.from_json_dict(results)
    source = config.backbone_name_or_path
    backbone = describe_source(source) if source else f"a randomly initialised {config.backbone_config.model_type}"
    dataset_name = hub_id(dataset_id) or Path(dataset_id).name
    card_data = ModelCardData(
        model_name=repo_id,
        library_name="transformers",
        license=license,
        tags=["few-shot-learning", "meta-learning", "hf-fewshot", config.model_type.removeprefix("fewshot_")],
        base_model=hub_id(source),
        datasets=[hub_id(dataset_id)] if results is not None and hub_id(dataset_id) else None,
        metrics=["accuracy"],
        eval_results=eval_results(results, dataset_name, protocol) if results is not None else None,
    )
    num_parameters = sum(p.numel() for p in model.backbone.parameters())
    if isinstance(diagnostics, SmatDiagnostics):
        diagnostics = diagnostics.to_markdown()
    return ModelCard.from_template(
        card_data,
        template_str=_template("fewshot_model.md"),
        model_name=repo_id.split("/")[-1],
        repo_id=repo_id,
        model_type=config.model_type,
        method_summary=config.summary,
        papers=list(config.papers),
        backbone=backbone,
        backbone_size=f"{num_parameters / 1e6:.2f} M parameters",
        image_size=config.eval_image_size,
        results_table=results_table({repo_id.split("/")[-1]: results}) if results is not None else None,
        episodes_note=f"{protocol} protocol, {describe_source(dataset_id, 'dataset')}",
        plots=list(plots),
        training=dict(training or {}),
        diagnostics=diagnostics,
    )


def adapter_card(
    repo_id: str,
    base_model: str,
    backbone: str | None,
    id2label: Mapping[int, str],
    *,
    learning_rate: float,
    steps: int,
    support_size: int,
    rank: int = 8,
    alpha: int = 32,
    targets: Sequence[str] = ("q_proj", "v_proj"),
) -> ModelCard:
    """The card of one task's LoRA adapter saved with `FewShotTask.save_adapter`: its classes, the fine-tuning
    settings, how to load it with PEFT. `base_model` is the few-shot model it was adapted from, `backbone` where
    that model's backbone came from; only Hub ids of them appear as links or metadata."""
    card_data = ModelCardData(
        library_name="peft",
        base_model=hub_id(base_model),
        tags=["few-shot-learning", "lora", "hf-fewshot"],
    )
    return ModelCard.from_template(
        card_data,
        template_str=_template("adapter.md"),
        model_name=repo_id.split("/")[-1],
        repo_id=repo_id,
        base_model=describe_source(base_model),
        backbone=describe_source(backbone),
        id2label=dict(id2label),
        learning_rate=learning_rate,
        steps=steps,
        support_size=support_size,
        rank=rank,
        alpha=alpha,
        targets=list(targets),
    )


def finished_model_repo(hub_repo_id: str | None, training_args: TrainingArguments) -> str | None:
    """Where a recipe pushes its finished model, card and plots: `hub_repo_id`, else the Trainer's own
    `push_to_hub=True` + `hub_model_id`. The Trainer's push itself (a repo created empty when training starts,
    then raw checkpoint folders) is turned off: the recipe pushes once, when the model and its card are done."""
    if not training_args.push_to_hub:
        return hub_repo_id
    repo_id = hub_repo_id or training_args.hub_model_id
    if not repo_id:
        raise ValueError("push_to_hub needs a repo: pass --hub_model_id user/name (or --hub_repo_id).")
    training_args.push_to_hub = False
    return repo_id


def push_adapter_folder(folder: str | Path, repo_id: str, private: bool = False) -> str:
    """Upload a `FewShotTask.save_adapter` folder; its adapter then names the repo (whose root holds the weights it
    was trained on) as its base instead of the local folder. Returns the commit URL."""
    with tempfile.TemporaryDirectory() as staging:
        shutil.copytree(folder, staging, dirs_exist_ok=True)
        adapter_config = Path(staging) / "lora" / "adapter_config.json"
        config = json.loads(adapter_config.read_text())
        config["base_model_name_or_path"] = repo_id
        adapter_config.write_text(json.dumps(config, indent=2) + "\n")
        return push_model_folder(staging, repo_id, private)


def push_model_folder(folder: str | Path, repo_id: str, private: bool = False) -> str:
    """Upload a saved model folder (weights, config, remote code, README card, plots) as one commit; returns the
    commit URL. The repo is created if needed."""
    api = HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True)
    return api.upload_folder(
        folder_path=str(folder), repo_id=repo_id, commit_message="Upload few-shot model"
    ).commit_url


def with_class_labels(splits: Mapping[str, datasets.Dataset]) -> dict[str, datasets.Dataset]:
    """The splits of one domain with `label` cast to a `ClassLabel` naming every class of the domain (labels are
    global within a domain, so every split shares one list of names), as the Hub's dataset viewer shows them."""
    names: dict[int, str] = {}
    for split in splits.values():
        names.update(zip(split["label"], split["class_name"], strict=True))
    feature = datasets.ClassLabel(names=[names.get(i, f"class_{i}") for i in range(max(names) + 1)])
    return {name: split.cast_column("label", feature) for name, split in splits.items()}


def push_minimeta(repo_id: str, private: bool = False) -> None:
    """Push MiniMeta as a Hub dataset: one config per domain (`load_dataset(repo_id, "glyphs", split="train")` or
    `load_domain(repo_id, "glyphs", "train")`), a `ClassLabel` label, and MiniMeta's dataset card."""
    from hf_fewshot.data import minimeta

    domains = {}
    for domain in minimeta.DOMAINS:
        files = sorted((minimeta.PREBUILT_DIR / domain).glob("*.parquet"))
        domains[domain] = with_class_labels({file.stem: load_domain("minimeta", domain, file.stem) for file in files})
    push_domains(domains, repo_id, private=private)
    ours = DatasetCard.load(minimeta.PREBUILT_DIR / "README.md")
    card = DatasetCard.load(repo_id, repo_type="dataset")  # what push_to_hub wrote: the configs and features
    for key in ("license", "pretty_name", "task_categories"):
        setattr(card.data, key, getattr(ours.data, key, None))
    card.text = ours.text
    card.push_to_hub(repo_id, repo_type="dataset")


def push_domains(
    domains: Mapping[str, datasets.DatasetDict | Mapping[str, datasets.Dataset]], repo_id: str, private: bool = False
) -> None:
    """Push a dataset in the layout `load_domain` reads: one config per domain, splits train/validation/test."""
    for domain, splits in domains.items():
        datasets.DatasetDict(dict(splits)).push_to_hub(repo_id, config_name=domain, private=private)


__all__ = [
    "adapter_card",
    "describe_source",
    "eval_results",
    "fewshot_model_card",
    "finished_model_repo",
    "hub_id",
    "push_adapter_folder",
    "push_domains",
    "push_minimeta",
    "push_model_folder",
    "with_class_labels",
]
