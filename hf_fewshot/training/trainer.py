"""`ReliableTrainer`, the stock `transformers.Trainer` with the library's guarantees (strict reloads, no diverged
weights saved, finished runs kept); `SAMTrainer`, a drop-in Trainer that trains with SAM / ASAM (docs/sam.md, "SAM in
the Trainer"); and `EpisodicTrainer`, which meta-trains few-shot models on episodes with it."""

import contextlib
import copy
import math
import time
import warnings
from collections import defaultdict
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import datasets
import torch
from torch import nn
from torch.utils.data import DataLoader
from transformers import PreTrainedModel, Trainer, TrainerState
from transformers.trainer_utils import TrainOutput

from hf_fewshot.allocator import reuse_freed_cpu_memory
from hf_fewshot.data.domains import domain_of
from hf_fewshot.data.episodes import EpisodeCollator, EpisodeSampler, FrozenEpisodes, MultiDomainEpisodeSampler
from hf_fewshot.data.transforms import EvalTransform, TrainTransform
from hf_fewshot.diagnostics import smat_diagnostics
from hf_fewshot.evaluation import DomainAccuracy, EvaluationResults, episode_metrics, mean_and_ci95
from hf_fewshot.methods import method_for
from hf_fewshot.models import from_pretrained_strictly
from hf_fewshot.models.configuration_fewshot import FewShotConfig
from hf_fewshot.models.modeling_fewshot import eval_mode
from hf_fewshot.models.modeling_smat import SmatModel

from .arguments import FewShotTrainingArguments
from .checkpoints import check_finite_weights, last_complete_checkpoint
from .optimization import ChainedOptimizer
from .sam import perturbed_weights


class ReliableTrainer(Trainer):
    """The stock `transformers.Trainer` with the guarantees of docs/reliability.md, and nothing else.

    - A non-finite training loss stops training with a `FloatingPointError` naming the step (the Trainer would log
      it as 0 and go on); no checkpoint with non-finite weights is ever written.
    - Resuming from a finished run's final checkpoint trains nothing (`train`).
    - Checkpoint reloads (resume, best model) are strict and go through `from_pretrained` (a transformers 5 fix:
      its raw `load_state_dict(strict=False)` skips every ViT tensor stored under its legacy name).
    - Checkpoints keep SMAT's expert banks dense, for an exact resume; `save_model` stores them compactly, as
      `save_pretrained` does (docs/smat.md, "Checkpoints").
    - `max_grad_norm` not given to `FewShotTrainingArguments` means the method's default: no whole-model clip for a
      method whose optimiser clips its own groups (SMAT), the Trainer's 1.0 otherwise.
    """

    args: FewShotTrainingArguments

    def __init__(self, model: nn.Module | None = None, args: FewShotTrainingArguments | None = None, **kwargs):
        if not getattr(args, "_max_grad_norm_given", True):  # FewShotTrainingArguments without max_grad_norm
            args = copy.copy(args)  # the caller's arguments stay as given
            method = method_for(model)
            args.max_grad_norm = 0.0 if method is not None and method.clips_itself else 1.0
        super().__init__(model=model, args=args, **kwargs)

    def training_step(
        self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: torch.Tensor | int | None = None
    ) -> torch.Tensor:
        loss = super().training_step(model, inputs, num_items_in_batch)
        self._stop_if_diverged(loss)
        return loss

    def _stop_if_diverged(self, loss: torch.Tensor) -> None:
        if not torch.isfinite(loss):  # stop here: the Trainer would log it as 0 and save NaN weights
            raise FloatingPointError(
                f"Non-finite training loss ({loss.item()}) at step {self.state.global_step + 1}: the run diverged. "
                f"Try a smaller learning rate (now {self.args.learning_rate:g})."
            )

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs) -> TrainOutput:
        """`Trainer.train`, except that resuming from the run's final checkpoint trains nothing: the Trainer would
        take one more step (checkpoint-400 → checkpoint-401, rewriting the model and the log). The final weights
        (the best checkpoint's with `load_best_model_at_end`) and the state are reloaded instead."""
        checkpoint = resume_from_checkpoint
        if checkpoint is True:  # the last *complete* checkpoint (the stock lookup takes the newest folder)
            checkpoint = last_complete_checkpoint(self.args.output_dir)
        state = _final_state(checkpoint, self.args) if checkpoint else None
        if state is None:
            return super().train(resume_from_checkpoint=checkpoint or resume_from_checkpoint, **kwargs)
        self._load_from_checkpoint(checkpoint)
        state.is_local_process_zero, state.is_world_process_zero = (
            self.is_local_process_zero(),
            self.is_world_process_zero(),
        )
        self.state = state
        if self.args.load_best_model_at_end and state.best_model_checkpoint:
            if not Path(state.best_model_checkpoint).is_dir():
                raise FileNotFoundError(
                    f"The finished run's best checkpoint {state.best_model_checkpoint} is gone; restore it, or resume "
                    "without load_best_model_at_end."
                )
            self._load_best_model()
        losses = [entry["train_loss"] for entry in state.log_history if "train_loss" in entry]
        return TrainOutput(state.global_step, losses[-1] if losses else float("nan"), {})

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        check_finite_weights(self.model, f"Not saving a checkpoint at step {self.state.global_step}")
        super()._save(output_dir, state_dict)

    def _save_checkpoint(self, model: nn.Module, trial) -> None:
        """A `checkpoint-N` folder keeps SMAT's expert banks dense: an exact resume needs log α as it is, where
        `save_model` (the final model, `push_to_hub`) stores them compactly (docs/smat.md, "Checkpoints")."""
        unwrapped = self.accelerator.unwrap_model(self.model)
        if not isinstance(unwrapped, SmatModel):
            return super()._save_checkpoint(model, trial)
        compact, unwrapped.save_compact = unwrapped.save_compact, False
        try:
            return super()._save_checkpoint(model, trial)
        finally:
            unwrapped.save_compact = compact

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        if not self._load_weights_like_from_pretrained(resume_from_checkpoint, model or self.model):
            super()._load_from_checkpoint(resume_from_checkpoint, model)

    def _load_best_model(self) -> None:
        if not self._load_weights_like_from_pretrained(self.state.best_model_checkpoint, self.model):
            super()._load_best_model()

    def _load_weights_like_from_pretrained(self, checkpoint: str, model: nn.Module) -> bool:
        """Reload a checkpoint's weights through `from_pretrained`, strictly (a missing tensor is an error, not
        a re-initialised one).

        transformers 5's Trainer reloads its checkpoints (resume, best model) with a raw
        `load_state_dict(strict=False)`; ViT-family weights are stored under their legacy names and only renamed
        by `from_pretrained`, so every backbone tensor would be skipped with a mere warning. Returns False where
        the stock path must run (not a `PreTrainedModel`, DeepSpeed or FSDP).
        """
        model = self.accelerator.unwrap_model(model)
        if not isinstance(model, PreTrainedModel) or self.is_deepspeed_enabled or self.is_fsdp_enabled:
            return False
        loaded = from_pretrained_strictly(type(model), checkpoint, config=model.config)
        model.load_state_dict(loaded.state_dict(), strict=True)
        return True


class SAMTrainer(ReliableTrainer):
    """Trainer whose `training_step` takes the SAM gradient ∇L(w + e) of every micro-batch.

    - `sam_rho = 0` is its parent `ReliableTrainer` (the stock Trainer's step, checked), bit for bit.
    - Each micro-batch does two forward/backward passes; the first runs under `accelerator.no_sync`, so each
      rank perturbs with its own gradient and only the second pass all-reduces. With gradient accumulation
      the earlier micro-batches' gradients are stashed and added back, so an update is the mean of
      per-micro-batch SAM gradients (the paper's m-sharpness). Both passes scale the loss as the parent does.
    - The weights are restored by copy before the optimizer steps; BatchNorm running statistics are
      restored after the second pass, so only the first pass updates them.
    - A non-finite training loss stops training (`ReliableTrainer`), with or without SAM. With a finite loss, a
      non-finite first-pass gradient skips the perturbation and a non-finite second-pass gradient drops the
      micro-batch (its gradient never reaches the weights). Both are counted in the logs
      (`sam_unperturbed`, `sam_dropped`), with the mean sharpness L(w + e) − L(w) (`sam_sharpness`).
    - `sam_interval = k` applies SAM on every k-th optimizer step and plain ERM otherwise.
    - On CPU, freed memory stays in the process for the next steps (`reuse_freed_cpu_memory`, on by default;
      docs/performance.md, "Freed CPU memory is kept for reuse").
    """

    args: FewShotTrainingArguments

    def __init__(self, model: nn.Module | None = None, args: FewShotTrainingArguments | None = None, **kwargs):
        super().__init__(model=model, args=args, **kwargs)
        if self.args.reuse_freed_cpu_memory and self.args.device.type == "cpu":
            reuse_freed_cpu_memory()
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
        self._in_perturbed_pass = False  # True during SAM's second pass (subclasses skip their bookkeeping)

    def _sam_due(self) -> bool:
        return self.args.sam_rho > 0 and self.state.global_step % self.args.sam_interval == 0

    def training_step(
        self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: torch.Tensor | int | None = None
    ) -> torch.Tensor:
        if not self._sam_due():
            return super().training_step(model, inputs, num_items_in_batch)
        loss = self._sam_step(model, inputs, num_items_in_batch)
        self._stop_if_diverged(loss)
        return loss

    def _sam_step(self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch) -> torch.Tensor:
        """One micro-batch's SAM gradient; returns the clean loss."""
        parameters = [p for p in model.parameters() if p.requires_grad]
        earlier_grads = [p.grad for p in parameters]  # the accumulated micro-batches of this update
        for parameter in parameters:
            parameter.grad = None
        with self.accelerator.no_sync(model):  # both passes are the stock step: SAM drops a diverged second pass
            clean_loss = Trainer.training_step(self, model, inputs, num_items_in_batch)
        with perturbed_weights(parameters, self.args.sam_rho, self.args.sam_adaptive) as perturbation:
            for parameter in parameters:
                parameter.grad = None
            with _frozen_batchnorm_statistics(model):
                self._in_perturbed_pass = True
                try:
                    perturbed_loss = Trainer.training_step(self, model, inputs, num_items_in_batch)
                finally:
                    self._in_perturbed_pass = False
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


def _final_state(checkpoint: str, args: FewShotTrainingArguments) -> TrainerState | None:
    """The checkpoint's TrainerState if the checkpoint is the end of the run these arguments describe, else None
    (a run extended with a larger `max_steps` goes on training)."""
    state = TrainerState.load_from_json(str(Path(checkpoint) / "trainer_state.json"))
    finished = state.max_steps > 0 and state.global_step >= state.max_steps
    same_length = args.max_steps == state.max_steps if args.max_steps > 0 else (
        state.num_train_epochs == math.ceil(args.num_train_epochs)
    )  # fmt: skip
    return state if finished and same_length else None


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


DomainSplits = datasets.Dataset | Mapping[str, datasets.Dataset]


class EpisodicTrainer(SAMTrainer):
    """Meta-trains a few-shot model (`SmatModel`, `ProtoNetModel`, or any model with the episodic forward) on
    episodes, with SAM when `sam_rho > 0`.

    `train_dataset` / `eval_dataset` are one split or a mapping domain → split (the schema of docs/data.md, "The
    schema").
    - Training: one micro-batch is one episode of the `episode_protocol`, the domain drawn uniformly per
      episode; `train_episodes_per_epoch` episodes per epoch, dealt whole to the ranks; a new stream each
      epoch. `gradient_accumulation_steps` × processes tasks make one update.
    - Optimisers: SMAT's four groups and P>M>F's SGD (`training.optimization`) for those two models, the
      Trainer's default otherwise (or pass `optimizers=`). SMAT's gate and router groups clip themselves and,
      unless `max_grad_norm` is set explicitly, nothing clips the whole model (docs/smat.md, "Optimisation").
    - SMAT's router schedule: after each update the model's task counter (`router_tasks_seen`, which drives
      τ_r) advances by the number of labelled tasks of that update summed over all processes — SAM's second
      pass and unlabelled forwards are not tasks (docs/smat.md).
    - Logs: besides the loss, the mean of every scalar term the model outputs (SMAT: classification,
      distillation, sparsity, multiplier losses, router penalty, τ_r), each expert's measured sparsity,
      the training query accuracy (rank 0's tasks) and, for SMAT, each optimiser group's gradient norm before
      clipping and update size (`grad_norm_{group}`, `update_norm_{group}`: delta, gate_logits, multipliers,
      router).
    - Evaluation: `eval_episodes` fixed episodes per domain (the same at every evaluation), the eval
      transform and eval-mode forward; metrics `eval_{domain}_accuracy` / `_ci95` (mean ± 95% CI, %),
      `eval_accuracy` (mean over domains, for `metric_for_best_model="accuracy"`) and `eval_loss`; for SMAT
      also the mechanism's diagnostics `eval_smat_*` (`hf_fewshot.diagnostics`: gate sparsity next to τ,
      saturation, ‖θ_δ‖/‖θ_pre‖, τ_r, routing entropy and how alike the validation domains are routed).
    """

    def __init__(
        self,
        model: nn.Module,
        args: FewShotTrainingArguments,
        train_dataset: DomainSplits | None = None,
        eval_dataset: DomainSplits | None = None,
        **kwargs,
    ):
        if not isinstance(args, FewShotTrainingArguments):
            raise TypeError(f"EpisodicTrainer needs FewShotTrainingArguments, got {type(args).__name__}.")
        super().__init__(
            model=model,
            args=args,
            train_dataset=_domain_splits(train_dataset, "train_dataset"),
            eval_dataset=_domain_splits(eval_dataset, "eval_dataset"),
            **kwargs,
        )
        for name, splits in (("train_dataset", self.train_dataset), ("eval_dataset", self.eval_dataset)):
            for domain, split in (splits or {}).items():  # here, not at the first evaluation an hour later
                try:
                    self._sampler(split, domain, None)
                except ValueError as error:
                    raise ValueError(
                        f"{name} {domain!r} cannot give {args.episode_protocol!r} episodes: {error}"
                    ) from None
        if isinstance(getattr(self.model, "config", None), FewShotConfig):
            # The size its tasks are seen at: the saved image processor (and the card) use it.
            self.model.config.image_size = args.image_size
        self._tasks_this_update = 0
        self._term_sums: dict[str, float] = defaultdict(float)
        self._term_counts: dict[str, int] = defaultdict(int)
        self._eval_loaders: dict[str, DataLoader] = {}

    # ----------------------------------------------------------------------------------------- data
    def _sampler(self, dataset: datasets.Dataset, domain: str, num_episodes: int | None) -> EpisodeSampler:
        return EpisodeSampler.from_dataset(
            dataset, **self.args.episode_settings(), num_episodes=num_episodes, domain=domain
        )

    def _episode_loader(self, episodes, collator: EpisodeCollator, persistent: bool) -> DataLoader:
        """Whole episodes dealt to ranks: batches of one episode through `accelerator.prepare`.

        Training loaders never keep their workers: a persistent worker keeps the epoch-0 copy of the sampler, so
        `set_epoch` (main process only) would never reach it and every epoch would repeat the same tasks."""
        workers = self.args.dataloader_num_workers
        loader = DataLoader(
            episodes,
            batch_size=1,
            shuffle=False,
            collate_fn=_SingleEpisode(collator),
            num_workers=workers,
            persistent_workers=persistent and workers > 0 and self.args.dataloader_persistent_workers,
        )
        return self.accelerator.prepare(loader)

    def get_train_dataloader(self) -> DataLoader:
        if self.train_dataset is None:
            raise ValueError("EpisodicTrainer: training needs a train_dataset (one split or domain → split).")
        args = self.args
        samplers = {domain: self._sampler(split, domain, None) for domain, split in self.train_dataset.items()}
        episodes = MultiDomainEpisodeSampler(samplers, seed=args.seed, num_episodes=args.train_episodes_per_epoch)
        transform = TrainTransform(args.image_size, scale=(args.crop_scale_min, 1.0))
        return self._episode_loader(episodes, EpisodeCollator(self.train_dataset, transform), persistent=False)

    def get_eval_dataloader(self, eval_dataset: str | None = None) -> DataLoader:
        """The fixed validation episodes of one domain (`eval_dataset` names it)."""
        if self.eval_dataset is None:
            raise ValueError("EpisodicTrainer: evaluation needs an eval_dataset (one split or domain → split).")
        if eval_dataset not in self.eval_dataset:
            raise KeyError(f"No validation split for domain {eval_dataset!r}; have {sorted(self.eval_dataset)}.")
        if eval_dataset not in self._eval_loaders:
            split = self.eval_dataset[eval_dataset]
            collator = EpisodeCollator({eval_dataset: split}, EvalTransform(self.args.image_size))
            # Frozen: accelerate calls `set_epoch` on every pass over a prepared loader, which would give each
            # validation a new set of episodes.
            episodes = FrozenEpisodes.from_sampler(self._sampler(split, eval_dataset, None), self.args.eval_episodes)
            self._eval_loaders[eval_dataset] = self._episode_loader(episodes, collator, persistent=True)
        return self._eval_loaders[eval_dataset]

    # -------------------------------------------------------------------------------------- training
    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        model = self.model if model is None else model
        method = method_for(model)
        if self.optimizer is None and method is not None and method.optimizer is not None:
            self.optimizer = method.optimizer(model, self.args)
            return self.optimizer
        return super().create_optimizer(model)

    def training_step(
        self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: torch.Tensor | int | None = None
    ) -> torch.Tensor:
        loss = super().training_step(model, inputs, num_items_in_batch)
        self._tasks_this_update += 1  # one micro-batch is one labelled task, whatever SAM does with it
        if self.accelerator.sync_gradients:  # the update's last micro-batch: count the tasks of all ranks
            record = getattr(self.accelerator.unwrap_model(model), "record_meta_training_tasks", None)
            if record is not None:
                local = torch.tensor(self._tasks_this_update, device=self.args.device)
                record(int(self.accelerator.reduce(local, reduction="sum")))
            self._tasks_this_update = 0
        return loss

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(**inputs)
        if outputs.loss is None:
            raise ValueError("The model returned no loss: the episode must carry query_labels.")
        if not self._in_perturbed_pass:
            self._record_terms(outputs, inputs["query_labels"])
        return (outputs.loss, outputs) if return_outputs else outputs.loss

    def _record_terms(self, outputs: Mapping[str, Any], query_labels: torch.Tensor) -> None:
        """Accumulate the model's scalar loss terms, per-expert sparsity and query accuracy until the next log."""
        terms = {"train_accuracy": 100.0 * (outputs.logits.argmax(-1) == query_labels).float().mean().item()}
        for name, value in outputs.items():
            if name in ("loss", "logits", "expert_weights"):
                continue
            if isinstance(value, torch.Tensor) and value.dim() == 1:
                terms.update({f"expert_{m}_{name.removeprefix('expert_')}": float(v) for m, v in enumerate(value)})
            elif isinstance(value, (torch.Tensor, float, int)):
                terms[name] = float(value)
        for name, value in terms.items():
            self._term_sums[name] += value
            self._term_counts[name] += 1

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        if "loss" in logs and self._term_counts:
            logs.update({name: self._term_sums[name] / count for name, count in self._term_counts.items()})
            self._term_sums.clear()
            self._term_counts.clear()
        optimizer = getattr(self.optimizer, "optimizer", self.optimizer)  # accelerate wraps it
        if "loss" in logs and isinstance(optimizer, ChainedOptimizer):
            logs.update(optimizer.pop_statistics())
        super().log(logs, *args, **kwargs)

    # ------------------------------------------------------------------------------------ evaluation
    def evaluate(
        self,
        eval_dataset: DomainSplits | None = None,
        ignore_keys: list[str] | None = None,
        metric_key_prefix: str = "eval",
    ) -> dict[str, float]:
        """Mean query accuracy ± 95% CI over the fixed validation episodes of every domain (all ranks share them)."""
        if eval_dataset is not None:  # this call only: validation and best-model selection keep their own splits
            saved = self.eval_dataset, self._eval_loaders
            self.eval_dataset, self._eval_loaders = _domain_splits(eval_dataset, "eval_dataset"), {}
            try:
                return self.evaluate(None, ignore_keys, metric_key_prefix)
            finally:
                self.eval_dataset, self._eval_loaders = saved
        if self.eval_dataset is None:
            raise ValueError("EpisodicTrainer: evaluation needs an eval_dataset (one split or domain → split).")
        start = time.time()
        results, losses = self.validation_results()
        metrics = {
            f"{metric_key_prefix}_{name}": value
            for name, value in results.to_dict().items()
            if name not in ("id_accuracy", "ood_accuracy")
        }
        metrics[f"{metric_key_prefix}_accuracy"] = sum(d.mean for d in results.domains) / len(results.domains)
        metrics[f"{metric_key_prefix}_loss"] = sum(losses) / len(losses)
        model = self.accelerator.unwrap_model(self.model)
        if isinstance(model, SmatModel):  # is the mechanism at work? (docs/smat.md)
            routing = {d.domain: d.expert_weights for d in results.domains}
            diagnostics = smat_diagnostics(model, routing).to_dict(prefix=f"{metric_key_prefix}_smat_")
            metrics.update(diagnostics)
        metrics[f"{metric_key_prefix}_runtime"] = round(time.time() - start, 4)
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    @torch.no_grad()
    def validation_results(self) -> tuple[EvaluationResults, list[float]]:
        """Per-domain accuracy of the fixed validation episodes (every domain counts as in-domain, SMAT's expert
        weights kept per episode) and their losses."""
        domains, losses = [], []
        with eval_mode(self.model):
            for domain in self.eval_dataset:
                values = []
                for episode in self.get_eval_dataloader(domain):
                    accuracy, loss, weights = episode_metrics(self.model, episode)
                    row = torch.tensor([accuracy, loss, *(weights or ())], device=self.args.device)
                    values.append(self.accelerator.gather_for_metrics(row.unsqueeze(0)).cpu())
                    self.control = self.callback_handler.on_prediction_step(self.args, self.state, self.control)
                gathered = torch.cat(values)
                accuracies = tuple(gathered[:, 0].tolist())
                mean, ci95 = mean_and_ci95(accuracies)
                routing = tuple(map(tuple, gathered[:, 2:].tolist())) if gathered.shape[1] > 2 else ()
                domains.append(DomainAccuracy(domain, mean, ci95, len(gathered), True, accuracies, routing))
                losses.extend(gathered[:, 1].tolist())
        return EvaluationResults(tuple(domains)), losses


class _SingleEpisode:
    """`collate_fn` for batches of one episode (picklable for DataLoader workers)."""

    def __init__(self, collator: EpisodeCollator):
        self.collator = collator

    def __call__(self, batch: list) -> dict[str, torch.Tensor]:
        (episode,) = batch
        return self.collator(episode)


def _domain_splits(splits: DomainSplits | None, name: str) -> dict[str, datasets.Dataset] | None:
    """A mapping domain → split; a single split is named by its `domain` column (or "default")."""
    if splits is None:
        return None
    if isinstance(splits, datasets.Dataset):
        return {domain_of(splits) or "default": splits}
    if isinstance(splits, datasets.DatasetDict):
        raise TypeError(
            f"{name} is a DatasetDict (split → Dataset); pass one split, or a mapping domain → split such as "
            '{"omniglot": load_domain(source, "omniglot", "train")}: its splits would be taken for domains.'
        )
    if not isinstance(splits, Mapping) or not splits:
        raise TypeError(f"{name} must be a datasets.Dataset or a non-empty mapping domain → Dataset.")
    for domain, split in splits.items():
        if not isinstance(split, datasets.Dataset):
            raise TypeError(f"{name}[{domain!r}] must be a datasets.Dataset, got {type(split).__name__}.")
    return dict(splits)
