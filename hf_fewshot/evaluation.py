"""Episodic evaluation (docs/evaluation.md, "The protocol"): accuracy per domain over fixed episodes, mean ± 95% CI.

The episodes of a domain are a pure function of the seed, so two models evaluated with the same seed
see the same tasks, and the same tasks come out on every machine. Accuracies are percentages.

The mean ± 95% CI is the shipped `evaluate` metric's (`EPISODIC_ACCURACY`, docs/evaluation.md): both go through
`hf_fewshot/metrics/episodic_accuracy/interval.py`, the one home of the formula.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import datasets
import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from hf_fewshot.adaptation import finetune_on_support
from hf_fewshot.data.domains import column_as_numpy
from hf_fewshot.data.episodes import EpisodeCollator, EpisodeSampler, FrozenEpisodes, episode_loader
from hf_fewshot.data.transforms import EvalTransform
from hf_fewshot.metrics.episodic_accuracy.interval import T_INTERVAL_BELOW, mean_and_interval
from hf_fewshot.models.modeling_fewshot import eval_mode


@dataclass(frozen=True)
class DomainAccuracy:
    """Mean query accuracy (%) of one domain over `num_episodes` episodes, with the 95% confidence interval, and
    the accuracy of every episode (for paired comparisons of models evaluated on the same episodes)."""

    domain: str
    mean: float
    ci95: float
    num_episodes: int
    in_domain: bool
    episode_accuracies: tuple[float, ...] = field(default=(), repr=False, compare=False)
    expert_weights: tuple[tuple[float, ...], ...] = field(default=(), repr=False, compare=False)

    def __str__(self) -> str:
        return f"{self.mean:.2f} ± {self.ci95:.2f}"


#: The shipped `evaluate` metric (mean per-episode accuracy ± 95% CI): `evaluate.load(EPISODIC_ACCURACY)` loads it
#: offline, from this folder; `load_episodic_accuracy()` does the same.
EPISODIC_ACCURACY = str(Path(__file__).resolve().parent / "metrics" / "episodic_accuracy")


def load_episodic_accuracy(**load_kwargs: Any):
    """`evaluate.load(EPISODIC_ACCURACY, **load_kwargs)`: the `episodic_accuracy` metric (an `evaluate.Metric` whose
    `compute(accuracy=[...])` gives `{"accuracy", "ci95", "num_episodes"}`, as `mean_and_ci95` computes them). It
    reads only local files, so it works offline. `evaluate` is imported here, not when hf_fewshot is."""
    try:
        import evaluate
    except ImportError as error:
        raise ImportError("The episodic_accuracy metric needs the `evaluate` package: pip install evaluate") from error
    return evaluate.load(EPISODIC_ACCURACY, **load_kwargs)


def mean_and_ci95(accuracies: Iterable[float]) -> tuple[float, float]:
    """Mean and 95% confidence half-width, as the `episodic_accuracy` metric computes them (its `interval.py`).

    From `T_INTERVAL_BELOW` (30) episodes on, `1.96 · σ / √N` (population std, as Meta-Dataset reports); below, the
    Student-t interval `t(0.975, N − 1) · s / √N` (sample std). One episode gives NaN with a `RuntimeWarning`, no
    episodes a `ValueError`.
    """
    return mean_and_interval(accuracies)


def average_ci95(half_widths: Iterable[float]) -> float:
    """95% CI half-width of the mean of D independent estimates with these half-widths: `√(Σ ci_d²) / D`."""
    values = np.asarray(list(half_widths), dtype=np.float64)
    return float(math.sqrt(np.sum(np.square(values))) / values.size)


@dataclass(frozen=True)
class EvaluationResults:
    """Per-domain accuracies of one model, with the in-domain (ID) and out-of-domain (OOD) averages."""

    domains: tuple[DomainAccuracy, ...]

    def _average(self, in_domain: bool) -> float | None:
        means = [d.mean for d in self.domains if d.in_domain == in_domain]
        return float(np.mean(means)) if means else None

    def _average_ci95(self, in_domain: bool) -> float | None:
        half_widths = [d.ci95 for d in self.domains if d.in_domain == in_domain]
        return average_ci95(half_widths) if half_widths else None

    @property
    def id_average(self) -> float | None:
        return self._average(True)

    @property
    def ood_average(self) -> float | None:
        return self._average(False)

    @property
    def id_ci95(self) -> float | None:
        """95% CI half-width of the ID average (domains taken as independent: `average_ci95`)."""
        return self._average_ci95(True)

    @property
    def ood_ci95(self) -> float | None:
        """95% CI half-width of the OOD average."""
        return self._average_ci95(False)

    def __getitem__(self, domain: str) -> DomainAccuracy:
        for result in self.domains:
            if result.domain == domain:
                return result
        raise KeyError(f"No result for domain {domain!r}; evaluated: {[d.domain for d in self.domains]}.")

    def to_dict(self) -> dict[str, float]:
        """Flat metrics: `{domain}_accuracy`, `{domain}_ci95`, `id_accuracy`, `ood_accuracy`."""
        metrics = {}
        for result in self.domains:
            metrics[f"{result.domain}_accuracy"] = result.mean
            metrics[f"{result.domain}_ci95"] = result.ci95
        for name, value in (("id_accuracy", self.id_average), ("ood_accuracy", self.ood_average)):
            if value is not None:
                metrics[name] = value
        return metrics

    def to_markdown(self) -> str:
        return results_table({"accuracy": self})

    def first_episodes(self, num_episodes: int) -> EvaluationResults:
        """The results on each domain's first `num_episodes` episodes (mean and CI recomputed): a sampler's first
        episodes do not depend on how many it draws, so this matches a shorter evaluation with the same seed."""
        domains = []
        for result in self.domains:
            if len(result.episode_accuracies) < num_episodes:
                raise ValueError(
                    f"{result.domain!r} has {len(result.episode_accuracies)} per-episode accuracies, fewer than "
                    f"{num_episodes}."
                )
            accuracies = result.episode_accuracies[:num_episodes]
            mean, ci95 = mean_and_ci95(accuracies)
            routing = result.expert_weights[:num_episodes]
            domains.append(
                DomainAccuracy(result.domain, mean, ci95, num_episodes, result.in_domain, accuracies, routing)
            )
        return EvaluationResults(tuple(domains))

    def to_json_dict(self) -> dict[str, Any]:
        """Everything, per-episode accuracies included: the inverse of `from_json_dict`."""
        return {"domains": [asdict(result) for result in self.domains]}

    @classmethod
    def from_json_dict(cls, data: Mapping[str, Any]) -> EvaluationResults:
        domains = []
        for result in data["domains"]:
            result = dict(result)
            result["episode_accuracies"] = tuple(result.get("episode_accuracies", ()))
            result["expert_weights"] = tuple(tuple(w) for w in result.get("expert_weights", ()))
            domains.append(DomainAccuracy(**result))
        return cls(tuple(domains))


def paired_difference(
    results: EvaluationResults, baseline: EvaluationResults, domains: Iterable[str] | None = None
) -> tuple[float, float]:
    """Mean accuracy difference `results − baseline` (points) over `domains` (default: all), ± its 95% CI.

    Both must come from the same episodes (same seed and settings), so the difference is taken episode by
    episode: its CI is far tighter than the two models' own CIs suggest, because the episodes' difficulty
    cancels. Over several domains the difference is the mean of the per-domain differences (as the ID / OOD
    averages are) and the half-widths combine as independent (`average_ci95`).
    """
    names = [d.domain for d in baseline.domains] if domains is None else list(domains)
    if not names:
        raise ValueError("No domains to compare.")
    means, half_widths = [], []
    for name in names:
        ours, theirs = results[name].episode_accuracies, baseline[name].episode_accuracies
        if not ours or len(ours) != len(theirs):
            raise ValueError(
                f"A paired comparison needs both models' accuracies on the same episodes of {name!r}; got "
                f"{len(ours)} and {len(theirs)} episodes (evaluate both with the same seed and settings)."
            )
        mean, ci95 = mean_and_ci95(np.subtract(ours, theirs))
        means.append(mean)
        half_widths.append(ci95)
    return float(np.mean(means)), average_ci95(half_widths)


def results_table(results_by_model: Mapping[str, EvaluationResults]) -> str:
    """A Markdown table: one row per domain (ID first), one column per model, then the ID / OOD averages."""
    models = list(results_by_model)
    first = next(iter(results_by_model.values()))
    ordered = sorted(first.domains, key=lambda d: not d.in_domain)
    lines = [
        "| domain | split | " + " | ".join(models) + " |",
        "|---|---|" + "---|" * len(models),
    ]
    for domain in ordered:
        cells = [str(results_by_model[m][domain.domain]) for m in models]
        lines.append(f"| {domain.domain} | {'ID' if domain.in_domain else 'OOD'} | " + " | ".join(cells) + " |")
    for label, attribute in (("ID average", "id_average"), ("OOD average", "ood_average")):
        values = [getattr(results_by_model[m], attribute) for m in models]
        if all(v is not None for v in values):
            lines.append(f"| **{label}** | | " + " | ".join(f"**{v:.2f}**" for v in values) + " |")
    return "\n".join(lines)


class EpisodeMetrics(NamedTuple):
    """Query accuracy (%) and cross-entropy of one episode, and the expert weights a SMAT router gave it."""

    accuracy: float
    loss: float
    expert_weights: tuple[float, ...] | None = None


def episode_metrics(
    model: torch.nn.Module, episode: Mapping[str, torch.Tensor], finetune: Mapping[str, Any] | None = None
) -> EpisodeMetrics:
    """Query accuracy (%), cross-entropy and (SMAT) expert weights on one collated episode: the model's episodic
    forward, or, with `finetune` (keyword arguments of `finetune_on_support`), the task fine-tuned on the support
    set first (then no expert weights)."""
    device = next(model.parameters()).device
    inputs = {name: tensor.to(device) for name, tensor in episode.items()}
    support, support_labels = inputs["support_pixel_values"], inputs["support_labels"]
    expert_weights = None
    if finetune is None:
        with torch.no_grad():
            outputs = model(support, support_labels, inputs["query_pixel_values"])
        logits = outputs.logits
        if getattr(outputs, "expert_weights", None) is not None:
            expert_weights = tuple(outputs.expert_weights.tolist())
    else:
        logits = finetune_on_support(model, support, support_labels, **finetune)(inputs["query_pixel_values"])
    if not torch.isfinite(logits).all():  # argmax of NaN is class 0: a diverged model would score chance, silently
        raise FloatingPointError(
            "The model gave non-finite logits on an episode: its weights or the images hold NaN/inf (a diverged "
            "training run?). Evaluation refuses to score them."
        )
    labels = inputs["query_labels"]
    accuracy = 100.0 * (logits.argmax(-1) == labels).float().mean().item()
    return EpisodeMetrics(accuracy, F.cross_entropy(logits, labels).item(), expert_weights)


def _check_frozen_episodes(episodes: FrozenEpisodes, dataset: datasets.Dataset, domain: str) -> None:
    """Frozen episodes are row indices: refuse them for another copy of the split (other rows or row order)."""
    rows = episodes.metadata.get("rows")
    if rows is not None and rows != len(dataset):
        raise ValueError(
            f"The frozen episodes of {domain!r} were made for a split of {rows} rows, not {len(dataset)}."
        )
    labels = column_as_numpy(dataset, "label")
    for episode in episodes:
        stored = episode.classes[np.concatenate([episode.support_labels, episode.query_labels])]
        if not np.array_equal(labels[np.concatenate([episode.support_indices, episode.query_indices])], stored):
            raise ValueError(
                f"Frozen episode {episode.index} of {domain!r} does not match this split's labels: another row order "
                "or another split (e.g. validation instead of test)."
            )


ESTIMATE_AFTER = 3
"""Episodes after which a progress-showing evaluation prints how long the whole evaluation will take."""


def duration_estimate(seconds: float, done: int, episodes_per_domain: int, num_domains: int, finetuned: bool) -> str:
    """The whole evaluation's expected wall time, from the pace of its first `done` episodes (domains alike)."""
    per_episode = seconds / done
    total = per_episode * episodes_per_domain * num_domains
    duration = f"{total / 60:.1f} min" if total >= 60 else f"{total:.0f} s"
    what = "fine-tuned episodes" if finetuned else "episodes"
    return f"≈ {duration} for {episodes_per_domain * num_domains} {what} ({per_episode:.2f} s each, first {done})"


def evaluate_episodes(
    model: torch.nn.Module,
    domains: Mapping[str, datasets.Dataset],
    num_episodes: int = 600,
    *,
    in_domain: Iterable[str] = (),
    protocol: str = "md",
    image_size: int = 128,
    seed: int = 0,
    finetune: Mapping[str, Any] | None = None,
    frozen: Mapping[str, FrozenEpisodes] | None = None,
    num_workers: int = 0,
    progress: bool = True,
    **sampler_kwargs,
) -> EvaluationResults:
    """Mean query accuracy ± 95% CI of `model` on `num_episodes` fixed episodes of each domain's split.

    `domains` maps a domain name to its evaluation split (`load_domain(..., split="test")`); `in_domain` names
    the domains the model was meta-trained on (their average is the ID column, the rest OOD). Episodes are
    drawn with `EpisodeSampler(protocol, seed)` (`sampler_kwargs` go to it) and the eval transform at
    `image_size`; the model runs in eval mode (no inner step, deterministic routing). `finetune` (e.g.
    `{"mode": "lora", "learning_rate": 1e-3, "steps": 50}`) fine-tunes a copy on each episode's support set
    with `finetune_on_support` before predicting its queries. `frozen` maps a domain to `FrozenEpisodes` (the
    shipped test episodes of a converted dataset) used instead of sampling.
    """
    in_domain = set(in_domain)
    unknown = in_domain - set(domains)
    if unknown:
        raise ValueError(f"in_domain names domains that are not evaluated: {sorted(unknown)}.")
    transform = EvalTransform(image_size)
    results = []
    frozen = frozen or {}
    with eval_mode(model):
        for name, dataset in domains.items():
            episodes = frozen.get(name)
            if episodes is not None:
                _check_frozen_episodes(episodes, dataset, name)
            else:
                episodes = EpisodeSampler.from_dataset(
                    dataset, protocol=protocol, seed=seed, num_episodes=num_episodes, **sampler_kwargs
                )
            loader = episode_loader(episodes, EpisodeCollator(dataset, transform), num_workers=num_workers)
            bar = tqdm(loader, desc=f"evaluating {name}", disable=not progress, leave=False)
            metrics, start = [], time.perf_counter()
            for episode in bar:
                metrics.append(episode_metrics(model, episode, finetune))
                if progress and not results and len(metrics) == ESTIMATE_AFTER:
                    seconds = time.perf_counter() - start
                    bar.write(
                        duration_estimate(seconds, ESTIMATE_AFTER, len(episodes), len(domains), finetune is not None)
                    )
            bar.close()
            accuracies = tuple(m.accuracy for m in metrics)
            routing = tuple(m.expert_weights for m in metrics if m.expert_weights is not None)
            mean, ci95 = mean_and_ci95(accuracies)
            results.append(DomainAccuracy(name, mean, ci95, len(accuracies), name in in_domain, accuracies, routing))
    return EvaluationResults(tuple(results))


__all__ = [
    "EPISODIC_ACCURACY",
    "T_INTERVAL_BELOW",
    "DomainAccuracy",
    "average_ci95",
    "EvaluationResults",
    "EpisodeMetrics",
    "episode_metrics",
    "evaluate_episodes",
    "load_episodic_accuracy",
    "mean_and_ci95",
    "paired_difference",
    "results_table",
]
