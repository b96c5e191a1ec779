"""Test-time adaptation: full and LoRA fine-tuning on the support set, the lr chooser, backbone selection."""

import math

import pytest
import torch
from helpers import tiny_vit_config
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import Dinov2Config, Dinov2Model

from hf_fewshot import EpisodeCollator, EpisodeSampler, ProtoNetModel, SmatModel, adaptation, load_domain
from hf_fewshot.adaptation import (
    BackbonePool,
    choose_learning_rate,
    finetune_on_support,
    leave_one_out_accuracy,
    pseudo_episode,
    select_backbone,
)
from hf_fewshot.data import EvalTransform
from hf_fewshot.models.modeling_fewshot import backbone_features


def tiny(model_class=ProtoNetModel, **kwargs):
    torch.manual_seed(0)
    return model_class.from_backbone(tiny_vit_config(), **kwargs)


@pytest.fixture(scope="module")
def episode():
    """A 5-way 5-shot 5-query task from MiniMeta glyphs' test classes."""
    split = load_domain("minimeta", "glyphs", "test")
    sampler = EpisodeSampler.from_dataset(split, protocol="fixed", n_way=5, n_shot=5, n_query=5, seed=3)
    return EpisodeCollator(split, EvalTransform(16))(sampler.episode(0))


def accuracy(task, pixels, labels) -> float:
    return (task(pixels).argmax(-1) == labels).float().mean().item()


def snapshot(module):
    return {name: tensor.detach().clone() for name, tensor in module.state_dict().items()}


def test_full_finetuning_moves_a_copy_of_the_backbone_and_fits_the_support_set(episode):
    model = tiny()
    before_model = snapshot(model)
    support, labels = episode["support_pixel_values"], episode["support_labels"]
    untuned = finetune_on_support(model, support, labels, "full", learning_rate=0.0)
    task = finetune_on_support(model, support, labels, "full", learning_rate=1e-3, steps=60)
    assert accuracy(task, support, labels) > accuracy(untuned, support, labels)
    after_model = snapshot(model)
    assert all(torch.equal(before_model[k], after_model[k]) for k in before_model), "the model is never touched"
    moved = [k for k, v in task.backbone.state_dict().items() if not torch.equal(v, before_model[f"backbone.{k}"])]
    assert len(moved) > 0.9 * len(task.backbone.state_dict()), "full fine-tuning moves (nearly) every tensor"
    assert (task.scale, task.bias) == (10.0, 0.0), "the head's scale and bias stay fixed"


def test_lora_trains_only_the_adapter_and_reloads_to_identical_logits(episode, tmp_path):
    model = tiny()
    support, labels, query = episode["support_pixel_values"], episode["support_labels"], episode["query_pixel_values"]
    untuned = finetune_on_support(model, support, labels, "lora", learning_rate=0.0)
    task = finetune_on_support(model, support, labels, "lora", learning_rate=1e-3, steps=20)
    assert isinstance(task.backbone, PeftModel)
    assert accuracy(task, support, labels) > accuracy(untuned, support, labels)
    base = snapshot(model.backbone)
    lora_moved, base_moved = [], []
    for name, tensor in task.backbone.state_dict().items():
        if "lora_" in name:
            lora_moved.append(not torch.allclose(tensor, torch.zeros_like(tensor)) if "lora_B" in name else True)
        else:
            plain = name.removeprefix("base_model.model.").replace(".base_layer", "")
            base_moved.append(not torch.equal(tensor, base[plain]))
    assert lora_moved and all(lora_moved), "every LoRA B matrix left zero: the adapter trained"
    assert not any(base_moved), "the base weights are untouched"
    assert {n.split(".")[-2] for n, _ in task.backbone.named_modules() if n.endswith("lora_A")} <= {"q_proj", "v_proj"}

    exported = task.to_image_classifier()  # the adapter folded into a plain ViTForImageClassification
    with torch.no_grad():
        assert torch.equal(exported(pixel_values=query).logits.argmax(-1), task(query).argmax(-1))
    assert isinstance(task.backbone, PeftModel), "exporting leaves the task's adapter in place"

    task.backbone.save_pretrained(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    reloaded = PeftModel.from_pretrained(tiny().backbone, tmp_path / "adapter").eval()
    with torch.no_grad():
        kwargs = {"interpolate_pos_encoding": True}
        expected = task.backbone(pixel_values=query, **kwargs).last_hidden_state[:, 0]
        assert torch.equal(reloaded(pixel_values=query, **kwargs).last_hidden_state[:, 0], expected)

    # Two task adapters on one base model, switched by name.
    other = finetune_on_support(model, support, labels, "lora", learning_rate=1e-2, steps=5, seed=1)
    other.backbone.save_pretrained(tmp_path / "other")
    shared = PeftModel.from_pretrained(tiny().backbone, tmp_path / "adapter", adapter_name="glyphs_a").eval()
    shared.load_adapter(tmp_path / "other", adapter_name="glyphs_b")
    with torch.no_grad():
        shared.set_adapter("glyphs_b")
        second = shared(pixel_values=query, **kwargs).last_hidden_state[:, 0]
        shared.set_adapter("glyphs_a")
        first = shared(pixel_values=query, **kwargs).last_hidden_state[:, 0]
    assert torch.equal(first, expected) and not torch.equal(first, second)


def features_and_gradients(features, backbone, pixels):
    """The features and the gradients of a random projection of them (not |f|²: constant after the LayerNorm), but
    for the key biases' (zero: softmax ignores a shift shared by every key), so rounding noise alone."""
    values = features(backbone, pixels)
    parameters = [p for n, p in backbone.named_parameters() if p.requires_grad and not n.endswith("k_proj.bias")]
    direction = torch.randn(values.shape, generator=torch.Generator().manual_seed(0))
    return values, torch.autograd.grad((values * direction).sum(), parameters)


def assert_same_up_to_rounding(fast, full, rtol=1e-5):
    errors = [((a - b).norm() / b.norm()).item() for a, b in zip(fast, full, strict=True)]
    assert max(errors) <= rtol, errors


@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")  # PEFT asks it
def test_the_steps_run_the_last_vit_layer_for_the_cls_token_alone_with_the_same_results(episode):
    support = episode["support_pixel_values"]
    vit = tiny().backbone.train().requires_grad_(True)
    lora = get_peft_model(tiny().backbone, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], lora_dropout=0.0))
    with torch.no_grad():  # a trained adapter: B ≠ 0
        for name, parameter in lora.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.1)
    for backbone in (vit, lora.train()):
        tokens = []  # what the last layer's MLP sees: the CLS token alone on the fast path
        last_mlp = backbone.get_base_model().layers[-1].mlp if backbone is lora else backbone.layers[-1].mlp
        last_mlp.register_forward_hook(lambda module, inputs, output, seen=tokens: seen.append(inputs[0].shape[1]))
        for implementation in ("sdpa", "eager"):
            backbone.config._attn_implementation = implementation
            fast, fast_gradients = features_and_gradients(adaptation._support_features, backbone, support)
            full, full_gradients = features_and_gradients(backbone_features, backbone, support)
            assert_same_up_to_rounding([fast], [full])
            assert_same_up_to_rounding(fast_gradients, full_gradients)
        assert tokens == [1, 17, 1, 17]  # 16 patches + CLS on the full forward
    # Anything else takes the full forward: a Dinov2, a ViT with dropout.
    dinov2 = Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                      image_size=16, patch_size=4)).eval()  # fmt: skip
    dropout = tiny_vit_config(hidden_dropout_prob=0.1)
    dropout_vit = ProtoNetModel.from_backbone(dropout).backbone.eval()
    with torch.no_grad():
        for backbone in (dinov2, dropout_vit):
            assert torch.equal(adaptation._support_features(backbone, support), backbone_features(backbone, support))


def test_finetuning_matches_the_full_forward_up_to_rounding(episode, monkeypatch):
    """The CLS-only last layer changes only fp32 rounding: the same steps as with the plain full forward."""
    model = tiny()
    support, labels, query = episode["support_pixel_values"], episode["support_labels"], episode["query_pixel_values"]
    tasks = {"fast": finetune_on_support(model, support, labels, "full", learning_rate=1e-3, steps=10)}
    with monkeypatch.context() as patch:
        patch.setattr(adaptation, "_support_features", backbone_features)
        tasks["full"] = finetune_on_support(model, support, labels, "full", learning_rate=1e-3, steps=10)
    assert_same_up_to_rounding([tasks["fast"].prototypes], [tasks["full"].prototypes], rtol=1e-4)
    assert_same_up_to_rounding([tasks["fast"](query)], [tasks["full"](query)], rtol=1e-4)


def test_smat_is_finetuned_after_routing_and_merging(episode):
    model = tiny(SmatModel, num_experts=2)
    with torch.no_grad():
        model.delta.normal_(std=0.01)
    delta = model.delta.detach().clone()
    support, labels = episode["support_pixel_values"], episode["support_labels"]
    merged = model.prepare_task(support, labels)
    task = finetune_on_support(model, support, labels, "full", learning_rate=1e-3, steps=3)
    assert torch.equal(model.delta, delta)
    weights = dict(task.backbone.named_parameters())
    assert any(not torch.equal(p, weights[n]) for n, p in merged.backbone.named_parameters())


def test_the_lr_chooser_sees_only_the_support_set(episode):
    model = tiny()
    support, labels = episode["support_pixel_values"], episode["support_labels"]
    chosen = choose_learning_rate(model, support, labels, "full", steps=5, learning_rates=(0.0, 1e-3, 1e-2))
    assert chosen in (0.0, 1e-3, 1e-2)
    rows_support, rows_query = pseudo_episode(labels)
    assert set(rows_support.tolist()).isdisjoint(rows_query.tolist())
    assert torch.bincount(labels[rows_query]).tolist() == [2] * 5  # half of each class (5 shots) held out
    with pytest.raises(ValueError, match="≥ 2 support images per class"):
        choose_learning_rate(model, support[:5], torch.arange(5))
    task = finetune_on_support(model, support, labels, "full", steps=5, learning_rates=(0.0, 1e-3))
    assert task.n_way == 5


def test_bad_arguments_are_explained(episode):
    support, labels = episode["support_pixel_values"], episode["support_labels"]
    with pytest.raises(ValueError, match="mode"):
        finetune_on_support(tiny(), support, labels, "adapter", learning_rate=1e-3)
    with pytest.raises(TypeError, match="finetune_on_support takes"):
        finetune_on_support(torch.nn.Linear(2, 2), support, labels, learning_rate=1e-3)
    with pytest.raises(FloatingPointError, match="diverged"):
        finetune_on_support(tiny(), support, labels, learning_rate=1e12, steps=5)
    with pytest.raises(FloatingPointError, match=r"non-finite (weights|prototypes) after 1 steps"):  # the last step
        finetune_on_support(tiny(), support, labels, learning_rate=1e30, steps=1)


def test_leave_one_out_holds_each_image_out_of_its_own_centroid():
    # Image 1 is closer to the class-1 centroid once it no longer pulls its own class mean towards itself.
    features = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [0.1, 1.0]])
    labels = torch.tensor([0, 0, 1, 1])
    assert leave_one_out_accuracy(features, labels) == 0.75
    assert leave_one_out_accuracy(torch.eye(3).repeat(2, 1), torch.arange(3).repeat(2)) == 1.0
    with pytest.raises(ValueError, match="≥ 2 support images"):
        leave_one_out_accuracy(torch.eye(3), torch.arange(3))


def test_select_backbone_returns_the_best_scoring_backbone(episode):
    torch.manual_seed(1)
    other = ProtoNetModel.from_backbone(tiny_vit_config())
    pool = {"protonet": tiny(), "plain_vit": tiny().backbone, "other": other}
    best, scores = select_backbone(pool, episode["support_pixel_values"], episode["support_labels"])
    assert set(scores) == set(pool) and all(0.0 <= s <= 1.0 for s in scores.values())
    assert scores[best] == max(scores.values())
    assert scores["protonet"] == scores["plain_vit"], "a model and its own backbone score the same"


def test_bf16_autocast_finetuning_keeps_fp32_weights(episode):
    support, labels = episode["support_pixel_values"], episode["support_labels"]
    task = finetune_on_support(tiny(), support, labels, "full", 1e-3, steps=2, autocast=torch.bfloat16)
    assert {p.dtype for p in task.backbone.parameters()} == {torch.float32}
    assert task.backbone.config._attn_implementation == "sdpa", "eager attention only for the bf16 steps on CPU"
    assert task(support).dtype == torch.float32 and torch.isfinite(task(support)).all()


def test_a_plain_hf_backbone_is_finetuned_with_a_cosine_head(episode):
    backbone = tiny().backbone  # a ViTModel, no few-shot wrapper
    before = snapshot(backbone)
    support, labels = episode["support_pixel_values"], episode["support_labels"]
    task = finetune_on_support(backbone, support, labels, "full", learning_rate=1e-3, steps=3)
    assert (task.scale, task.bias) == (10.0, 0.0) and task.n_way == 5
    assert all(torch.equal(before[k], v) for k, v in backbone.state_dict().items()), "the backbone is not touched"
    assert not torch.equal(task.backbone.state_dict()["embeddings.cls_token"], before["embeddings.cls_token"])


def test_a_backbone_pool_picks_per_task_and_finetunes_a_copy_of_the_pick(episode):
    support, labels, query = episode["support_pixel_values"], episode["support_labels"], episode["query_pixel_values"]
    useful, blind = tiny(), tiny()
    with torch.no_grad():  # a backbone whose features ignore the image cannot separate the support set
        blind.backbone.embeddings.patch_embeddings.projection.weight.zero_()
    pool = BackbonePool({"blind": blind, "useful": useful})
    logits = pool(support, labels, query).logits
    assert pool.choices == {"useful": 1}
    assert torch.allclose(logits, useful.prepare_task(support, labels)(query), atol=1e-5)
    before = snapshot(pool)
    task = finetune_on_support(pool, support, labels, "full", 1e-3, steps=2)
    assert pool.choices == {"useful": 2}
    assert all(torch.equal(before[k], v) for k, v in pool.state_dict().items()), "the pool itself never changes"
    assert not torch.equal(task.backbone.embeddings.cls_token, useful.backbone.embeddings.cls_token)
    with pytest.raises(ValueError, match="at least one backbone"):
        BackbonePool({})


def test_a_support_set_of_one_image_per_class_falls_back_to_the_first_backbone(episode):
    first_of_each_class = [int((episode["support_labels"] == label).nonzero()[0]) for label in range(5)]
    support, labels = episode["support_pixel_values"][first_of_each_class], torch.arange(5)
    best, scores = select_backbone({"first": tiny(), "second": tiny()}, support, labels)
    assert best == "first" and all(math.isnan(score) for score in scores.values())
