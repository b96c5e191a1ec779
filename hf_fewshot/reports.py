"""Reports as Jinja templates, like the model cards: a study hands over what it measured (`MiniMetaStudy`), the
library computes the report's numbers (`hf_fewshot.analysis`) into a context, and the template
(`model_cards/minimeta_report.md`, installed as `hf_fewshot.model_cards`) turns them into Markdown.

The recipe (`recipes/reproduce_minimeta.py`) runs the study's stages; what the report says and how is here and in
the template, so a report can be re-rendered, tested or changed without rerunning a stage.
"""

from __future__ import annotations

import importlib.resources
import os
import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import jinja2
import numpy as np
import torch
import transformers

import hf_fewshot
from hf_fewshot.analysis import (
    Claim,
    expert_density_by_layer_type,
    judge_claim,
    method_table,
    routing_similarity,
    selection_counts,
    smat_run_summary,
)
from hf_fewshot.evaluation import EvaluationResults

MINIMETA_REPORT = "minimeta_report.md"


def environment() -> dict[str, Any]:
    """The versions and machine a report was generated with."""
    return {
        "hf_fewshot": hf_fewshot.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
    }


@dataclass(frozen=True)
class MetaTuningRun:
    """One meta-tuning run as the report shows it: its name, how it differs from the reference run, its method,
    meta-training tasks and wall time, its test results, best validation accuracy and (SMAT) the model, whose
    diagnostics on the run's test episodes the report shows."""

    name: str
    differs: str
    method: str
    tasks: int
    seconds: float
    results: EvaluationResults
    best_validation: float | None = None
    model: Any = None


@dataclass(frozen=True)
class MiniMetaStudy:
    """What the MiniMeta study measured, as the report needs it.

    `settings` are the study's arguments (`StudyArguments` as a dict); `results` every evaluation cell by name;
    `main_cells` / `flatness_cells` the cells of Table 1 and of the ERM vs SAM table; `selection_choices` the
    backbone pool's picks per test domain; `smat` the main SMAT model and `routing` its expert weights
    `[episodes, M]` per test domain; `timings` every stage's `(name, seconds)`."""

    command: str
    settings: Mapping[str, Any]
    results: Mapping[str, EvaluationResults]
    claims: Sequence[Claim]
    main_cells: Sequence[str]
    flatness_cells: Sequence[str]
    selection_choices: Mapping[str, Mapping[str, int]]
    runs: Sequence[MetaTuningRun]
    smat: Any
    routing: Mapping[str, np.ndarray]
    learning_rates: Mapping[str, float]
    commands: Sequence[str]
    timings: Sequence[tuple[str, float]]
    train_domains: Sequence[str]
    ood_domains: Sequence[str]
    backbone: Mapping[str, Any]
    main_experts: int
    main_sparsity: float
    sam_rho: float
    image_size: int = 32
    environment: Mapping[str, Any] = field(default_factory=environment)


def _template_environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FunctionLoader(
            lambda name: importlib.resources.files("hf_fewshot.model_cards").joinpath(name).read_text("utf-8")
        ),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,  # a name the context lacks is an error, not an empty cell
    )
    env.filters["fmt"] = format  # {{ value | fmt(".2f") }} is format(value, ".2f")
    return env


def render_report(template: str, context: Mapping[str, Any]) -> str:
    """Render a report template of `hf_fewshot.model_cards` with `context`."""
    return _template_environment().get_template(template).render(**context)


def minimeta_report_context(study: MiniMetaStudy) -> dict[str, Any]:
    """The numbers of the MiniMeta report: verdicts of the claims, the methods tables, the selection's picks, the
    ablation rows (SMAT's diagnostics on each run's test episodes), the experts' density and routing."""
    pool, selection = selection_counts(study.selection_choices)
    similarity = routing_similarity(study.routing)
    return {
        "command": study.command,
        "environment": study.environment,
        "total_seconds": sum(seconds for _, seconds in study.timings),
        "settings": study.settings,
        "train_domains": list(study.train_domains),
        "ood_domains": list(study.ood_domains),
        "image_size": study.image_size,
        "backbone": study.backbone,
        "tokens": (study.backbone["image_size"] // study.backbone["patch_size"]) ** 2,
        "sam_rho": study.sam_rho,
        "main_experts": study.main_experts,
        "main_sparsity": study.main_sparsity,
        "learning_rates": study.learning_rates,
        "claims": [judge_claim(claim, study.results) for claim in study.claims],
        "main_table": method_table({name: study.results[name] for name in study.main_cells}),
        "flatness_table": method_table({name: study.results[name] for name in study.flatness_cells}),
        "pool": pool,
        "selection": selection,
        "smat_runs": [(run, smat_run_summary(run.model, run.results)) for run in study.runs if run.method == "smat"],
        "pmf_runs": [run for run in study.runs if run.method == "protonet"],
        "num_experts": study.smat.config.num_experts,
        "density": {kind: values.tolist() for kind, values in expert_density_by_layer_type(study.smat).items()},
        "routing_domains": list(study.routing),
        "routing_similarity": list(zip(study.routing, similarity.tolist(), strict=True)),
        "commands": list(study.commands),
        "timings": list(study.timings),
    }


def render_minimeta_report(study: MiniMetaStudy) -> str:
    """The MiniMeta study's Markdown report (`reports/minimeta/README.md`)."""
    return render_report(MINIMETA_REPORT, minimeta_report_context(study))


__all__ = [
    "MINIMETA_REPORT",
    "MetaTuningRun",
    "MiniMetaStudy",
    "environment",
    "minimeta_report_context",
    "render_minimeta_report",
    "render_report",
]
