"""Episodic accuracy: the mean of per-episode few-shot accuracies with its 95% confidence interval.

A standalone `evaluate` metric script: `evaluate.load` copies it, and the `interval.py` it imports relatively, into
its module cache, so it must not import hf_fewshot.
"""

import datasets
import evaluate

from .interval import T_INTERVAL_BELOW, mean_and_interval

_DESCRIPTION = f"""
Episodic accuracy is how few-shot classifiers are reported (Meta-Dataset, P>M>F, SMAT): the model solves N
independent episodes (tasks), each scored by its query accuracy, and the metric is the mean of the N accuracies
± the half-width of its 95% confidence interval.

The half-width is 1.96 · σ / √N (σ the population standard deviation, as Meta-Dataset reports) when
N ≥ {T_INTERVAL_BELOW}, and the Student-t interval t(0.975, N − 1) · s / √N (s the sample standard deviation) when
N < {T_INTERVAL_BELOW}, where the normal approximation is too narrow. With N = 1 the half-width is NaN (and a
RuntimeWarning is emitted): one episode says nothing about the spread.

Accuracies are not rescaled: give percentages (as hf_fewshot does) and the mean and half-width are percentages;
give fractions in [0, 1] and they are fractions.
"""

_KWARGS_DESCRIPTION = """
Args:
    accuracy (`list` of `float`): the query accuracy of each episode, one value per episode, all in the same unit
        (percent, as hf_fewshot reports them, or a fraction in [0, 1]).

Returns:
    accuracy (`float`): the mean accuracy over the episodes, in the input's unit.
    ci95 (`float`): the half-width of the 95% confidence interval of that mean, in the same unit (NaN for 1 episode).
    num_episodes (`int`): the number of episodes N.

Examples:

    >>> metric = evaluate.load("path/to/hf_fewshot/metrics/episodic_accuracy")
    >>> results = metric.compute(accuracy=[60.0, 80.0, 70.0, 90.0])
    >>> print({k: round(v, 4) for k, v in results.items()})
    {'accuracy': 75.0, 'ci95': 20.5426, 'num_episodes': 4}
"""

_CITATION = """
@inproceedings{triantafillou2020metadataset,
  title={Meta-Dataset: A Dataset of Datasets for Learning to Learn from Few Examples},
  author={Triantafillou, Eleni and Zhu, Tyler and Dumoulin, Vincent and Lamblin, Pascal and Evci, Utku and Xu, Kelvin
    and Goroshin, Ross and Gelada, Carles and Swersky, Kevin and Manzagol, Pierre-Antoine and Larochelle, Hugo},
  booktitle={International Conference on Learning Representations},
  year={2020}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class EpisodicAccuracy(evaluate.Metric):
    """Mean per-episode accuracy ± 95% CI half-width (Student-t below 30 episodes, 1.96 · population std / √N from
    30 on; NaN for a single episode)."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"accuracy": datasets.Value("float64")}),
            reference_urls=["https://arxiv.org/abs/1903.03096"],
        )

    def _compute(self, accuracy):
        mean, half_width = mean_and_interval(accuracy)
        return {"accuracy": mean, "ci95": half_width, "num_episodes": len(accuracy)}
