"""Plots for reports and model cards: per-domain accuracy, and SMAT's experts (the SMAT paper's Fig. 5 analogues):
density per layer type and the overlap of the experts' masks. Each function saves a PNG and returns its path."""

from __future__ import annotations

import re
from collections.abc import Mapping
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


__all__ = [
    "expert_density_by_layer_type",
    "expert_mask_overlap",
    "layer_type",
    "plot_domain_accuracy",
    "plot_expert_density",
    "plot_expert_overlap",
]
