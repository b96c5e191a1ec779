"""Plots for reports and model cards: per-domain accuracy, SMAT's experts (the SMAT paper's Fig. 5 analogues:
density per layer type, overlap of the experts' masks), the ID / OOD trade-off over the sparsity level, routing
similarity between domains and validation curves. Each function saves a PNG and returns its path.

Drawing only: the numbers come from `hf_fewshot.analysis` (re-exported here under their old names). Every plot is
its own `matplotlib.figure.Figure`, saved with the Agg renderer: importing this module changes no matplotlib
setting (a notebook keeps its backend) and no pyplot state is created or left behind.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from hf_fewshot.analysis import (
    LAYER_TYPES,
    expert_density_by_layer_type,
    expert_mask_overlap,
    expert_masks,
    layer_type,
    mean_expert_weights,
    ordered_layer_types,
    routing_similarity,
)
from hf_fewshot.evaluation import EvaluationResults


def _save(figure: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=120)  # a bare Figure renders with Agg for a .png: no backend, no pyplot
    return path


def plot_domain_accuracy(results_by_model: Mapping[str, EvaluationResults], path: str | Path) -> Path:
    """Grouped bars: accuracy per domain (ID first) for each model, with the 95% CI as error bars."""
    first = next(iter(results_by_model.values()))
    domains = [d.domain for d in sorted(first.domains, key=lambda d: not d.in_domain)]
    width = 0.8 / len(results_by_model)
    figure = Figure(figsize=(1.2 + 1.1 * len(domains), 3.2))
    axis = figure.subplots()
    for k, (model, results) in enumerate(results_by_model.items()):
        means = [results[d].mean for d in domains]
        errors = [results[d].ci95 for d in domains]
        axis.bar(np.arange(len(domains)) + k * width, means, width, yerr=errors, capsize=2, label=model)
    labels = [f"{d}\n({'ID' if first[d].in_domain else 'OOD'})" for d in domains]
    axis.set_xticks(np.arange(len(domains)) + width * (len(results_by_model) - 1) / 2, labels)
    axis.set_ylabel("accuracy (%)")
    axis.legend(fontsize=8)
    return _save(figure, path)


def plot_expert_density(model, path: str | Path) -> Path:
    """Bars per layer type: each expert's density (1 − sparsity), the SMAT paper's per-layer analysis."""
    density = expert_density_by_layer_type(model)
    kinds = ordered_layer_types(density)
    experts = len(next(iter(density.values())))
    width = 0.8 / experts
    figure = Figure(figsize=(1.5 + 1.0 * len(kinds), 3.2))
    axis = figure.subplots()
    for m in range(experts):
        axis.bar(np.arange(len(kinds)) + m * width, [density[k][m] for k in kinds], width, label=f"expert {m}")
    axis.set_xticks(np.arange(len(kinds)) + width * (experts - 1) / 2, kinds, rotation=30, ha="right")
    axis.set_ylabel("density (open gates)")
    axis.legend(fontsize=7, ncol=2)
    return _save(figure, path)


def plot_expert_overlap(model, path: str | Path) -> Path:
    """Heat map of the Jaccard overlap between the experts' masks."""
    overlap = expert_mask_overlap(model)
    figure = Figure(figsize=(3.6, 3.2))
    axis = figure.subplots()
    image = axis.imshow(overlap, vmin=0, vmax=1, cmap="viridis")
    axis.set_xlabel("expert")
    axis.set_ylabel("expert")
    figure.colorbar(image, ax=axis, label="mask overlap (Jaccard)")
    return _save(figure, path)


def plot_sparsity_tradeoff(results_by_sparsity: Mapping[float, EvaluationResults], path: str | Path) -> Path:
    """ID and OOD average accuracy (± 95% CI) against SMAT's sparsity target τ: the trade-off curve."""
    levels = sorted(results_by_sparsity)
    figure = Figure(figsize=(4.2, 3.2))
    axis = figure.subplots()
    for label, mean, ci95 in (("ID", "id_average", "id_ci95"), ("OOD", "ood_average", "ood_ci95")):
        means = [getattr(results_by_sparsity[t], mean) for t in levels]
        errors = [getattr(results_by_sparsity[t], ci95) for t in levels]
        axis.errorbar(levels, means, yerr=errors, marker="o", capsize=3, label=f"{label} average")
    axis.set_xlabel("sparsity target τ")
    axis.set_ylabel("accuracy (%)")
    axis.legend(fontsize=8)
    return _save(figure, path)


def plot_routing_similarity(weights_by_domain: Mapping[str, np.ndarray], path: str | Path) -> Path:
    """Heat map of `routing_similarity` next to each domain's mean expert weights."""
    names = list(weights_by_domain)
    similarity = routing_similarity(weights_by_domain)
    means = mean_expert_weights(weights_by_domain)
    figure = Figure(figsize=(8.0, 3.4))
    left, right = figure.subplots(1, 2)
    image = left.imshow(similarity, cmap="viridis")
    for (i, j), value in np.ndenumerate(similarity):
        left.text(j, i, f"{value:.3f}", ha="center", va="center", fontsize=7, color="white")
    left.set_xticks(range(len(names)), names, rotation=30, ha="right")
    left.set_yticks(range(len(names)), names)
    left.set_title("routing similarity (cosine)", fontsize=9)
    figure.colorbar(image, ax=left)
    image = right.imshow(means, vmin=0, vmax=1, cmap="magma", aspect="auto")
    right.set_xticks(range(means.shape[1]), [f"expert {m}" for m in range(means.shape[1])], rotation=30, ha="right")
    right.set_yticks(range(len(names)), names)
    right.set_title("mean expert weight", fontsize=9)
    figure.colorbar(image, ax=right)
    return _save(figure, path)


def plot_validation_curves(curves: Mapping[str, Sequence[tuple[float, float]]], path: str | Path) -> Path:
    """Validation accuracy against meta-training tasks, one line per run: `{run: [(tasks, accuracy), ...]}`."""
    figure = Figure(figsize=(4.2, 3.2))
    axis = figure.subplots()
    for name, points in curves.items():
        tasks, accuracies = zip(*points, strict=True) if points else ((), ())
        axis.plot(tasks, accuracies, marker="o", label=name)
    axis.set_xlabel("meta-training tasks")
    axis.set_ylabel("validation accuracy (%)")
    axis.legend(fontsize=8)
    return _save(figure, path)


__all__ = [
    "LAYER_TYPES",  # the numbers' helpers live in hf_fewshot.analysis; these names stay importable from here
    "expert_density_by_layer_type",
    "expert_mask_overlap",
    "expert_masks",
    "layer_type",
    "plot_domain_accuracy",
    "plot_expert_density",
    "plot_expert_overlap",
    "plot_routing_similarity",
    "plot_sparsity_tradeoff",
    "plot_validation_curves",
    "routing_similarity",
]
