"""The papers' optimisers for episodic meta-tuning: SMAT's four groups (docs/smat.md, "Optimisation") and P>M>F's SGD.

SMAT trains its dense delta and gates with SGD but its router with AdamW, and clips two groups on their
own. `ChainedOptimizer` steps several torch optimizers as one, so the Trainer still sees a single
optimizer: one learning-rate schedule (a factor on every group's lr), one state dict for checkpoints.
"""

from __future__ import annotations

from collections import ChainMap
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:  # importing the arguments imports the Trainer: seconds
    from .arguments import FewShotTrainingArguments


class ChainedOptimizer(torch.optim.Optimizer):
    """Several optimizers stepped together. A param group with a `max_grad_norm` entry has its gradient
    norm clipped to it (that group alone) before the step.

    Each step also measures, per group with a `name` entry, the gradient norm before clipping and the size of
    the update ‖Δw‖ (`pop_statistics()`: their means since the last call, e.g. `update_norm_gate_logits`). This
    is how one sees where SMAT's movement goes (docs/smat.md). SGD updates are read from the gradient or the
    momentum buffer; other optimizers' groups (the router's AdamW) are compared with a copy taken before the step.
    """

    def __init__(self, optimizers: Sequence[torch.optim.Optimizer]):
        self.optimizers = list(optimizers)
        # The groups are the children's own dicts, so a scheduler changing `lr` here changes it there.
        super().__init__([group for optimizer in self.optimizers for group in optimizer.param_groups], {})
        self.state = ChainMap(*(optimizer.state for optimizer in self.optimizers))
        self._statistics: dict[str, float] = {}
        self._steps = 0

    @torch.no_grad()
    def step(self, closure=None) -> None:
        if closure is not None:
            raise ValueError("ChainedOptimizer takes no closure.")
        before = {}
        for optimizer in self.optimizers:
            for group in optimizer.param_groups:
                name, max_norm = group.get("name"), group.get("max_grad_norm")
                if name is None and not max_norm:
                    continue
                norm = _norm([p.grad for p in group["params"]])  # one float64 pass: logged, clipped, stepped
                if name is not None:
                    self._add(f"grad_norm_{name}", float(norm))
                if max_norm:
                    norm = norm * _clip_to(group["params"], norm, max_norm)
                if name is not None:
                    before[name] = _update_before_step(optimizer, group, norm)
        for optimizer in self.optimizers:
            optimizer.step()
        for optimizer in self.optimizers:
            for group in optimizer.param_groups:
                if group.get("name") is not None:
                    self._add(
                        f"update_norm_{group['name']}", _update_after_step(optimizer, group, before[group["name"]])
                    )
        self._steps += 1

    def _add(self, key: str, value: float) -> None:
        self._statistics[key] = self._statistics.get(key, 0.0) + value

    def pop_statistics(self) -> dict[str, float]:
        """Mean gradient norm (before clipping) and update norm of each named group since the last call."""
        steps, statistics = max(self._steps, 1), self._statistics
        self._statistics, self._steps = {}, 0
        return {key: value / steps for key, value in statistics.items()}

    def state_dict(self) -> dict[str, Any]:
        return {"optimizers": [optimizer.state_dict() for optimizer in self.optimizers]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.get("optimizers")
        if saved is None or len(saved) != len(self.optimizers):
            raise ValueError(
                f"This optimizer state holds {len(saved) if saved else 0} optimizers, expected "
                f"{len(self.optimizers)}: it was saved by another model or optimiser setup."
            )
        for optimizer, state in zip(self.optimizers, saved, strict=True):
            optimizer.load_state_dict(state)
        # load_state_dict gives the children new group dicts: point at them again.
        self.param_groups = [group for optimizer in self.optimizers for group in optimizer.param_groups]
        self.state = ChainMap(*(optimizer.state for optimizer in self.optimizers))


def _norm(tensors) -> torch.Tensor:
    """The joint L2 norm of `tensors` (None entries skipped), float64-accurate: SMAT's gate bank holds M × N
    elements (174 M for ViT-S), where one float32 norm was measured 2.5 % off — and the clip with it. Each tensor is
    reduced in float32 rows of 64 k elements (1.6e-7 relative error measured) whose squares are summed in float64:
    one pass at memory speed (0.02 s), where a float64 reduction of the whole bank took 1.8 s on 2 CPU cores."""
    squares = [_sum_of_squares(t) for t in tensors if t is not None]
    return torch.stack(squares).sum().sqrt() if squares else torch.zeros((), dtype=torch.float64)


def _sum_of_squares(tensor: torch.Tensor, row: int = 1 << 16) -> torch.Tensor:
    flat = tensor.detach().reshape(-1)
    whole = len(flat) // row * row
    norms = torch.cat([torch.linalg.vector_norm(flat[:whole].view(-1, row), dim=1), flat[whole:].norm().view(1)])
    return norms.double().square().sum()


def _update_before_step(optimizer: torch.optim.Optimizer, group: dict, grad_norm: torch.Tensor):
    """What `_update_after_step` needs: SGD without momentum, the norm of its step direction g + wd·w (the update is
    lr times it; `grad_norm` = ‖g‖ after clipping, when there is no weight decay); SGD with momentum, nothing (the
    buffer is the direction); other optimizers, a copy of the weights."""
    if isinstance(optimizer, torch.optim.SGD) and not group["momentum"] and not group.get("nesterov"):
        if not group["weight_decay"]:
            return grad_norm
        return _norm([p.grad + group["weight_decay"] * p for p in group["params"] if p.grad is not None])
    if isinstance(optimizer, torch.optim.SGD) and not group.get("nesterov"):
        return None
    return [p.detach().clone() for p in group["params"]]


def _update_after_step(optimizer: torch.optim.Optimizer, group: dict, before) -> float:
    """‖Δw‖ of one group's step, exactly (torch's SGD: w −= lr·d with d the direction or the momentum buffer)."""
    if isinstance(before, torch.Tensor):
        return float(group["lr"] * before)
    if before is None:
        buffers = [optimizer.state[p].get("momentum_buffer") for p in group["params"] if p.grad is not None]
        return float(group["lr"] * _norm(buffers))
    return float(_norm([p.detach() - old for p, old in zip(group["params"], before, strict=True)]))


def _clip_to(parameters: Sequence[torch.Tensor], norm: torch.Tensor, max_norm: float) -> torch.Tensor:
    """Scale the gradients whose joint norm is `norm` down to `max_norm` (never up); returns the scale."""
    scale = (max_norm / (norm + 1e-6)).clamp(max=1.0)
    for parameter in parameters:
        if parameter.grad is not None:
            parameter.grad.mul_(scale.to(parameter.grad.dtype))
    return scale


def smat_optimizer(model: nn.Module, args: FewShotTrainingArguments) -> ChainedOptimizer:
    """docs/smat.md, "Optimisation": θ_δ SGD (momentum, weight decay); log α SGD at its own lr, clipped alone; λ plain
    SGD; router (with keys and skill tokens) AdamW, clipped alone."""
    router = [p for p in model.router.parameters() if p.requires_grad]
    sgd = torch.optim.SGD(
        [
            {"name": "delta", "params": [model.delta], "momentum": args.momentum, "weight_decay": args.weight_decay},
            {
                "name": "gate_logits",
                "params": [model.gate_logits],
                "lr": args.gate_learning_rate,
                "max_grad_norm": args.gate_max_grad_norm,
            },
            {"name": "multipliers", "params": [model.sparsity_multipliers], "lr": args.multiplier_learning_rate},
        ],
        lr=args.learning_rate,
        momentum=0.0,
        weight_decay=0.0,
    )
    adamw = torch.optim.AdamW(
        [{"name": "router", "params": router, "max_grad_norm": args.router_max_grad_norm}],
        lr=args.router_learning_rate,
        weight_decay=args.router_weight_decay,
        betas=(args.adam_beta1, args.adam_beta2),
        eps=args.adam_epsilon,
    )
    return ChainedOptimizer([sgd, adamw])


def protonet_optimizer(model: nn.Module, args: FewShotTrainingArguments) -> torch.optim.SGD:
    """P>M>F (docs/pmf.md, "Meta-training"): SGD with momentum over the whole backbone and the head's scale and
    bias."""
    return torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad],
        lr=args.learning_rate,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
    )
