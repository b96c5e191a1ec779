"""Model cards and Hub pushes: few-shot models with their results as `model-index`, task adapters, and datasets
with one config per domain."""

from __future__ import annotations

import importlib.resources
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import datasets
from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData
from torch import nn

from hf_fewshot.diagnostics import SmatDiagnostics
from hf_fewshot.evaluation import EvaluationResults, results_table

PAPERS = {
    "fewshot_smat": [
        "Chen et al., *Unleashing the Power of Meta-tuning for Few-shot Generalization Through Sparse Interpolated "
        "Experts*, ICML 2024 ([arXiv:2403.08477](https://arxiv.org/abs/2403.08477))",
        "Caron et al., *Emerging Properties in Self-Supervised Vision Transformers* (DINO), ICCV 2021",
    ],
    "fewshot_protonet": [
        "Hu et al., *Pushing the Limits of Simple Pipelines for Few-Shot Learning: External Data and Fine-Tuning "
        "Make a Difference* (P>M>F), CVPR 2022 ([arXiv:2204.07305](https://arxiv.org/abs/2204.07305))",
        "Snell et al., *Prototypical Networks for Few-shot Learning*, NeurIPS 2017",
    ],
}
SUMMARIES = {
    "fewshot_smat": (
        "**SMAT** (sparse interpolated experts): a frozen pre-trained ViT plus one dense delta shared by sparse "
        "experts; a router reads a task's support set and merges the experts into one task-specific ViT, which "
        "classifies queries by cosine similarity to the class prototypes."
    ),
    "fewshot_protonet": (
        "**P>M>F** ProtoNet: a pre-trained ViT meta-tuned end to end as a prototypical network with a cosine head "
        "(learnable scale and bias)."
    ),
}


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


def fewshot_model_card(
    model: nn.Module,
    repo_id: str,
    results: EvaluationResults | None = None,
    *,
    dataset_id: str = "minimeta",
    protocol: str = "md",
    training: Mapping[str, Any] | None = None,
    plots: Sequence[str] = (),
    diagnostics: SmatDiagnostics | None = None,
    license: str = "apache-2.0",
) -> ModelCard:
    """The card of a `SmatModel` / `ProtoNetModel`: method, papers, usage, the results table and `model-index`,
    the training settings (e.g. selected `FewShotTrainingArguments` fields), intended use and limits.

    `plots` are paths inside the repo (e.g. PNGs from `hf_fewshot.viz`) shown under the results. `diagnostics`
    (`smat_diagnostics` of a SMAT model) adds "Is the mechanism at work?": its measurements and a warning for
    each goal it misses, e.g. eval gates more than 0.05 from τ.
    """
    config = model.config
    if config.model_type not in PAPERS:
        raise ValueError(f"Cards are written for SMAT and ProtoNet models, not {config.model_type!r}.")
    backbone = config.backbone_name_or_path or f"random {config.backbone_config.model_type}"
    card_data = ModelCardData(
        model_name=repo_id.split("/")[-1],
        library_name="transformers",
        license=license,
        tags=["few-shot-learning", "meta-learning", "hf-fewshot", config.model_type.removeprefix("fewshot_")],
        base_model=config.backbone_name_or_path or None,
        datasets=[dataset_id] if results is not None else None,
        metrics=["accuracy"],
        eval_results=eval_results(results, dataset_id, protocol) if results is not None else None,
    )
    num_parameters = sum(p.numel() for p in model.backbone.parameters())
    return ModelCard.from_template(
        card_data,
        template_str=_template("fewshot_model.md"),
        model_name=repo_id.split("/")[-1],
        repo_id=repo_id,
        model_type=config.model_type,
        method_summary=SUMMARIES[config.model_type],
        papers=PAPERS[config.model_type],
        backbone=backbone,
        backbone_size=f"{num_parameters / 1e6:.2f} M parameters",
        image_size=config.backbone_config.image_size,
        results_table=results_table({repo_id.split("/")[-1]: results}) if results is not None else None,
        episodes_note=f"{protocol} protocol, {dataset_id}",
        plots=list(plots),
        training=dict(training or {}),
        diagnostics=diagnostics.to_markdown() if diagnostics is not None else None,
    )


def adapter_card(
    repo_id: str,
    base_model: str,
    backbone: str,
    id2label: Mapping[int, str],
    *,
    learning_rate: float,
    steps: int,
    support_size: int,
    rank: int = 8,
    alpha: int = 32,
    targets: Sequence[str] = ("q_proj", "v_proj"),
) -> ModelCard:
    """The card of one task's LoRA adapter: its classes, the fine-tuning settings, how to load it with PEFT."""
    card_data = ModelCardData(
        library_name="peft",
        base_model=backbone,
        tags=["few-shot-learning", "lora", "hf-fewshot"],
        pipeline_tag="image-classification",
    )
    return ModelCard.from_template(
        card_data,
        template_str=_template("adapter.md"),
        model_name=repo_id.split("/")[-1],
        repo_id=repo_id,
        base_model=base_model,
        backbone=backbone,
        id2label=dict(id2label),
        learning_rate=learning_rate,
        steps=steps,
        support_size=support_size,
        rank=rank,
        alpha=alpha,
        targets=list(targets),
    )


def push_model_folder(folder: str | Path, repo_id: str, private: bool = False) -> str:
    """Upload a saved model folder (weights, config, remote code, README card, plots) as one commit; returns the
    commit URL. The repo is created if needed."""
    api = HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True)
    return api.upload_folder(
        folder_path=str(folder), repo_id=repo_id, commit_message="Upload few-shot model"
    ).commit_url


def push_domains(
    domains: Mapping[str, datasets.DatasetDict | Mapping[str, datasets.Dataset]], repo_id: str, private: bool = False
) -> None:
    """Push a dataset in the layout `load_domain` reads: one config per domain, splits train/validation/test."""
    for domain, splits in domains.items():
        datasets.DatasetDict(dict(splits)).push_to_hub(repo_id, config_name=domain, private=private)


__all__ = ["adapter_card", "eval_results", "fewshot_model_card", "push_domains", "push_model_folder"]
