"""The numbers behind the study's report and plots, as data: what SMAT's experts are (their masks, density per layer
type, overlap), how they are routed (expert weights per domain, routing similarity), and whether a claim holds (a
verdict from a paired difference ± its 95% CI, tables of methods by domain).

Kept apart from the Markdown (`hf_fewshot.reports` renders it from a Jinja template) and from the drawing
(`hf_fewshot.viz` only draws these numbers), so that a notebook, a test or another study gets the same numbers
without a report or a figure; `paired_difference` and the CIs are `hf_fewshot.evaluation`'s.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from hf_fewshot.diagnostics import SmatDiagnostics, smat_diagnostics
from hf_fewshot.evaluation import DomainAccuracy, EvaluationResults, paired_difference

# In-memory ViT / Dinov2 parameter names (transformers 5) → the layer types the SMAT paper compares.
LAYER_TYPES = (
    ("attention q", r"attention\.q_proj\."),
    ("attention k", r"attention\.k_proj\."),
    ("attention v", r"attention\.v_proj\."),
    ("attention out", r"attention\.o_proj\."),
    ("mlp fc1", r"mlp\.fc1\."),
    ("mlp fc2", r"mlp\.fc2\."),
    ("layer norms", r"norm"),
    ("embeddings", r"embeddings\."),
)


# ------------------------------------------------------------------------------------------- SMAT's experts
def layer_type(parameter_name: str) -> str:
    """The layer type of a backbone parameter name (`"other"` when none matches)."""
    for name, pattern in LAYER_TYPES:
        if re.search(pattern, parameter_name):
            return name
    return "other"


def ordered_layer_types(kinds: Iterable[str]) -> list[str]:
    """`kinds` in the order of `LAYER_TYPES`, `"other"` last (the order of the plots' bars)."""
    kinds = set(kinds)
    return [name for name, _ in LAYER_TYPES if name in kinds] + [kind for kind in ("other",) if kind in kinds]


@torch.no_grad()
def expert_masks(model) -> dict[str, torch.Tensor]:
    """Each masked backbone tensor's eval gates as boolean masks `[M, numel]` (gate > 0: the expert uses θ_δ)."""
    gates = model.expert_gates(training=False) > 0
    return dict(zip(model.masked_parameter_names, gates.split(model.masked_sizes, dim=1), strict=True))


def expert_density_by_layer_type(model) -> dict[str, np.ndarray]:
    """Per layer type, the fraction of each expert's gates that are open `[M]` (element-weighted)."""
    open_counts: dict[str, torch.Tensor] = {}
    sizes: dict[str, int] = {}
    for name, mask in expert_masks(model).items():
        kind = layer_type(name)
        open_counts[kind] = open_counts.get(kind, 0) + mask.sum(dim=1)
        sizes[kind] = sizes.get(kind, 0) + mask.shape[1]
    return {kind: (open_counts[kind] / sizes[kind]).cpu().numpy() for kind in open_counts}


def expert_mask_overlap(model) -> np.ndarray:
    """Jaccard overlap `[M, M]` of the experts' open-gate masks over all masked elements."""
    masks = torch.cat(list(expert_masks(model).values()), dim=1).float()
    intersection = masks @ masks.T
    sizes = masks.sum(dim=1)
    union = sizes[:, None] + sizes[None, :] - intersection
    return (intersection / union.clamp_min(1)).cpu().numpy()


# ------------------------------------------------------------------------------------------------ routing
def routing_weights(results: EvaluationResults) -> dict[str, np.ndarray]:
    """The expert weights `[episodes, M]` of each domain's episodes in a SMAT model's `evaluate_episodes` results."""
    return {domain.domain: np.asarray(domain.expert_weights) for domain in results.domains}


def routing_similarity(weights_by_domain: Mapping[str, np.ndarray]) -> np.ndarray:
    """Mean cosine similarity `[D, D]` between the expert weights of episodes of two domains (each `[episodes, M]`);
    the diagonal is how consistently a domain is routed, off-diagonal entries how alike two domains are routed."""
    unit = {d: w / np.linalg.norm(w, axis=1, keepdims=True).clip(1e-12) for d, w in weights_by_domain.items()}
    names = list(unit)
    return np.array([[float((unit[a] @ unit[b].T).mean()) for b in names] for a in names])


def mean_expert_weights(weights_by_domain: Mapping[str, np.ndarray]) -> np.ndarray:
    """Each domain's mean expert weights `[D, M]` (rows in the mapping's order)."""
    return np.stack([np.asarray(w).mean(axis=0) for w in weights_by_domain.values()])


# ----------------------------------------------------------------------------------------------- verdicts
@dataclass(frozen=True)
class Verdict:
    """Whether a claim is reproduced, and if not, why (`"within the CI"`, `"significantly opposite"`, ...)."""

    reproduced: bool
    reason: str | None = None

    def __str__(self) -> str:
        return ("reproduced" if self.reproduced else "not reproduced") + (f" ({self.reason})" if self.reason else "")


def verdict(difference: float, ci95: float, expectation: str = "better") -> Verdict:
    """Whether a paired difference supports the claim: "better" needs it above 0 beyond the CI, "worse" below 0
    beyond the CI, "not worse" needs the CI to reach 0 or above."""
    if expectation not in ("better", "worse", "not worse"):
        raise ValueError(f'expectation must be "better", "worse" or "not worse", got {expectation!r}.')
    low, high = difference - ci95, difference + ci95
    if expectation == "not worse":
        return Verdict(True) if high >= 0 else Verdict(False, "significantly worse")
    if expectation == "worse":
        low, high = -high, -low
    if low > 0:
        return Verdict(True)
    return Verdict(False, "significantly opposite" if high < 0 else "within the CI")


@dataclass(frozen=True)
class Claim:
    """A claim as a comparison: model `ours` vs model `theirs` (names of results) on the ID or OOD domains,
    expected "better", "worse" or "not worse"."""

    text: str
    ours: str
    theirs: str
    split: str
    expectation: str = "better"


@dataclass(frozen=True)
class ClaimResult:
    """A judged claim: the paired difference `ours − theirs` (accuracy points) ± its 95% CI, and the verdict."""

    claim: Claim
    difference: float
    ci95: float
    verdict: Verdict


def judge_claim(claim: Claim, results: Mapping[str, EvaluationResults]) -> ClaimResult:
    """The paired difference of a claim's two models over the domains of its split, on the episodes both were
    evaluated on (the first ones when one of them, e.g. a fine-tuned row, ran fewer), and its verdict."""
    ours, theirs = results[claim.ours], results[claim.theirs]
    domains = [d.domain for d in ours.domains if d.in_domain == (claim.split == "ID")]
    common = min(d.num_episodes for d in (*ours.domains, *theirs.domains))
    difference, ci95 = paired_difference(ours.first_episodes(common), theirs.first_episodes(common), domains)
    return ClaimResult(claim, difference, ci95, verdict(difference, ci95, claim.expectation))


# ------------------------------------------------------------------------------------------------- tables
@dataclass(frozen=True)
class MethodRow:
    """One model's row of a methods table: its episodes per domain, accuracy per column, ID / OOD averages."""

    name: str
    episodes: int
    accuracies: tuple[DomainAccuracy, ...]
    id_average: float | None
    id_ci95: float | None
    ood_average: float | None
    ood_ci95: float | None


@dataclass(frozen=True)
class MethodTable:
    """The papers' Table 1 layout: one row per model, one column per domain (ID first), then the averages."""

    columns: tuple[DomainAccuracy, ...]  # the first model's, for the names and ID / OOD of the columns
    rows: tuple[MethodRow, ...]


def method_table(results: Mapping[str, EvaluationResults]) -> MethodTable:
    """The methods table of several models evaluated on the same domains."""
    columns = tuple(sorted(next(iter(results.values())).domains, key=lambda d: not d.in_domain))
    rows = tuple(
        MethodRow(
            name,
            result.domains[0].num_episodes,
            tuple(result[column.domain] for column in columns),
            result.id_average,
            result.id_ci95,
            result.ood_average,
            result.ood_ci95,
        )
        for name, result in results.items()
    )
    return MethodTable(columns, rows)


def selection_counts(choices: Mapping[str, Mapping[str, int]]) -> tuple[list[str], list[tuple[str, list[int]]]]:
    """A backbone pool's choices `{test domain: {backbone: episodes}}` as a table: the backbones (sorted), and per
    test domain the episodes each was picked for."""
    pool = sorted({name for counts in choices.values() for name in counts})
    return pool, [(domain, [counts.get(name, 0) for name in pool]) for domain, counts in choices.items()]


def validation_curve(log_history: Sequence[Mapping[str, Any]], tasks_per_step: int = 2) -> list[tuple[int, float]]:
    """`(meta-training tasks, validation accuracy)` of every evaluation in a Trainer's `log_history`."""
    return [
        (tasks_per_step * entry["step"], entry["eval_accuracy"]) for entry in log_history if "eval_accuracy" in entry
    ]


@dataclass(frozen=True)
class SmatRunSummary:
    """What an ablation table shows of a SMAT run: its diagnostics on the test episodes (gate sparsity averaged
    over the experts) and the meta-training tasks its router has seen."""

    diagnostics: SmatDiagnostics
    eval_sparsity: float
    train_sparsity: float
    tasks_seen: int


def smat_run_summary(model, results: EvaluationResults) -> SmatRunSummary:
    """`smat_diagnostics` of a SMAT model on the episodes of `results` (its routing per domain), summarised."""
    diagnostics = smat_diagnostics(model, routing_weights(results))
    return SmatRunSummary(
        diagnostics,
        float(np.mean(diagnostics.eval_sparsity)),
        float(np.mean(diagnostics.train_sparsity)),
        int(model.router_tasks_seen),
    )


__all__ = [
    "LAYER_TYPES",
    "Claim",
    "ClaimResult",
    "MethodRow",
    "MethodTable",
    "SmatRunSummary",
    "Verdict",
    "expert_density_by_layer_type",
    "expert_mask_overlap",
    "expert_masks",
    "judge_claim",
    "layer_type",
    "mean_expert_weights",
    "method_table",
    "ordered_layer_types",
    "routing_similarity",
    "routing_weights",
    "selection_counts",
    "smat_run_summary",
    "validation_curve",
    "verdict",
]
