"""SAMTrainer and the SAM math: hand computations, equivalence with Trainer at ρ = 0, accumulation, NaN safety."""

import math

import pytest
import torch
from torch import nn
from transformers import Trainer, TrainerCallback

from hf_fewshot import FewShotTrainingArguments, SAMTrainer
from hf_fewshot.training import perturbed_weights, sam_perturbation


class TinyRegressor(nn.Module):
    """A two-layer net returning `{"loss"}` like an HF model, optionally with BatchNorm."""

    def __init__(self, batch_norm: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.layers = nn.Sequential(
            nn.Linear(3, 4), nn.BatchNorm1d(4) if batch_norm else nn.Identity(), nn.Tanh(), nn.Linear(4, 1)
        )

    def forward(self, x, labels):
        return {"loss": ((self.layers(x).squeeze(-1) - labels) ** 2).mean()}


class Rows(torch.utils.data.Dataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "labels": self.y[i]}


def data(n=4, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, generator=generator), torch.randn(n, generator=generator)


def arguments(tmp_path, **kwargs) -> FewShotTrainingArguments:
    defaults = dict(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        learning_rate=0.1,
        optim="sgd",
        lr_scheduler_type="constant",
        max_steps=1,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        seed=0,
        data_seed=0,
        dataloader_drop_last=True,
        disable_tqdm=True,
    )
    return FewShotTrainingArguments(**{**defaults, **kwargs})


def loss_of(model, params, x, y):
    return torch.func.functional_call(model, params, (x, y))["loss"]


def sam_gradient(model, params, x, y, rho, adaptive=False):
    """∇L(w + e) written out with torch.autograd.grad."""
    names = list(params)
    grads = torch.autograd.grad(loss_of(model, params, x, y), [params[n] for n in names])
    if adaptive:
        norm = torch.sqrt(sum(((params[n].abs() * g) ** 2).sum() for n, g in zip(names, grads, strict=True)))
        steps = [rho * params[n] ** 2 * g / norm for n, g in zip(names, grads, strict=True)]
    else:
        norm = torch.sqrt(sum((g**2).sum() for g in grads))
        steps = [rho * g / norm for g in grads]
    perturbed = {n: (params[n] + s).detach().requires_grad_() for n, s in zip(names, steps, strict=True)}
    return torch.autograd.grad(loss_of(model, perturbed, x, y), [perturbed[n] for n in names])


@pytest.mark.parametrize("adaptive", [False, True])
def test_one_step_equals_the_hand_computation(tmp_path, adaptive):
    x, y = data()
    model = TinyRegressor()
    start = {n: p.detach().clone().requires_grad_() for n, p in model.named_parameters()}
    expected = sam_gradient(model, start, x, y, rho=0.05, adaptive=adaptive)
    trainer = SAMTrainer(
        model=model, args=arguments(tmp_path, sam_rho=0.05, sam_adaptive=adaptive), train_dataset=Rows(x, y)
    )
    trainer.train()
    for (name, parameter), grad in zip(model.named_parameters(), expected, strict=True):
        torch.testing.assert_close(parameter.detach(), start[name].detach() - 0.1 * grad, rtol=1e-6, atol=1e-7)


def test_rho_zero_is_the_stock_trainer_bit_for_bit(tmp_path):
    x, y = data(16)
    results = []
    for trainer_class, extra in ((Trainer, {}), (SAMTrainer, {"sam_rho": 0.0})):
        model = TinyRegressor()
        args = arguments(tmp_path / trainer_class.__name__, max_steps=3, **extra)
        trainer_class(model=model, args=args, train_dataset=Rows(x, y)).train()
        results.append([p.detach().clone() for p in model.parameters()])
    for stock, ours in zip(*results, strict=True):
        assert torch.equal(stock, ours)


class WeightsAtStepStartAndOptimizerStep(TrainerCallback):
    def __init__(self, model):
        self.model, self.pairs = model, []

    def on_step_begin(self, args, state, control, **kwargs):
        self.start = [p.detach().clone() for p in self.model.parameters()]

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.pairs.append((self.start, [p.detach().clone() for p in self.model.parameters()]))


def test_weights_are_restored_bit_for_bit_before_the_optimizer_step(tmp_path):
    x, y = data(16)
    model = TinyRegressor()
    callback = WeightsAtStepStartAndOptimizerStep(model)
    args = arguments(tmp_path, sam_rho=0.5, max_steps=3, gradient_accumulation_steps=2, per_device_train_batch_size=2)
    SAMTrainer(model=model, args=args, train_dataset=Rows(x, y), callbacks=[callback]).train()
    assert len(callback.pairs) == 3
    for start, before_step in callback.pairs:
        assert all(torch.equal(a, b) for a, b in zip(start, before_step, strict=True))


def test_gradient_accumulation_averages_per_micro_batch_sam_gradients(tmp_path):
    x, y = data(4)
    model = TinyRegressor()
    start = {n: p.detach().clone().requires_grad_() for n, p in model.named_parameters()}
    args = arguments(tmp_path, sam_rho=0.1, gradient_accumulation_steps=2, per_device_train_batch_size=2)
    trainer = SAMTrainer(model=model, args=args, train_dataset=Rows(x, y))
    batches = [batch for batch in trainer.get_train_dataloader()][:2]  # the micro-batches it will see
    per_batch = [sam_gradient(model, start, b["x"], b["labels"], rho=0.1) for b in batches]
    trainer.train()
    for index, (name, parameter) in enumerate(model.named_parameters()):
        mean_grad = (per_batch[0][index] + per_batch[1][index]) / 2
        torch.testing.assert_close(parameter.detach(), start[name].detach() - 0.1 * mean_grad, rtol=1e-6, atol=1e-7)


def test_a_non_finite_micro_batch_never_reaches_the_weights(tmp_path):
    x, y = data(4)
    x[2, 0] = math.nan  # the second micro-batch (rows 2-3) has a NaN input
    model = TinyRegressor()
    args = arguments(
        tmp_path, sam_rho=0.1, gradient_accumulation_steps=2, per_device_train_batch_size=2, dataloader_drop_last=False
    )
    trainer = SAMTrainer(model=model, args=args, train_dataset=Rows(x, y))
    trainer.get_train_dataloader = lambda: torch.utils.data.DataLoader(Rows(x, y), batch_size=2)  # keep row order
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(FloatingPointError, match="Non-finite training loss .* at step 1"):  # stops, not `loss 0`
        trainer.train()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_batchnorm_statistics_move_once_per_micro_batch(tmp_path):
    x, y = data(4)
    sam_model, erm_model = TinyRegressor(batch_norm=True), TinyRegressor(batch_norm=True)
    SAMTrainer(model=sam_model, args=arguments(tmp_path / "sam", sam_rho=0.5), train_dataset=Rows(x, y)).train()
    Trainer(model=erm_model, args=arguments(tmp_path / "erm"), train_dataset=Rows(x, y)).train()
    sam_bn, erm_bn = sam_model.layers[1], erm_model.layers[1]
    torch.testing.assert_close(sam_bn.running_mean, erm_bn.running_mean)
    torch.testing.assert_close(sam_bn.running_var, erm_bn.running_var)
    assert int(sam_bn.num_batches_tracked) == 1


def test_sam_interval_alternates_sam_and_erm(tmp_path):
    x, y = data(16)
    results = {}
    for name, extra in (("erm", {}), ("every_other", {"sam_rho": 0.3, "sam_interval": 2})):
        model = TinyRegressor()
        callback = WeightsAtStepStartAndOptimizerStep(model)
        args = arguments(tmp_path / name, max_steps=2, **extra)
        trainer_class = Trainer if name == "erm" else SAMTrainer
        trainer_class(model=model, args=args, train_dataset=Rows(x, y), callbacks=[callback]).train()
        results[name] = callback.pairs
    # Step 0 is a SAM step (differs from ERM); step 1 is an ERM step taken from wherever step 0 ended.
    assert not all(torch.equal(a, b) for a, b in zip(results["erm"][1][0], results["every_other"][1][0], strict=True))


def test_perturbed_weights_restores_by_copy_and_refuses_non_finite_gradients():
    layer = nn.Linear(3, 2)
    layer(torch.randn(5, 3)).sum().backward()
    before = [p.detach().clone() for p in layer.parameters()]
    with perturbed_weights(list(layer.parameters()), rho=0.2) as step:
        norm = torch.sqrt(sum((s**2).sum() for s in step))
        assert norm.item() == pytest.approx(0.2, rel=1e-5)
        assert not torch.equal(layer.weight, before[0])
    assert all(torch.equal(p, b) for p, b in zip(layer.parameters(), before, strict=True))
    layer.weight.grad[0, 0] = math.inf
    assert sam_perturbation(list(layer.parameters()), rho=0.2) is None
    with perturbed_weights(list(layer.parameters()), rho=0.2) as step:
        assert step is None and torch.equal(layer.weight, before[0])


def test_arguments_validate():
    with pytest.raises(ValueError, match="sam_rho"):
        FewShotTrainingArguments(output_dir="unused", sam_rho=-1.0, use_cpu=True, report_to="none")


def _two_rank_training(output_dir: str) -> None:
    """Runs in each of two gloo CPU processes started by accelerate's debug_launcher."""
    import torch.distributed as dist
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    x, y = data(16)
    model = TinyRegressor()
    all_reduces = []

    class CountAllReduces(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if not all_reduces:
                trainer.model_wrapped.register_comm_hook(None, counting_hook)
                all_reduces.append(0)

    def counting_hook(state, bucket):
        all_reduces[0] += 1
        return allreduce_hook(dist.group.WORLD, bucket)

    args = arguments(output_dir, sam_rho=0.2, max_steps=2, per_device_train_batch_size=2)
    trainer = SAMTrainer(model=model, args=args, train_dataset=Rows(x, y), callbacks=[CountAllReduces()])
    trainer.train()
    assert dist.get_world_size() == 2, "two connected processes"
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    gathered = [torch.empty_like(flat) for _ in range(2)]
    dist.all_gather(gathered, flat)
    assert torch.equal(gathered[0], gathered[1]), "ranks end the step with identical parameters"
    assert all_reduces[0] == 2, f"one all-reduce per step (the second pass), got {all_reduces[0]} for 2 steps"
    # Each rank perturbed with its own gradient: the step differs from plain data-parallel ERM.
    assert not torch.equal(flat, torch.cat([p.detach().flatten() for p in TinyRegressor().parameters()]))


@pytest.mark.slow
def test_two_gloo_processes_share_the_second_pass_gradient(tmp_path):
    from accelerate import debug_launcher

    debug_launcher(lambda: _two_rank_training(str(tmp_path)), num_processes=2)
