"""Backbone shapes the benchmarks share (random weights; the ViTConfig keyword arguments)."""

VIT_S_16_84PX = dict(
    hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536, patch_size=16, image_size=84
)
"""DINO ViT-S/16 at 84 px: the largest shape that trains at a useful speed on a 2-core CPU."""

TINY_VIT_32PX = dict(
    hidden_size=192, num_hidden_layers=6, num_attention_heads=3, intermediate_size=768, patch_size=4, image_size=32
)
"""The tiny backbone of the demos and tests on MiniMeta (32 px images)."""
