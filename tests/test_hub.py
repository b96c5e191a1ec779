"""Model cards (YAML front matter with `model-index` results, papers, usage, settings) and Hub round trips of models,
cards, plots, adapters and datasets against the local test Hub of `hub_server.py`."""

import json
import re
import sys
from pathlib import Path

import datasets
import hub_server
import pytest
import torch
import yaml
from helpers import tiny_vit_config
from huggingface_hub import HfApi, ModelCard
from peft import AutoPeftModel, PeftModel
from transformers import AutoConfig, AutoImageProcessor, AutoModel, ViTModel, pipeline

from hf_fewshot import ProtoNetModel, SmatModel, finetune_on_support, load_domain
from hf_fewshot.evaluation import DomainAccuracy, EvaluationResults
from hf_fewshot.hub import (
    adapter_card,
    fewshot_model_card,
    push_adapter_folder,
    push_domains,
    push_minimeta,
    push_model_folder,
)
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
    # The adapter sits on the meta-tuned model's backbone, not on the DINO weights that model started from.
    assert meta["library_name"] == "peft" and meta["base_model"] == "me/smat-minimeta"
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


@pytest.mark.slow
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


# ------------------------------------------------------------------------------- cards on every save and push
def card_code(card_text: str) -> str:
    """The Python block of a card's "How to use" section."""
    usage = card_text.split("## How to use", 1)[1]
    return re.search(r"```python\n(.*?)```", usage, flags=re.S).group(1)


def write_images(folder: Path) -> None:
    """The files the card's usage names: two images of one emoji class as cats, three of another as dogs."""
    emoji = load_domain("minimeta", "emoji", "test")
    first, second = sorted(set(emoji["label"]))[:2]
    cats = [i for i, label in enumerate(emoji["label"]) if label == first][:2]
    dogs = [i for i, label in enumerate(emoji["label"]) if label == second][:3]
    for name, row in zip(["cat_1", "cat_2", "dog_1", "dog_2", "query"], cats + dogs, strict=True):
        emoji[row]["image"].save(folder / f"{name}.png")


def test_push_to_hub_writes_the_hf_fewshot_card_with_hub_valid_metadata(hub, tmp_path):
    torch.manual_seed(0)
    model = SmatModel.from_backbone(tiny_vit_config(num_hidden_layers=1), num_experts=2)
    model.card_details.update(results=RESULTS, training={"tasks": 800})
    model.push_to_hub("user/smat-pushed")
    card = ModelCard.load("user/smat-pushed")
    assert hub_server.card_metadata_errors(str(card)) == []
    assert card.data.model_name == "user/smat-pushed" and card.data.eval_results[0].metric_value == 61.13
    assert "hf-fewshot" in card.data.tags and "| tasks | 800 |" in card.text
    assert 'AutoModel.from_pretrained("user/smat-pushed")' in card.text
    files = {s.rfilename for s in HfApi().model_info("user/smat-pushed").siblings}
    assert {"preprocessor_config.json", "model.safetensors", "modeling_smat.py", "image_processing.py"} <= files
    assert AutoImageProcessor.from_pretrained("user/smat-pushed").crop_size["height"] == model.config.eval_image_size

    model.save_pretrained(tmp_path / "saved", push_to_hub=True, repo_id="smat-saved")  # a bare name: the user's
    assert ModelCard.load("user/smat-saved").data.model_name == "user/smat-saved"
    assert (tmp_path / "saved" / "preprocessor_config.json").is_file()


def test_the_test_hub_refuses_what_the_hub_refuses(hub, tmp_path):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "README.md").write_text("---\nbase_model: runs/minimeta-pretrain/backbone\n---\n# x\n")
    with pytest.raises(ValueError, match="(?s)Invalid metadata.*base_model"):
        push_model_folder(tmp_path / "bad", "user/bad")


def test_no_card_holds_a_local_path(tmp_path):
    backbone_folder = tmp_path / "runs" / "minimeta-pretrain" / "backbone"
    ViTModel(tiny_vit_config(num_hidden_layers=1)).save_pretrained(backbone_folder)
    data_folder = tmp_path / "data" / "metadataset"
    data_folder.mkdir(parents=True)
    model = ProtoNetModel.from_backbone(str(backbone_folder))
    cards = {
        "model": fewshot_model_card(model, "user/pmf", RESULTS, dataset_id=str(data_folder), plots=["accuracy.png"]),
        "adapter": adapter_card(
            "user/task-lora",
            str(tmp_path / "model"),
            str(backbone_folder),
            {0: "a", 1: "b"},
            learning_rate=1e-3,
            steps=5,
            support_size=4,
        ),  # fmt: skip
    }
    model.save_pretrained(tmp_path / "saved")
    cards["saved"] = ModelCard.load(tmp_path / "saved" / "README.md")
    for kind, card in cards.items():
        text = str(card)
        assert (
            str(tmp_path) not in text and "runs/" not in text and not re.search(r"(?<![\w:/])/(tmp|home|work)/", text)
        )
        assert hub_server.card_metadata_errors(text) == [], kind
        assert "base_model" not in front_matter(card), f"{kind}: a local backbone is no Hub base model"
    assert front_matter(cards["model"])["model-index"][0]["name"] == "user/pmf"
    assert "datasets" not in front_matter(cards["model"])


def test_the_cards_usage_section_runs_as_written(hub, tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = ProtoNetModel.from_backbone(tiny_vit_config(num_hidden_layers=1))
    model.push_to_hub("user/pmf-usage")
    monkeypatch.chdir(tmp_path)
    write_images(tmp_path)
    exec(compile(card_code(ModelCard.load("user/pmf-usage").text), "card", "exec"), {})


def test_results_json_rebuilds_the_card():
    data = json.loads(json.dumps({**RESULTS.to_dict(), **RESULTS.to_json_dict()}))  # as meta_tune writes it
    model = ProtoNetModel.from_backbone(tiny_vit_config(num_hidden_layers=1))
    card = fewshot_model_card(model, "user/pmf", data)
    assert [r.metric_value for r in card.data.eval_results] == [61.13, 33.19, 54.8]


# ------------------------------------------------------------------------------- adapters on their own weights
def lora_task(model, seed=0):
    torch.manual_seed(seed)
    pixels, labels = torch.randn(6, 3, 16, 16), torch.tensor([0, 0, 1, 1, 2, 2])
    return finetune_on_support(model, pixels, labels, mode="lora", learning_rate=1e-2, steps=2, seed=seed)


def features(backbone, pixels) -> torch.Tensor:
    with torch.no_grad():
        return backbone.eval()(pixel_values=pixels, interpolate_pos_encoding=True).last_hidden_state[:, 0]


def test_a_saved_adapter_loads_onto_the_weights_it_was_trained_on(tmp_path):
    torch.manual_seed(0)
    smat = SmatModel.from_backbone(tiny_vit_config(num_hidden_layers=1), num_experts=2)
    with torch.no_grad():
        smat.delta.normal_(std=0.05)  # merged experts differ from the backbone: a wrong base would show
    task = lora_task(smat)
    pixels = torch.randn(4, 3, 16, 16)
    own = features(task.backbone, pixels)
    task.save_adapter(tmp_path / "adapter")
    backbone = AutoModel.from_pretrained(tmp_path / "adapter")  # the README's and the card's route
    readme_route = PeftModel.from_pretrained(backbone, tmp_path / "adapter" / "lora")
    assert (features(readme_route, pixels) - own).abs().max() <= 1e-5
    auto = AutoPeftModel.from_pretrained(str(tmp_path / "adapter" / "lora"))
    assert (features(auto, pixels) - own).abs().max() <= 1e-5
    task.backbone.save_pretrained(tmp_path / "adapter-alone")  # PEFT's own save names no (wrong) base
    assert (
        json.loads((tmp_path / "adapter-alone" / "adapter_config.json").read_text())["base_model_name_or_path"] is None
    )


def test_two_task_adapters_share_one_protonet_base(tmp_path):
    torch.manual_seed(0)
    protonet = ProtoNetModel.from_backbone(tiny_vit_config(num_hidden_layers=1))
    first, second = lora_task(protonet, seed=1), lora_task(protonet, seed=2)
    first.save_adapter(tmp_path / "first")
    second.save_adapter(tmp_path / "second")
    pixels = torch.randn(4, 3, 16, 16)
    model = PeftModel.from_pretrained(AutoModel.from_pretrained(tmp_path / "first"), tmp_path / "first" / "lora", "a")
    model.load_adapter(tmp_path / "second" / "lora", adapter_name="b")
    for name, task in (("a", first), ("b", second)):
        model.set_adapter(name)
        assert (features(model, pixels) - features(task.backbone, pixels)).abs().max() <= 1e-5, name


def test_a_pushed_adapter_names_its_repo_as_base(hub, tmp_path):
    torch.manual_seed(0)
    task = lora_task(SmatModel.from_backbone(tiny_vit_config(num_hidden_layers=1), num_experts=2))
    task.save_adapter(tmp_path / "adapter")
    push_adapter_folder(tmp_path / "adapter", "user/task-lora")
    loaded = PeftModel.from_pretrained(AutoModel.from_pretrained("user/task-lora"), "user/task-lora", subfolder="lora")
    assert loaded.peft_config["default"].base_model_name_or_path == "user/task-lora"
    pixels = torch.randn(2, 3, 16, 16)
    assert (features(loaded, pixels) - features(task.backbone, pixels)).abs().max() <= 1e-5


# ------------------------------------------------------------------------------- MiniMeta on the Hub
@pytest.mark.slow
def test_minimeta_round_trips_through_the_hub_with_class_labels(hub):
    push_minimeta("user/minimeta")
    pulled = datasets.load_dataset("user/minimeta", "emoji", split="validation")
    local = load_domain("minimeta", "emoji", "validation")
    assert isinstance(pulled.features["label"], datasets.ClassLabel)
    assert pulled["label"] == local["label"]
    assert [pulled.features["label"].int2str(i) for i in pulled["label"][:5]] == local["class_name"][:5]
    assert (
        load_domain("user/minimeta", "digits", "test").num_rows == load_domain("minimeta", "digits", "test").num_rows
    )
    card = datasets.load_dataset_builder("user/minimeta", "glyphs").info
    assert card.features is not None
    assert "MiniMeta" in ModelCard.load("user/minimeta", repo_type="dataset").text


@pytest.mark.slow
def test_meta_tune_pushes_the_finished_model_with_its_card_and_plots(hub, tmp_path):
    import meta_tune
    import pretrain

    quick = ["--report_to", "none", "--disable_tqdm", "true", "--use_cpu", "true", "--dataloader_pin_memory", "false"]
    backbone = pretrain.main(["--output_dir", str(tmp_path / "pretrain"), "--max_steps", "1",
                              "--per_device_train_batch_size", "8", *quick])  # fmt: skip
    argv = ["--backbone", str(backbone), "--output_dir", str(tmp_path / "smat"), "--max_steps", "1", "--eval_steps",
            "1", "--save_steps", "1", "--eval_episodes", "2", "--test_episodes", "2", "--test_domains", "glyphs",
            "--max_ways", "5", *quick]  # fmt: skip
    with pytest.raises(ValueError, match="push_to_hub needs a repo"):
        meta_tune.main([*argv, "--push_to_hub", "true"])
    meta_tune.main([*argv, "--push_to_hub", "true", "--hub_model_id", "user/smat-run"])
    files = {s.rfilename for s in HfApi().model_info("user/smat-run").siblings}
    assert {"README.md", "accuracy.png", "expert_density.png", "preprocessor_config.json"} <= files
    assert not any(name.startswith("checkpoint-") for name in files), "the finished model, not the Trainer's folder"
    card = ModelCard.load("user/smat-run")
    assert card.data.model_name == "user/smat-run" and hub_server.card_metadata_errors(str(card)) == []
    assert "## Is the mechanism at work?" in card.text and card.data.eval_results
