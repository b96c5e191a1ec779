"""SMAT's saved folders: the experts stored compactly once trained, the backbone referenced by its source, dense
folders where the compact form does not pay (docs/smat.md, "Checkpoints")."""

import hub_server
import pytest
import torch
from helpers import saturate_gates, tiny_vit_config
from safetensors import safe_open
from transformers import AutoModel, ViTModel

from hf_fewshot import SmatModel
from hf_fewshot.models import from_pretrained_strictly
from hf_fewshot.models.smat_storage import EXPERTS_FILE, decode_experts, encode_experts


def episode(seed: int = 0, n_way: int = 5, shots: int = 2, queries: int = 3, size: int = 16):
    generator = torch.Generator().manual_seed(seed)
    support = torch.randn(n_way * shots, 3, size, size, generator=generator)
    query = torch.randn(n_way * queries, 3, size, size, generator=generator)
    return support, torch.arange(n_way).repeat(shots), query, torch.arange(n_way).repeat(queries)


def trained_like(model: SmatModel, fractional: int = 40) -> SmatModel:
    """Gates as after training (bench/models.py): log α at ln 0.01 / ln 100, 90% closed, a few still fractional; a
    non-zero delta."""
    saturate_gates(model, fractional, delta_std=1e-2)
    return model


def tiny_smat(backbone=None, **settings) -> SmatModel:
    torch.manual_seed(0)
    return SmatModel.from_backbone(backbone or tiny_vit_config(), **{"num_experts": 8, **settings})


def weight_keys(folder) -> set[str]:
    with safe_open(str(folder / "model.safetensors"), framework="pt") as weights:
        return set(weights.keys())


def stored_bytes(folder) -> int:
    return sum(path.stat().st_size for path in folder.glob("*.safetensors"))


def assert_same_eval_model(model: SmatModel, loaded: SmatModel) -> None:
    model.eval(), loaded.eval()
    for seed in range(3):
        torch.testing.assert_close(loaded(*episode(seed)).logits, model(*episode(seed)).logits, rtol=0, atol=1e-5)
    assert torch.equal(loaded.expert_gates(training=False), model.expert_gates(training=False))


def test_a_trained_smat_saves_its_experts_compactly_and_reloads_to_the_same_model(tmp_path):
    model = trained_like(tiny_smat())
    model.save_pretrained(tmp_path / "compact")
    model.save_pretrained(tmp_path / "dense", compact=False)
    assert (tmp_path / "compact" / EXPERTS_FILE).is_file() and not (tmp_path / "dense" / EXPERTS_FILE).exists()
    assert not {"delta", "gate_logits"} & weight_keys(tmp_path / "compact")
    assert {"delta", "gate_logits"} <= weight_keys(tmp_path / "dense")
    assert stored_bytes(tmp_path / "compact") < 0.3 * stored_bytes(tmp_path / "dense")

    loaded = AutoModel.from_pretrained(tmp_path / "compact")
    assert type(loaded) is SmatModel and loaded.config.name_or_path == str(tmp_path / "compact")
    assert_same_eval_model(model, loaded)
    torch.manual_seed(1)  # the seed of the training gates' noise
    expected = model.expert_gates(training=True)
    torch.manual_seed(1)
    assert torch.equal(loaded.expert_gates(training=True), expected)
    # Delta elements that no expert opens and no fractional gate reaches reload as 0; the rest as saved.
    live = (model.expert_gates(training=False) > 0).any(dim=0)
    assert torch.equal(loaded.delta[live], model.delta[live]) and not loaded.delta[~live].any()
    fractional = slice(0, 40)
    assert torch.equal(loaded.gate_logits[:, fractional], model.gate_logits[:, fractional]), "kept as they are"
    strict = from_pretrained_strictly(SmatModel, str(tmp_path / "compact"))  # no tensor missing
    assert_same_eval_model(model, strict)


@pytest.mark.parametrize(
    "settings",
    [{}, {"gate_beta": 1.5}, {"gate_noise": 0.5}, {"num_experts": 11}],
    ids=["defaults", "training-beta-above-eval-beta", "noisy-training-gates", "int16-codes"],
)
def test_the_compact_form_keeps_the_eval_and_training_gates_exactly(settings):
    """Gates saturated in eval but not in training (β above β_eval, or noise) keep their exact log α."""
    model = trained_like(tiny_smat(**settings))
    with torch.no_grad():  # open eval gates (from 2.40 at β_eval = 1), fractional training ones at β = 1.5 (from
        model.gate_logits[:, 100:200] = 2.5  # 3.60) or with noise (logit(u) down to -1.10; from 1.60 + 1.10)
    compact = encode_experts(model.delta.detach(), model.gate_logits.detach(), model.config)
    assert compact is not None
    closed, opened = model.config.gate_logit_min, model.config.gate_logit_max
    delta, log_alpha = decode_experts(compact, model.config.num_experts, closed, opened)
    reloaded = tiny_smat(**settings)
    with torch.no_grad():
        reloaded.delta.copy_(delta)
        reloaded.gate_logits.copy_(log_alpha)
    for training in (False, True):
        torch.manual_seed(2)
        expected = model.expert_gates(training=training)
        torch.manual_seed(2)
        assert torch.equal(reloaded.expert_gates(training=training), expected), f"training={training}"
    if "gate_beta" in settings or "gate_noise" in settings:  # training gates not saturated: kept as they are
        assert len(compact["fractional_index"]) >= 140
    assert compact["codes"].dtype == (torch.int16 if model.config.num_experts > 8 else torch.uint8)


def test_no_compact_form_where_the_clamp_bounds_are_not_saturated_gates(tmp_path):
    model = trained_like(tiny_smat(gate_beta=2.0))  # ln 100 gives a training gate of 0.99 at β = 2
    assert encode_experts(model.delta.detach(), model.gate_logits.detach(), model.config) is None
    model.save_pretrained(tmp_path)
    assert not (tmp_path / EXPERTS_FILE).exists()


def test_an_unsaturated_smat_stays_dense_and_a_stale_experts_file_is_removed(tmp_path):
    model = trained_like(tiny_smat())
    model.save_pretrained(tmp_path)
    assert (tmp_path / EXPERTS_FILE).is_file()
    fresh = tiny_smat()  # log α ~ N(0, 0.5²): fractional gates, the compact form would be larger
    with torch.no_grad():
        fresh.delta.normal_(0, 1e-2)
    fresh.save_pretrained(tmp_path)  # into the same folder
    assert not (tmp_path / EXPERTS_FILE).exists(), "else it would be read with the new weights"
    assert {"delta", "gate_logits"} <= weight_keys(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path)
    for (name, expected), actual in zip(fresh.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(expected, actual), name
    assert_same_eval_model(fresh, loaded)


@pytest.mark.parametrize("trained", [True, False], ids=["compact-experts", "dense-experts"])
def test_a_referenced_backbone_is_loaded_from_its_source_and_checked(tmp_path, trained):
    torch.manual_seed(5)
    ViTModel(tiny_vit_config()).save_pretrained(tmp_path / "backbone")  # as facebook/dino-vits16, without network
    model = tiny_smat(str(tmp_path / "backbone"))
    if trained:
        trained_like(model)
    model.save_pretrained(tmp_path / "model", include_backbone=False)
    assert not any(key.startswith("backbone.") for key in weight_keys(tmp_path / "model"))
    assert not {"delta", "gate_logits"} & weight_keys(tmp_path / "model")
    model.save_pretrained(tmp_path / "whole")
    assert stored_bytes(tmp_path / "model") < stored_bytes(tmp_path / "whole")

    loaded = from_pretrained_strictly(SmatModel, str(tmp_path / "model"))
    assert_same_eval_model(model, loaded)
    for name, tensor in model.backbone.state_dict().items():
        assert torch.equal(loaded.backbone.state_dict()[name], tensor), name

    torch.manual_seed(6)
    ViTModel(tiny_vit_config()).save_pretrained(tmp_path / "backbone")  # other weights at the same place
    with pytest.raises(ValueError, match="not the one the model was saved with"):
        AutoModel.from_pretrained(tmp_path / "model")


def test_a_reloaded_model_computes_bit_for_bit_like_the_saved_one(tmp_path):
    """Loaded tensors are moved off the safetensors file offsets (8-byte aligned), where MKL's matrix-vector product
    sums in another order: the router's logits of this model used to differ by ~3e-6 after a round trip."""
    model = tiny_smat()  # std 0.2 weights, 8 experts: `tokens[0] @ expert_keys.T` is a matrix-vector product
    with torch.no_grad():
        model.delta.normal_(0, 1e-2)
    model.save_pretrained(tmp_path, compact=False)
    loaded = AutoModel.from_pretrained(tmp_path)
    assert all(t.data_ptr() % 64 == 0 for t in [*loaded.parameters(), *loaded.buffers()])
    model.eval(), loaded.eval()
    for seed in range(3):
        assert torch.equal(loaded(*episode(seed)).logits, model(*episode(seed)).logits), seed


def test_leaving_the_backbone_out_needs_its_source(tmp_path):
    model = trained_like(tiny_smat())  # a random backbone: no backbone_name_or_path
    with pytest.raises(ValueError, match="backbone_name_or_path"):
        model.save_pretrained(tmp_path, include_backbone=False)


@pytest.fixture
def hub(tmp_path):
    """A Hub-compatible server on 127.0.0.1 with the clients pointed at it (tests/hub_server.py)."""
    with hub_server.hub(tmp_path / "hub") as server:
        yield server


def test_a_compact_smat_round_trips_through_the_hub(hub):
    model = trained_like(tiny_smat())
    model.push_to_hub("user/smat-compact")
    loaded = AutoModel.from_pretrained("user/smat-compact")
    assert_same_eval_model(model, loaded)
