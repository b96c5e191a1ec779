"""The shipped `episodic_accuracy` evaluate metric: loads offline, and is the formula of `mean_and_ci95` (Student-t
below 30 episodes, 1.96 · population std / √N from 30 on, NaN for one episode)."""

import math
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import tiny_vit_config

from hf_fewshot import ProtoNetModel, evaluate_episodes, load_domain
from hf_fewshot.evaluation import EPISODIC_ACCURACY, load_episodic_accuracy, mean_and_ci95
from hf_fewshot.metrics.episodic_accuracy.interval import T_975, T_INTERVAL_BELOW, mean_and_interval

evaluate = pytest.importorskip("evaluate")


@pytest.fixture
def offline(monkeypatch):
    """No Hub, no network at all: any connection attempt fails the test."""
    for variable in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_EVALUATE_OFFLINE"):
        monkeypatch.setenv(variable, "1")

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access while loading a local metric: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture
def metric(offline):
    return evaluate.load(EPISODIC_ACCURACY, keep_in_memory=True)


def test_the_metric_loads_offline_from_its_folder_or_script_and_equals_mean_and_ci95(metric):
    rng = np.random.default_rng(0)
    script = str(Path(EPISODIC_ACCURACY) / "episodic_accuracy.py")
    loaded = [metric, evaluate.load(script, keep_in_memory=True), load_episodic_accuracy(keep_in_memory=True)]
    for n in (2, 5, 29, 30, 600):
        accuracies = rng.uniform(20.0, 100.0, size=n).tolist()
        mean, ci95 = mean_and_ci95(accuracies)
        for module in loaded:
            assert module.compute(accuracy=accuracies) == {
                "accuracy": pytest.approx(mean, rel=1e-12),
                "ci95": pytest.approx(ci95, rel=1e-12),
                "num_episodes": n,
            }
    for accuracy in accuracies:  # accumulated episode by episode, as an evaluation loop would
        metric.add(accuracy=accuracy)
    assert metric.compute()["ci95"] == pytest.approx(ci95, rel=1e-12)
    assert ci95 == pytest.approx(1.96 * np.std(accuracies) / math.sqrt(600)), "600 episodes: Meta-Dataset's 1.96"


def test_fractions_give_fractions(metric):
    percent = metric.compute(accuracy=[60.0, 80.0, 70.0, 90.0])
    fraction = metric.compute(accuracy=[0.6, 0.8, 0.7, 0.9])
    assert fraction["accuracy"] == pytest.approx(percent["accuracy"] / 100)
    assert fraction["ci95"] == pytest.approx(percent["ci95"] / 100)


def test_small_n_uses_the_student_t_interval_which_is_wider_than_1_96():
    stats = pytest.importorskip("scipy.stats")
    assert len(T_975) == T_INTERVAL_BELOW - 2
    for df, quantile in enumerate(T_975, start=1):
        assert quantile == pytest.approx(stats.t.ppf(0.975, df), rel=1e-12), df
    rng = np.random.default_rng(1)
    for n in range(2, T_INTERVAL_BELOW):
        accuracies = rng.uniform(0.0, 100.0, size=n)
        mean, ci95 = mean_and_interval(accuracies)
        assert mean == pytest.approx(accuracies.mean())
        expected = stats.t.ppf(0.975, n - 1) * np.std(accuracies, ddof=1) / math.sqrt(n)
        assert ci95 == pytest.approx(expected, rel=1e-12), n
        assert ci95 > 1.96 * np.std(accuracies) / math.sqrt(n), n
    accuracies = rng.uniform(0.0, 100.0, size=T_INTERVAL_BELOW)
    assert mean_and_interval(accuracies)[1] == pytest.approx(1.96 * np.std(accuracies) / math.sqrt(T_INTERVAL_BELOW))


def test_one_episode_gives_a_nan_half_width_with_a_warning_and_none_an_error(metric):
    with pytest.warns(RuntimeWarning, match="at least 2 episodes"):
        result = metric.compute(accuracy=[70.0])
    assert result["accuracy"] == 70.0 and math.isnan(result["ci95"]) and result["num_episodes"] == 1
    with pytest.warns(RuntimeWarning, match="at least 2 episodes"):
        mean, ci95 = mean_and_ci95([70.0])
    assert mean == 70.0 and math.isnan(ci95)
    assert mean_and_ci95([70.0, 70.0]) == (70.0, 0.0), "no spread: a certain mean"
    with pytest.raises(ValueError, match="No accuracies"):
        mean_and_ci95([])


def test_evaluate_episodes_reports_the_metrics_mean_and_ci95(metric):
    torch.manual_seed(0)
    model = ProtoNetModel.from_backbone(tiny_vit_config(num_hidden_layers=1))
    digits = {"digits": load_domain("minimeta", "digits", "test")}
    settings = dict(protocol="fixed", n_way=5, n_shot=2, n_query=2, image_size=16, progress=False)
    result = evaluate_episodes(model, digits, 4, **settings)["digits"]
    computed = metric.compute(accuracy=list(result.episode_accuracies))
    assert computed["num_episodes"] == result.num_episodes == 4
    assert computed["accuracy"] == pytest.approx(result.mean, rel=1e-12)
    assert computed["ci95"] == pytest.approx(result.ci95, rel=1e-12)


@pytest.mark.slow
def test_importing_hf_fewshot_does_not_import_evaluate():
    code = "import sys, hf_fewshot, hf_fewshot.evaluation; assert 'evaluate' not in sys.modules, 'evaluate imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)


@pytest.mark.slow
def test_importing_hf_fewshot_leaves_peft_and_the_trainer_for_later():
    code = (
        "import sys, hf_fewshot; heavy = {'peft', 'transformers.trainer'} & set(sys.modules); "
        "assert not heavy, heavy; from hf_fewshot import EpisodicTrainer; assert 'transformers.trainer' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)
