"""Real Hub round trips (transformers, PEFT, datasets, HfApi) against the local test Hub of `hub_server.py`."""

import os

import datasets
import hub_server
import huggingface_hub
import pytest
import torch
from huggingface_hub import HfApi, ModelCard
from huggingface_hub.errors import RepositoryNotFoundError
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModel, ViTConfig, ViTModel


@pytest.fixture
def hub(tmp_path):
    """A running test Hub, with the clients pointed at it and online for the duration of the test."""
    with hub_server.hub(tmp_path) as server:
        yield server


def tiny_vit(seed: int = 0) -> ViTModel:
    torch.manual_seed(seed)
    config = ViTConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_size=16, patch_size=4
    )
    return ViTModel(config).eval()


def test_model_and_model_card_round_trip(hub):
    model = tiny_vit()
    model.push_to_hub("user/tiny-vit")
    loaded = AutoModel.from_pretrained("user/tiny-vit")

    assert type(loaded) is ViTModel
    expected, actual = model.state_dict(), loaded.state_dict()
    assert expected.keys() == actual.keys()
    assert all(torch.equal(expected[name], actual[name]) for name in expected)

    ModelCard("---\nlicense: mit\ntags:\n- few-shot\n---\n# Tiny ViT\n").push_to_hub("user/tiny-vit")
    card = ModelCard.load("user/tiny-vit")
    assert card.data.license == "mit" and card.data.tags == ["few-shot"]
    assert "# Tiny ViT" in card.text
    files = {sibling.rfilename for sibling in HfApi().model_info("user/tiny-vit").siblings}
    assert {"config.json", "model.safetensors", "README.md"} <= files


def test_peft_adapter_round_trip(hub):
    adapted = get_peft_model(tiny_vit(), LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    adapted.push_to_hub("user/adapter")
    restored = PeftModel.from_pretrained(tiny_vit(), "user/adapter").eval()

    pixels = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(adapted.eval()(pixel_values=pixels).last_hidden_state, restored(pixels).last_hidden_state)
        assert not torch.equal(tiny_vit()(pixel_values=pixels).last_hidden_state, restored(pixels).last_hidden_state)


def test_dataset_round_trip(hub):
    rows = {"glyph": ["a", "b", "c"], "label": [0, 1, 2], "pixels": [b"\x00\x01", b"\x02", b""]}
    datasets.Dataset.from_dict(rows).push_to_hub("user/data", config_name="glyphs")
    loaded = datasets.load_dataset("user/data", "glyphs", split="train")

    assert loaded.to_dict() == rows
    assert HfApi().file_exists("user/data", "glyphs/train-00000-of-00001.parquet", repo_type="dataset")


def test_missing_repo_is_reported_as_not_found(hub):
    api = HfApi()
    with pytest.raises(RepositoryNotFoundError) as error:
        api.model_info("user/does-not-exist")
    assert error.value.response.status_code == 404
    assert error.value.response.headers["X-Error-Code"] == "RepoNotFound"
    assert not api.repo_exists("user/does-not-exist")
    assert not api.repo_exists("user/does-not-exist", repo_type="dataset")


def test_settings_are_restored(tmp_path):
    before = (os.environ.get("HF_HUB_OFFLINE"), huggingface_hub.constants.HF_HUB_OFFLINE, datasets.config.HF_ENDPOINT)
    with hub_server.hub(tmp_path) as server:
        assert not huggingface_hub.constants.is_offline_mode()
        assert huggingface_hub.constants.ENDPOINT == datasets.config.HF_ENDPOINT == server.url
    assert (os.environ.get("HF_HUB_OFFLINE"), huggingface_hub.constants.HF_HUB_OFFLINE) == before[:2]
    assert before[2] == datasets.config.HF_ENDPOINT
