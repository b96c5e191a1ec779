"""evaluate_episodes: reproducible per-domain accuracy with CIs, ID / OOD averages, tables, fine-tuning per task."""

import json
import re

import numpy as np
import pytest
import torch
from helpers import tiny_vit_config

from hf_fewshot import ProtoNetModel, evaluate_episodes, load_domain
from hf_fewshot.evaluation import DomainAccuracy, EvaluationResults, paired_difference, results_table

SETTINGS = dict(protocol="fixed", n_way=5, n_shot=2, n_query=2, image_size=16, progress=False)


@pytest.fixture(scope="module")
def domains():
    return {"emoji": load_domain("minimeta", "emoji", "test"), "digits": load_domain("minimeta", "digits", "test")}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return ProtoNetModel.from_backbone(tiny_vit_config(num_hidden_layers=1))


def test_a_fixed_seed_gives_the_same_results_and_another_seed_other_episodes(model, domains):
    first = evaluate_episodes(model, domains, 6, in_domain=["emoji"], seed=1, **SETTINGS)
    again = evaluate_episodes(model, domains, 6, in_domain=["emoji"], seed=1, **SETTINGS)
    other = evaluate_episodes(model, domains, 6, in_domain=["emoji"], seed=2, **SETTINGS)
    assert first == again
    assert first.to_dict() != other.to_dict()
    assert first.id_average == first["emoji"].mean and first.ood_average == first["digits"].mean
    assert first["digits"].num_episodes == 6 and not first["digits"].in_domain


def test_results_table_puts_models_side_by_side(model, domains):
    results = evaluate_episodes(model, domains, 3, in_domain=["emoji"], **SETTINGS)
    table = results_table({"A": results, "B": results})
    lines = table.splitlines()
    assert lines[0] == "| domain | split | A | B |"
    assert lines[2].startswith("| emoji | ID | ") and lines[3].startswith("| digits | OOD | ")
    assert f"**{results.id_average:.2f}**" in lines[4] and lines[5].startswith("| **OOD average** |")
    with pytest.raises(ValueError, match="in_domain"):
        evaluate_episodes(model, domains, 3, in_domain=["glyphs"], **SETTINGS)


def test_finetuning_each_task_changes_the_predictions(model, domains):
    digits = {"digits": domains["digits"]}
    plain = evaluate_episodes(model, digits, 3, **SETTINGS)
    tuned = evaluate_episodes(model, digits, 3, finetune={"learning_rate": 3e-3, "steps": 10}, **SETTINGS)
    assert plain != tuned


def test_paired_difference_compares_models_episode_by_episode():
    def results(glyphs, digits):
        return EvaluationResults(
            (
                DomainAccuracy("glyphs", float(np.mean(glyphs)), 0.0, len(glyphs), True, tuple(glyphs)),
                DomainAccuracy("digits", float(np.mean(digits)), 0.0, len(digits), False, tuple(digits)),
            )
        )

    baseline = results([40.0, 60.0, 80.0, 20.0], [50.0, 50.0, 30.0, 70.0])
    better = results([42.0, 62.0, 82.0, 22.0], [50.0, 60.0, 30.0, 70.0])
    difference, ci95 = paired_difference(better, baseline, ["glyphs"])
    assert difference == pytest.approx(2.0) and ci95 == 0.0, "a constant gain is certain however hard the episodes"
    difference, ci95 = paired_difference(better, baseline)
    digits_ci = 3.1824463052837078 * np.std([0.0, 10.0, 0.0, 0.0], ddof=1) / 2  # 4 episodes: t(0.975, 3) · s / √N
    assert difference == pytest.approx((2.0 + 2.5) / 2) and ci95 == pytest.approx(digits_ci / 2)
    with pytest.raises(ValueError, match="same episodes"):
        paired_difference(better.first_episodes(3), baseline)
    first = better.first_episodes(2)
    assert first["glyphs"].num_episodes == 2 and first["glyphs"].mean == 52.0 and first["digits"].mean == 55.0
    assert EvaluationResults.from_json_dict(json.loads(json.dumps(better.to_json_dict()))) == better
    assert first.id_ci95 == first["glyphs"].ci95
    assert better.ood_ci95 == better["digits"].ci95


def test_episode_accuracies_are_kept_and_a_prefix_equals_a_shorter_evaluation(model, domains):
    long = evaluate_episodes(model, domains, 6, in_domain=["emoji"], seed=1, **SETTINGS)
    short = evaluate_episodes(model, domains, 4, in_domain=["emoji"], seed=1, **SETTINGS)
    assert len(long["emoji"].episode_accuracies) == 6
    assert long.first_episodes(4).to_dict() == pytest.approx(short.to_dict())


def test_a_long_evaluation_says_how_long_it_will_take(capsys):
    model = ProtoNetModel.from_backbone(tiny_vit_config(num_hidden_layers=1))
    digits = {"digits": load_domain("minimeta", "digits", "test")}
    finetune = {"mode": "full", "learning_rate": 1e-3, "steps": 1}
    evaluate_episodes(model, digits, 4, image_size=16, max_ways=5, finetune=finetune, progress=True)
    printed = capsys.readouterr()  # tqdm writes the line beside its bar
    estimate = r"≈ \d+(\.\d)? (s|min) for 4 fine-tuned episodes \(\d+\.\d\d s each, first 3\)"
    assert re.search(estimate, printed.err + printed.out), printed
