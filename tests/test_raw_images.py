"""From PIL images (or files) to a prediction: `model.predict`, the registered few-shot pipeline, the image processor
every saved model carries, and the `image-classification` pipeline on a task's export, saved or in memory."""

import numpy as np
import pytest
import torch
from helpers import tiny_vit_config
from transformers import AutoImageProcessor, AutoModel, ViTModel, pipeline

import hf_fewshot  # noqa: F401  (registers the few-shot pipeline)
from hf_fewshot import ProtoNetModel, SmatModel, load_domain
from hf_fewshot.data import EvalTransform
from hf_fewshot.training.checkpoints import save_pretrained_atomically


@pytest.fixture(scope="module")
def emoji_task():
    """Three emoji classes, four images each: (images, class names), and every image at a different odd size."""
    emoji = load_domain("minimeta", "emoji", "test")
    labels = np.asarray(emoji["label"])
    rows = [int(np.nonzero(labels == c)[0][k]) for c in sorted(set(labels))[:3] for k in range(4)]
    images = [emoji[row]["image"].resize((29 + 3 * i, 41 - i)) for i, row in enumerate(rows)]
    return images, [emoji[row]["class_name"] for row in rows]


@pytest.fixture(scope="module", params=["smat", "protonet"])
def model(request):
    torch.manual_seed(0)
    config = tiny_vit_config(num_hidden_layers=1)
    if request.param == "smat":
        return SmatModel.from_backbone(config, num_experts=2).eval()
    return ProtoNetModel.from_backbone(config).eval()


def test_predict_on_pil_images_equals_the_tensor_path(model, emoji_task, tmp_path):
    images, names = emoji_task
    classes = sorted(set(names))
    labels = torch.tensor([classes.index(name) for name in names])
    pixels = EvalTransform(model.config.eval_image_size)(images)
    expected = [classes[i] for i in model.prepare_task(pixels, labels)(pixels).argmax(-1).tolist()]
    assert model.predict(images, images, names) == expected
    paths = []
    for i, image in enumerate(images):
        image.save(tmp_path / f"{i}.png")
        paths.append(tmp_path / f"{i}.png")
    assert model.predict(paths[:3], paths, names) == expected[:3], "paths work like PIL images"


def test_predict_explains_unusable_inputs(model, emoji_task):
    images, names = emoji_task
    with pytest.raises(ValueError, match="12 support images but 11 labels"):
        model.predict(images[:1], images, names[:-1])
    with pytest.raises(ValueError, match="at least 2"):
        model.predict(images[:1], images[:4], names[:4])
    with pytest.raises(ValueError, match="not a mixture"):
        model.predict(images[:1], images[:2], ["cat", 3])
    with pytest.raises(TypeError, match="a list of images"):
        model.predict(images[0], images, names)


def test_the_few_shot_pipeline_uses_the_saved_processor(model, emoji_task, tmp_path):
    images, names = emoji_task
    model.save_pretrained(tmp_path / "model")
    classify = pipeline("few-shot-image-classification", model=str(tmp_path / "model"))
    ranked = classify(images, support_images=images, support_labels=names)
    assert [r[0]["label"] for r in ranked] == model.predict(images, images, names)
    assert all(abs(sum(item["score"] for item in r) - 1) < 1e-5 for r in ranked)
    assert len(classify(images[0], support_images=images, support_labels=names, top_k=2)) == 2


def test_every_saved_kind_carries_a_processor_giving_the_library_pixels(model, emoji_task, tmp_path):
    images, names = emoji_task
    size = model.config.eval_image_size
    library = EvalTransform(size)(images)
    model.save_pretrained(tmp_path / "model")
    backbone = ViTModel(tiny_vit_config(num_hidden_layers=1))
    save_pretrained_atomically(
        backbone, tmp_path / "backbone", image_processor=EvalTransform(size).to_image_processor()
    )
    classes = sorted(set(names))
    task = model.prepare_task(library, torch.tensor([classes.index(name) for name in names]))
    task.save_image_classifier(tmp_path / "classifier", dict(enumerate(classes)))
    for kind in ("model", "backbone", "classifier"):
        processor = AutoImageProcessor.from_pretrained(tmp_path / kind)
        pixels = processor(images, return_tensors="pt")["pixel_values"]
        assert (pixels - library).abs().max() <= 0.05, kind


def test_image_classification_pipeline_on_the_export_saved_and_in_memory(model, emoji_task, tmp_path):
    images, names = emoji_task
    classes = sorted(set(names))
    labels = torch.tensor([classes.index(name) for name in names])
    task = model.prepare_task(EvalTransform(model.config.eval_image_size)(images), labels)
    id2label = dict(enumerate(classes))
    few_shot = model.predict(images, images, names)
    in_memory = task.to_pipeline(id2label)
    assert [in_memory(image)[0]["label"] for image in images] == few_shot
    task.save_image_classifier(tmp_path / "classifier", id2label)
    saved = pipeline("image-classification", model=str(tmp_path / "classifier"))
    assert [saved(image)[0]["label"] for image in images] == few_shot
    assert AutoModel.from_pretrained(tmp_path / "classifier").config.model_type == "vit", "no custom code needed"
