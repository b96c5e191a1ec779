"""Sharpness-aware minimisation (Foret et al. 2021) and its adaptive variant ASAM (Kwon et al. 2021), Trainer-free.

One SAM update: g = ∇L(w); e = ρ·g/‖g‖ (ASAM: e = ρ·w²·g/‖|w|·g‖); g_sam = ∇L(w + e) on the same batch;
restore w by copy; step the base optimiser with g_sam. `perturbed_weights` is the middle of that recipe:

    loss(batch).backward()
    with perturbed_weights(params, rho=0.05) as perturbation:   # None if the gradient was not finite
        optimizer.zero_grad(); loss(batch).backward()            # gradient at w + e
    optimizer.step()                                              # weights are exactly w again
"""

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch


@torch.no_grad()
def sam_perturbation(
    parameters: Sequence[torch.Tensor], rho: float, adaptive: bool = False, eps: float = 1e-12
) -> list[torch.Tensor] | None:
    """The ascent step e for each parameter from its current `.grad`, or None when the gradient norm is not finite.

    The norm is accumulated in fp32 over all parameters: SAM `e = ρ·g/(‖g‖ + ε)`; ASAM
    `e = ρ·w²·g/(‖|w|·g‖ + ε)`. Parameters without a gradient get a zero step.
    """
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
    scaled = [p.abs() * g if adaptive else g for p, g in zip(parameters, grads, strict=True)]
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(s.float()) for s in scaled]))
    if not torch.isfinite(norm):
        return None
    factor = rho / (norm + eps)
    return [(p * p * g if adaptive else g) * factor.to(g.dtype) for p, g in zip(parameters, grads, strict=True)]


@contextmanager
def perturbed_weights(
    parameters: Sequence[torch.Tensor], rho: float, adaptive: bool = False
) -> Iterator[list[torch.Tensor] | None]:
    """Inside the block the weights are `w + e` (from their current gradients); on exit they are `w` again, by copy.

    Restoring by copy (not by subtracting e) makes the weights bit-identical to what they were. When the
    gradient norm is not finite nothing is perturbed and the block receives None.
    """
    perturbation = sam_perturbation(parameters, rho, adaptive)
    if perturbation is None:
        yield None
        return
    with torch.no_grad():
        originals = [p.detach().clone() for p in parameters]
        for parameter, step in zip(parameters, perturbation, strict=True):
            parameter.add_(step)
    try:
        yield perturbation
    finally:
        with torch.no_grad():
            for parameter, original in zip(parameters, originals, strict=True):
                parameter.copy_(original)
