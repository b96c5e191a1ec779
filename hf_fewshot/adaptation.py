"""Test-time adaptation on a task's support set (docs/pmf.md, "Fine-tuning on the support set", docs/sam.md, "Choosing
a backbone per task").

- `finetune_on_support`: fine-tune a copy of the backbone (full, AdamW) or a PEFT LoRA adapter on the
  support set, prototypes from the clean support images, loss on an augmented copy; the model itself is
  never touched, so every task starts from the meta-tuned (or SMAT-merged) weights.
- `choose_learning_rate`: pick the learning rate on a pseudo-episode made from the support set alone.
- `select_backbone`: score a pool of backbones on the support set (leave-one-out nearest-centroid accuracy);
  `BackbonePool` is the few-shot model that does so for every task (the flat-backbone protocol).
"""

from __future__ import annotations

import copy
import math
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedModel, ViTModel
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.vit.modeling_vit import eager_attention_forward

from hf_fewshot.data.transforms import IMAGENET_MEAN, IMAGENET_STD, jitter_colours
from hf_fewshot.models.modeling_fewshot import (
    DEFAULT_LOGIT_SCALE,
    FewShotOutput,
    FewShotTask,
    backbone_features,
    check_episode,
    class_prototypes,
    cosine_logits,
    eval_mode,
)

DEFAULT_LEARNING_RATES = (0.0, 1e-4, 1e-3, 1e-2)
LORA_TARGETS = ("q_proj", "v_proj")


class SupportAugmentation:
    """Random flip, brightness / contrast / saturation jitter and a small translation of normalised images,
    drawn from a seeded generator: the augmented copy of the support set the fine-tuning loss is taken on."""

    def __init__(
        self,
        jitter: float = 0.4,
        max_shift: float = 0.1,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ):
        self.jitter, self.max_shift = jitter, max_shift
        self.mean, self.std = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)

    def __call__(self, pixel_values: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n = len(pixel_values)
        mean, std = self.mean.to(pixel_values), self.std.to(pixel_values)
        unit = (pixel_values * std + mean).clamp(0, 1)
        flip = torch.rand(n, generator=generator) < 0.5
        unit = torch.where(flip.view(n, 1, 1, 1).to(unit.device), unit.flip(-1), unit)
        unit = jitter_colours(unit, 1 + (torch.rand(3, n, 1, 1, 1, generator=generator) * 2 - 1) * self.jitter)
        shifts = ((torch.rand(n, 2, generator=generator) * 2 - 1) * self.max_shift * 2).to(unit)
        theta = torch.zeros(n, 2, 3, dtype=unit.dtype, device=unit.device)
        theta[:, 0, 0] = theta[:, 1, 1] = 1.0
        theta[:, :, 2] = shifts
        grid = F.affine_grid(theta, list(unit.shape), align_corners=False)
        unit = F.grid_sample(unit, grid, padding_mode="border", align_corners=False)
        return (unit - mean) / std


def _support_features(backbone: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """`backbone_features` as the fine-tuning steps need them: the same CLS features, with a ViT's last layer run for
    the CLS token alone.

    In the last layer the other tokens only serve as keys and values of the CLS token's attention; their queries,
    attention outputs and MLP are computed and then dropped by `last_hidden_state[:, 0]`. Skipping them removes
    ~5/6 of that layer from the forward and the backward pass (~13% of a step of the 6-layer tiny ViT, ~7% of
    ViT-S/16 at 84 px). The arithmetic is the same; only fp32 rounding differs (~1e-7 relative in features and
    gradients, tested), as much as between the SDPA and the eager attention kernels. Anything but a dropout-free
    `ViTModel` (bare or inside a PEFT model) takes the full forward.
    """
    vit = backbone.get_base_model() if hasattr(backbone, "get_base_model") else backbone  # PEFT: its (LoRA'd) ViT
    config = vit.config
    if not isinstance(vit, ViTModel) or config.hidden_dropout_prob or config.attention_probs_dropout_prob:
        return backbone_features(backbone, pixel_values)
    dtype = vit.embeddings.patch_embeddings.projection.weight.dtype
    hidden = vit.embeddings(pixel_values.to(dtype), interpolate_pos_encoding=True)
    *layers, last = vit.layers
    for layer in layers:
        hidden = layer(hidden)
    attention, normed = last.attention, last.layernorm_before(hidden)
    n, length, _ = normed.shape
    query = attention.q_proj(normed[:, :1]).view(n, 1, -1, attention.head_dim).transpose(1, 2)
    key = attention.k_proj(normed).view(n, length, -1, attention.head_dim).transpose(1, 2)
    value = attention.v_proj(normed).view(n, length, -1, attention.head_dim).transpose(1, 2)
    attend = ALL_ATTENTION_FUNCTIONS.get_interface(config._attn_implementation, eager_attention_forward)
    attended, _ = attend(attention, query, key, value, None, dropout=0.0, scaling=attention.scaling)
    cls = attention.o_proj(attended.reshape(n, 1, -1)) + hidden[:, :1]
    cls = last.mlp(last.layernorm_after(cls)) + cls
    return vit.layernorm(cls)[:, 0]


def _task_backbone_and_head(model: nn.Module, support_pixel_values, support_labels) -> tuple[nn.Module, float, float]:
    """A private copy of the backbone a task starts from, and the head's (scale, bias)."""
    if isinstance(model, FewShotTask):
        return copy.deepcopy(model.backbone), model.scale, model.bias
    if hasattr(model, "prepare_task"):  # any few-shot model (registered methods, BackbonePool)
        task = model.prepare_task(support_pixel_values, support_labels)  # SMAT: routed and merged into a copy
        shared = any(task.backbone is module for module in model.modules())  # ProtoNet's / the pool's own
        return copy.deepcopy(task.backbone) if shared else task.backbone, task.scale, task.bias
    if isinstance(model, PreTrainedModel):  # a plain HF backbone (e.g. ViTModel): cosine head
        return copy.deepcopy(model), DEFAULT_LOGIT_SCALE, 0.0
    raise TypeError(
        "finetune_on_support takes a few-shot model (anything with prepare_task: ProtoNetModel, SmatModel, "
        f"BackbonePool), a FewShotTask or an HF backbone, not {type(model).__name__}."
    )


def finetune_on_support(
    model: nn.Module,
    support_pixel_values: torch.Tensor,
    support_labels: torch.Tensor,
    mode: Literal["full", "lora"] = "full",
    learning_rate: float | Literal["auto"] = "auto",
    steps: int = 50,
    *,
    learning_rates: Sequence[float] = DEFAULT_LEARNING_RATES,
    lora_rank: int = 8,
    lora_alpha: int = 32,
    lora_targets: Sequence[str] = LORA_TARGETS,
    autocast: torch.dtype | None = None,
    seed: int = 0,
    progress: bool = False,
) -> FewShotTask:
    """Adapt to one task and return it as a `FewShotTask` (its `backbone` is a fine-tuned copy, or a PEFT model
    holding the task's LoRA adapter: `task.save_adapter(folder)` saves it with the weights it was trained on).

    `model`: a `ProtoNetModel`, a `SmatModel` (fine-tuned after routing and merging), a prepared `FewShotTask`, or
    a plain HF backbone. Each of `steps` AdamW steps takes prototypes from the clean support images (as fixed
    targets, no gradient) and the cross-entropy of an augmented copy; the head's scale and bias stay fixed.
    For LoRA the learning rate is 10× the given one (docs/pmf.md, "Fine-tuning on the support set").
    `learning_rate="auto"` picks one of `learning_rates` with `choose_learning_rate` on the support set alone.
    `autocast=torch.bfloat16` runs the fine-tuning passes in mixed precision (weights and optimiser stay fp32; on
    our CPU about 2.7× faster than fp32, for the tiny ViT and for ViT-S/16 at 84 px).
    """
    if mode not in ("full", "lora"):
        raise ValueError(f"mode must be 'full' or 'lora', got {mode!r}.")
    if steps < 0:
        raise ValueError(f"steps must be ≥ 0, got {steps}.")
    n_way = check_episode(support_pixel_values, support_labels)
    if learning_rate == "auto":
        learning_rate = choose_learning_rate(
            model, support_pixel_values, support_labels, mode, steps, learning_rates=learning_rates, seed=seed,
            progress=progress,
        )  # fmt: skip
    backbone, scale, bias = _task_backbone_and_head(model, support_pixel_values, support_labels)
    if mode == "lora":
        from peft import LoraConfig, get_peft_model  # here: importing PEFT costs seconds, and only LoRA needs it

        backbone.requires_grad_(False)
        config = LoraConfig(r=lora_rank, lora_alpha=lora_alpha, target_modules=list(lora_targets), lora_dropout=0.0)
        with torch.random.fork_rng(devices=[]):  # LoRA's A matrices are drawn from `seed`, not the global RNG
            torch.manual_seed(seed)
            with warnings.catch_warnings():  # PEFT asks transformers 5 a deprecated question on every call
                warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)
                backbone = get_peft_model(backbone, config)
        # The adapter sits on this task's own copy (for SMAT: its merged experts), not on the checkpoint the copy's
        # config names: record no base rather than a wrong one. `FewShotTask.save_adapter` saves the two together.
        backbone.peft_config["default"].base_model_name_or_path = None
        learning_rate = 10 * learning_rate
    else:
        backbone.requires_grad_(True)
    parameters = [p for p in backbone.parameters() if p.requires_grad]
    if learning_rate > 0 and steps > 0:
        device = support_pixel_values.device.type
        # Fused AdamW: one kernel per tensor instead of about six (CPU: 13 instead of 41 ms a step for ViT-S's 21.6 M
        # weights); the same update up to fp32 rounding. Elsewhere PyTorch's default.
        fused = True if device == "cpu" else None
        optimizer = torch.optim.AdamW(parameters, lr=learning_rate, weight_decay=0.0, fused=fused)
        generator = torch.Generator().manual_seed(seed)
        augment = SupportAugmentation()
        backbone.train()
        mixed_precision = torch.autocast(device, autocast, enabled=autocast is not None)
        # PyTorch's CPU flash-attention kernel is slow in bf16 (forward + backward ~4× eager attention at the tiny and
        # ViT-S shapes, a third of a bf16 step): under CPU autocast the steps attend eagerly (matmuls in bf16, softmax
        # in fp32). fp32 keeps SDPA, as fast as eager there; the task gets the backbone's own implementation back.
        implementation = backbone.config._attn_implementation
        if autocast is not None and device == "cpu" and implementation == "sdpa":
            backbone.config._attn_implementation = "eager"
        for _ in tqdm(range(steps), desc=f"fine-tuning ({mode}, lr {learning_rate:g})", disable=not progress):
            with torch.no_grad(), mixed_precision:  # targets, not a path for the gradient: one backward per step
                clean = _support_features(backbone, support_pixel_values).float()
            prototypes = class_prototypes(clean, support_labels, n_way)
            with mixed_precision:
                augmented = _support_features(backbone, augment(support_pixel_values, generator)).float()
            loss = F.cross_entropy(cosine_logits(augmented, prototypes, scale, bias), support_labels)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"Fine-tuning diverged (loss {loss.item()}) at learning rate {learning_rate}; try a smaller one."
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        backbone.config._attn_implementation = implementation
    backbone.requires_grad_(False)
    with torch.no_grad(), eval_mode(backbone):
        prototypes = class_prototypes(backbone_features(backbone, support_pixel_values), support_labels, n_way)
    weights_finite = all(torch.isfinite(p).all() for p in parameters)
    if not (weights_finite and torch.isfinite(prototypes).all()):  # the last step can diverge after a finite loss
        raise FloatingPointError(
            f"Fine-tuning diverged (non-finite {'prototypes' if weights_finite else 'weights'} after {steps} steps) "
            f"at learning rate {learning_rate}; try a smaller one."
        )
    return FewShotTask(backbone.eval(), prototypes, scale, bias, support_pixel_values.shape[-2:])


def pseudo_episode(support_labels: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a support set into pseudo-support and pseudo-query positions: half of each class (rounded down, at
    least one) is held out as queries. Every class needs at least two images."""
    counts = torch.bincount(support_labels)
    if int(counts.min()) < 2:
        lonely = torch.nonzero(counts < 2).flatten().tolist()
        raise ValueError(
            f"Choosing a learning rate needs ≥ 2 support images per class (one to hold out); classes {lonely} have "
            "fewer. Pass a fixed learning_rate instead."
        )
    generator = torch.Generator().manual_seed(seed)
    support, query = [], []
    for label in range(len(counts)):
        rows = torch.nonzero(support_labels == label).flatten()
        rows = rows[torch.randperm(len(rows), generator=generator)]
        held_out = max(1, len(rows) // 2)
        query.append(rows[:held_out])
        support.append(rows[held_out:])
    return torch.cat(support), torch.cat(query)


def choose_learning_rate(
    model: nn.Module,
    support_pixel_values: torch.Tensor,
    support_labels: torch.Tensor,
    mode: Literal["full", "lora"] = "full",
    steps: int = 50,
    *,
    learning_rates: Sequence[float] = DEFAULT_LEARNING_RATES,
    seed: int = 0,
    progress: bool = False,
) -> float:
    """The learning rate (of `learning_rates`) whose fine-tuning on a pseudo-support set best classifies the
    held-out pseudo-queries — all taken from the support set, so no test label is ever seen. Ties go to the
    smaller learning rate (0 = no fine-tuning). `progress=True` shows a bar over the candidates."""
    if not learning_rates:
        raise ValueError("learning_rates is empty.")
    support_rows, query_rows = pseudo_episode(support_labels, seed)
    pseudo_support, pseudo_labels = support_pixel_values[support_rows], support_labels[support_rows]
    best_rate, best_accuracy = None, -math.inf
    for rate in tqdm(sorted(learning_rates), desc="choosing the learning rate", disable=not progress):
        task = finetune_on_support(model, pseudo_support, pseudo_labels, mode, rate, steps, seed=seed)
        predictions = task(support_pixel_values[query_rows]).argmax(-1)
        accuracy = (predictions == support_labels[query_rows]).float().mean().item()
        if accuracy > best_accuracy:
            best_rate, best_accuracy = rate, accuracy
    return best_rate


@torch.no_grad()
def leave_one_out_accuracy(features: torch.Tensor, labels: torch.Tensor) -> float:
    """Nearest-centroid (cosine) accuracy of each support image against the class means of the others.

    Images that are alone in their class cannot be held out and are not scored (their class still competes)."""
    n_way = int(labels.max()) + 1
    sums = features.new_zeros(n_way, features.shape[-1]).index_add(0, labels, features)
    counts = torch.bincount(labels, minlength=n_way).to(features.dtype)
    scored = counts[labels] > 1
    if not scored.any():
        raise ValueError("Backbone selection needs a class with ≥ 2 support images to hold one out.")
    # Prototypes without the held-out image: its own class mean recomputed, the other classes unchanged.
    centroids = (sums / counts.clamp_min(1).unsqueeze(-1)).expand(len(labels), n_way, -1).clone()
    own = (sums[labels] - features) / (counts[labels] - 1).clamp_min(1).unsqueeze(-1)
    centroids[torch.arange(len(labels), device=labels.device), labels] = own
    similarity = F.cosine_similarity(features.unsqueeze(1), centroids, dim=-1)
    correct = similarity.argmax(-1) == labels
    return correct[scored].float().mean().item()


@torch.no_grad()
def select_backbone(
    backbones: Mapping[str, nn.Module],
    support_pixel_values: torch.Tensor,
    support_labels: torch.Tensor,
    progress: bool = False,
) -> tuple[str, dict[str, float]]:
    """The backbone of the pool whose features best separate the support set (leave-one-out nearest-centroid
    accuracy, docs/sam.md, "Choosing a backbone per task"), and every backbone's score. Ties go to the first in the
    pool's order; so does a support set with one image per class (nothing to hold out: every score is NaN), as
    Meta-Dataset episodes can be. `progress=True` shows a bar over the pool."""
    best, scores, _ = _select_with_features(backbones, support_pixel_values, support_labels, progress)
    return best, scores


def _select_with_features(
    backbones: Mapping[str, nn.Module],
    support_pixel_values: torch.Tensor,
    support_labels: torch.Tensor,
    progress: bool = False,
) -> tuple[str, dict[str, float], torch.Tensor | None]:
    """`select_backbone`, plus the picked backbone's support features (None when nothing could be scored), so
    that a caller building prototypes does not run the picked backbone a second time."""
    check_episode(support_pixel_values, support_labels)
    if int(torch.bincount(support_labels).max()) < 2:
        return next(iter(backbones)), {name: math.nan for name in backbones}, None
    scores, features = {}, {}
    for name, model in tqdm(backbones.items(), desc="scoring backbones", disable=not progress):
        backbone = getattr(model, "backbone", model)
        with eval_mode(backbone):
            features[name] = backbone_features(backbone, support_pixel_values)
        scores[name] = leave_one_out_accuracy(features[name], support_labels)
    best = max(scores, key=lambda name: scores[name])
    return best, scores, features[best]


class BackbonePool(nn.Module):
    """A few-shot model over several backbones (e.g. one per training domain, docs/sam.md, "Choosing a backbone per
    task"): each task uses the backbone that `select_backbone` picks on its support set, with cosine prototypes (scale
    10, bias 0).

    `choices` counts the picks by name, so a study can report which backbone served which domain. With
    `finetune_on_support` the picked backbone is then fine-tuned on the support set (selection + fine-tuning).
    """

    def __init__(self, backbones: Mapping[str, nn.Module], scale: float = DEFAULT_LOGIT_SCALE):
        super().__init__()
        if not backbones:
            raise ValueError("A BackbonePool needs at least one backbone.")
        self.backbones = nn.ModuleDict({name: getattr(model, "backbone", model) for name, model in backbones.items()})
        self.scale = scale
        self.choices: Counter[str] = Counter()

    @torch.no_grad()
    def prepare_task(self, support_pixel_values: torch.Tensor, support_labels: torch.Tensor) -> FewShotTask:
        name, _, features = _select_with_features(self.backbones, support_pixel_values, support_labels)
        self.choices[name] += 1
        backbone = self.backbones[name]
        if features is None:  # one image per class: nothing was scored, so nothing was computed
            with eval_mode(backbone):
                features = backbone_features(backbone, support_pixel_values)
        prototypes = class_prototypes(features, support_labels, int(support_labels.max()) + 1)
        return FewShotTask(backbone, prototypes, self.scale, 0.0, support_pixel_values.shape[-2:])

    def forward(
        self,
        support_pixel_values: torch.Tensor,
        support_labels: torch.Tensor,
        query_pixel_values: torch.Tensor,
        query_labels: torch.Tensor | None = None,
    ) -> FewShotOutput:
        logits = self.prepare_task(support_pixel_values, support_labels)(query_pixel_values)
        loss = F.cross_entropy(logits, query_labels) if query_labels is not None else None
        return FewShotOutput(loss=loss, logits=logits)


__all__ = [
    "BackbonePool",
    "SupportAugmentation",
    "choose_learning_rate",
    "finetune_on_support",
    "leave_one_out_accuracy",
    "pseudo_episode",
    "select_backbone",
]
