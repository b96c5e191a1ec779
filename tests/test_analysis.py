"""The study's numbers and report without running the study: verdicts from paired differences, claims, methods
tables, the selection's picks, validation curves, routing per domain, and the MiniMeta report's template."""

import numpy as np
import pytest
import torch
from helpers import tiny_vit_config

from hf_fewshot import SmatModel
from hf_fewshot.analysis import (
    Claim,
    Verdict,
    judge_claim,
    mean_expert_weights,
    method_table,
    ordered_layer_types,
    routing_weights,
    selection_counts,
    validation_curve,
    verdict,
)
from hf_fewshot.evaluation import DomainAccuracy, EvaluationResults, mean_and_ci95
from hf_fewshot.reports import MetaTuningRun, MiniMetaStudy, minimeta_report_context, render_minimeta_report


def results(shift: float = 0.0, episodes: int = 6, routing=None) -> EvaluationResults:
    """Glyphs (ID) and digits (OOD) with known per-episode accuracies, `shift` points above the baseline's."""
    domains = []
    for k, (name, in_domain) in enumerate((("glyphs", True), ("digits", False))):
        accuracies = tuple(50.0 + 10 * k + shift + (i % 3) for i in range(episodes))
        mean, ci95 = mean_and_ci95(accuracies)
        weights = tuple(tuple(w) for w in (routing or {}).get(name, ()))
        domains.append(DomainAccuracy(name, mean, ci95, episodes, in_domain, accuracies, weights))
    return EvaluationResults(tuple(domains))


def test_verdicts_of_paired_differences():
    assert verdict(1.0, 0.5) == Verdict(True) and str(verdict(1.0, 0.5)) == "reproduced"
    assert str(verdict(0.2, 0.5)) == "not reproduced (within the CI)"
    assert str(verdict(-1.0, 0.5)) == "not reproduced (significantly opposite)"
    assert verdict(-1.0, 0.5, "worse").reproduced and not verdict(1.0, 0.5, "worse").reproduced
    assert verdict(-0.2, 0.5, "not worse").reproduced
    assert str(verdict(-1.0, 0.5, "not worse")) == "not reproduced (significantly worse)"
    with pytest.raises(ValueError, match="expectation"):
        verdict(1.0, 0.5, "different")


def test_claims_are_judged_on_the_episodes_both_models_ran():
    cells = {"ours": results(shift=2.0), "theirs": results(), "short": results(shift=2.0, episodes=3)}
    judged = judge_claim(Claim("ours > theirs in-domain", "ours", "theirs", "ID"), cells)
    assert judged.difference == pytest.approx(2.0) and judged.ci95 == pytest.approx(0.0)
    assert judged.verdict.reproduced
    worse = judge_claim(Claim("theirs ≥ ours", "theirs", "ours", "OOD", "not worse"), cells)
    assert worse.difference == pytest.approx(-2.0) and str(worse.verdict) == "not reproduced (significantly worse)"
    first = judge_claim(Claim("short vs theirs", "short", "theirs", "OOD"), cells)  # the first 3 episodes of theirs
    assert first.difference == pytest.approx(2.0)


def test_method_table_selection_and_validation_curve():
    table = method_table({"a": results(), "b": results(shift=1.0, episodes=3)})
    assert [(c.domain, c.in_domain) for c in table.columns] == [("glyphs", True), ("digits", False)]
    assert [(row.name, row.episodes) for row in table.rows] == [("a", 6), ("b", 3)]
    assert str(table.rows[1].accuracies[0]) == str(results(shift=1.0, episodes=3)["glyphs"])
    assert table.rows[1].ood_average == pytest.approx(results(shift=1.0, episodes=3).ood_average)
    pool, rows = selection_counts({"glyphs": {"sam": 3, "sam-glyphs": 1}, "digits": {"sam-emoji": 4}})
    assert pool == ["sam", "sam-emoji", "sam-glyphs"]
    assert rows == [("glyphs", [3, 0, 1]), ("digits", [0, 4, 0])]
    history = [{"step": 5, "loss": 1.0}, {"step": 10, "eval_accuracy": 40.0}, {"step": 20, "eval_accuracy": 45.0}]
    assert validation_curve(history) == [(20, 40.0), (40, 45.0)]
    assert ordered_layer_types({"other", "mlp fc1", "attention q"}) == ["attention q", "mlp fc1", "other"]


def test_routing_weights_per_domain():
    routing = {"glyphs": [[1.0, 0.0], [0.5, 0.5]], "digits": [[0.0, 1.0], [0.0, 1.0]]}
    weights = routing_weights(results(episodes=2, routing=routing))
    assert list(weights) == ["glyphs", "digits"] and weights["glyphs"].shape == (2, 2)
    assert np.allclose(mean_expert_weights(weights), [[0.75, 0.25], [0.0, 1.0]])


def tiny_smat() -> SmatModel:
    torch.manual_seed(0)
    return SmatModel.from_backbone(tiny_vit_config(), num_experts=2)


def fake_study(smat: SmatModel) -> MiniMetaStudy:
    routing = {"glyphs": [[0.9, 0.1], [0.8, 0.2]], "digits": [[0.2, 0.8], [0.1, 0.9]]}
    cells = {"SMAT": results(shift=1.0, episodes=2, routing=routing), "P>M>F": results(episodes=2)}
    runs = [
        MetaTuningRun("smat-long", "the long budget", "smat", 6, 90.0, cells["SMAT"], 55.0, smat),
        MetaTuningRun("pmf-long", "P>M>F, the long budget", "protonet", 6, 30.0, cells["P>M>F"]),
    ]
    return MiniMetaStudy(
        command="python recipes/reproduce_minimeta.py --quick",
        settings=dict(
            seed=0,
            pretrain_epochs=0.5,
            domain_backbone_steps=2,
            meta_tasks=4,
            long_meta_tasks=6,
            validation_episodes=2,
            test_episodes=2,
            finetune_episodes=2,
            finetune_steps=1,
            finetune_learning_rates=[1e-4, 1e-3],
            routing_episodes=2,
            max_ways=10,
            max_support=50,
        ),  # fmt: skip
        results=cells,
        claims=[Claim("SMAT > P>M>F out of domain, 6 tasks", "SMAT", "P>M>F", "OOD")],
        main_cells=["P>M>F", "SMAT"],
        flatness_cells=["SMAT"],
        selection_choices={"glyphs": {"sam": 2}, "digits": {"sam": 1, "sam-glyphs": 1}},
        runs=runs,
        smat=smat,
        routing={domain: np.asarray(w) for domain, w in routing.items()},
        learning_rates={"full": 1e-4, "lora": 1e-4},
        commands=["python recipes/pretrain.py --sam_rho 0", "python recipes/meta_tune.py --model_config '{}'"],
        timings=[("pretrain erm", 60.0), ("evaluate SMAT", 30.0)],
        train_domains=["glyphs"],
        ood_domains=["digits"],
        backbone=dict(hidden_size=128, num_hidden_layers=4, image_size=32, patch_size=8),
        main_experts=2,
        main_sparsity=0.5,
        sam_rho=0.05,
        environment=dict(hf_fewshot="0", torch="2", transformers="5", machine="x86_64", cpu_count=2),
    )


def test_the_minimeta_report_renders_from_the_study_numbers():
    smat = tiny_smat()
    study = fake_study(smat)
    context = minimeta_report_context(study)
    assert context["total_seconds"] == 90.0 and context["tokens"] == 16
    assert [run.name for run, _ in context["smat_runs"]] == ["smat-long"]
    assert [run.name for run in context["pmf_runs"]] == ["pmf-long"]
    (_, summary) = context["smat_runs"][0]
    assert summary.tasks_seen == int(smat.router_tasks_seen) == 0
    assert summary.eval_sparsity == pytest.approx(np.mean(summary.diagnostics.eval_sparsity))
    text = render_minimeta_report(study)
    assert text.startswith("# hf-fewshot on MiniMeta: SMAT and flat backbones in miniature\n\n")
    assert text.endswith("| pretrain erm | 1.0 |\n| evaluate SMAT | 0.5 |\n")
    assert (
        "Wall time of all stages:\n1.5 minutes." in text and "(width 128, 4 layers, 8-px patches: 16 tokens)" in text
    )
    assert "| SMAT > P>M>F out of domain, 6 tasks | OOD | +1.00 ± 0.00 | **reproduced** |" in text
    assert (
        "| model | episodes | glyphs (ID) | digits (OOD) | ID average | OOD average |\n|---" + "|---" * 5 + "|" in text
    )
    assert f"| P>M>F | 2 | {results(episodes=2)['glyphs']} |" in text
    assert "| test domain | sam | sam-glyphs |\n|---|---|---|\n| glyphs | 2 | 0 |\n| digits | 1 | 1 |\n" in text
    assert "| smat-long | the long budget | 6 | " in text and " | 55.00 (0) | " in text
    assert "| pmf-long | 6 | " in text and " | 0.5 |\n" in text
    assert "| layer type | expert 0 | expert 1 |\n|---|---|---|\n" in text
    assert "| | glyphs | digits |\n|---|---|---|\n| glyphs | " in text
    assert (
        "```bash\npython recipes/pretrain.py --sam_rho 0\npython recipes/meta_tune.py --model_config '{}'\n```" in text
    )
    assert "chosen from [0.0001, 0.001] (LoRA: 10×)" in text and "LoRA 0.001 (r 8" in text
    assert "\n\n\n" not in text and "{{" not in text and "{%" not in text
