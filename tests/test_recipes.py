"""The recipes end to end on a minimal budget: pretrain → meta-tune → results table; configs; argument parsing."""

import json
import sys
from pathlib import Path

import pytest
from transformers import AutoModel

from hf_fewshot import FewShotTrainingArguments
from hf_fewshot.training.cli import parse_recipe_arguments

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
sys.path.insert(0, str(RECIPES))

import meta_tune  # noqa: E402
import pretrain  # noqa: E402

QUICK = ["--report_to", "none", "--disable_tqdm", "true", "--use_cpu", "true", "--dataloader_pin_memory", "false"]


@pytest.fixture(scope="module")
def pretrained_backbone(tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("pretrain")
    argv = ["--output_dir", str(output), "--max_steps", "3", "--per_device_train_batch_size", "8", *QUICK]
    return pretrain.main(argv)


def test_pretrain_saves_a_backbone_that_loads_with_automodel(pretrained_backbone):
    backbone = AutoModel.from_pretrained(pretrained_backbone)
    assert (
        backbone.config.model_type == "vit" and backbone.config.hidden_size == pretrain.TINY_VIT_CONFIG["hidden_size"]
    )
    assert not list(pretrained_backbone.parent.glob(".backbone-*")), "no staging folder left behind"


@pytest.mark.parametrize("method", ["smat", "protonet"])
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
    model = AutoModel.from_pretrained(tmp_path / "model")
    assert isinstance(model, meta_tune.METHODS[method])


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
