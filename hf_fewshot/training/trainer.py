"""`SAMTrainer`: a drop-in `transformers.Trainer` that trains with SAM / ASAM (SAM.md §2)."""

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from transformers import Trainer

from .arguments import FewShotTrainingArguments
from .sam import perturbed_weights


class SAMTrainer(Trainer):
    """Trainer whose `training_step` takes the SAM gradient ∇L(w + e) of every micro-batch.

    - `sam_rho = 0` is the stock Trainer, bit for bit (the parent's step runs unchanged).
    - Each micro-batch does two forward/backward passes; the first runs under `accelerator.no_sync`, so each
      rank perturbs with its own gradient and only the second pass all-reduces. With gradient accumulation
      the earlier micro-batches' gradients are stashed and added back, so an update is the mean of
      per-micro-batch SAM gradients (the paper's m-sharpness). Both passes scale the loss as the parent does.
    - The weights are restored by copy before the optimizer steps; BatchNorm running statistics are
      restored after the second pass, so only the first pass updates them.
    - A non-finite first-pass gradient skips the perturbation; a non-finite second-pass gradient drops the
      micro-batch (its gradient never reaches the weights). Both are counted in the logs
      (`sam_unperturbed`, `sam_dropped`), with the mean sharpness L(w + e) − L(w) (`sam_sharpness`).
    - `sam_interval = k` applies SAM on every k-th optimizer step and plain ERM otherwise.
    """

    args: FewShotTrainingArguments

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.args.sam_rho > 0:
            if self.is_deepspeed_enabled or self.is_fsdp_enabled:
                raise ValueError(
                    "SAMTrainer does not support DeepSpeed or FSDP yet (sharded parameters cannot be perturbed and "
                    "restored locally); train with DDP, or set sam_rho=0."
                )
            low_precision = {p.dtype for p in self.model.parameters() if p.requires_grad} & {
                torch.float16,
                torch.bfloat16,
            }
            if low_precision:
                warnings.warn(
                    f"Trainable weights are stored in {sorted(map(str, low_precision))}: most of the SAM perturbation "
                    "is rounded away. Keep fp32 weights and use bf16/fp16 autocast instead.",
                    stacklevel=2,
                )
        self._sam_logs = _empty_sam_logs()

    def _sam_due(self) -> bool:
        return self.args.sam_rho > 0 and self.state.global_step % self.args.sam_interval == 0

    def training_step(
        self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: torch.Tensor | int | None = None
    ) -> torch.Tensor:
        if not self._sam_due():
            return super().training_step(model, inputs, num_items_in_batch)
        parameters = [p for p in model.parameters() if p.requires_grad]
        earlier_grads = [p.grad for p in parameters]  # the accumulated micro-batches of this update
        for parameter in parameters:
            parameter.grad = None
        with self.accelerator.no_sync(model):
            clean_loss = super().training_step(model, inputs, num_items_in_batch)
        with perturbed_weights(parameters, self.args.sam_rho, self.args.sam_adaptive) as perturbation:
            for parameter in parameters:
                parameter.grad = None
            with _frozen_batchnorm_statistics(model):
                perturbed_loss = super().training_step(model, inputs, num_items_in_batch)
        self._record(perturbation is not None, perturbed_loss - clean_loss)
        finite = all(p.grad is None or torch.isfinite(p.grad).all() for p in parameters)
        if not finite:
            self._sam_logs["sam_dropped"] += 1
        for parameter, earlier in zip(parameters, earlier_grads, strict=True):
            if not finite or parameter.grad is None:
                parameter.grad = earlier
            elif earlier is not None:
                parameter.grad.add_(earlier)
        return clean_loss

    def _record(self, perturbed: bool, sharpness: torch.Tensor) -> None:
        self._sam_logs["sam_passes"] += 1
        if not perturbed:
            self._sam_logs["sam_unperturbed"] += 1
        elif torch.isfinite(sharpness):
            self._sam_logs["sam_sharpness"] += float(sharpness) * self.current_gradient_accumulation_steps

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        if self._sam_logs["sam_passes"] and "loss" in logs:
            passes = self._sam_logs["sam_passes"]
            logs["sam_sharpness"] = self._sam_logs["sam_sharpness"] / max(
                1, passes - self._sam_logs["sam_unperturbed"]
            )
            logs["sam_unperturbed"] = self._sam_logs["sam_unperturbed"]
            logs["sam_dropped"] = self._sam_logs["sam_dropped"]
            self._sam_logs = _empty_sam_logs()
        super().log(logs, *args, **kwargs)


def _empty_sam_logs() -> dict[str, float]:
    """SAM's counters between two log lines."""
    return {"sam_sharpness": 0.0, "sam_passes": 0, "sam_unperturbed": 0, "sam_dropped": 0}


@contextlib.contextmanager
def _frozen_batchnorm_statistics(model: nn.Module) -> Iterator[None]:
    """Restores the running statistics of every BatchNorm layer on exit (the second SAM pass must not move them)."""
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [{name: value.clone() for name, value in layer.named_buffers(recurse=False)} for layer in layers]
    try:
        yield
    finally:
        with torch.no_grad():
            for layer, buffers in zip(layers, saved, strict=True):
                for name, value in buffers.items():
                    getattr(layer, name).copy_(value)
