"""ProtoNetModel and SmatModel: the episodic contract, SMAT's equations, saving/loading, task export, bad inputs."""

import copy
import functools
import math
import subprocess
import sys
import textwrap

import helpers
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModel, ViTImageProcessor, pipeline

from hf_fewshot import ProtoNetModel, SmatConfig, SmatModel
from hf_fewshot.models.modeling_fewshot import class_prototypes

# transformers' default initialisation (std 0.02), as these tests were written. Their exact round trips hold at std
# 0.2 too: a reloaded model's tensors used to sit where safetensors read them (8-byte-aligned file offsets), where
# MKL's matrix-vector product rounds differently (a few 1e-6 at std 0.2); FewShotPreTrainedModel.from_pretrained
# moves them (tests/test_smat_checkpoints.py).
tiny_vit_config = functools.partial(helpers.tiny_vit_config, initializer_range=0.02)


def episode(n_way: int = 5, shots: int = 2, queries: int = 3, size: int = 16, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    support = torch.randn(n_way * shots, 3, size, size, generator=generator)
    query = torch.randn(n_way * queries, 3, size, size, generator=generator)
    return support, torch.arange(n_way).repeat(shots), query, torch.arange(n_way).repeat(queries)


@pytest.fixture
def smat() -> SmatModel:
    torch.manual_seed(0)
    return SmatModel.from_backbone(tiny_vit_config(), num_experts=3)


def assert_same_state(first: torch.nn.Module, second: torch.nn.Module) -> None:
    first_state, second_state = first.state_dict(), second.state_dict()
    assert first_state.keys() == second_state.keys()
    for key in first_state:
        assert torch.equal(first_state[key], second_state[key]), key


def test_fresh_smat_equals_protonet_with_scale_10_and_no_bias(smat):
    protonet = ProtoNetModel.from_backbone(tiny_vit_config())
    protonet.backbone.load_state_dict(smat.backbone.state_dict())
    smat.eval(), protonet.eval()
    support, support_labels, query, query_labels = episode()
    smat_output = smat(support, support_labels, query, query_labels)
    protonet_output = protonet(support, support_labels, query, query_labels)
    assert smat_output.logits.shape == (15, 5)
    torch.testing.assert_close(smat_output.logits, protonet_output.logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(smat_output.loss, protonet_output.loss)


def test_protonet_logits_are_scaled_cosines_to_class_means():
    torch.manual_seed(0)
    model = ProtoNetModel.from_backbone(tiny_vit_config()).eval()
    with torch.no_grad():
        model.head.scale.fill_(7.0)
        model.head.bias.fill_(0.25)
    support, support_labels, query, _ = episode()
    features = model.embed(torch.cat([support, query]))
    prototypes = torch.stack([features[:10][support_labels == c].mean(0) for c in range(5)])
    expected = 7.0 * (F.cosine_similarity(features[10:, None], prototypes[None], dim=-1) + 0.25)
    torch.testing.assert_close(model(support, support_labels, query).logits, expected, atol=1e-5, rtol=1e-5)
    assert model.head.scale.requires_grad and model.head.bias.requires_grad


def test_every_trainable_tensor_gets_a_gradient_after_the_first_updates(smat):
    smat.train()
    with torch.no_grad():  # as after the first updates: δ ≠ 0 and λ > 0
        smat.delta.normal_(0, 1e-2)
        smat.sparsity_multipliers.fill_(0.1)
    output = smat(*episode())
    for term in ("classification_loss", "distillation_loss", "sparsity_loss", "multiplier_loss", "router_penalty"):
        assert torch.isfinite(getattr(output, term)), term
    output.loss.backward()
    trainable = {name: p for name, p in smat.named_parameters() if p.requires_grad}
    assert {"delta", "gate_logits", "sparsity_multipliers", "router.skill_tokens", "router.expert_keys"} <= set(
        trainable
    )
    for name, parameter in trainable.items():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    assert (smat.gate_logits.grad.abs().sum(dim=1) > 0).all(), "every expert's gate bank gets a gradient"
    assert all(p.grad is None for p in smat.backbone.parameters()), "θ_pre stays frozen"


def test_gates_follow_the_hard_concrete_formulas(smat):
    config = smat.config
    log_alpha = smat.gate_logits.detach()
    train = (torch.sigmoid(log_alpha / (2 / 3)) * 1.2 - 0.1).clamp(0, 1)
    assert config.gate_beta == pytest.approx(2 / 3) and config.gate_beta_eval == 1.0
    evaluation = (torch.sigmoid(log_alpha / 1.0) * 1.2 - 0.1).clamp(0, 1)
    torch.testing.assert_close(smat.expert_gates(training=True), train)
    torch.testing.assert_close(smat.expert_gates(training=False), evaluation)
    density = torch.sigmoid(log_alpha - (2 / 3) * math.log(0.1 / 1.1)).mean(1)
    torch.testing.assert_close(smat.expected_density(), density)
    with torch.no_grad():
        smat.gate_logits[0].fill_(-50.0)
        smat.gate_logits[1].fill_(50.0)
        smat.clamp_gate_logits()
    assert smat.gate_logits.min().item() == pytest.approx(math.log(0.01))
    assert smat.gate_logits.max().item() == pytest.approx(math.log(100))
    smat.eval()
    sparsity = smat.expert_sparsity()
    assert sparsity.shape == (config.num_experts,) and sparsity[0] == 1.0 and sparsity[1] == 0.0
    # With real noise the training gates vary around the deterministic ones.
    smat.config.gate_noise = 1.0
    assert not torch.equal(smat.expert_gates(training=True), train)


def test_merge_interpolates_between_pre_and_pre_plus_delta(smat):
    with torch.no_grad():
        smat.delta.uniform_(-1, 1)
    weights = torch.tensor([0.5, 0.3, 0.2])
    smat.eval()
    merged = smat.merge_task_weights(weights)  # eval mode: eval gates
    gates = smat.expert_gates()
    pre = torch.cat([p.flatten() for p in smat.backbone.parameters()])
    flat = torch.cat([merged[name].flatten() for name in smat.masked_parameter_names])
    torch.testing.assert_close(flat, pre + (weights @ gates) * smat.delta)


@pytest.mark.parametrize("noise", [0.0, 1.0])
def test_chunked_gate_mixture_matches_direct_autograd(smat, noise):
    """The fused, chunked pass (values and gradients) equals the formulas written out on the whole bank."""
    from hf_fewshot.models.smat_gates import GateSettings, MixedExpertGates

    torch.manual_seed(3)
    log_alpha = (torch.randn(3, 1000, dtype=torch.float64) * 3).requires_grad_()
    weights = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64, requires_grad=True)
    settings = GateSettings(
        beta=2 / 3,
        gamma=-0.1,
        zeta=1.1,
        noise=noise,
        seed=11,
        density_shift=(2 / 3) * math.log(0.1 / 1.1),
        chunk_size=128,
    )
    noisy = torch.cat([chunk for _, chunk in settings.noisy_chunks(log_alpha.detach())], dim=1)
    gates = (torch.sigmoid((log_alpha + (noisy - log_alpha.detach())) / (2 / 3)) * 1.2 - 0.1).clamp(0, 1)
    expected = (weights @ gates, torch.sigmoid(log_alpha - (2 / 3) * math.log(0.1 / 1.1)).mean(1))
    mixed, density, closed = MixedExpertGates.apply(log_alpha, weights, settings, None, True)
    torch.testing.assert_close(mixed, expected[0])
    torch.testing.assert_close(density, expected[1])
    torch.testing.assert_close(closed, (gates == 0).double().mean(1))
    upstream = torch.randn(1000, dtype=torch.float64), torch.tensor([0.0, 0.7, -0.2], dtype=torch.float64)
    ours = torch.autograd.grad((mixed * upstream[0]).sum() + density @ upstream[1], [log_alpha, weights])
    direct = torch.autograd.grad((expected[0] * upstream[0]).sum() + expected[1] @ upstream[1], [log_alpha, weights])
    for got, want in zip(ours, direct, strict=True):
        torch.testing.assert_close(got, want)
    if noise:
        assert not torch.equal(noisy, log_alpha.detach()), "noise was applied"


@pytest.mark.parametrize("saturated", [False, True])
def test_backward_accumulates_the_bank_gradient_in_place(smat, saturated):
    """`loss.backward()` adds each task's log α gradient into one persistent `.grad` (no fresh [M, N] block per task)
    and gives exactly what autograd.grad returns; autograd.grad leaves `.grad` alone."""
    if saturated:
        saturate(smat)
    smat.train()
    weights = torch.tensor([0.2, 0.5, 0.3])
    upstream = torch.randn(smat.delta.numel()), torch.tensor([0.0, 0.4, 0.1])

    def task_loss():
        mixed, density, _ = smat.mix_expert_gates(weights, with_density=True)
        return (mixed * upstream[0]).sum() + density @ upstream[1]

    (expected,) = torch.autograd.grad(task_loss(), [smat.gate_logits])
    assert smat.gate_logits.grad is None, "autograd.grad returns the gradient, it does not accumulate it"
    task_loss().backward()
    buffer = smat.gate_logits.grad
    torch.testing.assert_close(buffer, expected)
    task_loss().backward()
    assert smat.gate_logits.grad is buffer, "the second task adds into the same buffer"
    torch.testing.assert_close(buffer, 2 * expected)
    assert buffer.layout == torch.strided


@pytest.mark.parametrize("saturated", [False, True])
def test_gradient_buffers_are_reused_across_updates_and_never_overwrite_a_kept_gradient(smat, saturated):
    """The bank's and the delta's `.grad` after a meta-training task equal what autograd.grad returns; after
    `zero_grad()` the next update writes into the same blocks (no fresh 694 MB bank gradient per update for ViT-S),
    except where the caller kept the old `.grad`, which stays as it was; leaving training mode frees them."""
    task = start_training_with_density_term(smat, saturated)
    banks = [smat.gate_logits, smat.delta]

    def task_loss(seed: int):
        torch.manual_seed(seed)
        return smat(*task).loss

    expected = torch.autograd.grad(task_loss(1), banks)
    assert all(parameter.grad is None for parameter in banks), "autograd.grad does not accumulate"
    task_loss(1).backward()
    for parameter, gradient in zip(banks, expected, strict=True):
        torch.testing.assert_close(parameter.grad, gradient)
    first_blocks = [parameter.grad.data_ptr() for parameter in banks]
    smat.zero_grad()
    task_loss(1).backward()
    assert [parameter.grad.data_ptr() for parameter in banks] == first_blocks, "the next update reuses the blocks"
    for parameter, gradient in zip(banks, expected, strict=True):
        torch.testing.assert_close(parameter.grad, gradient)  # zeroed first: not added to the previous update's
    kept = [parameter.grad for parameter in banks]
    kept_values = [gradient.clone() for gradient in kept]
    smat.zero_grad()
    task_loss(2).backward()
    for parameter, gradient, values in zip(banks, kept, kept_values, strict=True):
        assert parameter.grad is not gradient and torch.equal(gradient, values), "a kept .grad is never written"
    smat.eval()
    assert smat._retained_gradients._buffers == {}


def saturate(smat: SmatModel) -> None:
    """Gates as after training: log α at its bounds (90% closed), 50 still fractional."""
    helpers.saturate_gates(smat, fractional=50, fractional_std=0.3)


def start_training_with_density_term(smat: SmatModel, saturated: bool) -> tuple[torch.Tensor, ...]:
    """`smat` in training mode with a non-zero delta and multipliers switched on (so every loss term has a gradient),
    its gates fresh or `saturated`; returns a 5-way 3-shot task."""
    if saturated:
        saturate(smat)
    smat.train()
    with torch.no_grad():
        smat.delta.normal_(0, 1e-2)
        smat.sparsity_multipliers.fill_(0.05)
    return episode(shots=3)


def test_merging_a_saturated_bank_uses_the_gate_code_and_stays_exact(smat):
    smat.eval()
    weights = torch.tensor([0.5, 0.3, 0.2])
    settings = smat._gate_settings(training=False)
    fresh = smat.mix_expert_gates(weights, with_density=False)[0]
    assert smat._bank_summaries[settings][1].code is None, "fresh gates are fractional: no code, the chunked pass"
    torch.testing.assert_close(fresh, weights @ smat.expert_gates())
    saturate(smat)
    merged = smat.mix_expert_gates(weights, with_density=False)[0]
    assert len(smat._bank_summaries[settings][1].code.fractional_index) == 50
    torch.testing.assert_close(merged, weights @ smat.expert_gates())
    copy = SmatModel(smat.config).backbone
    with torch.no_grad():
        smat.delta.normal_(0, 1e-2)
        smat.merge_task_weights_into(copy, weights)
        expected = smat.merge_task_weights(weights)
    for name, parameter in copy.named_parameters():
        torch.testing.assert_close(parameter, expected[name], rtol=0, atol=1e-7)
    with torch.no_grad():  # an update of log α invalidates the code
        smat.gate_logits[1].fill_(math.log(100))
    torch.testing.assert_close(smat.mix_expert_gates(weights)[0], weights @ smat.expert_gates())
    torch.testing.assert_close(smat.expert_sparsity(), (smat.expert_gates() == 0).float().mean(1))


def test_coded_training_gradients_equal_the_chunked_ones(smat):
    """The bank summary (gate code of a saturated bank) and the chunked pass give the same values and gradients."""
    from hf_fewshot.models.smat_gates import MixedExpertGates

    saturate(smat)
    weights = torch.tensor([0.2, 0.5, 0.3], requires_grad=True)
    upstream = torch.randn(smat.delta.numel()), torch.tensor([0.0, 0.4, 0.1])
    settings = smat._gate_settings(training=True)
    summary = smat._bank_summary(settings)
    assert summary.code is not None
    results = []
    for known in (summary, None):
        smat.gate_logits.grad = None
        mixed, density, closed = MixedExpertGates.apply(smat.gate_logits, weights, settings, known, True)
        (weight_grad,) = torch.autograd.grad(
            (mixed * upstream[0]).sum() + density @ upstream[1], [weights], retain_graph=True
        )
        ((mixed * upstream[0]).sum() + density @ upstream[1]).backward()
        results.append((mixed.detach(), density.detach(), closed, weight_grad, smat.gate_logits.grad.clone()))
    assert results[0][0].shape == results[1][0].shape
    for coded, chunked in zip(*results, strict=True):
        torch.testing.assert_close(coded, chunked)


def test_a_saturated_training_task_keeps_no_mixture_and_gets_the_chunked_gradients(smat, monkeypatch):
    """With a gate code the task graph holds no `[N]` mixture (the backward gathers it again: 87 MB of the ViT-S
    peak); its loss and every gradient equal those of the chunked pass, which keeps the mixture."""
    from hf_fewshot.models.smat_gates import GateCode

    task = start_training_with_density_term(smat, saturated=True)
    num_elements, delta_storage = smat.delta.numel(), smat.delta.untyped_storage().data_ptr()

    def task_gradients():
        saved = []

        def pack(tensor):
            if tensor.numel() == num_elements and tensor.untyped_storage().data_ptr() != delta_storage:
                saved.append(tensor)
            return tensor

        smat.zero_grad(), torch.manual_seed(1)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            loss = smat(*task).loss
        loss.backward()
        gradients = {
            name: parameter.grad.clone() for name, parameter in smat.named_parameters() if parameter.grad is not None
        }
        return loss.detach(), gradients, len(saved)

    coded_loss, coded, coded_saved = task_gradients()
    monkeypatch.setattr(GateCode, "max_fractional_share", -1.0)  # no code pays: the chunked pass
    smat._bank_summaries.clear()
    chunked_loss, chunked, chunked_saved = task_gradients()
    assert coded_saved == 0 and chunked_saved == 1
    torch.testing.assert_close(coded_loss, chunked_loss)
    assert coded.keys() == chunked.keys()
    for name in coded:
        torch.testing.assert_close(coded[name], chunked[name], msg=name)


@pytest.mark.parametrize("training", [True, False])
def test_the_gate_code_reads_every_gate_exactly_even_at_the_saturation_bounds(smat, training):
    """The code is built by float arithmetic against the bounds where a gate saturates; log α on a fine grid around
    both bounds must still be coded as the gate formula says: exactly 0, exactly 1, or kept as a fraction."""
    from hf_fewshot.models.smat_gates import GateCode

    settings = smat._gate_settings(training=training)
    low, high = settings.saturation_bounds()
    grid = torch.cat([torch.linspace(low - 0.01, low + 0.01, 20001), torch.linspace(high - 0.01, high + 0.01, 20001)])
    log_alpha = torch.where(torch.rand(3, 3 * len(grid)) < 0.5, -6.0, 6.0)  # saturated: a trained bank
    log_alpha[0, : len(grid)] = grid  # the other experts saturated: an element's code depends on expert 0 alone
    gates = settings.gates(log_alpha)
    code = GateCode.build(log_alpha, settings)
    coded = code.codes != 2**3
    assert 0.4 < coded[: len(grid)].float().mean() < 0.6, "about half the grid lies outside the bounds' margins"
    assert torch.equal(code.membership[code.codes[coded].long()].T, gates[:, coded])
    assert torch.equal(code.fractional_gates, gates[:, code.fractional_index])
    torch.testing.assert_close(code.closed_fraction, (gates == 0).float().mean(1), rtol=0, atol=0)


def test_under_bf16_autocast_the_gate_mixture_stays_fp32(smat):
    weights = torch.tensor([0.5, 0.3, 0.2])
    for saturated in (False, True):
        if saturated:
            saturate(smat)
        expected = smat.mix_expert_gates(weights, training=True)[0]
        with torch.autocast("cpu", torch.bfloat16):
            mixed = smat.mix_expert_gates(weights, training=True)[0]
        assert mixed.dtype == torch.float32
        torch.testing.assert_close(mixed, expected, rtol=0, atol=0)


def test_lagrange_multipliers_reset_when_sparse_enough_and_grow_while_dense(smat):
    smat.train()
    optimizer = torch.optim.SGD([smat.sparsity_multipliers], lr=0.1)
    with torch.no_grad():
        smat.gate_logits[0].fill_(math.log(0.01))  # expert 0 entirely closed: sparsity 1 > τ
        smat.gate_logits[1:].fill_(math.log(100))  # the others fully open: too dense
        smat.sparsity_multipliers.fill_(0.5)
    for _ in range(3):
        optimizer.zero_grad()
        smat(*episode()).loss.backward()
        optimizer.step()
    multipliers = smat.sparsity_multipliers.detach()
    assert multipliers[0] == 0.0, "an expert sparser than τ has its multiplier reset to 0 and kept there"
    assert (multipliers[1:] > 0.5).all(), "a descent step raises λ while the expert is too dense"


def test_router_layers_are_spectrally_normalised(smat):
    smat.eval()
    for layer in (smat.router.qkv, smat.router.attention_output, smat.router.fc1, smat.router.fc2):
        assert torch.linalg.matrix_norm(layer.weight, ord=2).item() == pytest.approx(1.0, abs=0.02)


def test_router_tasks_seen_counts_recorded_tasks_only_and_survives_save_load(smat, tmp_path):
    smat.train()
    for seed in range(3):  # forwards do not count: SAM's second pass and unlabelled forwards are no tasks
        smat(*episode(seed=seed))
    assert int(smat.router_tasks_seen) == 0
    smat.record_meta_training_tasks(3)
    with pytest.raises(ValueError, match="≥ 0"):
        smat.record_meta_training_tasks(-1)
    assert int(smat.router_tasks_seen) == 3
    smat.config.router_tau_decay_tasks = 1.0
    smat.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path)
    assert int(loaded.router_tasks_seen) == 3 and loaded.router_tau == pytest.approx(5.0 - 3.0)


def test_save_load_round_trip_through_automodel_is_exact(smat, tmp_path):
    with torch.no_grad():
        smat.delta.normal_(0, 1e-2)
    smat.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists() and not list(tmp_path.glob("*.bin"))
    loaded = AutoModel.from_pretrained(tmp_path)
    assert type(loaded) is SmatModel and loaded.config.num_experts == 3
    assert_same_state(smat, loaded)
    smat.eval(), loaded.eval()
    torch.testing.assert_close(smat(*episode()).logits, loaded(*episode()).logits, rtol=0, atol=0)

    protonet = ProtoNetModel.from_backbone(tiny_vit_config())
    with torch.no_grad():  # as after meta-training: the learned scale and bias must survive loading
        protonet.head.scale.fill_(12.5)
        protonet.head.bias.fill_(0.3)
    protonet.save_pretrained(tmp_path / "protonet")
    assert_same_state(protonet, AutoModel.from_pretrained(tmp_path / "protonet"))


@pytest.mark.slow
def test_remote_code_loads_in_a_process_that_never_imported_hf_fewshot(smat, tmp_path):
    saturate(smat)  # as after training: the experts are saved compactly (docs/smat.md, "Checkpoints")
    with torch.no_grad():
        smat.delta.normal_(0, 1e-2)
    smat.save_pretrained(tmp_path)
    assert {
        "modeling_smat.py",
        "configuration_smat.py",
        "modeling_fewshot.py",
        "configuration_fewshot.py",
        "smat_storage.py",
        "smat_experts.safetensors",
    } <= {p.name for p in tmp_path.iterdir()}
    support, support_labels, query, _ = episode()
    torch.save({"support": support, "labels": support_labels, "query": query}, tmp_path / "episode.pt")
    smat.eval()
    expected = smat(support, support_labels, query).logits
    script = textwrap.dedent(
        f"""
        import sys, torch
        from transformers import AutoModel
        model = AutoModel.from_pretrained({str(tmp_path)!r}, trust_remote_code=True).eval()
        assert "hf_fewshot" not in sys.modules, "remote code must not import hf_fewshot"
        data = torch.load({str(tmp_path / "episode.pt")!r})
        torch.save(model(data["support"], data["labels"], data["query"]).logits, {str(tmp_path / "logits.pt")!r})
        print(type(model).__module__)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().startswith("transformers_modules.")
    torch.testing.assert_close(torch.load(tmp_path / "logits.pt"), expected, rtol=0, atol=0)


@pytest.mark.parametrize("model_class", [ProtoNetModel, SmatModel])
def test_task_export_to_a_plain_image_classifier_agrees_on_every_query(model_class, tmp_path):
    torch.manual_seed(1)
    model = model_class.from_backbone(tiny_vit_config(image_size=16))
    if isinstance(model, SmatModel):
        with torch.no_grad():
            model.delta.normal_(0, 5e-2)
    support, support_labels, query, _ = episode(size=24)  # another size than the config's: interpolated
    task = model.prepare_task(support, support_labels)
    model.eval()
    torch.testing.assert_close(task(query), model(support, support_labels, query).logits, atol=1e-5, rtol=1e-5)
    labels = {k: name for k, name in enumerate(["ant", "bee", "cat", "dog", "eel"])}
    classifier = task.to_image_classifier(labels)
    assert type(classifier).__name__ == "ViTForImageClassification"
    exported = classifier(pixel_values=query).logits
    assert torch.equal(exported.argmax(-1), task(query).argmax(-1))
    # The export is a stock checkpoint: it saves, reloads and runs in a pipeline with no custom code.
    classifier.save_pretrained(tmp_path)
    reloaded = AutoModel.from_pretrained(tmp_path)
    assert type(reloaded).__name__ == "ViTModel"
    processor = ViTImageProcessor(size={"height": 24, "width": 24}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    classify = pipeline("image-classification", model=classifier, image_processor=processor)
    from PIL import Image

    images = [Image.fromarray((torch.rand(24, 24, 3) * 255).byte().numpy()) for _ in range(3)]
    pixel_values = processor(images, return_tensors="pt")["pixel_values"]
    predicted = [labels[int(i)] for i in task(pixel_values).argmax(-1)]
    assert [result[0]["label"] for result in classify(images)] == predicted


def test_prepare_task_keeps_no_autograd_graph(smat):
    task = smat.prepare_task(*episode()[:2])
    assert not task.prototypes.requires_grad
    assert all(not t.requires_grad or t.grad_fn is None for t in task.backbone.parameters())
    assert task(episode()[2]).grad_fn is None


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda s, sl, q, ql: (s, sl + 1, q, ql), "no support image"),
        (lambda s, sl, q, ql: (s, torch.where(sl == 2, 4, sl), q, ql), r"class\(es\) \[2\]"),
        (lambda s, sl, q, ql: (s, sl - 1, q, ql), "episode-relative"),
        (lambda s, sl, q, ql: (s, sl.float(), q, ql), "integer class ids"),
        (lambda s, sl, q, ql: (s, sl, q[..., :12, :12], ql), "do not match support images"),
        (lambda s, sl, q, ql: (s, sl[:-1], q, ql), "one label per support image"),
        (lambda s, sl, q, ql: (s, sl, q, ql + 5), r"query_labels must lie in 0..4"),
        (lambda s, sl, q, ql: (s, sl, q[:0], ql[:0]), "query set is empty"),
        (lambda s, sl, q, ql: (s, sl, q, ql.int()), r"query_labels must be int64.*\.long\(\)"),
        (lambda s, sl, q, ql: (s, sl, q, ql.float()), "query_labels must be integer class ids"),
        (lambda s, sl, q, ql: (s, sl.int(), q, ql), "support_labels must be int64"),
        (lambda s, sl, q, ql: (s, sl, q.index_fill(0, torch.tensor([0]), float("nan")), ql), "NaN or inf"),
        (lambda s, sl, q, ql: (s.index_fill(0, torch.tensor([1]), float("inf")), sl, q, ql), "NaN or inf"),
    ],
)
@pytest.mark.parametrize("model_class", [ProtoNetModel, SmatModel])
def test_bad_episodes_raise_clear_errors(model_class, mutate, message):
    model = model_class.from_backbone(tiny_vit_config())
    with pytest.raises(ValueError, match=message):
        model(*mutate(*episode()))


def test_loading_a_checkpoint_of_the_wrong_type_fails_clearly(tmp_path):
    ProtoNetModel.from_backbone(tiny_vit_config()).save_pretrained(tmp_path / "protonet")
    with pytest.raises(ValueError, match="'fewshot_protonet' model, not 'fewshot_smat'"):
        SmatModel.from_pretrained(tmp_path / "protonet")
    AutoModel.from_config(tiny_vit_config()).save_pretrained(tmp_path / "vit")
    with pytest.raises(ValueError, match="'vit' model, not 'fewshot_protonet'"):
        ProtoNetModel.from_pretrained(tmp_path / "vit")


def test_config_validates_and_restricts_masks():
    with pytest.raises(ValueError, match="sparsity_target"):
        SmatConfig(backbone_config=tiny_vit_config(), sparsity_target=1.5)
    model = SmatModel.from_backbone(tiny_vit_config(), masked_parameter_patterns=[r"attention\.(q|v)_proj\.weight"])
    assert model.masked_parameter_names == [
        f"layers.{i}.attention.{p}_proj.weight" for i in range(2) for p in ("q", "v")
    ]
    assert model.delta.numel() == 4 * 32 * 32
    with pytest.raises(ValueError, match="match no backbone parameter"):
        SmatModel.from_backbone(tiny_vit_config(), masked_parameter_patterns=["nothing"])


def test_class_prototypes_are_class_means():
    features = torch.tensor([[1.0, 0.0], [3.0, 2.0], [0.0, 5.0]])
    torch.testing.assert_close(
        class_prototypes(features, torch.tensor([0, 0, 1]), 2), torch.tensor([[2.0, 1.0], [0.0, 5.0]])
    )


@pytest.mark.parametrize("model_class", [ProtoNetModel, SmatModel])
def test_from_backbone_loads_pretrained_weights_from_a_folder(model_class, tmp_path):
    # The same code path as from_backbone("facebook/dino-vits16"), on a checkpoint saved here (no network).
    from transformers import ViTModel

    pretrained = ViTModel(tiny_vit_config())  # with a pooler, like DINO's Hub checkpoint; ours drops it
    pretrained.save_pretrained(tmp_path)
    model = model_class.from_backbone(str(tmp_path))
    assert model.config.backbone_name_or_path == str(tmp_path)
    assert model.backbone.pooler is None
    for name, tensor in model.backbone.state_dict().items():
        assert torch.equal(tensor, pretrained.state_dict()[name]), name


@pytest.mark.parametrize("model_class", [ProtoNetModel, SmatModel])
def test_dinov2_backbones_work_too(model_class):
    from transformers import Dinov2Config

    backbone = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=16, patch_size=4)
    model = model_class.from_backbone(backbone).eval()
    output = model(*episode(size=16))
    assert output.logits.shape == (15, 5) and torch.isfinite(output.loss)
    model.prepare_task(*episode()[:2])


def test_more_dense_teacher_steps_move_the_teacher_further(smat):
    smat.train()
    with torch.no_grad():
        smat.delta.normal_(0, 1e-2)
    losses = {}
    for steps in (1, 2):
        smat.config.teacher_steps = steps
        torch.manual_seed(5)  # the same router noise for both runs
        output = smat(*episode())
        output.loss.backward()
        losses[steps] = output.distillation_loss
    assert torch.isfinite(losses[2]) and not torch.equal(losses[1], losses[2])


def test_without_dense_teachers_the_loss_has_no_distillation_and_still_trains(smat):
    smat.train()
    smat.config.kd_weight = 0.0
    with torch.no_grad():
        smat.delta.normal_(0, 1e-2)
    torch.manual_seed(5)
    output = smat(*episode())
    assert output.distillation_loss == 0.0
    others = output.sparsity_loss + output.multiplier_loss + output.router_penalty
    assert torch.allclose(output.loss, output.classification_loss + others)
    output.loss.backward()
    assert smat.delta.grad is not None and smat.delta.grad.abs().sum() > 0


def test_cached_gate_code_follows_writes_that_bypass_the_version_counter(smat):
    with torch.no_grad():
        smat.delta.normal_(0, 0.1)
        smat.gate_logits.copy_(torch.where(torch.rand_like(smat.gate_logits) < 0.5, -9.0, 9.0))  # saturated
    smat.eval()
    smat(*episode())  # builds and caches the compact gate code
    smat.gate_logits.data[:, : smat.gate_logits.shape[1] // 2] *= -1  # flips half the gates, version unchanged
    stale_or_not = smat(*episode()).logits
    fresh = copy.deepcopy(smat)
    fresh._bank_summaries.clear()
    assert torch.allclose(stale_or_not, fresh(*episode()).logits, atol=1e-6)


def test_without_the_support_query_split_every_image_is_support_and_query(smat):
    """The "Meta ×" ablation trains on the task's images as if support and query were one set."""
    smat.train()
    with torch.no_grad():
        smat.delta.normal_(0, 1e-2)
    support, support_labels, query, query_labels = episode()
    union, union_labels = torch.cat([support, query]), torch.cat([support_labels, query_labels])
    torch.manual_seed(5)
    split = smat(union, union_labels, union, union_labels).loss
    smat.config.support_query_split = False
    torch.manual_seed(5)
    output = smat(support, support_labels, query, query_labels)
    assert torch.allclose(output.loss, split)
    assert output.logits.shape == (len(query), 5), "the logits are still those of the given queries"
    smat.config.support_query_split = True
    torch.manual_seed(5)
    assert not torch.allclose(smat(support, support_labels, query, query_labels).loss, split)


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"sparsity_targt": 0.5}, r"no setting 'sparsity_targt' \(did you mean 'sparsity_target'\?\)"),
        ({"num_expert": 2}, r"did you mean 'num_experts'"),
        ({"num_experts": 2.5}, r"num_experts must be int, got 2.5"),
        ({"sparsity_target": "0.5"}, r"sparsity_target must be float, got '0.5'"),
        ({"kd_reverse": 1}, r"kd_reverse must be bool"),
    ],
)
def test_unknown_or_mistyped_settings_are_errors(settings, message):
    with pytest.raises(ValueError, match=message):
        SmatModel.from_backbone(tiny_vit_config(), **settings)


def test_a_saved_config_with_an_unknown_key_is_refused_and_a_fewshot_folder_is_not_a_backbone(smat, tmp_path):
    import json

    smat.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="is a saved few-shot model"):
        ProtoNetModel.from_backbone(str(tmp_path))
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "num_expert": 3}))
    with pytest.raises(ValueError, match="did you mean 'num_experts'"):
        AutoModel.from_pretrained(tmp_path)
