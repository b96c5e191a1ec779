"""Plots: per-domain accuracy bars, SMAT expert density per layer type, expert mask overlap, routing similarity,
the ID / OOD trade-off over τ and validation curves; the numbers behind them (hf_fewshot.analysis); no import side
effects on matplotlib."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from helpers import tiny_vit_config
from PIL import Image

from hf_fewshot import SmatModel, viz
from hf_fewshot.analysis import (
    expert_density_by_layer_type,
    expert_mask_overlap,
    layer_type,
    routing_similarity,
)
from hf_fewshot.evaluation import DomainAccuracy, EvaluationResults
from hf_fewshot.viz import (
    plot_domain_accuracy,
    plot_expert_density,
    plot_expert_overlap,
    plot_routing_similarity,
    plot_sparsity_tradeoff,
    plot_validation_curves,
)


def smat_with_known_gates() -> SmatModel:
    """Expert 0 opens every gate, expert 1 only the MLP's: densities and overlap are known exactly."""
    torch.manual_seed(0)
    model = SmatModel.from_backbone(tiny_vit_config(), num_experts=2)
    with torch.no_grad():
        model.gate_logits.fill_(-10.0)
        model.gate_logits[0] = 10.0
        start = 0
        for name, size in zip(model.masked_parameter_names, model.masked_sizes, strict=True):
            if layer_type(name).startswith("mlp"):
                model.gate_logits[1, start : start + size] = 10.0
            start += size
    return model


def is_png(path) -> bool:
    with Image.open(path) as image:
        return image.format == "PNG" and image.size[0] > 100


def test_density_and_overlap_of_known_masks(tmp_path):
    model = smat_with_known_gates()
    density = expert_density_by_layer_type(model)
    assert density["mlp fc1"].tolist() == [1.0, 1.0] and density["attention q"].tolist() == [1.0, 0.0]
    assert set(density) >= {"attention q", "attention k", "attention v", "attention out", "layer norms", "embeddings"}
    overlap = expert_mask_overlap(model)
    mlp = sum(s for n, s in zip(model.masked_parameter_names, model.masked_sizes, strict=True) if "mlp." in n)
    assert np.allclose(np.diag(overlap), 1.0) and np.allclose(overlap, overlap.T)
    assert np.isclose(overlap[0, 1], mlp / sum(model.masked_sizes))
    assert is_png(plot_expert_density(model, tmp_path / "density.png"))
    assert is_png(plot_expert_overlap(model, tmp_path / "overlap.png"))


def test_domain_accuracy_plot(tmp_path):
    results = EvaluationResults(
        (DomainAccuracy("glyphs", 60.0, 2.0, 600, True), DomainAccuracy("digits", 50, 1, 600, False))
    )
    assert is_png(plot_domain_accuracy({"backbone": results, "smat": results}, tmp_path / "plots" / "accuracy.png"))


def test_routing_similarity_of_known_weights(tmp_path):
    weights = {
        "a": np.array([[1.0, 0.0], [1.0, 0.0]]),
        "b": np.array([[0.0, 1.0], [0.0, 1.0]]),
        "c": np.array([[1.0, 0.0], [0.0, 1.0]]),
    }
    similarity = routing_similarity(weights)
    assert np.allclose(similarity, [[1.0, 0.0, 0.5], [0.0, 1.0, 0.5], [0.5, 0.5, 0.5]])
    assert is_png(plot_routing_similarity(weights, tmp_path / "routing.png"))


def test_tradeoff_and_validation_curve_plots(tmp_path):
    def results(id_mean, ood_mean):
        return EvaluationResults(
            (DomainAccuracy("glyphs", id_mean, 2.0, 600, True), DomainAccuracy("digits", ood_mean, 1.0, 600, False))
        )

    by_sparsity = {0.25: results(60, 40), 0.5: results(58, 42), 0.75: results(55, 45)}
    assert is_png(plot_sparsity_tradeoff(by_sparsity, tmp_path / "tradeoff.png"))
    curves = {"SMAT": [(200, 50.0), (400, 55.0)], "SMAT without dense teachers": [(200, 45.0), (400, 52.0)]}
    assert is_png(plot_validation_curves(curves, tmp_path / "curves.png"))


def test_the_numbers_keep_their_viz_names():
    assert viz.expert_density_by_layer_type is expert_density_by_layer_type and viz.layer_type is layer_type
    assert viz.expert_mask_overlap is expert_mask_overlap and viz.routing_similarity is routing_similarity


@pytest.mark.slow
def test_importing_and_plotting_leave_matplotlib_alone(tmp_path):
    """A notebook's backend stays as it was and no pyplot state appears: the plots are bare `Figure`s."""
    script = textwrap.dedent(
        f"""
        import sys
        import matplotlib
        matplotlib.use("svg")
        from hf_fewshot import viz
        path = viz.plot_validation_curves({{"SMAT": [(200, 50.0), (400, 55.0)]}}, {str(tmp_path / "curves.png")!r})
        assert matplotlib.get_backend() == "svg", matplotlib.get_backend()
        assert "matplotlib.pyplot" not in sys.modules
        print(path)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert is_png(tmp_path / "curves.png")
