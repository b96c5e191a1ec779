"""EpisodicTrainer: SMAT's optimiser groups, validation with CIs, learning on MiniMeta, best checkpoint, resume."""

import math
import subprocess
import sys
import textwrap
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from helpers import saturate_gates, tiny_vit_config

from hf_fewshot import EpisodicTrainer, FewShotTrainingArguments, ProtoNetModel, SmatModel, load_domain
from hf_fewshot.data.domains import column_as_numpy
from hf_fewshot.evaluation import evaluate_episodes, mean_and_ci95
from hf_fewshot.training import ChainedOptimizer, smat_optimizer
from hf_fewshot.training.checkpoints import last_complete_checkpoint


def tiny_smat(**kwargs) -> SmatModel:
    torch.manual_seed(0)
    return SmatModel.from_backbone(tiny_vit_config(), num_experts=2, sparsity_target=0.5, **kwargs)


def first_classes(split, count: int):
    """The rows of the split's first `count` classes (a small pool a tiny model can learn in seconds)."""
    labels = column_as_numpy(split, "label")
    return split.select(np.flatnonzero(np.isin(labels, np.unique(labels)[:count])))


@pytest.fixture(scope="module")
def glyphs():
    return {split: first_classes(load_domain("minimeta", "glyphs", split), 10) for split in ("train", "validation")}


def training_arguments(output_dir, **kwargs) -> FewShotTrainingArguments:
    defaults = dict(
        output_dir=str(output_dir),
        max_steps=4,
        learning_rate=0.5,
        router_learning_rate=1e-2,
        max_grad_norm=0.0,
        lr_scheduler_type="constant",
        episode_protocol="fixed",
        n_way=5,
        n_shot=3,
        n_query=3,
        image_size=16,
        crop_scale_min=0.8,
        train_episodes_per_epoch=64,
        eval_episodes=8,
        save_strategy="no",
        logging_steps=1,
        use_cpu=True,
        report_to="none",
        disable_tqdm=True,
        seed=0,
    )
    return FewShotTrainingArguments(**{**defaults, **kwargs})


# ------------------------------------------------------------------------------------------- optimiser
def test_smat_optimizer_has_the_papers_groups_and_one_schedule(tmp_path):
    model = tiny_smat()
    args = training_arguments(tmp_path, learning_rate=1e-4, weight_decay=1e-4, router_learning_rate=1e-4)
    optimizer = smat_optimizer(model, args)
    grouped = [p for group in optimizer.param_groups for p in group["params"]]
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(grouped) == len(trainable) and {id(p) for p in grouped} == {id(p) for p in trainable}
    delta, gates, multipliers, router = optimizer.param_groups
    assert (delta["lr"], delta["momentum"], delta["weight_decay"]) == (1e-4, 0.9, 1e-4)
    assert (gates["lr"], gates["momentum"], gates["max_grad_norm"]) == (1e6, 0.0, 5.0)
    assert (multipliers["lr"], multipliers["momentum"]) == (0.002, 0.0)
    assert isinstance(optimizer.optimizers[1], torch.optim.AdamW)
    assert (router["lr"], router["weight_decay"], router["max_grad_norm"]) == (1e-4, 1e-2, 1.0)
    # A schedule scales every group by the same factor.
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5)
    del scheduler
    assert [g["lr"] for g in optimizer.param_groups] == [0.5e-4, 0.5e6, 0.001, 0.5e-4]


def test_chained_optimizer_clips_its_groups_alone_and_resumes_exactly():
    torch.manual_seed(0)
    clipped, free = torch.nn.Parameter(torch.zeros(4)), torch.nn.Parameter(torch.zeros(4))
    make = lambda: ChainedOptimizer(  # noqa: E731
        [
            torch.optim.SGD([{"params": [clipped], "max_grad_norm": 1.0}], lr=1.0),
            torch.optim.AdamW([free], lr=0.1),
        ]
    )
    optimizer = make()
    clipped.grad, free.grad = torch.full((4,), 10.0), torch.full((4,), 10.0)
    optimizer.step()
    assert torch.allclose(clipped, torch.full((4,), -0.5)), "the clipped group's gradient norm was 1"
    assert torch.allclose(free, torch.full((4,), -0.1), atol=1e-6), "the other group kept its full gradient"

    restored = make()
    restored.load_state_dict(optimizer.state_dict())
    state_before = {k: v.clone() for k, v in restored.optimizers[1].state[free].items()}
    assert torch.equal(state_before["exp_avg"], optimizer.optimizers[1].state[free]["exp_avg"])
    with pytest.raises(ValueError, match="optimizers"):
        ChainedOptimizer([torch.optim.SGD([clipped], lr=1.0)]).load_state_dict(optimizer.state_dict())


def test_chained_optimizer_reports_each_groups_gradient_and_exact_update_size():
    plain, moving, adapted = (torch.nn.Parameter(torch.full((4,), 1.0)) for _ in range(3))
    optimizer = ChainedOptimizer(
        [
            torch.optim.SGD(
                [
                    {"name": "plain", "params": [plain], "max_grad_norm": 1.0, "weight_decay": 0.1},
                    {"name": "moving", "params": [moving], "momentum": 0.9},
                ],
                lr=0.5,
            ),
            torch.optim.AdamW([{"name": "adapted", "params": [adapted]}], lr=0.1),
        ]
    )
    measured = {"plain": 0.0, "moving": 0.0, "adapted": 0.0}
    for step in range(2):
        before = {name: p.detach().clone() for name, p in zip(measured, (plain, moving, adapted), strict=True)}
        for parameter in (plain, moving, adapted):
            parameter.grad = torch.full((4,), 2.0 + step)
        optimizer.step()
        for name, parameter in zip(measured, (plain, moving, adapted), strict=True):
            measured[name] += float(torch.linalg.vector_norm(parameter.detach() - before[name])) / 2
    statistics = optimizer.pop_statistics()
    for name, value in measured.items():
        assert statistics[f"update_norm_{name}"] == pytest.approx(value, rel=1e-6), name
    assert statistics["grad_norm_plain"] == pytest.approx((4.0 + 6.0) / 2), "the norm before clipping"
    assert optimizer.pop_statistics() == {}, "means since the last call"


# ------------------------------------------------------------------------------------------ validation
def test_ci95_formula():
    mean, ci95 = mean_and_ci95([50.0, 100.0, 75.0, 75.0])
    assert mean == 75.0
    # below 30 episodes the Student-t interval: t(0.975, N − 1) · sample std / √N, t(0.975, 3) = 3.18244630528...
    assert math.isclose(ci95, 3.1824463052837078 * np.std([50.0, 100.0, 75.0, 75.0], ddof=1) / 2)
    many = [50.0, 100.0, 75.0, 75.0] * 10  # from 30 on, 1.96 · population std / √N (Meta-Dataset's)
    assert math.isclose(mean_and_ci95(many)[1], 1.96 * np.std(many) / math.sqrt(40))
    with pytest.raises(ValueError, match="No accuracies"):
        mean_and_ci95([])


def test_validation_reports_every_domain_on_fixed_episodes(tmp_path, glyphs):
    emoji = load_domain("minimeta", "emoji", "validation")
    trainer = EpisodicTrainer(
        tiny_smat(),
        training_arguments(tmp_path, episode_protocol="md", max_ways=5, n_way=None, n_shot=None, n_query=None),
        eval_dataset={"glyphs": glyphs["validation"], "emoji": emoji},
    )
    first, second = trainer.evaluate(), trainer.evaluate()
    for domain in ("glyphs", "emoji"):
        assert 0 <= first[f"eval_{domain}_accuracy"] <= 100 and first[f"eval_{domain}_ci95"] > 0
        assert first[f"eval_{domain}_accuracy"] == second[f"eval_{domain}_accuracy"], "the same episodes each time"
    assert first["eval_accuracy"] == pytest.approx((first["eval_glyphs_accuracy"] + first["eval_emoji_accuracy"]) / 2)
    results, losses = trainer.validation_results()
    assert [d.num_episodes for d in results.domains] == [8, 8] and len(losses) == 16


def test_episodic_trainer_rejects_bad_inputs(tmp_path, glyphs):
    with pytest.raises(TypeError, match="FewShotTrainingArguments"):
        from transformers import TrainingArguments

        EpisodicTrainer(tiny_smat(), TrainingArguments(output_dir=str(tmp_path), use_cpu=True))
    with pytest.raises(TypeError, match="datasets.Dataset"):
        EpisodicTrainer(tiny_smat(), training_arguments(tmp_path), train_dataset={"glyphs": [1, 2, 3]})
    with pytest.raises(ValueError, match="train_dataset 'glyphs' cannot give 'fixed' episodes.*fewer than 23 images"):
        EpisodicTrainer(
            tiny_smat(), training_arguments(tmp_path, n_shot=20), train_dataset={"glyphs": glyphs["train"]}
        )
    with pytest.raises(ValueError, match="eval_dataset 'glyphs'.*at least 11 classes"):  # at construction
        EpisodicTrainer(
            tiny_smat(), training_arguments(tmp_path, n_way=11), eval_dataset={"glyphs": glyphs["validation"]}
        )
    with pytest.raises(ValueError, match="fixed"):
        training_arguments(tmp_path, n_way=None)
    with pytest.raises(TypeError, match="DatasetDict"):
        EpisodicTrainer(tiny_smat(), training_arguments(tmp_path), train_dataset=datasets.DatasetDict(glyphs))


def test_evaluating_other_splits_does_not_replace_the_validation_splits(tmp_path, glyphs):
    trainer = EpisodicTrainer(tiny_smat(), training_arguments(tmp_path), eval_dataset={"glyphs": glyphs["validation"]})
    other = trainer.evaluate({"train": glyphs["train"]})
    assert "eval_train_accuracy" in other
    assert "eval_glyphs_accuracy" in trainer.evaluate() and set(trainer.eval_dataset) == {"glyphs"}


# ------------------------------------------------------------------------------------------- training
@pytest.mark.slow
def test_tiny_smat_improves_query_accuracy_on_minimeta_training_episodes(tmp_path, glyphs):
    model = tiny_smat()
    args = training_arguments(tmp_path, max_steps=200, learning_rate=0.05, logging_steps=50)
    settings = dict(protocol="fixed", n_way=5, n_shot=3, n_query=3, image_size=16, progress=False)
    before = evaluate_episodes(model, {"glyphs": glyphs["train"]}, 40, **settings)["glyphs"].mean
    trainer = EpisodicTrainer(model, args, train_dataset={"glyphs": glyphs["train"]})
    trainer.train()
    after = evaluate_episodes(model, {"glyphs": glyphs["train"]}, 40, **settings)["glyphs"].mean
    assert after > before + 10, f"query accuracy {before:.1f}% → {after:.1f}%"
    logged = [entry for entry in trainer.state.log_history if "classification_loss" in entry]
    for name in ("distillation_loss", "sparsity_loss", "multiplier_loss", "router_penalty", "train_accuracy"):
        assert all(math.isfinite(entry[name]) for entry in logged), name
    assert {"expert_0_sparsity", "expert_1_sparsity"} <= set(logged[-1])
    groups = ("delta", "gate_logits", "multipliers", "router")
    assert {f"{kind}_norm_{group}" for kind in ("grad", "update") for group in groups} <= set(logged[-1])
    assert logged[-1]["update_norm_delta"] > 0 and logged[-1]["update_norm_router"] > 0
    assert int(model.router_tasks_seen) == 200


def test_best_checkpoint_is_loaded_at_the_end_backbone_included(tmp_path, glyphs):
    # P>M>F trains its backbone, whose tensors are stored under legacy ViT names: the Trainer's own reload
    # would skip them (see SAMTrainer._load_weights_like_from_pretrained).
    torch.manual_seed(0)
    model = ProtoNetModel.from_backbone(tiny_vit_config())
    args = training_arguments(
        tmp_path,
        max_steps=6,
        eval_strategy="steps",
        eval_steps=2,
        save_strategy="steps",
        save_steps=2,
        load_best_model_at_end=True,
        metric_for_best_model="accuracy",
        learning_rate=3.0,  # big steps, so the validation accuracy drops after its best
    )
    trainer = EpisodicTrainer(
        model, args, train_dataset={"glyphs": glyphs["train"]}, eval_dataset={"glyphs": glyphs["validation"]}
    )
    trainer.train()
    evaluations = [entry["eval_accuracy"] for entry in trainer.state.log_history if "eval_accuracy" in entry]
    assert max(evaluations) > evaluations[-1], "precondition: the best checkpoint is not the last one"
    assert trainer.state.best_metric == max(evaluations)
    assert trainer.evaluate()["eval_accuracy"] == max(evaluations), "the model holds the best checkpoint's weights"
    best = ProtoNetModel.from_pretrained(trainer.state.best_model_checkpoint)
    for (name, expected), actual in zip(best.state_dict().items(), model.state_dict().values(), strict=True):
        assert torch.equal(expected, actual), name


KILLED_RUN = """
import os, signal, sys
import torch
torch.set_num_threads(1)
from transformers import TrainerCallback
sys.path.insert(0, {tests!r})
from test_episodic_trainer import first_classes, training_arguments
from hf_fewshot import EpisodicTrainer, SmatModel, load_domain

class KillAfterThirdStep(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 3:
            os.kill(os.getpid(), signal.SIGKILL)

train = first_classes(load_domain("minimeta", "glyphs", "train"), 10)
args = training_arguments({output!r}, max_steps=5, save_strategy="steps", save_steps=2, gradient_accumulation_steps=2)
model = SmatModel.from_pretrained({initial!r})
EpisodicTrainer(model, args, train_dataset={{"glyphs": train}}, callbacks=[KillAfterThirdStep()]).train()
"""


@pytest.mark.slow
def test_kill_and_resume_reproduces_the_uninterrupted_run(tmp_path, glyphs):
    initial = tiny_smat(gate_noise=1.0)  # real noise: the resumed run must also restore the RNG
    initial.save_pretrained(tmp_path / "initial")
    arguments = dict(max_steps=5, save_strategy="steps", save_steps=2, gradient_accumulation_steps=2)

    uninterrupted = SmatModel.from_pretrained(tmp_path / "initial")
    args = training_arguments(tmp_path / "uninterrupted", **arguments)
    EpisodicTrainer(uninterrupted, args, train_dataset={"glyphs": glyphs["train"]}).train()

    script = KILLED_RUN.format(
        tests=str(Path(__file__).parent), output=str(tmp_path / "killed"), initial=str(tmp_path / "initial")
    )
    killed = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr[-2000:]
    checkpoint = last_complete_checkpoint(tmp_path / "killed")
    assert checkpoint is not None and checkpoint.endswith("checkpoint-2")

    resumed = SmatModel.from_pretrained(tmp_path / "initial")
    args = training_arguments(tmp_path / "killed", **arguments)
    EpisodicTrainer(resumed, args, train_dataset={"glyphs": glyphs["train"]}).train(resume_from_checkpoint=checkpoint)
    for (name, expected), actual in zip(
        uninterrupted.state_dict().items(), resumed.state_dict().values(), strict=True
    ):
        assert torch.equal(expected, actual), name


def test_checkpoints_keep_smats_dense_banks_and_the_final_save_is_compact(tmp_path, glyphs):
    model = tiny_smat()
    saturate_gates(model)  # as after training: saturated gates (90% closed)
    args = training_arguments(tmp_path, max_steps=1, save_strategy="steps", save_steps=1)
    trainer = EpisodicTrainer(model, args, train_dataset={"glyphs": glyphs["train"]})
    trainer.train()
    checkpoint = Path(last_complete_checkpoint(tmp_path))
    assert [path.name for path in checkpoint.glob("*.safetensors")] == ["model.safetensors"]
    resumed = SmatModel.from_pretrained(checkpoint)
    assert torch.equal(resumed.gate_logits, model.gate_logits), "log α as it is, for an exact resume"
    assert model.save_compact
    trainer.save_model(str(tmp_path / "final"))
    assert (tmp_path / "final" / "smat_experts.safetensors").is_file()


def test_protonet_meta_training_uses_sgd_over_backbone_and_head(tmp_path, glyphs):
    torch.manual_seed(0)
    model = ProtoNetModel.from_backbone(tiny_vit_config())
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    trainer = EpisodicTrainer(model, training_arguments(tmp_path, learning_rate=0.05), train_dataset=glyphs["train"])
    trainer.train()
    assert isinstance(trainer.optimizer.optimizer, torch.optim.SGD)
    assert trainer.optimizer.param_groups[0]["momentum"] == 0.9
    moved = [name for name, p in model.named_parameters() if not torch.equal(p, before[name])]
    assert "head.scale" in moved and any(name.startswith("backbone.") for name in moved)


def _two_rank_meta_training(output_dir: str) -> None:
    """Runs in each of two gloo CPU processes started by accelerate's debug_launcher."""
    import torch.distributed as dist

    train = first_classes(load_domain("minimeta", "glyphs", "train"), 10)
    validation = first_classes(load_domain("minimeta", "glyphs", "validation"), 10)
    model = tiny_smat()
    args = training_arguments(output_dir, max_steps=2, eval_episodes=3)
    trainer = EpisodicTrainer(model, args, train_dataset={"glyphs": train}, eval_dataset={"glyphs": validation})
    assert dist.get_world_size() == 2, "two connected processes"

    first_episode = next(iter(trainer.get_train_dataloader()))["support_pixel_values"].sum().reshape(1)
    fingerprints = [torch.empty_like(first_episode) for _ in range(2)]
    dist.all_gather(fingerprints, first_episode)
    assert not torch.equal(*fingerprints), "each rank trains on its own episodes"

    trainer.train()
    flat = torch.cat([p.detach().flatten() for p in model.parameters() if p.requires_grad])
    gathered = [torch.empty_like(flat) for _ in range(2)]
    dist.all_gather(gathered, flat)
    assert torch.equal(gathered[0], gathered[1]), "ranks end with identical parameters"
    assert not torch.equal(flat, torch.cat([p.flatten() for p in tiny_smat().parameters() if p.requires_grad]))

    results, losses = trainer.validation_results()
    assert results["glyphs"].num_episodes == 3 and len(losses) == 3, "3 episodes over 2 ranks, none counted twice"


@pytest.mark.slow
def test_two_gloo_processes_meta_train_one_smat(tmp_path):
    from accelerate import debug_launcher

    debug_launcher(lambda: _two_rank_meta_training(str(tmp_path)), num_processes=2)


# ------------------------------------------------------------------------------- SMAT's own clipping rules
def _one_smat_update(tmp_path, glyphs, **kwargs) -> dict[str, torch.Tensor]:
    model = tiny_smat()
    with torch.no_grad():  # as after the first updates: θ_δ ≠ 0, so every group gets a gradient
        model.delta.normal_(0, 0.05)
    args = training_arguments(tmp_path, max_steps=1, gradient_accumulation_steps=2, **kwargs)
    EpisodicTrainer(model, args, train_dataset={"glyphs": glyphs["train"]}).train()
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


def test_default_arguments_apply_smats_group_clips_alone(tmp_path, glyphs):
    unset = training_arguments(tmp_path, max_grad_norm=None)
    assert unset.max_grad_norm == 1.0, "a stock Trainer given these arguments clips as always"
    default = _one_smat_update(tmp_path / "default", glyphs, max_grad_norm=None)
    unclipped = _one_smat_update(tmp_path / "none", glyphs, max_grad_norm=0.0)
    explicit = _one_smat_update(tmp_path / "explicit", glyphs, max_grad_norm=0.01)
    for name in default:
        assert torch.equal(default[name], unclipped[name]), f"{name}: no whole-model clip by default"
    assert not torch.equal(default["delta"], explicit["delta"]), "an explicit whole-model clip still applies"
    assert unset.max_grad_norm == 1.0, "the caller's arguments are not changed"
    protonet = EpisodicTrainer(ProtoNetModel.from_backbone(tiny_vit_config()), unset)
    assert protonet.args.max_grad_norm == 1.0, "other models keep the Trainer's default"
    with pytest.raises(ValueError, match="max_grad_norm"):
        training_arguments(tmp_path, max_grad_norm=-1.0)


def test_gate_bank_clip_norm_is_exact_in_float64():
    torch.manual_seed(0)
    bank = torch.nn.Parameter(torch.zeros(8, 600_000))
    bank.grad = torch.randn_like(bank) * 3
    exact = torch.linalg.vector_norm(bank.grad, dtype=torch.float64)
    optimizer = ChainedOptimizer([torch.optim.SGD([{"params": [bank], "max_grad_norm": 5.0}], lr=0.0)])
    optimizer.step()
    clipped = torch.linalg.vector_norm(bank.grad, dtype=torch.float64)
    assert float(exact) > 5.0
    assert float(clipped) == pytest.approx(5.0, rel=1e-6), "the clip scales by the float64 norm"


# -------------------------------------------------------------------------------- the router's task counter
def test_router_counter_counts_each_labelled_task_once_with_sam(tmp_path, glyphs):
    model = tiny_smat()
    args = training_arguments(tmp_path, max_steps=3, gradient_accumulation_steps=2, sam_rho=0.05)
    EpisodicTrainer(model, args, train_dataset={"glyphs": glyphs["train"]}).train()
    assert int(model.router_tasks_seen) == 6, "3 updates × 2 tasks; SAM's second pass is not a task"


def _two_rank_sam_counter(output_dir: str) -> None:
    """Runs in each of two gloo CPU processes: SAM on, 2 tasks per rank per update, 3 updates."""
    train = first_classes(load_domain("minimeta", "glyphs", "train"), 10)
    model = tiny_smat()
    args = training_arguments(output_dir, max_steps=3, gradient_accumulation_steps=2, sam_rho=0.05)
    EpisodicTrainer(model, args, train_dataset={"glyphs": train}).train()
    assert int(model.router_tasks_seen) == 12, f"3 updates × 2 tasks × 2 ranks, got {int(model.router_tasks_seen)}"


@pytest.mark.slow
def test_router_counter_sums_the_tasks_of_two_gloo_processes_with_sam(tmp_path):
    from accelerate import debug_launcher

    debug_launcher(lambda: _two_rank_sam_counter(str(tmp_path)), num_processes=2)


# ------------------------------------------------------------------------------- nothing silent (issue 13)
def finite_checkpoints(output_dir: Path) -> list[str]:
    from safetensors.torch import load_file

    names = []
    for checkpoint in sorted(output_dir.glob("checkpoint-*")):
        for file in checkpoint.glob("*.safetensors"):
            assert all(torch.isfinite(t).all() for t in load_file(file).values() if t.is_floating_point()), file
        names.append(checkpoint.name)
    return names


@pytest.mark.parametrize("sam_rho", [0.0, 0.05])
def test_a_diverging_run_stops_with_a_message_and_writes_no_nan_weights(tmp_path, glyphs, sam_rho):
    torch.manual_seed(0)
    model = ProtoNetModel.from_backbone(tiny_vit_config())
    args = training_arguments(
        tmp_path, learning_rate=1e12, max_steps=6, sam_rho=sam_rho, save_strategy="steps", save_steps=1
    )
    with pytest.raises(FloatingPointError, match=r"(Non-finite training loss .* at step \d|Not saving).*smaller"):
        EpisodicTrainer(model, args, train_dataset={"glyphs": glyphs["train"]}).train()
    finite_checkpoints(tmp_path)  # whatever was written before the divergence is finite
    with pytest.raises(FloatingPointError, match="non-finite logits"):
        evaluate_episodes(model, {"glyphs": glyphs["validation"]}, 2, protocol="fixed", n_way=5, n_shot=1,
                          n_query=1, image_size=16, progress=False)  # fmt: skip


def test_resuming_from_a_checkpoint_without_a_tensor_is_an_error(tmp_path, glyphs):
    from safetensors.torch import load_file, save_file

    args = training_arguments(tmp_path, max_steps=2, save_strategy="steps", save_steps=1)
    EpisodicTrainer(tiny_smat(), args, train_dataset={"glyphs": glyphs["train"]}).train()
    checkpoint = Path(last_complete_checkpoint(tmp_path)).with_name("checkpoint-1")
    weights = next(checkpoint.glob("*.safetensors"))
    tensors = load_file(weights)
    del tensors["delta"]
    save_file(tensors, weights, metadata={"format": "pt"})
    resumed = EpisodicTrainer(tiny_smat(), args, train_dataset={"glyphs": glyphs["train"]})
    with pytest.raises(ValueError, match="missing keys: delta"):
        resumed.train(resume_from_checkpoint=str(checkpoint))


def test_a_half_written_checkpoint_is_skipped_with_a_warning(tmp_path, glyphs):
    args = training_arguments(tmp_path, max_steps=3, save_strategy="steps", save_steps=1)
    EpisodicTrainer(tiny_smat(), args, train_dataset={"glyphs": glyphs["train"]}).train()
    (tmp_path / "checkpoint-3" / "trainer_state.json").write_text("")  # a full disk cut the last write short
    weights = next((tmp_path / "checkpoint-2").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.warns(UserWarning, match="checkpoint-3.*trainer_state.json does not parse"):
        assert last_complete_checkpoint(tmp_path).endswith("checkpoint-1")


@pytest.mark.slow
def test_resuming_from_the_final_checkpoint_trains_nothing(tmp_path, glyphs):
    args = training_arguments(tmp_path, max_steps=2, save_strategy="steps", save_steps=1)
    model = tiny_smat()
    EpisodicTrainer(model, args, train_dataset={"glyphs": glyphs["train"]}).train()
    rerun = EpisodicTrainer(tiny_smat(), args, train_dataset={"glyphs": glyphs["train"]})
    output = rerun.train(resume_from_checkpoint=True)
    assert output.global_step == 2 and sorted(p.name for p in tmp_path.glob("checkpoint-*")) == [
        "checkpoint-1", "checkpoint-2"]  # fmt: skip
    for (name, expected), actual in zip(model.state_dict().items(), rerun.model.state_dict().values(), strict=True):
        assert torch.equal(expected, actual), name
    epochs = training_arguments(tmp_path, max_steps=-1, num_train_epochs=2, train_episodes_per_epoch=2,
                                save_strategy="steps", save_steps=1)  # fmt: skip
    resumed = EpisodicTrainer(tiny_smat(), epochs, train_dataset={"glyphs": glyphs["train"]})
    assert resumed.train(resume_from_checkpoint=True).global_step == 4, "an epoch-based run of another length goes on"
    longer = training_arguments(tmp_path, max_steps=5, save_strategy="steps", save_steps=1)
    assert EpisodicTrainer(tiny_smat(), longer, train_dataset={"glyphs": glyphs["train"]}).train(
        resume_from_checkpoint=True).global_step == 5, "a longer run goes on from the checkpoint"  # fmt: skip


@pytest.mark.parametrize("method", ["smat", "smat, trained-like gates", "protonet"])
def test_bf16_autocast_meta_training_keeps_fp32_weights(tmp_path, glyphs, method):
    # recipes/configs/smat_vits16_metadataset.yaml sets bf16: true; on CPU the Trainer autocasts to bf16 as on GPU.
    torch.manual_seed(0)
    model = tiny_smat() if method.startswith("smat") else ProtoNetModel.from_backbone(tiny_vit_config())
    if method == "smat, trained-like gates":  # saturated: the gates are read from their code, λ > 0
        saturate_gates(model)
        with torch.no_grad():
            model.sparsity_multipliers.fill_(0.1)
    args = training_arguments(tmp_path, bf16=True, max_steps=2)
    trainer = EpisodicTrainer(model, args, train_dataset=glyphs["train"])
    seen = []
    hook = model.backbone.layers[0].attention.q_proj.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    result = trainer.train()
    hook.remove()
    assert math.isfinite(result.training_loss)
    assert torch.bfloat16 in seen, "the forward ran under bf16 autocast"
    assert {p.dtype for p in model.parameters()} == {torch.float32}, "master weights, gates and multipliers stay fp32"
