"""Model cards: YAML front matter with `model-index` results, the papers, usage and training settings."""

import re

import pytest
import torch
import yaml
from huggingface_hub import ModelCard
from transformers import ViTConfig

from hf_fewshot import ProtoNetModel, SmatModel
from hf_fewshot.evaluation import DomainAccuracy, EvaluationResults
from hf_fewshot.hub import adapter_card, fewshot_model_card

TINY_VIT = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_size=16,
                patch_size=4)  # fmt: skip
RESULTS = EvaluationResults(
    (
        DomainAccuracy("glyphs", 61.13, 2.57, 600, True),
        DomainAccuracy("emoji", 33.19, 2.25, 600, True),
        DomainAccuracy("digits", 54.8, 1.74, 600, False),
    )
)


def front_matter(card: ModelCard) -> dict:
    match = re.match(r"^---\n(.*?)\n---\n", str(card), flags=re.S)
    assert match, "the card starts with YAML front matter"
    return yaml.safe_load(match.group(1))


def test_smat_card_holds_the_results_as_model_index(tmp_path):
    torch.manual_seed(0)
    model = SmatModel.from_backbone(ViTConfig(**TINY_VIT), num_experts=2)
    card = fewshot_model_card(model, "me/smat-minimeta", RESULTS, training={"tasks": 800, "learning_rate": 0.01})
    meta = front_matter(card)
    (index,) = meta["model-index"]
    values = {r["dataset"]["config"]: r["metrics"][0]["value"] for r in index["results"]}
    assert values == {"glyphs": 61.13, "emoji": 33.19, "digits": 54.8}
    assert meta["library_name"] == "transformers" and "smat" in meta["tags"]
    text = str(card)
    assert "| glyphs | ID | 61.13 ± 2.57 |" in text and "| **OOD average** | | **54.80** |" in text
    assert "arXiv:2403.08477" in text and 'AutoModel.from_pretrained("me/smat-minimeta")' in text
    assert "| tasks | 800 |" in text
    card.save(tmp_path / "README.md")
    reloaded = ModelCard.load(tmp_path / "README.md")
    assert [r.metric_value for r in reloaded.data.eval_results] == [61.13, 33.19, 54.8]


def test_protonet_card_without_results_says_so():
    model = ProtoNetModel.from_backbone(ViTConfig(**TINY_VIT))
    card = fewshot_model_card(model, "me/pmf")
    assert "model-index" not in front_matter(card) and "Not evaluated yet." in str(card)
    assert "P>M>F" in str(card) and "Not meta-tuned" in str(card)
    with pytest.raises(ValueError, match="SMAT and ProtoNet"):
        fewshot_model_card(model.backbone, "me/vit")


def test_adapter_card_lists_the_classes_and_how_to_load_it():
    card = adapter_card("me/task-lora", "me/smat-minimeta", "facebook/dino-vits16", {0: "cat", 1: "dog"},
                        learning_rate=1e-3, steps=50, support_size=10)  # fmt: skip
    meta = front_matter(card)
    assert meta["library_name"] == "peft" and meta["base_model"] == "facebook/dino-vits16"
    assert "cat, dog" in str(card) and 'PeftModel.from_pretrained(backbone, "me/task-lora")' in str(card)
