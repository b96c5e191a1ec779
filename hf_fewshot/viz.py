"""Plots for reports and model cards: per-domain accuracy, SMAT's experts (the SMAT paper's Fig. 5 analogues:
density per layer type, overlap of the experts' masks), the ID / OOD trade-off over the sparsity level, routing
similarity between domains and validation curves. Each function saves a PNG and returns its path."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from hf_fewshot.evaluation import EvaluationResults  # noqa: E402

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


def layer_type(parameter_name: str) -> str:
    """The layer type of a backbone parameter name (`"other"` when none matches)."""
    for name, pattern in LAYER_TYPES:
        if re.search(pattern, parameter_name):
            return name
    return "other"


def _save(figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def plot_domain_accuracy(results_by_model: Mapping[str, EvaluationResults], path: str | Path) -> Path:
    """Grouped bars: accuracy per domain (ID first) for each model, with the 95% CI as error bars."""
    first = next(iter(results_by_model.values()))
    domains = [d.domain for d in sorted(first.domains, key=lambda d: not d.in_domain)]
    width = 0.8 / len(results_by_model)
    figure, axis = plt.subplots(figsize=(1.2 + 1.1 * len(domains), 3.2))
    for k, (model, results) in enumerate(results_by_model.items()):
        means = [results[d].mean for d in domains]
        errors = [results[d].ci95 for d in domains]
        axis.bar(np.arange(len(domains)) + k * width, means, width, yerr=errors, capsize=2, label=model)
    labels = [f"{d}\n({'ID' if first[d].in_domain else 'OOD'})" for d in domains]
    axis.set_xticks(np.arange(len(domains)) + width * (len(results_by_model) - 1) / 2, labels)
    axis.set_ylabel("accuracy (%)")
    axis.legend(fontsize=8)
    return _save(figure, path)


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


def plot_expert_density(model, path: str | Path) -> Path:
    """Bars per layer type: each expert's density (1 − sparsity), the SMAT paper's per-layer analysis."""
    density = expert_density_by_layer_type(model)
    kinds = [name for name, _ in LAYER_TYPES if name in density] + [k for k in density if k == "other"]
    experts = len(next(iter(density.values())))
    width = 0.8 / experts
    figure, axis = plt.subplots(figsize=(1.5 + 1.0 * len(kinds), 3.2))
    for m in range(experts):
        axis.bar(np.arange(len(kinds)) + m * width, [density[k][m] for k in kinds], width, label=f"expert {m}")
    axis.set_xticks(np.arange(len(kinds)) + width * (experts - 1) / 2, kinds, rotation=30, ha="right")
    axis.set_ylabel("density (open gates)")
    axis.legend(fontsize=7, ncol=2)
    return _save(figure, path)


def plot_expert_overlap(model, path: str | Path) -> Path:
    """Heat map of the Jaccard overlap between the experts' masks."""
    overlap = expert_mask_overlap(model)
    figure, axis = plt.subplots(figsize=(3.6, 3.2))
    image = axis.imshow(overlap, vmin=0, vmax=1, cmap="viridis")
    axis.set_xlabel("expert")
    axis.set_ylabel("expert")
    figure.colorbar(image, ax=axis, label="mask overlap (Jaccard)")
    return _save(figure, path)


def plot_sparsity_tradeoff(results_by_sparsity: Mapping[float, EvaluationResults], path: str | Path) -> Path:
    """ID and OOD average accuracy (± 95% CI) against SMAT's sparsity target τ: the trade-off curve."""
    levels = sorted(results_by_sparsity)
    figure, axis = plt.subplots(figsize=(4.2, 3.2))
    for label, mean, ci95 in (("ID", "id_average", "id_ci95"), ("OOD", "ood_average", "ood_ci95")):
        means = [getattr(results_by_sparsity[t], mean) for t in levels]
        errors = [getattr(results_by_sparsity[t], ci95) for t in levels]
        axis.errorbar(levels, means, yerr=errors, marker="o", capsize=3, label=f"{label} average")
    axis.set_xlabel("sparsity target τ")
    axis.set_ylabel("accuracy (%)")
    axis.legend(fontsize=8)
    return _save(figure, path)


def routing_similarity(weights_by_domain: Mapping[str, np.ndarray]) -> np.ndarray:
    """Mean cosine similarity `[D, D]` between the expert weights of episodes of two domains (each `[episodes, M]`);
    the diagonal is how consistently a domain is routed, off-diagonal entries how alike two domains are routed."""
    unit = {d: w / np.linalg.norm(w, axis=1, keepdims=True).clip(1e-12) for d, w in weights_by_domain.items()}
    names = list(unit)
    return np.array([[float((unit[a] @ unit[b].T).mean()) for b in names] for a in names])


def plot_routing_similarity(weights_by_domain: Mapping[str, np.ndarray], path: str | Path) -> Path:
    """Heat map of `routing_similarity` next to each domain's mean expert weights."""
    names = list(weights_by_domain)
    similarity = routing_similarity(weights_by_domain)
    means = np.stack([np.asarray(w).mean(axis=0) for w in weights_by_domain.values()])
    figure, (left, right) = plt.subplots(1, 2, figsize=(8.0, 3.4))
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
    figure, axis = plt.subplots(figsize=(4.2, 3.2))
    for name, points in curves.items():
        tasks, accuracies = zip(*points, strict=True) if points else ((), ())
        axis.plot(tasks, accuracies, marker="o", label=name)
    axis.set_xlabel("meta-training tasks")
    axis.set_ylabel("validation accuracy (%)")
    axis.legend(fontsize=8)
    return _save(figure, path)


__all__ = [
    "expert_density_by_layer_type",
    "expert_mask_overlap",
    "layer_type",
    "plot_domain_accuracy",
    "plot_expert_density",
    "plot_expert_overlap",
    "plot_routing_similarity",
    "plot_sparsity_tradeoff",
    "plot_validation_curves",
    "routing_similarity",
]
