"""SMAT's expert gates: hard-concrete gates of M experts over the delta's N elements, mixed without an `[M, N]`
autograd graph (docs/smat.md, "Parameters and the merge").

`GateSettings` holds the constants of one evaluation (training or eval gates); `MixedExpertGates` computes the
mixture `Σ_m a_m z_m`, the expected densities and the measured sparsity in one chunked pass and recomputes in the
backward; `GateCode` reads saturated gates (exactly 0 or 1) from a per-element code of the open experts, so that
merging a task becomes a gather; `BankSummary` holds what stays fixed between optimizer steps. A same-folder
module of modeling_smat.py: remote code copies it beside the model.
"""

import functools
import math
import sys
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

    def scratch(self, log_alpha: torch.Tensor, count: int) -> list[torch.Tensor]:
        """`count` flat buffers of one chunk of the bank, reused chunk after chunk through `in_scratch`: a fresh
        2 MB block per kernel costs more in allocation and page faults than the kernel's arithmetic."""
        size = log_alpha.shape[0] * min(self.chunk_size, log_alpha.shape[1])
        return list(log_alpha.new_empty(count, size))

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

    def sigmoid(self, noisy_log_alpha: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """s = sigmoid(x / β), into `out` if given."""
        return torch.div(noisy_log_alpha, self.beta, out=out).sigmoid_()

    def stretch_(self, s: torch.Tensor) -> torch.Tensor:
        """The gate z = clamp(s·(ζ − γ) + γ, 0, 1), in place over s."""
        return s.mul_(self.zeta - self.gamma).add_(self.gamma).clamp_(0.0, 1.0)

    def gates(self, noisy_log_alpha: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """The gates z = clamp(sigmoid(x / β)·(ζ − γ) + γ, 0, 1), into `out` if given."""
        return self.stretch_(self.sigmoid(noisy_log_alpha, out))

    def backprop_(self, grad_gates: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """∂L/∂x from ∂L/∂z: `(ζ − γ)/β · s(1 − s)` where the gate lies strictly inside (0, 1), 0 where the clamp
        saturates it (there a gate gets no gradient). In place: the result replaces `grad_gates`, the gates z
        replace `s`; four kernels, no allocation."""
        grad_gates.mul_((self.zeta - self.gamma) / self.beta)
        torch.ops.aten.sigmoid_backward.grad_input(grad_gates, s, grad_input=grad_gates)
        return torch.ops.aten.hardtanh_backward.grad_input(
            grad_gates, self.stretch_(s), 0.0, 1.0, grad_input=grad_gates
        )

    def saturation_bounds(self) -> tuple[float, float] | None:
        """`(low, high)`: a deterministic gate is exactly 0 where log α ≤ low and exactly 1 where log α ≥ high
        (z = clamp(sigmoid(x / β)·(ζ − γ) + γ, 0, 1) reaches 0 at s = −γ/(ζ − γ), 1 at s = (1 − γ)/(ζ − γ));
        None unless the stretch interval (γ, ζ) holds [0, 1] inside, as hard-concrete gates do."""
        if not (self.gamma < 0 and self.zeta > 1):
            return None
        return self.beta * math.log(-self.gamma / self.zeta), self.beta * math.log((1 - self.gamma) / (self.zeta - 1))

    def add_density_grad(
        self, grad: torch.Tensor, log_alpha: torch.Tensor, scale: torch.Tensor, scratch: torch.Tensor
    ) -> None:
        """`grad += scale_m · ∂d/∂log α`, ∂d/∂log α = sigmoid'(log α − shift) = y − y², in place on a chunk (`scale`
        `[M, 1]` holds ∂L/∂d_m / N; `scratch` one buffer of `scratch()`): four kernels, no allocation."""
        y = torch.sub(log_alpha, self.density_shift, out=in_scratch(scratch, log_alpha)).sigmoid_()
        grad.addcmul_(y.addcmul_(y, y, value=-1.0), scale)


def full_precision(tensor: torch.Tensor):
    """Autocast off on `tensor`'s device: the bank's arithmetic (gates, codes, mixtures) stays fp32 under bf16
    autocast, where a bf16 matmul would round the mixture and the codes."""
    return torch.autocast(tensor.device.type, enabled=False)


def in_scratch(buffer: torch.Tensor, chunk: torch.Tensor) -> torch.Tensor:
    """A view of a `GateSettings.scratch` buffer shaped like `chunk` (the last chunk of a bank can be narrower)."""
    return buffer[: chunk.numel()].view(chunk.shape)


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
    margin = 1e-3  # log α this close to a saturation bound is read from the gate formula: its float rounding is ~1e-6

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
        """The code of deterministic gates, or None where it would not pay (noise, too many experts or fractions).

        Float arithmetic only, because comparisons into bool tensors run 5–10× slower than float kernels on CPU
        (docs/performance.md): per chunk, p = clamp((log α − low) / (high − low), 0, 1) with the saturation bounds
        widened by `margin`, so p is exactly 0 for a surely closed gate and 1 for a surely open one; an element
        is coded where every p(1 − p) is 0, and the few others (near a bound, or fractional) get their exact gate
        values from the gate formula. Under autocast the sums stay fp32 (codes up to 2^15 must be exact).
        """
        num_experts, num_elements = log_alpha.shape
        bounds = settings.saturation_bounds()
        if num_experts > cls.max_experts or settings.noise > 0 or bounds is None:
            return None
        low, high = bounds[0] - cls.margin, bounds[1] + cls.margin
        bits = 2.0 ** torch.arange(num_experts, device=log_alpha.device, dtype=log_alpha.dtype)
        codes = torch.empty(num_elements, dtype=torch.int32, device=log_alpha.device)
        fractional_index, fractional_gates = [], []
        closed, fractional_count = log_alpha.new_zeros(num_experts), 0
        scratch = settings.scratch(log_alpha, 2)
        with full_precision(log_alpha):
            for columns in settings.column_chunks(num_elements):
                chunk = log_alpha[:, columns]
                position, spread = (in_scratch(buffer, chunk) for buffer in scratch)
                torch.sub(chunk, low, out=position).mul_(1.0 / (high - low)).clamp_(0.0, 1.0)
                torch.sub(position, torch.mul(position, position, out=spread), out=spread)  # p(1 - p)
                fractional = spread.sum(dim=0).ne_(0).nonzero().squeeze(1)  # NaN is not 0: never coded
                fractional_count += len(fractional)
                if fractional_count > cls.max_fractional_share * num_elements:
                    return None
                gates = settings.gates(chunk[:, fractional])
                position[:, fractional] = 0.0  # the coded elements' positions are their gates, exactly 0 or 1
                chunk_codes = codes[columns]
                chunk_codes.copy_(bits @ position)
                chunk_codes[fractional] = 2**num_experts
                fractional_index.append(fractional + columns.start)
                fractional_gates.append(gates)
                coded_closed = (chunk.shape[1] - len(fractional)) - position.sum(dim=1)
                closed += coded_closed + (gates == 0).sum(dim=1)
        return cls(codes, torch.cat(fractional_index), torch.cat(fractional_gates, dim=1), closed / num_elements)

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
    (scratch,) = settings.scratch(log_alpha, 1)
    for _, noisy in settings.noisy_chunks(log_alpha):
        closed += closed_counts_(settings.gates(noisy, out=in_scratch(scratch, noisy)))
    return closed / log_alpha.shape[1]


def closed_counts_(gates: torch.Tensor) -> torch.Tensor:
    """How many of each expert's gates `[M, n]` are exactly 0, by float kernels (sign and sum: gates lie in [0, 1])
    rather than a comparison into a bool tensor, 5–10× slower on CPU. Overwrites `gates`; a NaN gate gives a NaN."""
    return gates.shape[1] - gates.sign_().sum(dim=1)


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


class RetainedGradients:
    """Gradient buffers of large parameters, kept across optimizer steps for the backwards that add straight into
    `.grad` (`MixedExpertGates`, `MergedTaskWeights`).

    `zero_grad()` sets `.grad` to None, and a fresh block for the next update pays its page faults again: 0.66 s per
    update for ViT-S's 694 MB bank, more than the gradient's arithmetic (docs/performance.md). A buffer is handed
    back zeroed only while nothing else holds it (a caller that kept the old `.grad` gets a fresh one) and is
    dropped by `clear()`, which the model calls when it leaves training mode.
    """

    def __init__(self):
        self._buffers: dict[int, torch.Tensor] = {}

    def grad_of(self, leaf: torch.Tensor) -> torch.Tensor:
        """`leaf.grad`, first set to a zeroed buffer (the retained one when free) if it is None."""
        if leaf.grad is None:
            key = id(leaf)
            buffer = self._buffers.get(key)
            reusable = (
                buffer is not None
                and (buffer.shape, buffer.dtype, buffer.device) == (leaf.shape, leaf.dtype, leaf.device)
                and sys.getrefcount(buffer) == 3  # this dict, the local name and the call's argument
            )
            del buffer
            if reusable:
                leaf.grad = self._buffers[key].zero_()
            else:
                leaf.grad = self._buffers[key] = torch.zeros_like(leaf)
        return leaf.grad

    def gradient_target(self, leaf: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """Where a backward writes `leaf`'s gradient, and whether that is `leaf.grad` itself: under `loss.backward()`
        it adds straight into `.grad` (then returns `returned(...)`'s empty gradient); else into fresh zeros."""
        if accumulates_into_grad(leaf):
            return self.grad_of(leaf), True
        return torch.zeros_like(leaf), False

    @staticmethod
    def returned(leaf: torch.Tensor, gradient: torch.Tensor, in_grad: bool) -> torch.Tensor:
        """What a backward hands autograd for `leaf`: the gradient, or an empty one where it is in `.grad` already."""
        return empty_sparse_gradient(leaf) if in_grad else gradient

    def clear(self) -> None:
        self._buffers.clear()


def empty_sparse_gradient(leaf: torch.Tensor) -> torch.Tensor:
    """An all-zero sparse gradient of `leaf`'s shape, for a backward that already added its gradient into
    `leaf.grad`: AccumulateGrad and DDP's hooks still run on the parameter, and nothing is added twice."""
    return torch.sparse_coo_tensor(
        torch.empty(leaf.dim(), 0, dtype=torch.long, device=leaf.device),
        leaf.new_empty(0),
        leaf.shape,
        check_invariants=False,
    )


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
        ctx,
        log_alpha: torch.Tensor,
        weights: torch.Tensor,
        settings: GateSettings,
        summary,
        with_density: bool,
        retained: RetainedGradients | None = None,
    ):
        """`summary`: the `BankSummary` of this log α (deterministic gates), or None (noisy gates: computed here);
        `retained`: where log α's gradient buffer is kept between updates (None: a fresh one each update)."""
        with full_precision(log_alpha):
            num_experts, num_elements = log_alpha.shape
            code = summary.code if summary is not None else None
            closed = log_alpha.new_zeros(num_experts)
            if code is not None:
                mixed = code.mix(weights)
            else:
                mixed = log_alpha.new_empty(num_elements)
                (scratch,) = settings.scratch(log_alpha, 1)
                for columns, noisy in settings.noisy_chunks(log_alpha):
                    gates = settings.gates(noisy, out=in_scratch(scratch, noisy))
                    torch.mv(gates.t(), weights, out=mixed[columns])
                    if summary is None:  # noisy gates: counted on the way
                        closed += closed_counts_(gates)
            closed = summary.closed_fraction.clone() if summary is not None else closed / num_elements
            if not with_density:
                density = log_alpha.new_zeros(num_experts)
            else:
                density = summary.density.clone() if summary is not None else expected_density(log_alpha, settings)
            ctx.save_for_backward(log_alpha, weights)
            ctx.settings, ctx.code, ctx.retained = settings, code, retained or RetainedGradients()
            ctx.mark_non_differentiable(closed)
            return mixed, density, closed

    @staticmethod
    def backward(ctx, grad_mixed, grad_density, _):
        with full_precision(ctx.saved_tensors[0]):
            log_alpha, weights = ctx.saved_tensors
            settings, code = ctx.settings, ctx.code
            if grad_mixed is not None:  # under autocast it can come back in bf16: the bank's arithmetic stays fp32
                grad_mixed = grad_mixed.to(log_alpha.dtype)
            grad_log_alpha, in_grad = ctx.retained.gradient_target(log_alpha)
            grad_weights = torch.zeros_like(weights)
            # ∂L/∂d_m = λ_m a_m is 0 for every expert whose multiplier is 0: no density pass then.
            density_scale = None
            if grad_density is not None and bool(grad_density.any()):
                density_scale = (grad_density / log_alpha.shape[1]).unsqueeze(1)
            if grad_mixed is not None and code is not None:
                grad_weights = code.weights_grad(grad_mixed)
                index = code.fractional_index
                s = settings.sigmoid(log_alpha[:, index])
                grad_log_alpha[:, index] += settings.backprop_(weights.unsqueeze(1) * grad_mixed[index], s)
            chunked_mixture = grad_mixed is not None and code is None
            if chunked_mixture or density_scale is not None:  # one pass over the bank for both terms
                gate_scratch, grad_scratch = settings.scratch(log_alpha, 2)
                noisy_chunks = settings.noisy_chunks(log_alpha) if chunked_mixture else None
                for columns in settings.column_chunks(log_alpha.shape[1]):
                    grad = grad_log_alpha[:, columns]
                    if chunked_mixture:
                        _, noisy = next(noisy_chunks)
                        s = settings.sigmoid(noisy, out=in_scratch(gate_scratch, noisy))
                        upstream = grad_mixed[columns]
                        chunk_grad = torch.mul(weights.unsqueeze(1), upstream, out=in_scratch(grad_scratch, noisy))
                        grad += settings.backprop_(chunk_grad, s)
                        grad_weights += s @ upstream  # s holds the gates now
                    if density_scale is not None:
                        settings.add_density_grad(grad, log_alpha[:, columns], density_scale, gate_scratch)
            return ctx.retained.returned(log_alpha, grad_log_alpha, in_grad), grad_weights, None, None, None, None


@torch.no_grad()
def expected_density(log_alpha: torch.Tensor, settings: GateSettings) -> torch.Tensor:
    """`d_m = mean_n sigmoid(log α_mn − β·ln(−γ/ζ))` `[M]`: the probability that a training gate is non-zero."""
    density = log_alpha.new_zeros(log_alpha.shape[0])
    (scratch,) = settings.scratch(log_alpha, 1)
    for columns in settings.column_chunks(log_alpha.shape[1]):
        chunk = log_alpha[:, columns]
        density += torch.sub(chunk, settings.density_shift, out=in_scratch(scratch, chunk)).sigmoid_().sum(dim=1)
    return density / log_alpha.shape[1]


__all__ = [
    "BankSummary",
    "GateCode",
    "GateSettings",
    "MixedExpertGates",
    "RetainedGradients",
    "accumulates_into_grad",
    "closed_counts_",
    "closed_fraction",
    "empty_sparse_gradient",
    "expected_density",
]
