"""The recipes end to end on a minimal budget: pretrain → meta-tune → results table; configs; argument parsing."""

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from helpers import tiny_vit_config
from huggingface_hub import ModelCard
from PIL import Image
from transformers import AutoConfig, AutoImageProcessor, AutoModel, pipeline

from hf_fewshot import FewShotTrainingArguments, SmatModel, load_domain
from hf_fewshot.data import EvalTransform
from hf_fewshot.evaluation import EvaluationResults
from hf_fewshot.training.cli import parse_recipe_arguments

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
sys.path.insert(0, str(RECIPES))

import adapt  # noqa: E402
import evaluate_fewshot  # noqa: E402
import meta_tune  # noqa: E402
import pretrain  # noqa: E402

QUICK = ["--report_to", "none", "--disable_tqdm", "true", "--use_cpu", "true", "--dataloader_pin_memory", "false"]


@pytest.fixture(scope="module")
def pretrained_backbone(tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("pretrain")
    argv = ["--output_dir", str(output), "--max_steps", "3", "--per_device_train_batch_size", "8", *QUICK]
    return pretrain.main(argv)


@pytest.mark.slow
def test_pretrain_saves_a_backbone_that_loads_with_automodel(pretrained_backbone):
    backbone = AutoModel.from_pretrained(pretrained_backbone)
    assert (
        backbone.config.model_type == "vit" and backbone.config.hidden_size == pretrain.TINY_VIT_CONFIG["hidden_size"]
    )
    assert not list(pretrained_backbone.parent.glob(".backbone-*")), "no staging folder left behind"
    assert pretrained_backbone.stat().st_mode & 0o044, "readable by others, as save_pretrained's folders are"
    assert not any("glyphs/" in name for name in backbone.config.id2label.values()), "no classifier labels"


@pytest.mark.parametrize("method", ["smat", "protonet"])
@pytest.mark.slow
def test_meta_tune_trains_saves_and_prints_the_results_table(tmp_path, pretrained_backbone, method):
    argv = [
        "--method", method, "--backbone", str(pretrained_backbone), "--output_dir", str(tmp_path),
        "--max_steps", "2", "--eval_steps", "1", "--save_steps", "1", "--eval_episodes", "2",
        "--test_episodes", "3", "--test_domains", "glyphs", "digits", "--max_ways", "5", *QUICK,
    ]  # fmt: skip
    table = meta_tune.main(argv)
    assert "| glyphs | ID |" in table and "| digits | OOD |" in table
    assert f"| domain | split | backbone (no meta-tuning) | {method} |" in table
    assert (tmp_path / "results.md").read_text().strip() == table
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results[method]) >= {"glyphs_accuracy", "glyphs_ci95", "id_accuracy", "ood_accuracy"}
    rebuilt = EvaluationResults.from_json_dict(results[method])  # results.json rebuilds the card's results
    assert rebuilt["glyphs"].num_episodes == 3 and len(rebuilt["glyphs"].episode_accuracies) == 3
    assert {"train_results.json", "all_results.json", "trainer_state.json"} <= {p.name for p in tmp_path.iterdir()}
    model = AutoModel.from_pretrained(tmp_path / "model")
    assert isinstance(model, meta_tune.METHODS[method].model_class)
    card = ModelCard.load(tmp_path / "model" / "README.md")
    assert {r.dataset_config for r in card.data.eval_results} == {"glyphs", "digits"}
    assert card.data.model_name == tmp_path.name, "named after the run, not 'model'"
    processor = AutoImageProcessor.from_pretrained(tmp_path / "model")
    assert processor.crop_size["height"] == meta_tune.DEFAULTS["image_size"], "the run's image size"
    assert "![accuracy.png](accuracy.png)" in card.text and (tmp_path / "model" / "accuracy.png").is_file()
    assert (tmp_path / "model" / "expert_density.png").is_file() == (method == "smat")
    assert ("## Is the mechanism at work?" in card.text) == (method == "smat")
    if method == "smat":  # the diagnostics of the test episodes, and the decay derived from 2 updates × 2 tasks
        assert set(results["smat_diagnostics"]) >= {"router_tau", "gates_saturated", "routing_cosine_min"}
        assert model.config.router_tau_decay_tasks == pytest.approx(0.36 * 2 * 2 / 4.5)
        assert "| routing cosine glyphs / digits |" in card.text


@pytest.mark.parametrize(
    "config", ["smat_vits16_metadataset.yaml", "pmf_vits16_metadataset.yaml", "pretrain_vits16_sam.yaml"]
)
def test_shipped_configs_parse(config):
    recipe = pretrain if config.startswith("pretrain") else meta_tune
    first = recipe.PretrainArguments if recipe is pretrain else recipe.MetaTuneArguments
    parsed, training = parse_recipe_arguments(
        (first, FewShotTrainingArguments), recipe.DEFAULTS, [str(RECIPES / "configs" / config), "--use_cpu", "true"]
    )
    assert training.image_size == 128
    assert parsed.backbone == "facebook/dino-vits16"
    if config.startswith("smat"):
        assert parsed.model_config["num_experts"] == 8 and training.gate_learning_rate == 1e6
        assert training.gradient_accumulation_steps == 4 and training.max_grad_norm == 0.0


def test_recipe_arguments_reject_unknown_names(tmp_path):
    config = tmp_path / "typo.yaml"
    config.write_text("method: smat\nlearning_rat: 0.1\n")
    with pytest.raises(ValueError, match="learning_rat"):
        parse_recipe_arguments((meta_tune.MetaTuneArguments, FewShotTrainingArguments), {}, [str(config)])
    with pytest.raises(ValueError, match="method must be one of"):
        parse_recipe_arguments((meta_tune.MetaTuneArguments, FewShotTrainingArguments), {}, ["--method", "maml"])


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    """Three emoji classes, four images each, as a user's `{class_name}/*.png` folder."""
    folder = tmp_path_factory.mktemp("my_images")
    emoji = load_domain("minimeta", "emoji", "test")
    labels = emoji["label"]
    for label in sorted(set(labels))[:3]:
        rows = [i for i, value in enumerate(labels) if value == label][:4]
        (folder / f"class_{label}").mkdir()
        for row in rows:
            emoji[row]["image"].save(folder / f"class_{label}" / f"{row}.png")
    return folder


@pytest.fixture(scope="module")
def tiny_smat_folder(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    config = tiny_vit_config(num_hidden_layers=1)
    folder = tmp_path_factory.mktemp("smat")
    SmatModel.from_backbone(config, num_experts=2).save_pretrained(folder)
    return folder


@pytest.mark.slow
def test_adapt_exports_a_pipeline_ready_classifier_and_a_lora_adapter(tmp_path, image_folder, tiny_smat_folder):
    output = adapt.main(
        ["--images", str(image_folder), "--model", str(tiny_smat_folder), "--learning_rate", "1e-3",
         "--steps", "3", "--output_dir", str(tmp_path)]
    )  # fmt: skip
    assert (output / "adapter" / "lora" / "adapter_config.json").is_file()
    assert AutoConfig.from_pretrained(output / "adapter").model_type == "vit", "the adapter's base travels with it"
    classifier = pipeline("image-classification", model=str(output / "classifier"))
    image = next(image_folder.glob("class_*/*.png"))
    predictions = classifier(str(image), top_k=3)
    assert {p["label"] for p in predictions} == {d.name for d in image_folder.iterdir()}

    # Images of any size: the saved processor gives the library's pixels, so the pipeline's answer is the
    # few-shot prediction (the classifier's logits are the prototype logits times |f(x)|).
    size = classifier.model.config.image_size
    odd_sizes = [(37, 53), (90, 41), (size + 3, size + 1), (200, 200)]
    paths = sorted(image_folder.glob("*/*.png"))[: len(odd_sizes)]
    images = [Image.open(path).convert("RGB").resize(shape) for path, shape in zip(paths, odd_sizes, strict=True)]
    processor = AutoImageProcessor.from_pretrained(output / "classifier")
    library_pixels = EvalTransform(size)(images)
    assert (processor(images, return_tensors="pt")["pixel_values"] - library_pixels).abs().max() <= 1e-3
    with torch.no_grad():
        few_shot = classifier.model(pixel_values=library_pixels).logits.argmax(-1)
    labels = [classifier(image, top_k=1)[0]["label"] for image in images]
    assert labels == [classifier.model.config.id2label[int(c)] for c in few_shot]

    config = AutoConfig.from_pretrained(output / "classifier")
    assert config.architectures == ["ViTForImageClassification"] and config.num_labels == 3


@pytest.mark.slow
def test_adapt_explains_unusable_image_folders(tmp_path, image_folder, tiny_smat_folder):
    single = tmp_path / "single"
    shutil.copytree(next(image_folder.iterdir()), single / "only_class")
    with pytest.raises(ValueError, match="at least 2"):
        adapt.main(["--images", str(single), "--model", str(tiny_smat_folder), "--learning_rate", "0"])
    broken = tmp_path / "broken"
    shutil.copytree(image_folder, broken)
    next(broken.glob("class_*/*.png")).write_bytes(b"not a png")
    with pytest.raises(ValueError, match="Cannot decode"):
        adapt.main(["--images", str(broken), "--model", str(tiny_smat_folder), "--learning_rate", "0"])


@pytest.mark.slow
def test_evaluate_puts_a_backbone_and_a_fewshot_model_in_one_table(tmp_path, pretrained_backbone, tiny_smat_folder):
    table = evaluate_fewshot.main(
        ["--models", str(pretrained_backbone), "--domains", "digits", "--num_episodes", "2", "--max_ways", "5",
         "--output", str(tmp_path / "table.md")]
    )  # fmt: skip
    assert f"| domain | split | {pretrained_backbone} |" in table and "| digits | OOD |" in table
    assert json.loads((tmp_path / "table.json").read_text())[str(pretrained_backbone)]["digits_accuracy"] >= 0


@pytest.mark.parametrize(
    "line, message",
    [
        ("sam_rho: true", "sam_rho: True is not a valid float"),
        ("max_steps: 1.5", "max_steps: 1.5 is not a valid int"),
        ("seed: 0.7", "seed: 0.7 is not a valid int"),
        ("test_episodes: -3", "test_episodes must be ≥ 0"),
        ("lr_scheduler_type: cosin", "lr_scheduler_type must be one of"),
        ("learning_rate: .nan", "learning_rate must be a finite number"),
        ("n_way: 5", "apply to the 'fixed' episode protocol only"),
        ("dataloader_pin_memory: 2", "dataloader_pin_memory: 2 is not a valid boolean"),
    ],
)
def test_yaml_values_are_checked_like_command_line_flags(tmp_path, line, message):
    config = tmp_path / "config.yaml"
    config.write_text(line + "\n")
    with pytest.raises(ValueError, match=message):
        parse_recipe_arguments(
            (meta_tune.MetaTuneArguments, FewShotTrainingArguments), meta_tune.DEFAULTS, [str(config)]
        )
    config.write_text("sam_rho: 0.1\nmax_steps: 7\ntrain_domains: glyphs\nbf16: false\n")
    args, training = parse_recipe_arguments(
        (meta_tune.MetaTuneArguments, FewShotTrainingArguments), meta_tune.DEFAULTS, [str(config), "--max_steps", "9"]
    )
    assert (training.sam_rho, training.max_steps, args.train_domains, training.bf16) == (0.1, 9, ["glyphs"], False)


def test_adapt_refuses_a_learning_rate_that_is_not_a_number(tiny_smat_folder, image_folder):
    with pytest.raises(ValueError, match="learning_rate must be a finite number"):
        adapt.main(["--images", str(image_folder), "--model", str(tiny_smat_folder), "--learning_rate", "nan"])


def test_a_required_argument_can_come_from_the_yaml_file(tmp_path):
    import convert_metadataset

    config = tmp_path / "convert.yaml"
    config.write_text("records_root: /data/records\n")
    (args,) = parse_recipe_arguments((convert_metadataset.ConvertArguments,), {}, [str(config)])
    assert args.records_root == "/data/records"


def saved_tensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return {name: tensor for file in sorted(folder.glob("*.safetensors")) for name, tensor in load_file(file).items()}


@pytest.mark.slow
def test_the_same_seed_gives_bit_identical_recipe_runs(tmp_path, pretrained_backbone, image_folder, tiny_smat_folder):
    """Every recipe twice with one seed: every saved tensor is the same (issue 13, item 8)."""
    runs = []
    for attempt in ("a", "b"):
        folder = tmp_path / attempt
        torch.randn(1 if attempt == "a" else 7)  # whatever ran before in the process must not matter
        saved = [pretrain.main(
            ["--output_dir", str(folder / "pretrain"), "--max_steps", "2", "--per_device_train_batch_size", "8",
             "--seed", "3", *QUICK]
        )]  # fmt: skip
        for method in ("smat", "protonet"):
            meta_tune.main(
                ["--method", method, "--backbone", str(pretrained_backbone), "--output_dir", str(folder / method),
                 "--max_steps", "2", "--eval_strategy", "no", "--save_strategy", "no", "--load_best_model_at_end",
                 "false", "--test_episodes", "0", "--max_ways", "5", "--seed", "3", *QUICK]
            )  # fmt: skip
            saved.append(folder / method / "model")
        torch.randn(1 if attempt == "a" else 7)
        adapted = adapt.main(
            ["--images", str(image_folder), "--model", str(tiny_smat_folder), "--learning_rate", "1e-2",
             "--steps", "2", "--output_dir", str(folder / "adapted"), "--seed", "3"]
        )  # fmt: skip
        saved += [adapted / "classifier", adapted / "adapter" / "lora"]
        runs.append([saved_tensors(path) for path in saved])
    for first, second in zip(*runs, strict=True):
        assert first.keys() == second.keys() and first
        differing = [name for name in first if not torch.equal(first[name], second[name])]
        assert not differing, f"{len(differing)} of {len(first)} tensors differ, e.g. {differing[:3]}"


def folder_snapshot(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_rerunning_a_finished_run_changes_nothing_and_redoes_only_a_missing_final_save(tmp_path, pretrained_backbone):
    argv = [
        "--backbone", str(pretrained_backbone), "--output_dir", str(tmp_path), "--max_steps", "2", "--eval_steps",
        "1", "--save_steps", "1", "--eval_episodes", "2", "--test_episodes", "2", "--test_domains", "glyphs",
        "--max_ways", "5", *QUICK,
    ]  # fmt: skip
    table = meta_tune.main(argv)
    finished = folder_snapshot(tmp_path)
    assert meta_tune.main(argv) == table
    assert folder_snapshot(tmp_path) == finished, "no step trained, no checkpoint rotated, nothing rewritten"

    # Killed during the final save: the checkpoints are complete, the model folder is not there yet.
    shutil.rmtree(tmp_path / "model")
    (tmp_path / "results.json").unlink()
    (tmp_path / ".model-interrupted").mkdir()
    checkpoints = sorted(p.name for p in tmp_path.glob("checkpoint-*"))
    meta_tune.main(argv)
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == checkpoints
    assert not (tmp_path / ".model-interrupted").exists(), "the staging folder of the interrupted save is gone"
    reloaded, original = saved_tensors(tmp_path / "model"), saved_tensors(Path(checkpoint_of_best(tmp_path)))
    assert all(torch.equal(reloaded[name], original[name]) for name in original)

    with pytest.raises(ValueError, match=r"holds a run with other settings \(learning_rate\)"):
        meta_tune.main([*argv, "--learning_rate", "0.5"])
    shutil.rmtree(tmp_path / "model")  # checkpoints only: still never resumed into a mixture of two settings
    with pytest.raises(ValueError, match=r"holds a run with other settings \(learning_rate\)"):
        meta_tune.main([*argv, "--learning_rate", "0.5"])


def checkpoint_of_best(output_dir: Path) -> str:
    state = json.loads((Path(sorted(output_dir.glob("checkpoint-*"))[-1]) / "trainer_state.json").read_text())
    return state["best_model_checkpoint"]


@pytest.mark.slow
def test_rerunning_a_finished_pretraining_reuses_its_backbone(tmp_path):
    argv = ["--output_dir", str(tmp_path), "--max_steps", "2", "--per_device_train_batch_size", "8", *QUICK]
    backbone = pretrain.main(argv)
    finished = folder_snapshot(tmp_path)
    assert pretrain.main(argv) == backbone and folder_snapshot(tmp_path) == finished
    shutil.rmtree(backbone)  # killed during the final save
    pretrain.main(argv)
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-2"] and backbone.is_dir()


@pytest.mark.slow
def test_meta_tune_reports_to_tensorboard_when_asked(tmp_path, pretrained_backbone):
    argv = [
        "--backbone", str(pretrained_backbone), "--output_dir", str(tmp_path), "--max_steps", "2", "--eval_steps",
        "1", "--save_steps", "1", "--eval_episodes", "2", "--test_episodes", "0", "--max_ways", "5",
        "--logging_steps", "1", *QUICK, "--report_to", "tensorboard",
    ]  # fmt: skip
    meta_tune.main(argv)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = tmp_path.glob("runs/*/events.out.tfevents.*")
    logged = EventAccumulator(str(events)).Reload().Tags()["scalars"]
    assert {"train/loss", "eval/accuracy"} <= set(logged), logged
