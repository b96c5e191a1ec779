"""SMAT's mechanism diagnostics: gate sparsity against τ, saturation, routing per domain, in logs and cards."""

import math

import numpy as np
import pytest
import torch
from helpers import tiny_vit_config

from hf_fewshot import EpisodicTrainer, FewShotTrainingArguments, SmatModel, load_domain, smat_diagnostics
from hf_fewshot.diagnostics import domain_routing_cosine, routing_entropy
from hf_fewshot.hub import fewshot_model_card
from hf_fewshot.models.configuration_smat import router_tau_decay_for


def saturated_smat(closed_share: tuple[float, ...]) -> SmatModel:
    """A SMAT whose expert m has exactly `closed_share[m]` of its gates at 0 and the rest at 1."""
    torch.manual_seed(0)
    model = SmatModel.from_backbone(tiny_vit_config(), num_experts=len(closed_share), sparsity_target=0.5)
    num_elements = model.gate_logits.shape[1]
    with torch.no_grad():
        model.delta.normal_(0, 0.01)
        for m, share in enumerate(closed_share):
            closed = int(round(share * num_elements))
            model.gate_logits[m] = 4.0
            model.gate_logits[m, torch.randperm(num_elements)[:closed]] = -4.0
    return model


def test_diagnostics_measure_gates_and_routing_and_meet_the_goals():
    model = saturated_smat((0.5, 0.52))
    routing = {"glyphs": np.array([[0.9, 0.1], [0.8, 0.2]]), "digits": np.array([[0.1, 0.9], [0.3, 0.7]])}
    diagnostics = smat_diagnostics(model, routing)
    assert diagnostics.eval_sparsity == pytest.approx((0.5, 0.52), abs=1e-3)
    assert diagnostics.train_sparsity == pytest.approx((0.5, 0.52), abs=1e-3), "saturated: train = eval gates"
    assert diagnostics.saturated_fraction == 1.0
    pre = torch.cat([p.detach().flatten() for p in model.backbone.parameters()])
    assert diagnostics.delta_norm_ratio == pytest.approx(float(model.delta.detach().norm() / pre.norm()), rel=1e-5)
    glyphs, digits = np.array([0.85, 0.15]), np.array([0.2, 0.8])
    cosine = glyphs @ digits / np.linalg.norm(glyphs) / np.linalg.norm(digits)
    assert diagnostics.domain_routing_cosine == {"glyphs / digits": pytest.approx(cosine)}
    assert diagnostics.warnings() == [], "every goal met"
    logged = diagnostics.to_dict(prefix="eval_smat_")
    assert logged["eval_smat_expert_1_eval_sparsity"] == pytest.approx(0.52, abs=1e-3)
    assert logged["eval_smat_routing_cosine_min"] == pytest.approx(cosine)


def test_diagnostics_warn_about_fractional_gates_missed_target_and_alike_routing():
    torch.manual_seed(0)
    model = SmatModel.from_backbone(tiny_vit_config(), num_experts=2, sparsity_target=0.5)  # log α ~ N(0, 0.5²)
    routing = {"glyphs": np.array([[0.5, 0.5]]), "digits": np.array([[0.52, 0.48]])}
    warnings = smat_diagnostics(model, routing).warnings()
    assert len(warnings) == 3
    assert "miss the sparsity target τ = 0.5" in warnings[0]
    assert "exactly 0 or 1" in warnings[1]
    assert "routed alike" in warnings[2]


def test_routing_entropy_and_cosine_by_hand():
    assert routing_entropy(np.array([[0.25] * 4])) == pytest.approx(1.0)
    assert routing_entropy(np.array([[1.0, 0, 0, 0]])) == pytest.approx(0.0, abs=1e-9)
    half = -2 * 0.5 * math.log(0.5) / math.log(4)
    assert routing_entropy(np.array([[0.5, 0.5, 0, 0], [0.25] * 4])) == pytest.approx((half + 1) / 2)
    cosines = domain_routing_cosine({"a": np.eye(3)[:1], "b": np.eye(3)[1:2], "c": np.eye(3)[:1]})
    assert cosines == {"a / b": 0.0, "a / c": pytest.approx(1.0), "b / c": 0.0}


def test_the_card_shows_the_diagnostics_and_its_warnings():
    model = saturated_smat((0.8, 0.5))
    card = fewshot_model_card(model, "user/smat", diagnostics=smat_diagnostics(model))
    assert "## Is the mechanism at work?" in card.text
    assert "| eval-gate sparsity per expert | 0.800 0.500 |" in card.text
    assert "**Warning:** The eval gates miss the sparsity target τ = 0.5 by up to 0.30" in card.text


def test_router_decay_reaches_the_minimum_at_the_papers_fraction_of_training():
    assert router_tau_decay_for(50_000) == pytest.approx(4000.0), "the paper's decay for the paper's length"
    decay = router_tau_decay_for(800)
    assert 5.0 - 0.36 * 800 / decay == pytest.approx(0.5)
    with pytest.raises(ValueError, match="num_tasks"):
        router_tau_decay_for(0)


def test_every_evaluation_logs_the_diagnostics_of_the_validation_episodes(tmp_path):
    model = saturated_smat((0.5, 0.5))
    validation = {d: load_domain("minimeta", d, "validation") for d in ("glyphs", "emoji")}
    args = FewShotTrainingArguments(
        output_dir=str(tmp_path), episode_protocol="fixed", n_way=3, n_shot=2, n_query=2, image_size=16,
        eval_episodes=4, use_cpu=True, report_to="none", disable_tqdm=True,
    )  # fmt: skip
    metrics = EpisodicTrainer(model, args, eval_dataset=validation).evaluate()
    assert metrics["eval_smat_gates_saturated"] == 1.0
    assert metrics["eval_smat_expert_0_eval_sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert metrics["eval_smat_router_tau"] == 5.0 and 0 < metrics["eval_smat_routing_entropy"] <= 1
    assert -1 <= metrics["eval_smat_routing_cosine_min"] <= 1
