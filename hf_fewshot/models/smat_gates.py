"""SMAT's expert gates: hard-concrete gates of M experts over the delta's N elements, mixed without an `[M, N]`
autograd graph (docs/smat.md, "Parameters and the merge").

`GateSettings` holds the constants of one evaluation (training or eval gates); `MixedExpertGates` computes the
mixture `Σ_m a_m z_m`, the expected densities and the measured sparsity in one chunked pass and recomputes in the
backward; `GateCode` reads saturated gates (exactly 0 or 1) from a per-element code of the open experts, so that
merging a task becomes a gather; `BankSummary` holds what stays fixed between optimizer steps. A same-folder
module of modeling_smat.py: remote code copies it beside the model.
"""

import functools
from collections.abc import Iterator
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class GateSettings:
    """The hard-concrete constants of one gate evaluation (train or eval) and the seed of its noise."""

    beta: float
    gamma: float
    zeta: float
    noise: float
    seed: int
    density_shift: float
    chunk_size: int = 1 << 16  # columns per chunk: M × 64k floats stay in cache

    def column_chunks(self, num_elements: int) -> Iterator[slice]:
        """The column slices the `[M, N]` bank is processed in."""
        for start in range(0, num_elements, self.chunk_size):
            yield slice(start, start + self.chunk_size)

    def noisy_chunks(self, log_alpha: torch.Tensor):
        """Yield `(column slice, log α + logit(u))` chunk by chunk; the same noise every time (seeded per call)."""
        generator = None
        if self.noise > 0:
            generator = torch.Generator(device=log_alpha.device).manual_seed(self.seed)
        for columns in self.column_chunks(log_alpha.shape[1]):
            chunk = log_alpha[:, columns]
            if generator is not None:
                u = torch.rand(chunk.shape, generator=generator, device=chunk.device, dtype=chunk.dtype)
                u = (0.5 + self.noise * (u - 0.5)).clamp_(1e-6, 1 - 1e-6)
                chunk = chunk + torch.logit(u)
            yield columns, chunk

    def gates(self, noisy_log_alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`(s, z)`: s = sigmoid(x / β) and the gate z = clamp(s·(ζ − γ) + γ, 0, 1)."""
        s = torch.div(noisy_log_alpha, self.beta).sigmoid_()
        return s, s.mul(self.zeta - self.gamma).add_(self.gamma).clamp_(0.0, 1.0)

    def backprop(self, grad_gates: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """∂L/∂x from ∂L/∂z: `(ζ − γ)/β · s(1 − s)` where the gate lies strictly inside (0, 1), 0 where the clamp
        saturates it (there a gate gets no gradient). Two fused kernels; overwrites `s`."""
        grad = torch.ops.aten.sigmoid_backward(grad_gates * ((self.zeta - self.gamma) / self.beta), s)
        return torch.ops.aten.hardtanh_backward(grad, s.mul_(self.zeta - self.gamma).add_(self.gamma), 0.0, 1.0)

    def add_density_grad(self, grad: torch.Tensor, log_alpha: torch.Tensor, scale: torch.Tensor) -> None:
        """`grad += scale_m · ∂d/∂log α`, ∂d/∂log α = sigmoid'(log α − shift), in place on a chunk (`scale` `[M, 1]`
        holds ∂L/∂d_m / N): three passes over the chunk, no temporary beyond one chunk."""
        y = torch.sub(log_alpha, self.density_shift).sigmoid_()
        grad.addcmul_(y.sub_(y * y), scale)


class GateCode:
    """The gates of a bank in compact form, valid while log α does not change (between optimizer steps, at eval).

    Once trained, almost every gate is exactly 0 or 1, so the experts open at element n form a subset,
    coded in `codes[n]` (bit m = expert m). Then `Σ_m a_m z_mn = table[codes[n]]` with
    `table[c] = Σ_{m ∈ c} a_m`: one gather over N elements instead of M·N sigmoids, and the gradient of
    the weights one scatter-add. An element with a fractional gate gets the extra code 2^M (a zero row of
    the table) and keeps its M gate values in `fractional_gates`.
    """

    max_experts = 15
    max_fractional_share = 0.25  # beyond this the bank is not saturated yet and the code would not pay

    def __init__(self, codes, fractional_index, fractional_gates, closed_fraction):
        self.codes, self.fractional_index, self.fractional_gates = codes, fractional_index, fractional_gates
        self.closed_fraction = closed_fraction
        num_experts = len(closed_fraction)
        subsets = torch.arange(2**num_experts + 1, device=codes.device).unsqueeze(1)
        membership = (subsets >> torch.arange(num_experts, device=codes.device)) & 1
        membership[-1] = 0  # the code of elements with a fractional gate
        self.membership = membership.to(fractional_gates.dtype)

    @classmethod
    @torch.no_grad()
    def build(cls, log_alpha: torch.Tensor, settings: GateSettings) -> "GateCode | None":
        num_experts, num_elements = log_alpha.shape
        if num_experts > cls.max_experts or settings.noise > 0:
            return None
        bits = (2 ** torch.arange(num_experts, device=log_alpha.device, dtype=torch.int32)).unsqueeze(1)
        codes, fractional_index, fractional_gates = [], [], []
        closed, fractional_count = log_alpha.new_zeros(num_experts), 0
        for columns, noisy in settings.noisy_chunks(log_alpha):
            _, gates = settings.gates(noisy)
            chunk_codes = ((gates == 1).int() * bits).sum(dim=0, dtype=torch.int32)
            fractional = ((gates > 0) & (gates < 1)).any(dim=0).nonzero().squeeze(1)
            fractional_count += len(fractional)
            if fractional_count > cls.max_fractional_share * num_elements:
                return None
            chunk_codes[fractional] = 2**num_experts
            codes.append(chunk_codes)
            fractional_index.append(fractional + columns.start)
            fractional_gates.append(gates[:, fractional])
            closed += (gates == 0).sum(dim=1)
        return cls(
            torch.cat(codes), torch.cat(fractional_index), torch.cat(fractional_gates, dim=1), closed / num_elements
        )

    def mix(self, weights: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """`Σ_m a_m z_mn` for every element; `out` (a reused buffer) spares a large allocation."""
        mixed = torch.index_select(self.membership @ weights, 0, self.codes, out=out)
        mixed[self.fractional_index] = weights @ self.fractional_gates
        return mixed

    def weights_grad(self, upstream: torch.Tensor) -> torch.Tensor:
        """`∂L/∂a_m = Σ_n z_mn · ∂L/∂mixed_n`, summed per code first."""
        per_code = upstream.new_zeros(len(self.membership)).index_add_(0, self.codes, upstream)
        return self.membership.T @ per_code + self.fractional_gates @ upstream[self.fractional_index]


@dataclass
class BankSummary:
    """What deterministic gates are while log α stays put (between optimizer steps): the gate code where the bank is
    saturated, each expert's closed fraction and (on first use: eval never asks) expected density. Built once per
    change of log α and shared by the tasks of an update, which then only mix (per task: the weights differ)."""

    code: GateCode | None
    closed_fraction: torch.Tensor
    log_alpha: torch.Tensor
    settings: GateSettings

    @classmethod
    @torch.no_grad()
    def build(cls, log_alpha: torch.Tensor, settings: GateSettings) -> "BankSummary | None":
        """None for noisy gates, which change with every evaluation."""
        if settings.noise > 0:
            return None
        code = GateCode.build(log_alpha, settings)
        closed = code.closed_fraction if code is not None else closed_fraction(log_alpha, settings)
        return cls(code, closed, log_alpha, settings)

    @functools.cached_property
    def density(self) -> torch.Tensor:
        return expected_density(self.log_alpha, self.settings)


@torch.no_grad()
def closed_fraction(log_alpha: torch.Tensor, settings: GateSettings) -> torch.Tensor:
    """The fraction of each expert's gates that are exactly 0 `[M]`."""
    closed = log_alpha.new_zeros(log_alpha.shape[0])
    for _, noisy in settings.noisy_chunks(log_alpha):
        closed += torch.count_nonzero(settings.gates(noisy)[1] == 0, dim=1)
    return closed / log_alpha.shape[1]


def accumulates_into_grad(leaf: torch.Tensor) -> bool:
    """Whether the backward now running ends in `leaf.grad += gradient` (`loss.backward()`), rather than returning
    the gradient (`torch.autograd.grad`) or not needing it. The engine's own answer; autograd.grad refuses the
    question for a leaf, which is a no."""
    if not leaf.requires_grad:
        return False
    try:
        return torch._C._will_engine_execute_node(torch.autograd.graph.get_gradient_edge(leaf).node)
    except RuntimeError:
        return False


class MixedExpertGates(torch.autograd.Function):
    """Σ_m a_m z_m, the expected densities and the closed fractions of the `[M, N]` bank.

    No `[M, N]` intermediate is kept for autograd (8 experts × 21.7 M gates would cost GBs). With a
    `GateCode` (deterministic, saturated gates) the mixture and its gradients touch N elements plus the
    fractional ones; otherwise one chunked pass, and the backward recomputes each chunk's gates with the
    same noise. Closed fractions and densities come from the `BankSummary` of deterministic gates; noisy gates
    count their closed gates on the way, and compute the densities (a sigmoid pass) when `with_density` is set.

    Under `loss.backward()` the gradient of log α is added straight into `log_alpha.grad`, which persists across
    the tasks of an update, and autograd receives an empty sparse gradient (so AccumulateGrad and DDP's hooks still
    run on the parameter): no fresh `[M, N]` block per task (694 MB for ViT-S: its allocation, page faults and the
    accumulating add cost more than the gradient itself) and no third copy of the bank in memory. Under
    `torch.autograd.grad` the gradient is returned as usual.
    """

    @staticmethod
    def forward(
        ctx, log_alpha: torch.Tensor, weights: torch.Tensor, settings: GateSettings, summary, with_density: bool
    ):
        """`summary`: the `BankSummary` of this log α (deterministic gates), or None (noisy gates: computed here)."""
        num_experts, num_elements = log_alpha.shape
        code = summary.code if summary is not None else None
        closed = log_alpha.new_zeros(num_experts)
        if code is not None:
            mixed = code.mix(weights)
        else:
            mixed = log_alpha.new_empty(num_elements)
            for columns, noisy in settings.noisy_chunks(log_alpha):
                _, gates = settings.gates(noisy)
                mixed[columns] = weights @ gates
                if summary is None:  # noisy gates: counted on the way
                    closed += torch.count_nonzero(gates == 0, dim=1)
        closed = summary.closed_fraction.clone() if summary is not None else closed / num_elements
        if not with_density:
            density = log_alpha.new_zeros(num_experts)
        else:
            density = summary.density.clone() if summary is not None else expected_density(log_alpha, settings)
        ctx.save_for_backward(log_alpha, weights)
        ctx.settings, ctx.code = settings, code
        ctx.mark_non_differentiable(closed)
        return mixed, density, closed

    @staticmethod
    def backward(ctx, grad_mixed, grad_density, _):
        log_alpha, weights = ctx.saved_tensors
        settings, code = ctx.settings, ctx.code
        if grad_mixed is not None:  # under autocast it can come back in bf16: the bank's arithmetic stays fp32
            grad_mixed = grad_mixed.to(log_alpha.dtype)
        accumulate = accumulates_into_grad(log_alpha)
        if accumulate and log_alpha.grad is None:
            log_alpha.grad = torch.zeros_like(log_alpha)
        grad_log_alpha = log_alpha.grad if accumulate else torch.zeros_like(log_alpha)
        grad_weights = torch.zeros_like(weights)
        # ∂L/∂d_m = λ_m a_m is 0 for every expert whose multiplier is 0: no density pass then.
        density_scale = None
        if grad_density is not None and bool(grad_density.any()):
            density_scale = (grad_density / log_alpha.shape[1]).unsqueeze(1)
        if grad_mixed is not None and code is not None:
            grad_weights = code.weights_grad(grad_mixed)
            index = code.fractional_index
            s = torch.sigmoid(log_alpha[:, index] / settings.beta)
            grad_log_alpha[:, index] += settings.backprop(weights.unsqueeze(1) * grad_mixed[index], s)
        chunked_mixture = grad_mixed is not None and code is None
        if chunked_mixture or density_scale is not None:  # one pass over the bank for both terms
            noisy_chunks = settings.noisy_chunks(log_alpha) if chunked_mixture else None
            for columns in settings.column_chunks(log_alpha.shape[1]):
                grad = grad_log_alpha[:, columns]
                if chunked_mixture:
                    _, noisy = next(noisy_chunks)
                    s, gates = settings.gates(noisy)
                    upstream = grad_mixed[columns]
                    grad_weights += gates @ upstream
                    grad += settings.backprop(torch.outer(weights, upstream), s)
                if density_scale is not None:
                    settings.add_density_grad(grad, log_alpha[:, columns], density_scale)
        if accumulate:  # already in log_alpha.grad: hand autograd an empty gradient
            grad_log_alpha = torch.sparse_coo_tensor(
                torch.empty(2, 0, dtype=torch.long, device=log_alpha.device),
                log_alpha.new_empty(0),
                log_alpha.shape,
                check_invariants=False,
            )
        return grad_log_alpha, grad_weights, None, None, None


@torch.no_grad()
def expected_density(log_alpha: torch.Tensor, settings: GateSettings) -> torch.Tensor:
    """`d_m = mean_n sigmoid(log α_mn − β·ln(−γ/ζ))` `[M]`: the probability that a training gate is non-zero."""
    density = log_alpha.new_zeros(log_alpha.shape[0])
    for columns in settings.column_chunks(log_alpha.shape[1]):
        density += torch.sub(log_alpha[:, columns], settings.density_shift).sigmoid_().sum(dim=1)
    return density / log_alpha.shape[1]


__all__ = [
    "BankSummary",
    "GateCode",
    "GateSettings",
    "MixedExpertGates",
    "accumulates_into_grad",
    "closed_fraction",
    "expected_density",
]
