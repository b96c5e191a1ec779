"""The few-shot methods hf-fewshot knows, in one registry (PEFT's `register_peft_method`, for few-shot models).

A method is a configuration + modeling pair (`FewShotConfig` / `FewShotPreTrainedModel` subclasses: the card's
facts — papers, summary — live on the configuration class) plus what training needs to know about it.
`register_fewshot_method` makes it an `AutoConfig` / `AutoModel` model type (and remote code on save), a `--method`
of `recipes/meta_tune.py`, and gives `EpisodicTrainer` its optimiser; `evaluate_episodes`, `finetune_on_support`
and the cards need nothing else (they use `prepare_task` and the configuration). Adding a method is one new
configuration + modeling file pair and one `register_fewshot_method` call.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModel

from hf_fewshot.models import ProtoNetConfig, ProtoNetModel, SmatConfig, SmatModel
from hf_fewshot.models.configuration_fewshot import FewShotConfig
from hf_fewshot.models.modeling_fewshot import FewShotPreTrainedModel
from hf_fewshot.training.optimization import protonet_optimizer, smat_optimizer

OptimizerBuilder = Callable[[nn.Module, Any], torch.optim.Optimizer]


@dataclass(frozen=True)
class FewShotMethod:
    """One registered method.

    `optimizer(model, args)` builds its episodic optimiser (None: the Trainer's default); `clips_itself` says that
    optimiser clips its own groups, so no whole-model clip is added unless `max_grad_norm` is given;
    `demo_settings` are the configuration values of the embedded demo (`recipes/meta_tune.py` without
    `--model_config`)."""

    name: str
    config_class: type[FewShotConfig]
    model_class: type[FewShotPreTrainedModel]
    optimizer: OptimizerBuilder | None = None
    clips_itself: bool = False
    demo_settings: Mapping[str, Any] = field(default_factory=dict)


_METHODS: dict[str, FewShotMethod] = {}
METHODS: Mapping[str, FewShotMethod] = MappingProxyType(_METHODS)
"""Every registered method by name (read-only; add with `register_fewshot_method`)."""


def register_fewshot_method(
    name: str,
    config_class: type[FewShotConfig],
    model_class: type[FewShotPreTrainedModel],
    *,
    optimizer: OptimizerBuilder | None = None,
    clips_itself: bool = False,
    demo_settings: Mapping[str, Any] | None = None,
) -> FewShotMethod:
    """Register a few-shot method under `name`; returns its `FewShotMethod`. Re-registering a name replaces it."""
    if not (isinstance(config_class, type) and issubclass(config_class, FewShotConfig)):
        raise TypeError(f"config_class must subclass FewShotConfig, got {config_class!r}.")
    if not (isinstance(model_class, type) and issubclass(model_class, FewShotPreTrainedModel)):
        raise TypeError(f"model_class must subclass FewShotPreTrainedModel, got {model_class!r}.")
    if model_class.config_class is not config_class:
        raise ValueError(f"{model_class.__name__}.config_class is not {config_class.__name__}.")
    model_type = config_class.model_type
    taken = {m.config_class.model_type: m.name for m in _METHODS.values() if m.name != name}
    if model_type in taken:
        raise ValueError(f"model_type {model_type!r} is already the method {taken[model_type]!r}.")
    AutoConfig.register(model_type, config_class, exist_ok=True)
    AutoModel.register(config_class, model_class, exist_ok=True)
    config_class.register_for_auto_class()  # every save_pretrained folder carries its code (trust_remote_code)
    model_class.register_for_auto_class("AutoModel")
    method = FewShotMethod(name, config_class, model_class, optimizer, clips_itself, dict(demo_settings or {}))
    _METHODS[name] = method
    return method


def method_for(model: nn.Module) -> FewShotMethod | None:
    """The registered method of `model` (by its configuration's `model_type`), or None for any other model."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    return next((m for m in _METHODS.values() if m.config_class.model_type == model_type), None)


def get_method(name: str) -> FewShotMethod:
    """The method registered as `name`; a clear error naming the registered ones otherwise."""
    if name not in _METHODS:
        raise ValueError(f"Unknown method {name!r}; registered: {sorted(_METHODS)}.")
    return _METHODS[name]


# The embedded demo is 800 tasks, 1.6% of the paper's; three settings differ from the paper's so that the experts
# saturate and specialise within it (docs/smat.md, "At a small budget"): eval gates = training gates (β_eval = β),
# plus the demo's learning rates in recipes/meta_tune.py.
register_fewshot_method(
    "smat",
    SmatConfig,
    SmatModel,
    optimizer=smat_optimizer,
    clips_itself=True,
    demo_settings={"num_experts": 4, "sparsity_target": 0.5, "gate_beta_eval": 2 / 3},
)
register_fewshot_method("protonet", ProtoNetConfig, ProtoNetModel, optimizer=protonet_optimizer)

__all__ = ["METHODS", "FewShotMethod", "get_method", "method_for", "register_fewshot_method"]
