"""SMAT's mechanism, measured: are the experts sparse and saturated, and does the router tell domains apart?

A SMAT model can match P>M>F's accuracy while its experts do nothing: gates that stay fractional, eval gates far
denser than the target τ, one expert mix for every task. `smat_diagnostics` measures what the mechanism needs
(docs/smat.md, "Is the mechanism at work?"); `EpisodicTrainer` logs it at every evaluation, the meta-tuning
recipe prints it under its results table and writes it into the model card with a warning for each miss.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch

from hf_fewshot.models.modeling_fewshot import eval_mode

SPARSITY_TOLERANCE = 0.05  # eval-gate sparsity within ±0.05 of τ
SATURATION_GOAL = 0.95  # share of eval gates exactly 0 or 1
DISTINCT_ROUTING = 0.95  # at least one pair of domains routed with cosine ≤ 0.95


@dataclass(frozen=True)
class SmatDiagnostics:
    """What SMAT's experts and router do, at the τ_r the model evaluates at.

    - `eval_sparsity` / `train_sparsity`: per expert, the fraction of eval / training gates exactly 0 (τ is the
      target of the training gates; only saturated gates make the two agree).
    - `saturated_fraction`: the fraction of all eval gates exactly 0 or 1.
    - `delta_norm_ratio`: ‖θ_δ‖ / ‖θ_pre‖ over the masked tensors (how far the experts can move the backbone).
    - `routing_entropy`: mean entropy of the episodes' expert weights over ln M (1 = every expert weighted alike).
    - `domain_routing_cosine`: `{"a / b": cosine}` between the mean expert weights of two domains' episodes.
    """

    sparsity_target: float
    router_tau: float
    eval_sparsity: tuple[float, ...]
    train_sparsity: tuple[float, ...]
    saturated_fraction: float
    delta_norm_ratio: float
    routing_entropy: float | None = None
    domain_routing_cosine: dict[str, float] = field(default_factory=dict)

    @property
    def sparsity_gap(self) -> float:
        """The largest |eval-gate sparsity − τ| over the experts."""
        return max(abs(s - self.sparsity_target) for s in self.eval_sparsity)

    @property
    def min_domain_cosine(self) -> float | None:
        return min(self.domain_routing_cosine.values()) if self.domain_routing_cosine else None

    @property
    def mean_domain_cosine(self) -> float | None:
        values = list(self.domain_routing_cosine.values())
        return sum(values) / len(values) if values else None

    def warnings(self) -> list[str]:
        """One sentence per way the mechanism is not at work (empty when it is)."""
        found = []
        if self.sparsity_gap > SPARSITY_TOLERANCE:
            found.append(
                f"The eval gates miss the sparsity target τ = {self.sparsity_target:g} by up to "
                f"{self.sparsity_gap:.2f} "
                f"(eval sparsity {_numbers(self.eval_sparsity)}): the model evaluates denser or sparser experts "
                "than it was trained towards."
            )
        if self.saturated_fraction < SATURATION_GOAL:
            found.append(
                f"Only {100 * self.saturated_fraction:.1f}% of the eval gates are exactly 0 or 1 (goal "
                f"≥ {100 * SATURATION_GOAL:.0f}%): the experts are not yet sparse subsets of θ_δ."
            )
        if self.min_domain_cosine is not None and self.min_domain_cosine > DISTINCT_ROUTING:
            found.append(
                f"Every pair of domains is routed alike (cosine of mean expert weights ≥ {self.min_domain_cosine:.3f} "
                f"> {DISTINCT_ROUTING}, router τ_r = {self.router_tau:.2f}): the experts are not specialised."
            )
        return found

    def to_dict(self, prefix: str = "smat_") -> dict[str, float]:
        """Flat scalars for training logs (`eval_smat_*` in `EpisodicTrainer`)."""
        values = {
            "sparsity_target": self.sparsity_target,
            "router_tau": self.router_tau,
            "gates_saturated": self.saturated_fraction,
            "delta_norm_ratio": self.delta_norm_ratio,
            "sparsity_gap": self.sparsity_gap,
        }
        for m, (evaluated, trained) in enumerate(zip(self.eval_sparsity, self.train_sparsity, strict=True)):
            values[f"expert_{m}_eval_sparsity"] = evaluated
            values[f"expert_{m}_train_sparsity"] = trained
        if self.routing_entropy is not None:
            values["routing_entropy"] = self.routing_entropy
        if self.domain_routing_cosine:
            values["routing_cosine_mean"] = self.mean_domain_cosine
            values["routing_cosine_min"] = self.min_domain_cosine
        return {f"{prefix}{name}": float(value) for name, value in values.items()}

    def to_markdown(self) -> str:
        """A table of the measurements against their goals, then the warnings."""
        rows = [
            ("router temperature τ_r (evaluated at)", f"{self.router_tau:.2f}", ""),
            ("eval-gate sparsity per expert", _numbers(self.eval_sparsity), f"τ ± {SPARSITY_TOLERANCE} = "
             f"{self.sparsity_target - SPARSITY_TOLERANCE:.2f}…{self.sparsity_target + SPARSITY_TOLERANCE:.2f}"),
            ("training-gate sparsity per expert", _numbers(self.train_sparsity), f"τ = {self.sparsity_target:g}"),
            ("eval gates exactly 0 or 1", f"{100 * self.saturated_fraction:.1f}%", f"≥ {100 * SATURATION_GOAL:.0f}%"),
            ("‖θ_δ‖ / ‖θ_pre‖", f"{self.delta_norm_ratio:.4f}", ""),
        ]  # fmt: skip
        if self.routing_entropy is not None:
            rows.append(("routing entropy / ln M", f"{self.routing_entropy:.3f}", "1 = all experts alike"))
        for pair, cosine in self.domain_routing_cosine.items():
            rows.append((f"routing cosine {pair}", f"{cosine:.3f}", f"≤ {DISTINCT_ROUTING} for one pair"))
        table = "| measurement | value | goal |\n|---|---|---|\n" + "\n".join(
            f"| {a} | {b} | {c} |" for a, b, c in rows
        )
        notes = self.warnings()
        verdict = "\n".join(f"> **Warning:** {note}" for note in notes) if notes else "The mechanism meets every goal."
        return f"{table}\n\n{verdict}"


def _numbers(values) -> str:
    return " ".join(f"{v:.3f}" for v in values)


def routing_entropy(expert_weights: np.ndarray) -> float:
    """Mean entropy of the rows of `expert_weights` `[episodes, M]` (each sums to 1), divided by ln M."""
    weights = np.clip(np.asarray(expert_weights, dtype=np.float64), 1e-12, None)
    if weights.shape[1] == 1:
        return 0.0
    return float((-(weights * np.log(weights)).sum(axis=1)).mean() / math.log(weights.shape[1]))


def domain_routing_cosine(expert_weights_by_domain: Mapping[str, np.ndarray]) -> dict[str, float]:
    """`{"a / b": cosine}` between the mean expert weights of every pair of domains."""
    means = {domain: np.asarray(w, dtype=np.float64).mean(axis=0) for domain, w in expert_weights_by_domain.items()}
    return {
        f"{a} / {b}": float(means[a] @ means[b] / max(np.linalg.norm(means[a]) * np.linalg.norm(means[b]), 1e-12))
        for a, b in itertools.combinations(means, 2)
    }


@torch.no_grad()
def smat_diagnostics(
    model: torch.nn.Module, expert_weights_by_domain: Mapping[str, np.ndarray] | None = None
) -> SmatDiagnostics:
    """Measure a `SmatModel`'s gates and θ_δ, and, given the expert weights `[episodes, M]` of each domain's
    evaluation episodes (`EvaluationResults[domain].expert_weights`), its routing."""
    closed_train, _ = model.gate_saturation(training=True)
    with eval_mode(model):
        closed_eval, open_eval = model.gate_saturation(training=False)
    pre = dict(model.backbone.named_parameters())
    pre_norm = torch.linalg.vector_norm(
        torch.stack(
            [torch.linalg.vector_norm(pre[name], dtype=torch.float64) for name in model.masked_parameter_names]
        )
    )
    delta_norm = torch.linalg.vector_norm(model.delta, dtype=torch.float64)
    weights = {domain: np.asarray(w) for domain, w in (expert_weights_by_domain or {}).items() if len(w)}
    return SmatDiagnostics(
        sparsity_target=model.config.sparsity_target,
        router_tau=model.router_tau,
        eval_sparsity=tuple(closed_eval.tolist()),
        train_sparsity=tuple(closed_train.tolist()),
        saturated_fraction=float((closed_eval + open_eval).mean()),
        delta_norm_ratio=float(delta_norm / pre_norm.clamp(min=1e-12)),
        routing_entropy=routing_entropy(np.concatenate(list(weights.values()))) if weights else None,
        domain_routing_cosine=domain_routing_cosine(weights) if len(weights) > 1 else {},
    )


__all__ = ["SmatDiagnostics", "domain_routing_cosine", "routing_entropy", "smat_diagnostics"]
