"""Model cards (YAML front matter with `model-index` results, papers, usage, settings) and Hub round trips of models,
cards, plots, adapters and datasets against the local test Hub of `hub_server.py`."""

import re
import sys
from pathlib import Path

import datasets
import hub_server
import pytest
import torch
import yaml
from conftest import tiny_vit_config
from huggingface_hub import HfApi, ModelCard
from peft import PeftModel
from transformers import AutoConfig, AutoModel, pipeline

from hf_fewshot import ProtoNetModel, SmatModel, load_domain
from hf_fewshot.evaluation import DomainAccuracy, EvaluationResults
from hf_fewshot.hub import adapter_card, fewshot_model_card, push_domains, push_model_folder
from hf_fewshot.models import load_fewshot_model
from hf_fewshot.viz import plot_domain_accuracy

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "recipes"))

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
    model = SmatModel.from_backbone(tiny_vit_config(num_hidden_layers=1), num_experts=2)
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
    model = ProtoNetModel.from_backbone(tiny_vit_config(num_hidden_layers=1))
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
    assert "cat, dog" in str(card) and 'PeftModel.from_pretrained(backbone, "me/task-lora", subfolder="lora")' in str(
        card
    )


# ------------------------------------------------------------------------------- round trips (local test Hub)
@pytest.fixture
def hub(tmp_path):
    """A Hub-compatible server on 127.0.0.1 with the clients pointed at it (tests/hub_server.py)."""
    with hub_server.hub(tmp_path / "hub") as server:
        yield server


def test_model_card_and_plots_round_trip_through_the_hub(hub, tmp_path):
    torch.manual_seed(0)
    model = SmatModel.from_backbone(tiny_vit_config(num_hidden_layers=1), num_experts=2)
    with torch.no_grad():
        model.delta.normal_(std=0.01)
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    fewshot_model_card(model, "user/smat-tiny", RESULTS, plots=["accuracy.png"]).save(folder / "README.md")
    plot_domain_accuracy({"smat": RESULTS}, folder / "accuracy.png")
    push_model_folder(folder, "user/smat-tiny")

    loaded = AutoModel.from_pretrained("user/smat-tiny")
    assert isinstance(loaded, SmatModel)
    for (name, expected), actual in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(expected, actual), name
    card = ModelCard.load("user/smat-tiny")
    assert [r.metric_value for r in card.data.eval_results] == [61.13, 33.19, 54.8]
    assert {"README.md", "accuracy.png", "modeling_smat.py"} <= {
        s.rfilename for s in HfApi().model_info("user/smat-tiny").siblings
    }


def test_domains_push_and_load_through_the_hub(hub):
    glyphs = load_domain("minimeta", "glyphs", "validation").select(range(24))
    push_domains({"glyphs": {"validation": glyphs}}, "user/minimeta")
    pulled = load_domain("user/minimeta", "glyphs", "validation")
    assert pulled["label"] == glyphs["label"] and pulled["class_name"] == glyphs["class_name"]
    with pytest.raises(ValueError, match="neither a local folder nor a reachable Hub dataset"):
        load_domain("user/does-not-exist", "glyphs", "validation")


def test_a_missing_model_repo_is_a_clear_error(hub):
    with pytest.raises(OSError, match="user/no-such-model"):
        load_fewshot_model("user/no-such-model")


def test_adapt_pushes_a_pipeline_classifier_and_its_adapter(hub, tmp_path):
    import adapt

    images = tmp_path / "images"
    emoji = load_domain("minimeta", "emoji", "test")
    labels = emoji["label"]
    for label in sorted(set(labels))[:2]:  # two classes, three images each
        (images / str(label)).mkdir(parents=True)
        for row in [i for i, value in enumerate(labels) if value == label][:3]:
            emoji[row]["image"].save(images / str(label) / f"{row}.png")
    torch.manual_seed(0)
    SmatModel.from_backbone(tiny_vit_config(num_hidden_layers=1), num_experts=2).save_pretrained(tmp_path / "smat")
    argv = ["--images", str(images), "--model", str(tmp_path / "smat"), "--learning_rate", "1e-3", "--steps", "2",
            "--output_dir", str(tmp_path / "adapted"), "--hub_repo_id", "user/my-classifier"]  # fmt: skip
    adapt.main(argv)
    classifier = pipeline("image-classification", model="user/my-classifier")
    assert {p["label"] for p in classifier(str(next(images.glob("*/*.png"))), top_k=2)} == {
        d.name for d in images.iterdir()
    }
    # The same images as a Hub dataset (image + label columns) instead of a folder.
    files = sorted(images.glob("*/*.png"))
    rows = {"image": [str(path) for path in files], "label": [int(path.parent.name) for path in files]}
    datasets.Dataset.from_dict(rows).cast_column("image", datasets.Image()).push_to_hub("user/my-images")
    argv = ["--images", "user/my-images", "--model", str(tmp_path / "smat"), "--learning_rate", "0",
            "--output_dir", str(tmp_path / "from-hub")]  # fmt: skip
    adapt.main(argv)
    assert AutoConfig.from_pretrained(tmp_path / "from-hub" / "classifier").num_labels == 2

    base = AutoModel.from_pretrained("user/my-classifier-lora")
    adapter = PeftModel.from_pretrained(base, "user/my-classifier-lora", subfolder="lora")
    assert any("lora_" in name for name, _ in adapter.named_parameters())
    exported = AutoModel.from_pretrained("user/my-classifier")  # the same task, adapter folded in (its ViT)
    merged = adapter.merge_and_unload().eval()
    with torch.no_grad():
        pixels = torch.randn(2, 3, 16, 16)
        expected = exported(pixel_values=pixels).last_hidden_state[:, 0]
        assert torch.allclose(merged(pixel_values=pixels).last_hidden_state[:, 0], expected, atol=1e-5)
    card = ModelCard.load("user/my-classifier-lora")
    assert card.data.library_name == "peft" and "PeftModel.from_pretrained" in card.text
