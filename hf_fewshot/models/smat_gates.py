"""SMAT's expert gates: hard-concrete gates of M experts over the delta's N elements, mixed without an `[M, N]`
autograd graph (docs/smat.md, "Parameters and the merge").

`GateSettings` holds the constants of one evaluation (training or eval gates); `MixedExpertGates` computes the
mixture `Σ_m a_m z_m`, the expected densities and the measured sparsity in one chunked pass and recomputes in the
backward; `GateCode` reads saturated gates (exactly 0 or 1) from a per-element code of the open experts, so that
merging a task becomes a gather. A same-folder module of modeling_smat.py: remote code copies it beside the model.
"""

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
        s = torch.sigmoid(noisy_log_alpha / self.beta)
        return s, (s * (self.zeta - self.gamma) + self.gamma).clamp_(0.0, 1.0)

    def slope(self, s: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
        """∂z/∂x = (ζ − γ)/β · s(1 − s) where 0 < z < 1; 0 where the clamp saturates the gate."""
        inside = (gates > 0) & (gates < 1)
        return s * (1 - s) * ((self.zeta - self.gamma) / self.beta) * inside


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


class MixedExpertGates(torch.autograd.Function):
    """Σ_m a_m z_m, the expected densities and the closed fractions of the `[M, N]` bank.

    No `[M, N]` intermediate is kept for autograd (8 experts × 21.7 M gates would cost GBs). With a
    `GateCode` (deterministic, saturated gates) the mixture and its gradients touch N elements plus the
    fractional ones; otherwise one chunked pass, and the backward recomputes each chunk's gates with the
    same noise. The densities (a sigmoid pass) are only computed when `with_density` is set.
    """

    @staticmethod
    def forward(ctx, log_alpha, weights, settings: GateSettings, code: GateCode | None, with_density: bool):
        num_experts, num_elements = log_alpha.shape
        density = log_alpha.new_zeros(num_experts)
        if code is not None:
            mixed, closed = code.mix(weights), code.closed_fraction.clone()
        else:
            mixed, closed = log_alpha.new_empty(num_elements), log_alpha.new_zeros(num_experts)
            for columns, noisy in settings.noisy_chunks(log_alpha):
                _, gates = settings.gates(noisy)
                mixed[columns] = weights @ gates
                closed += (gates == 0).sum(dim=1)
            closed /= num_elements
        if with_density:
            for columns in settings.column_chunks(num_elements):
                density += torch.sigmoid(log_alpha[:, columns] - settings.density_shift).sum(dim=1)
            density /= num_elements
        ctx.save_for_backward(log_alpha, weights)
        ctx.settings, ctx.code = settings, code
        ctx.mark_non_differentiable(closed)
        return mixed, density, closed

    @staticmethod
    def backward(ctx, grad_mixed, grad_density, _):
        log_alpha, weights = ctx.saved_tensors
        settings, code = ctx.settings, ctx.code
        grad_log_alpha = torch.zeros_like(log_alpha)
        grad_weights = torch.zeros_like(weights)
        if grad_mixed is not None and code is not None:
            grad_weights = code.weights_grad(grad_mixed)
            index, gates = code.fractional_index, code.fractional_gates
            s = torch.sigmoid(log_alpha[:, index] / settings.beta)
            grad_log_alpha[:, index] = weights.unsqueeze(1) * grad_mixed[index] * settings.slope(s, gates)
        elif grad_mixed is not None:
            for columns, noisy in settings.noisy_chunks(log_alpha):
                s, gates = settings.gates(noisy)
                upstream = grad_mixed[columns]
                grad_weights += gates @ upstream
                grad_log_alpha[:, columns] += weights.unsqueeze(1) * upstream * settings.slope(s, gates)
        # ∂L/∂d_m = λ_m a_m is 0 for every expert whose multiplier is 0: skip the sigmoid pass then.
        if grad_density is not None and bool(grad_density.any()):
            scale = (grad_density / log_alpha.shape[1]).unsqueeze(1)
            for columns in settings.column_chunks(log_alpha.shape[1]):
                sd = torch.sigmoid(log_alpha[:, columns] - settings.density_shift)
                grad_log_alpha[:, columns] += scale * sd * (1 - sd)
        return grad_log_alpha, grad_weights, None, None, None


__all__ = ["GateCode", "GateSettings", "MixedExpertGates"]
