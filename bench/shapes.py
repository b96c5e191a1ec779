"""Backbone shapes the benchmarks share (random weights; the ViTConfig keyword arguments)."""

VIT_S_16_84PX = dict(
    hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536, patch_size=16, image_size=84
)
"""DINO ViT-S/16 at 84 px: the largest shape that trains at a useful speed on a 2-core CPU."""

TINY_VIT_32PX = dict(
    hidden_size=192, num_hidden_layers=6, num_attention_heads=3, intermediate_size=768, patch_size=4, image_size=32
)
"""The tiny backbone of the demos and tests on MiniMeta (32 px images)."""


def saturate_gates(model) -> None:
    """Set a SmatModel's experts as after training: a non-zero delta, every gate saturated, 90% closed (τ = 0.9)."""
    import math

    import torch

    with torch.no_grad():
        model.delta.normal_(0, 1e-3)
        closed = torch.rand(model.gate_logits.shape) < model.config.sparsity_target
        model.gate_logits.copy_(torch.where(closed, math.log(0.01), math.log(100.0)))
