"""SMAT: sparse interpolated experts (Chen et al., ICML 2024, arXiv 2403.08477), as specified in docs/smat.md.

A frozen pre-trained backbone θ_pre, one dense delta θ_δ (zero at start) and M experts, each a set of
hard-concrete gates z_m over the delta's elements. A router reads the support set and mixes the experts
into one task model, `θ_i = θ_pre + (Σ_m a_m z_m) ⊙ θ_δ`, which then classifies with cosine prototypes.

All masked backbone tensors are flattened into one vector of N elements: `delta` is `[N]`, the gate
logits of all experts one `[M, N]` bank, so gates, mixing and merging are a handful of tensor ops.
The backbone runs functionally on the merged tensors (`torch.func.functional_call`).
"""

import copy
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm
from transformers import PreTrainedConfig
from transformers import initialization as init
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, cached_file

from .configuration_smat import SmatConfig
from .modeling_fewshot import (
    CosinePrototypeHead,
    FewShotOutput,
    FewShotPreTrainedModel,
    FewShotTask,
    backbone_features,
    build_backbone,
    check_episode,
    class_prototypes,
    cosine_logits,
    eval_mode,
    load_backbone,
)
from .smat_gates import (
    BankSummary,
    GateCode,
    GateSettings,
    MixedExpertGates,
    RetainedGradients,
    full_precision,
)
from .smat_storage import (
    EXPERTS_FILE,
    backbone_checksum,
    experts_for_saving,
    experts_state_dict,
    read_experts,
    saved_separately,
    write_experts,
)

_HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "proxies", "revision", "subfolder", "token")
_LOADING_KWARGS = ("dtype", "torch_dtype", "quantization_config")  # also config attributes: kept from the config


@dataclass
class SmatOutput(FewShotOutput):
    """SMAT's episodic output; the loss terms are returned separately so a trainer can log them.

    `loss = (1 − λ_kd)·classification_loss + λ_kd·distillation_loss + sparsity_loss + multiplier_loss
    + router_penalty` (training); in eval mode only `classification_loss` is set and `loss` equals it.
    """

    classification_loss: torch.Tensor | None = None
    distillation_loss: torch.Tensor | None = None
    sparsity_loss: torch.Tensor | None = None
    multiplier_loss: torch.Tensor | None = None
    router_penalty: torch.Tensor | None = None
    expert_weights: torch.Tensor | None = None
    expert_sparsity: torch.Tensor | None = None
    router_tau: float | None = None


class SmatRouter(nn.Module):
    """The hypernetwork that reads a task: prototypes + skill tokens → one transformer block → expert logits.

    Tokens `[p_1..p_n ; s_1..s_K]`, one pre-norm block (multi-head attention without qkv bias, GELU MLP,
    spectral normalisation on every Linear), task embedding = output at position 0, logits
    `ℓ = E · K_expᵀ`. Unlike the released code, `skill_tokens` and `expert_keys` are registered parameters:
    trained and saved.
    """

    def __init__(self, config: SmatConfig, hidden_size: int):
        super().__init__()
        if hidden_size % config.router_num_heads:
            raise ValueError(
                f"router_num_heads={config.router_num_heads} must divide the backbone width {hidden_size}."
            )
        mlp_size = int(hidden_size * config.router_mlp_ratio)
        self.num_heads = config.router_num_heads
        self.skill_tokens = nn.Parameter(torch.empty(config.router_num_skill_tokens, hidden_size))
        self.expert_keys = nn.Parameter(torch.empty(config.num_experts, hidden_size))
        self.attention_norm = nn.LayerNorm(hidden_size)
        self.qkv = spectral_norm(nn.Linear(hidden_size, 3 * hidden_size, bias=False))
        self.attention_output = spectral_norm(nn.Linear(hidden_size, hidden_size))
        self.mlp_norm = nn.LayerNorm(hidden_size)
        self.fc1 = spectral_norm(nn.Linear(hidden_size, mlp_size))
        self.fc2 = spectral_norm(nn.Linear(mlp_size, hidden_size))

    def reset_parameters(self) -> None:
        init.normal_(self.skill_tokens, std=1e-3)
        init.kaiming_normal_(self.expert_keys)
        for linear in (self.qkv, self.attention_output, self.fc1, self.fc2):
            weight = linear.parametrizations.weight.original
            if not getattr(weight, "_is_hf_initialized", False):  # not loaded from a checkpoint
                init.trunc_normal_(weight, std=0.02)
                _restart_power_iteration(linear)
            if linear.bias is not None:
                init.zeros_(linear.bias)
        for norm in (self.attention_norm, self.mlp_norm):
            init.ones_(norm.weight)
            init.zeros_(norm.bias)

    def forward(self, prototypes: torch.Tensor) -> torch.Tensor:
        """Expert logits `ℓ` `[M]` of the task whose class prototypes are `prototypes` `[n_way, D]`."""
        tokens = torch.cat([prototypes, self.skill_tokens.to(prototypes.dtype)])
        length, width = tokens.shape
        qkv = self.qkv(self.attention_norm(tokens)).view(length, 3, self.num_heads, width // self.num_heads)
        query, key, value = qkv.permute(1, 2, 0, 3)  # each [heads, length, head_dim]
        attended = F.scaled_dot_product_attention(query, key, value).transpose(0, 1).reshape(length, width)
        tokens = tokens + self.attention_output(attended)
        tokens = tokens + self.fc2(F.gelu(self.fc1(self.mlp_norm(tokens))))
        return tokens[0] @ self.expert_keys.T


def write_merged_weights(
    pre: list[torch.Tensor], mixed: torch.Tensor, delta: torch.Tensor, out: list[torch.Tensor], sizes: list[int]
) -> None:
    """`out[k] = pre[k] + mixed_k ⊙ δ_k` for every masked tensor k (`mixed` and `δ` flat `[N]`, split into `sizes`,
    the element counts of `pre`; `out[k]` any tensor of `pre[k]`'s size): one fused pass, nothing allocated."""
    for tensor, mixed_piece, delta_piece, target in zip(pre, mixed.split(sizes), delta.split(sizes), out, strict=True):
        torch.addcmul(tensor, mixed_piece.view_as(tensor), delta_piece.view_as(tensor), out=target.view_as(tensor))


class MergedTaskWeights(torch.autograd.Function):
    """θ_i = θ_pre + (Σ_m a_m z_m) ⊙ θ_δ, one tensor per masked backbone tensor, differentiable in the mixture and the
    delta: one fused pass from θ_pre's own tensors, with no `[N]` intermediate either way. The backward writes each
    tensor's gradient straight into the flat gradient of the mixture and, under `loss.backward()`, adds the delta's
    into `delta.grad` (kept in `retained` between updates, like the bank's: no fresh 87 MB block per task for ViT-S).
    Given the `GateCode` and expert weights the mixture came from (`regather`), the backward gathers the mixture
    again instead of keeping it through the whole task graph: 30 ms against 87 MB of the ViT-S peak.
    """

    @staticmethod
    def forward(
        ctx,
        mixed: torch.Tensor,
        delta: torch.Tensor,
        pre: list[torch.Tensor],
        sizes: list[int],
        retained: RetainedGradients,
        regather: tuple[GateCode, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, ...]:
        merged = [torch.empty_like(tensor) for tensor in pre]
        write_merged_weights(pre, mixed, delta, merged, sizes)
        ctx.code, mixture_source = (None, mixed) if regather is None else regather  # the mixture, or its weights
        ctx.save_for_backward(mixture_source, delta)
        ctx.sizes, ctx.retained = sizes, retained
        return tuple(merged)

    @staticmethod
    def backward(ctx, *grad_merged):
        mixed, delta = ctx.saved_tensors
        if ctx.code is not None:  # the expert weights were saved: the mixture again, as in the forward
            with full_precision(mixed):
                mixed = ctx.code.mix(mixed)
        grad_mixed = grad_delta = None
        if ctx.needs_input_grad[0]:  # ∂/∂mixed = g ⊙ δ
            grad_mixed = torch.empty_like(mixed)
            pieces = zip(grad_merged, delta.split(ctx.sizes), grad_mixed.split(ctx.sizes), strict=True)
            for grad, piece, out in pieces:
                torch.mul(grad, piece.view_as(grad), out=out.view_as(grad))
        if ctx.needs_input_grad[1]:  # ∂/∂δ = g ⊙ mixed
            grad_delta, in_grad = ctx.retained.gradient_target(delta)
            pieces = zip(grad_merged, mixed.split(ctx.sizes), grad_delta.split(ctx.sizes), strict=True)
            for grad, piece, out in pieces:
                out.view_as(grad).addcmul_(grad, piece.view_as(grad))
            grad_delta = ctx.retained.returned(delta, grad_delta, in_grad)
        return grad_mixed, grad_delta, None, None, None, None


@torch.no_grad()
def _restart_power_iteration(linear: nn.Module, iterations: int = 15) -> None:
    """Re-estimate the singular vectors of a spectral-normalised Linear after its weight was re-initialised.

    `spectral_norm` estimates them once, when it wraps the layer; without this, a weight re-initialised
    afterwards would be divided by a stale, near-zero (even negative) σ in eval mode.
    """
    normaliser = linear.parametrizations.weight[0]
    weight = linear.parametrizations.weight.original
    u = F.normalize(torch.randn_like(normaliser._u), dim=0)
    for _ in range(iterations):
        v = F.normalize(weight.T @ u, dim=0)
        u = F.normalize(weight @ v, dim=0)
    normaliser._u.copy_(u)
    normaliser._v.copy_(v)


class SmatModel(FewShotPreTrainedModel):
    """SMAT around a frozen HF ViT-family backbone (`model.backbone`), with `model.router` and the expert banks.

    Trainable: `delta` `[N]`, `gate_logits` `[M, N]` (log α), `sparsity_multipliers` `[M]` (λ, Lagrange
    multipliers kept as a parameter so they are saved and resumed), and the router. `router_tasks_seen`
    counts labelled meta-training tasks for the router's relaxation schedule (`record_meta_training_tasks`)
    and is saved too.
    """

    config: SmatConfig
    config_class = SmatConfig

    def __init__(self, config: SmatConfig):
        super().__init__(config)
        self.backbone = build_backbone(config.backbone_config)
        self.backbone.requires_grad_(False)
        patterns = [re.compile(pattern) for pattern in config.masked_parameter_patterns]
        self.masked_parameter_names = [
            name for name, _ in self.backbone.named_parameters() if any(p.search(name) for p in patterns)
        ]
        if not self.masked_parameter_names:
            raise ValueError(
                f"masked_parameter_patterns {config.masked_parameter_patterns} match no backbone parameter."
            )
        parameters = dict(self.backbone.named_parameters())
        self.masked_shapes = [parameters[name].shape for name in self.masked_parameter_names]
        self.masked_sizes = [parameters[name].numel() for name in self.masked_parameter_names]
        num_elements = sum(self.masked_sizes)
        self.delta = nn.Parameter(torch.zeros(num_elements))
        self.gate_logits = nn.Parameter(torch.empty(config.num_experts, num_elements))
        self.sparsity_multipliers = nn.Parameter(torch.zeros(config.num_experts))
        self.router = SmatRouter(config, config.backbone_config.hidden_size)
        self.head = CosinePrototypeHead(config.logit_scale, 0.0, learnable_scale=False, learnable_bias=False)
        self.register_buffer("router_tasks_seen", torch.zeros((), dtype=torch.long))
        self._bank_summaries: dict[GateSettings, tuple] = {}  # per setting: (log α key, BankSummary)
        self._clamped_key = None
        self._merge_buffer: torch.Tensor | None = None  # reused by merge_task_weights_into
        self._retained_gradients = RetainedGradients()  # the bank's and the delta's, between updates
        self.post_init()

    def _init_weights(self, module):
        if module is self:
            init.zeros_(self.delta)
            init.normal_(self.gate_logits, std=self.config.gate_init_std)
            init.zeros_(self.sparsity_multipliers)
            init.zeros_(self.router_tasks_seen)
        elif isinstance(module, (SmatRouter, CosinePrototypeHead)):
            module.reset_parameters()
        elif not any(module is child for child in self.router.modules()):
            self.backbone._init_weights(module)

    def train(self, mode: bool = True) -> "SmatModel":
        """As `nn.Module.train`; leaving training mode also frees the gradient buffers kept between updates."""
        if not mode:
            self._retained_gradients.clear()
        return super().train(mode)

    # ------------------------------------------------------------------------------------- checkpoints
    save_compact = True
    """Whether `save_pretrained` stores the experts compactly where that is smaller (docs/smat.md, "Checkpoints");
    the Trainer turns it off for its checkpoints, which an exact resume reads."""

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        *,
        include_backbone: bool = True,
        compact: bool | None = None,
        **kwargs,
    ) -> None:
        """`FewShotPreTrainedModel.save_pretrained` with the experts as they are after training (docs/smat.md,
        "Checkpoints"): the gates and the delta elements some expert opens go into `smat_experts.safetensors` when
        that is smaller than the dense banks (`compact`, default `save_compact`), and model.safetensors keeps the
        rest. `include_backbone=False` leaves θ_pre out: it is loaded from `config.backbone_name_or_path` (a Hub id
        or folder) and checked against the checksum recorded here."""
        state_dict = kwargs.pop("state_dict", None)
        state_dict = self.state_dict() if state_dict is None else dict(state_dict)
        compact = self.save_compact if compact is None else compact
        experts = experts_for_saving(state_dict, self.config, compact, include_backbone)
        if kwargs.get("is_main_process", True):
            path = Path(save_directory) / EXPERTS_FILE
            if experts is None:
                path.unlink(missing_ok=True)  # a previous compact save's: it would be read with these weights
            else:
                write_experts(path, *experts)
        if experts is not None:
            state_dict = {key: t for key, t in state_dict.items() if not saved_separately(key, experts[1])}
        super().save_pretrained(save_directory, state_dict=state_dict, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike | None, *model_args, **kwargs):
        """`FewShotPreTrainedModel.from_pretrained`, which also reads the folders and Hub repos that `save_pretrained`
        writes with `smat_experts.safetensors`: the full state dict is rebuilt (the backbone from
        `backbone_name_or_path` where it was not stored, refused if its checksum differs) and loaded like any other."""
        source = pretrained_model_name_or_path
        hub = {key: kwargs[key] for key in _HUB_KWARGS if key in kwargs}
        experts_path = None
        if source is not None and kwargs.get("state_dict") is None:
            experts_path = cached_file(source, EXPERTS_FILE, _raise_exceptions_for_missing_entries=False, **hub)
        if experts_path is None:
            return super().from_pretrained(source, *model_args, **kwargs)
        for key in hub:
            del kwargs[key]
        config = kwargs.pop("config", None)
        if not isinstance(config, PreTrainedConfig):  # as AutoModel resolves it, the loading arguments kept aside
            loading = {key: kwargs.pop(key) for key in _LOADING_KWARGS if key in kwargs}
            config, kwargs = cls.config_class.from_pretrained(
                config or source, return_unused_kwargs=True, **hub, **kwargs
            )
            kwargs.update(loading)
        state_dict = _compact_state_dict(source, experts_path, config, hub)
        loaded = super().from_pretrained(None, *model_args, config=config, state_dict=state_dict, **kwargs)
        (loaded[0] if isinstance(loaded, tuple) else loaded).config.name_or_path = str(source)
        return loaded

    # ------------------------------------------------------------------------------------------- gates
    def _gate_settings(self, training: bool) -> "GateSettings":
        config = self.config
        return GateSettings(
            beta=config.gate_beta if training else config.gate_beta_eval,
            gamma=config.gate_gamma,
            zeta=config.gate_zeta,
            noise=config.gate_noise if training else 0.0,
            seed=int(torch.randint(2**62, ())) if training and config.gate_noise > 0 else 0,
            density_shift=config.gate_beta * math.log(-config.gate_gamma / config.gate_zeta),
        )

    def expert_gates(self, training: bool | None = None) -> torch.Tensor:
        """Hard-concrete gates z `[M, N]` in [0, 1] (docs/smat.md, "Parameters and the merge"), materialised: for
        analysis and plots.

        Training: `clamp(sigmoid((log α + logit(u)) / β)·(ζ − γ) + γ, 0, 1)`, u uniform in a band of width
        `gate_noise` around 0.5; eval: the same with u = 0.5 and β_eval. Training and merging never
        materialise this `[M, N]` tensor: they go through `mix_expert_gates`.
        """
        settings = self._gate_settings(self.training if training is None else training)
        return torch.cat([settings.gates(chunk) for _, chunk in settings.noisy_chunks(self.gate_logits)], dim=1)

    def mix_expert_gates(
        self,
        expert_weights: torch.Tensor,
        training: bool | None = None,
        with_density: bool = True,
        logits_key: tuple | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`(Σ_m a_m z_m [N], expected density d [M], measured sparsity [M])` without materialising `[M, N]`.

        `d_m = mean(sigmoid(log α − β·ln(−γ/ζ)))` is the differentiable probability that a gate is non-zero
        (zeros unless `with_density`); the measured sparsity (no gradient) is the fraction of gates exactly 0.
        Gradients reach log α and a. For deterministic gates the closed fractions, the densities and (once the bank
        is saturated enough for it to pay) a compact code of the gates are a `BankSummary`, rebuilt only when log α
        changes (once per optimizer step): a task then pays for its mixture alone. `logits_key`: the current
        `_gate_logits_key()` where the caller has it (from `clamp_gate_logits`), which spares a read of the bank.
        """
        settings = self._gate_settings(self.training if training is None else training)
        weights = expert_weights.to(self.gate_logits.dtype)
        summary = self._bank_summary(settings, logits_key)
        return MixedExpertGates.apply(
            self.gate_logits, weights, settings, summary, with_density, self._retained_gradients
        )

    @torch.no_grad()
    def _gate_logits_key(self) -> tuple:
        """Changes whenever log α does: validates cached gate codes and the clamp.

        Storage and version counter catch optimizer steps, loading and in-place updates. Writes through
        `gate_logits.data` bypass the version counter, so each expert's sum of logits is part of the key too
        (one read of the bank: 25–50 ms for ViT-S's 174 M logits on 2 CPU cores, against seconds for a task). Only a
        `.data` write that keeps every expert's float32 sum bit for bit (a permutation) would go unseen."""
        logits = self.gate_logits
        return logits.data_ptr(), logits._version, tuple(torch.sum(logits, dim=1).tolist())

    def _bank_summary(self, settings: GateSettings, key: tuple | None = None) -> BankSummary | None:
        """The `BankSummary` of the current log α for deterministic `settings` (cached until log α changes); `key`:
        `_gate_logits_key()` if the caller has it."""
        if settings.noise > 0:
            return None
        key = key if key is not None else self._gate_logits_key()
        cached = self._bank_summaries.get(settings)
        if cached is None or cached[0] != key:
            cached = self._bank_summaries[settings] = (key, BankSummary.build(self.gate_logits.detach(), settings))
        return cached[1]

    def expected_density(self) -> torch.Tensor:
        """Differentiable expected density `d_m` `[M]` of each expert's gates."""
        uniform = self.gate_logits.new_full((self.config.num_experts,), 1.0 / self.config.num_experts)
        return self.mix_expert_gates(uniform, training=True)[1]

    @torch.no_grad()
    def expert_sparsity(self) -> torch.Tensor:
        """Measured sparsity `[M]`: the fraction of each expert's gates that are exactly 0 (current mode's gates)."""
        uniform = self.gate_logits.new_full((self.config.num_experts,), 1.0 / self.config.num_experts)
        return self.mix_expert_gates(uniform, with_density=False)[2]

    @torch.no_grad()
    def gate_saturation(self, training: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """`(closed, open)` `[M]`: the fraction of each expert's gates exactly 0 and exactly 1 (training or eval
        gates; the current mode's by default), chunk by chunk without materialising `[M, N]`."""
        settings = self._gate_settings(self.training if training is None else training)
        closed = self.gate_logits.new_zeros(self.config.num_experts, dtype=torch.float64)
        opened = torch.zeros_like(closed)
        for _, noisy in settings.noisy_chunks(self.gate_logits):
            gates = settings.gates(noisy)
            closed += (gates == 0).sum(dim=1)
            opened += (gates == 1).sum(dim=1)
        return closed / self.gate_logits.shape[1], opened / self.gate_logits.shape[1]

    @torch.no_grad()
    def clamp_gate_logits(self) -> tuple:
        """Clamp log α to [gate_logit_min, gate_logit_max] in place before a training forward (docs/smat.md,
        "Parameters and the merge").

        Only after log α changed (an optimizer step): unchanged logits are not touched, so cached gate codes
        stay valid across the tasks of one update. Returns `_gate_logits_key()` of the clamped logits, for the
        caller to hand to `mix_expert_gates` (each key is a read of the bank: 25–50 ms for ViT-S's)."""
        key = self._gate_logits_key()
        if self._clamped_key != key:
            self.gate_logits.clamp_(self.config.gate_logit_min, self.config.gate_logit_max)
            key = self._clamped_key = self._gate_logits_key()
        return key

    # ------------------------------------------------------------------------------------------ router
    @torch.no_grad()
    def record_meta_training_tasks(self, count: int) -> None:
        """Advance the task counter n of the router schedule by `count` labelled meta-training tasks.

        The forward does not count: SAM's second pass and forwards without query labels are not tasks, and under
        DDP each rank sees only its own. `EpisodicTrainer` calls this after each update with the tasks of all
        processes; a custom training loop calls it itself (docs/smat.md)."""
        if count < 0:
            raise ValueError(f"count must be ≥ 0, got {count}.")
        self.router_tasks_seen += count

    @property
    def router_tau(self) -> float:
        """Relaxation τ_r = max(τ_min, τ_start − n / decay) after n training tasks."""
        config = self.config
        return max(
            config.router_tau_min,
            config.router_tau_start - self.router_tasks_seen.item() / config.router_tau_decay_tasks,
        )

    def expert_weights(self, router_logits: torch.Tensor, training: bool | None = None) -> torch.Tensor:
        """Mixing weights a `[M]` (sum 1): relaxed-Bernoulli samples in training, `sigmoid(ℓ/τ)` in eval."""
        training = self.training if training is None else training
        tau = self.router_tau
        if training:
            u = torch.rand_like(router_logits).clamp(1e-6, 1 - 1e-6)
            scores = torch.sigmoid((router_logits + torch.logit(u)) / tau)
        else:
            scores = torch.sigmoid(router_logits / tau)
        if self.config.router_top_k is not None:
            kept = scores.topk(self.config.router_top_k).indices
            scores = torch.zeros_like(scores).index_copy(0, kept, scores[kept])
        return scores / (scores.sum() + 1e-8)

    # ------------------------------------------------------------------------------------------- merge
    def merge_task_weights(
        self,
        expert_weights: torch.Tensor,
        mixed_gates: torch.Tensor | None = None,
        logits_key: tuple | None = None,
    ) -> dict[str, torch.Tensor]:
        """θ_i = θ_pre + (Σ_m a_m z_m) ⊙ θ_δ for every masked backbone tensor, by name (differentiable).

        `mixed_gates` (`Σ_m a_m z_m` from `mix_expert_gates`) is computed with the current mode's gates if not given.
        `logits_key`: given by a caller whose `mixed_gates` came from this mode's gates with that key (the training
        task), so that a gate code can gather the mixture again in the backward instead of it being kept.
        """
        if mixed_gates is None:
            mixed_gates = self.mix_expert_gates(expert_weights, with_density=False)[0]
        regather = None
        if logits_key is not None:
            summary = self._bank_summary(self._gate_settings(self.training), logits_key)
            if summary is not None and summary.code is not None:
                regather = (summary.code, expert_weights.detach().to(self.gate_logits.dtype))
        names = self.masked_parameter_names
        pre = dict(self.backbone.named_parameters())
        merged = MergedTaskWeights.apply(
            mixed_gates,
            self.delta,
            [pre[name] for name in names],
            self.masked_sizes,
            self._retained_gradients,
            regather,
        )
        return dict(zip(names, merged, strict=True))

    def _route(self, pre_support_features: torch.Tensor, support_labels: torch.Tensor, n_way: int):
        pre_prototypes = class_prototypes(pre_support_features, support_labels, n_way)
        router_logits = self.router(pre_prototypes)
        return pre_prototypes, router_logits, self.expert_weights(router_logits)

    # ----------------------------------------------------------------------------------------- forward
    def forward(
        self,
        support_pixel_values: torch.Tensor,
        support_labels: torch.Tensor,
        query_pixel_values: torch.Tensor,
        query_labels: torch.Tensor | None = None,
    ) -> SmatOutput:
        """One task. Training mode: route, merge, inner step, teachers, all loss terms (docs/smat.md, "A meta-training
        task: the loss"); eval mode: route deterministically, merge, cosine prototypes, no inner step."""
        n_way = check_episode(support_pixel_values, support_labels, query_pixel_values, query_labels)
        if self.training:
            return self._meta_train_task(support_pixel_values, support_labels, query_pixel_values, query_labels, n_way)
        with torch.no_grad():
            pre_support = backbone_features(self.backbone, support_pixel_values)
        _, router_logits, weights = self._route(pre_support, support_labels, n_way)
        task_weights = self.merge_task_weights(weights)
        features = backbone_features(
            self.backbone, torch.cat([support_pixel_values, query_pixel_values]), task_weights
        )
        prototypes = class_prototypes(features[: len(support_labels)], support_labels, n_way)
        logits = self.head(features[len(support_labels) :], prototypes)
        loss = F.cross_entropy(logits, query_labels) if query_labels is not None else None
        return SmatOutput(
            loss=loss, logits=logits, classification_loss=loss, expert_weights=weights, router_tau=self.router_tau
        )

    def _meta_train_task(self, support_pixel_values, support_labels, query_pixel_values, query_labels, n_way):
        """SMAT's meta-training loss on one task (docs/smat.md, "A meta-training task: the loss"): route and merge,
        one inner step on the support set, then the query loss, the distillation from the dense and the
        pre-trained teachers, and the Lagrangian terms that hold each expert at its sparsity target."""
        config = self.config
        given_queries = slice(-len(query_pixel_values), None)  # the logits returned: those of the given queries
        if not config.support_query_split and query_labels is not None:  # the "Meta ×" ablation: no held-out query
            support_pixel_values = query_pixel_values = torch.cat([support_pixel_values, query_pixel_values])
            support_labels = query_labels = torch.cat([support_labels, query_labels])
        logits_key = self.clamp_gate_logits()
        n_support = len(support_labels)
        with torch.no_grad():  # θ_pre features serve the router and the pre-trained teacher
            pre_features = backbone_features(self.backbone, torch.cat([support_pixel_values, query_pixel_values]))
        pre_prototypes, router_logits, weights = self._route(pre_features[:n_support], support_labels, n_way)
        with_density = bool((self.sparsity_multipliers > 0).any())  # else L_sp = 0 whatever the densities
        mixed_gates, expected_density, sparsity = self.mix_expert_gates(weights, True, with_density, logits_key)
        task_weights = self.merge_task_weights(weights, mixed_gates, logits_key)
        del mixed_gates  # with saturated gates the backward gathers it again: not kept through the task
        adapted, adapted_head = self._inner_step(task_weights, support_pixel_values, support_labels, n_way)
        query_features = backbone_features(self.backbone, query_pixel_values, adapted)
        logits = cosine_logits(query_features, adapted_head, config.logit_scale)
        if query_labels is None:
            return SmatOutput(logits=logits, expert_weights=weights.detach(), router_tau=self.router_tau)

        classification_loss = F.cross_entropy(logits, query_labels)
        pre_logits = cosine_logits(pre_features[n_support:], pre_prototypes, config.logit_scale)
        distillation_loss = self._distillation_loss(
            classification_loss, logits, pre_logits, adapted, adapted_head, query_pixel_values, query_labels
        )
        sparsity_loss, multiplier_loss = self._lagrangian_terms(sparsity, expected_density, weights.detach())
        router_penalty = config.router_logit_penalty * router_logits.pow(2).mean()
        loss = (
            (1 - config.kd_weight) * classification_loss
            + config.kd_weight * distillation_loss
            + sparsity_loss
            + multiplier_loss
            + router_penalty
        )
        return SmatOutput(
            loss=loss,
            logits=logits[given_queries],
            classification_loss=classification_loss.detach(),
            distillation_loss=distillation_loss.detach(),
            sparsity_loss=sparsity_loss.detach(),
            multiplier_loss=multiplier_loss.detach(),
            router_penalty=router_penalty.detach(),
            expert_weights=weights.detach(),
            expert_sparsity=sparsity,
            router_tau=self.router_tau,
        )

    def _inner_step(self, task_weights, support_pixel_values, support_labels, n_way):
        """Prototypes from θ_i with gradient, then one first-order SGD step on the support loss: (θ'_i, head')."""
        scale, inner_lr = self.config.logit_scale, self.config.inner_lr
        support_features = backbone_features(self.backbone, support_pixel_values, task_weights)
        prototypes = class_prototypes(support_features, support_labels, n_way)
        head = prototypes.detach().requires_grad_()
        support_loss = F.cross_entropy(cosine_logits(support_features, head, scale), support_labels)
        *weight_grads, head_grad = torch.autograd.grad(support_loss, [*task_weights.values(), head], retain_graph=True)
        adapted_head = (prototypes.detach() - inner_lr * head_grad) + (prototypes - prototypes.detach())
        adapted = {  # θ'_i = θ_i − η·g, the gradients constants (first order)
            name: torch.sub(weight, grad, alpha=inner_lr)
            for (name, weight), grad in zip(task_weights.items(), weight_grads, strict=True)
        }
        return adapted, adapted_head

    def _distillation_loss(
        self, query_loss, logits, pre_logits, adapted, adapted_head, query_pixel_values, query_labels
    ) -> torch.Tensor:
        """The mean of the distillations from the dense teacher (θ'_i trained further on the query set) and the
        pre-trained one (θ_pre's prototypes); zero without dense teachers (`kd_weight` 0, the ablation)."""
        if self.config.kd_weight == 0:  # neither teacher is computed
            return torch.zeros_like(query_loss)
        teacher_logits = self._dense_teacher_logits(
            query_loss, adapted, adapted_head, query_pixel_values, query_labels
        )
        return 0.5 * (self._distillation(logits, teacher_logits) + self._distillation(logits, pre_logits))

    def _lagrangian_terms(self, sparsity, expected_density, weights) -> tuple[torch.Tensor, torch.Tensor]:
        """L_sp, which pulls each expert's expected density to 1 − τ with its multiplier λ_m, and L_λ, whose descent
        raises λ_m while expert m is too dense; a multiplier is reset once its expert is sparse enough."""
        gap = sparsity - self.config.sparsity_target
        with torch.no_grad():  # an expert already sparse enough has its multiplier reset
            self.sparsity_multipliers.masked_fill_(gap > 0, 0.0)
        # L_λ = Σ Δ_m λ_m a_m. Δ is capped at 0: a reset multiplier gets no gradient, so a descent step cannot
        # push it below 0 (λ ≥ 0); while the expert is too dense (Δ < 0) the step raises λ.
        multiplier_loss = (gap.clamp(max=0.0) * self.sparsity_multipliers * weights).sum()
        density_gap = expected_density - (1.0 - self.config.sparsity_target)
        sparsity_loss = (density_gap * self.sparsity_multipliers.detach() * weights).sum()
        return sparsity_loss, multiplier_loss

    def _dense_teacher_logits(self, query_loss, adapted, adapted_head, query_pixel_values, query_labels):
        """Query logits of a detached copy of (θ'_i, head') after `teacher_steps` SGD steps on the query loss.

        The first step's gradient comes from the student's own query graph (retained), so the teacher costs
        one backward into θ'_i plus one forward per step instead of a fresh forward + backward.
        """
        config = self.config
        *grads, head_grad = torch.autograd.grad(query_loss, [*adapted.values(), adapted_head], retain_graph=True)
        teacher, teacher_head = {name: weight.detach() for name, weight in adapted.items()}, adapted_head.detach()
        for step in range(config.teacher_steps):
            if step > 0:  # later steps need their own forward and backward on the query set
                with torch.enable_grad():
                    for tensor in (*teacher.values(), teacher_head):
                        tensor.requires_grad_()
                    features = backbone_features(self.backbone, query_pixel_values, teacher)
                    loss = F.cross_entropy(cosine_logits(features, teacher_head, config.logit_scale), query_labels)
                    *grads, head_grad = torch.autograd.grad(loss, [*teacher.values(), teacher_head])
            with torch.no_grad():  # w − η·g written over the gradient g, which is not needed after: plain tensors
                teacher = {
                    name: torch.add(weight, grad, alpha=-config.teacher_lr, out=grad)
                    for (name, weight), grad in zip(teacher.items(), grads, strict=True)
                }
                teacher_head = teacher_head - config.teacher_lr * head_grad
        with torch.no_grad():
            features = backbone_features(self.backbone, query_pixel_values, teacher)
            return cosine_logits(features, teacher_head, config.logit_scale)

    def _distillation(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        """T²·KL(p_teacher ‖ p_student) with p = softmax(logits / T); reversed when `kd_reverse` (the release)."""
        temperature = self.config.kd_temperature
        student = F.log_softmax(student_logits / temperature, dim=-1)
        teacher = F.log_softmax(teacher_logits / temperature, dim=-1)
        if self.config.kd_reverse:
            student, teacher = teacher, student
        return temperature**2 * F.kl_div(student, teacher, reduction="batchmean", log_target=True)

    # ------------------------------------------------------------------------------------------- tasks
    @torch.no_grad()
    def prepare_task(self, support_pixel_values: torch.Tensor, support_labels: torch.Tensor) -> FewShotTask:
        """Route once, merge the experts into a plain backbone (no autograd graph), compute prototypes."""
        n_way = check_episode(support_pixel_values, support_labels)
        with eval_mode(self):
            _, _, weights = self._route(backbone_features(self.backbone, support_pixel_values), support_labels, n_way)
            task_backbone = copy.deepcopy(self.backbone, self._uncopied_masked_parameters())
            self.merge_task_weights_into(task_backbone, weights)
            features = backbone_features(task_backbone, support_pixel_values)
        prototypes = class_prototypes(features, support_labels, n_way)
        return FewShotTask(task_backbone, prototypes, self.config.logit_scale, 0.0, support_pixel_values.shape[-2:])

    def _uncopied_masked_parameters(self) -> dict[int, nn.Parameter]:
        """A `copy.deepcopy` memo giving the copy uninitialised masked tensors: the merge overwrites every one of
        them, so copying their values first would be a wasted pass over the backbone (88 MB for ViT-S)."""
        parameters = dict(self.backbone.named_parameters())
        return {
            id(parameters[name]): nn.Parameter(torch.empty_like(parameters[name]), parameters[name].requires_grad)
            for name in self.masked_parameter_names
        }

    @torch.no_grad()
    def merge_task_weights_into(self, backbone: nn.Module, expert_weights: torch.Tensor) -> None:
        """Write θ_i = θ_pre + (Σ_m a_m z_m) ⊙ θ_δ (eval gates) into the parameters of a copy of the backbone.

        The same values as `merge_task_weights`, without allocating: the mixture goes into a reused buffer
        and each tensor is one `addcmul` into the copy (fresh 100 MB allocations cost more than the arithmetic).
        """
        settings = self._gate_settings(training=False)
        summary = self._bank_summary(settings)
        code = summary.code if summary is not None else None
        if code is None:
            mixed = self.mix_expert_gates(expert_weights, training=False, with_density=False)[0]
        else:
            if self._merge_buffer is None or len(self._merge_buffer) != len(self.delta):
                self._merge_buffer = torch.empty_like(self.delta)
            mixed = code.mix(expert_weights.to(self.delta.dtype), out=self._merge_buffer)
        pre = dict(self.backbone.named_parameters())
        targets = dict(backbone.named_parameters())
        names = self.masked_parameter_names
        pre_tensors, target_tensors = [pre[name] for name in names], [targets[name] for name in names]
        write_merged_weights(pre_tensors, mixed, self.delta, target_tensors, self.masked_sizes)


def _compact_state_dict(source, experts_path: str, config: SmatConfig, hub: dict) -> dict[str, torch.Tensor]:
    """The full state dict of a folder or repo saved with its experts in `smat_experts.safetensors`."""
    tensors, metadata = read_experts(experts_path)
    weights = cached_file(source, SAFE_WEIGHTS_NAME, _raise_exceptions_for_missing_entries=False, **hub)
    if weights is None:  # saved in shards
        index = json.loads(Path(cached_file(source, SAFE_WEIGHTS_INDEX_NAME, **hub)).read_text())
        shards = [cached_file(source, shard, **hub) for shard in sorted(set(index["weight_map"].values()))]
    else:
        shards = [weights]
    state_dict = {}
    for shard in shards:
        state_dict.update(load_file(shard))
    state_dict.update(experts_state_dict(tensors, metadata, config))
    if metadata["backbone"] == "referenced":
        name = config.backbone_name_or_path
        backbone = load_backbone(name, **{k: v for k, v in hub.items() if k not in ("revision", "subfolder")})
        pretrained = backbone.state_dict()
        if backbone_checksum(pretrained) != metadata["backbone_sha256"]:
            raise ValueError(
                f"{source} was saved without its backbone, to be loaded from {name!r}; the backbone found there is "
                "not the one the model was saved with (its checksum differs). Load it where that backbone is "
                "available unchanged, or save the model with include_backbone=True."
            )
        state_dict.update({f"backbone.{key}": tensor for key, tensor in pretrained.items()})
    return state_dict


__all__ = ["SmatModel", "SmatOutput", "SmatRouter"]
