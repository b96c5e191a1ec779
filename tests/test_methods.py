"""Adding a method: one configuration + modeling pair and one `register_fewshot_method` call, written here in the
test, run through the trainer, the evaluation, fine-tuning, the Auto classes and the card without a library edit."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_vit_config
from transformers import AutoConfig, AutoModel

from hf_fewshot import (
    METHODS,
    EpisodicTrainer,
    FewShotTrainingArguments,
    evaluate_episodes,
    finetune_on_support,
    load_domain,
    register_fewshot_method,
)
from hf_fewshot.hub import fewshot_model_card
from hf_fewshot.methods import get_method, method_for
from hf_fewshot.models import FewShotConfig, FewShotOutput, FewShotPreTrainedModel, FewShotTask
from hf_fewshot.models.modeling_fewshot import build_backbone, check_episode, class_prototypes, cosine_logits


class NearestMeanConfig(FewShotConfig):
    model_type = "fewshot_test_nearest_mean"
    summary = "**Nearest mean**: a backbone trained end to end with a fixed cosine prototype head."
    papers = ("A test method, no paper",)


class NearestMeanModel(FewShotPreTrainedModel):
    config_class = NearestMeanConfig

    def __init__(self, config):
        super().__init__(config)
        self.backbone = build_backbone(config.backbone_config)
        self.post_init()

    def forward(self, support_pixel_values, support_labels, query_pixel_values, query_labels=None):
        n_way = check_episode(support_pixel_values, support_labels, query_pixel_values, query_labels)
        prototypes = class_prototypes(self.embed(support_pixel_values), support_labels, n_way)
        logits = cosine_logits(self.embed(query_pixel_values), prototypes, self.config.logit_scale)
        loss = None if query_labels is None else F.cross_entropy(logits, query_labels)
        return FewShotOutput(loss=loss, logits=logits)

    def prepare_task(self, support_pixel_values, support_labels):
        n_way = check_episode(support_pixel_values, support_labels)
        with torch.no_grad():
            prototypes = class_prototypes(self.embed(support_pixel_values), support_labels, n_way)
        return FewShotTask(self.backbone, prototypes, self.config.logit_scale, 0.0, support_pixel_values.shape[-2:])


@pytest.fixture(scope="module")
def method():
    return register_fewshot_method("nearest_mean", NearestMeanConfig, NearestMeanModel)


def glyph_classes(split: str, count: int = 8):
    data = load_domain("minimeta", "glyphs", split)
    labels = np.asarray(data["label"])
    return data.select(np.flatnonzero(np.isin(labels, np.unique(labels)[:count])))


def test_a_registered_method_trains_evaluates_finetunes_and_gets_a_card(method, tmp_path):
    assert get_method("nearest_mean") is method and "nearest_mean" in METHODS
    torch.manual_seed(0)
    model = NearestMeanModel.from_backbone(tiny_vit_config(num_hidden_layers=1))
    assert method_for(model) is method
    args = FewShotTrainingArguments(
        output_dir=str(tmp_path), max_steps=2, learning_rate=1e-3, episode_protocol="fixed", n_way=5, n_shot=2,
        n_query=2, image_size=16, eval_episodes=2, save_strategy="no", use_cpu=True, report_to="none",
        disable_tqdm=True, train_episodes_per_epoch=8,
    )  # fmt: skip
    trainer = EpisodicTrainer(model, args, train_dataset={"glyphs": glyph_classes("train")},
                              eval_dataset={"glyphs": glyph_classes("validation")})  # fmt: skip
    trainer.train()
    assert "eval_glyphs_accuracy" in trainer.evaluate()
    optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)  # accelerate wraps it
    assert isinstance(optimizer, torch.optim.AdamW), "no optimiser registered: the Trainer's default"

    results = evaluate_episodes(model, {"digits": load_domain("minimeta", "digits", "test")}, 2, image_size=16,
                                max_ways=5, progress=False)  # fmt: skip
    assert 0 <= results["digits"].mean <= 100
    pixels, labels = torch.randn(6, 3, 16, 16), torch.tensor([0, 0, 1, 1, 2, 2])
    task = finetune_on_support(model, pixels, labels, mode="full", learning_rate=1e-3, steps=1)
    assert task(pixels).shape == (6, 3)

    model.save_pretrained(tmp_path / "saved")
    assert isinstance(AutoModel.from_pretrained(tmp_path / "saved"), NearestMeanModel)
    assert AutoConfig.from_pretrained(tmp_path / "saved").model_type == "fewshot_test_nearest_mean"
    card = fewshot_model_card(model, "me/nearest-mean", results)
    assert "**Nearest mean**" in card.text and "A test method, no paper" in card.text
    assert card.data.eval_results[0].metric_value == round(results["digits"].mean, 2)


def test_registration_refuses_what_cannot_work():
    with pytest.raises(TypeError, match="subclass FewShotConfig"):
        register_fewshot_method("broken", dict, NearestMeanModel)
    with pytest.raises(ValueError, match="already the method 'smat'"):
        register_fewshot_method("smat_again", get_method("smat").config_class, get_method("smat").model_class)
    with pytest.raises(ValueError, match="Unknown method 'maml'"):
        get_method("maml")
