"""The demo (demo/app.py): its functions without a browser, and the page itself in headless Chromium (selenium)."""

import copy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import tiny_vit_config
from PIL import Image

from hf_fewshot.models import SmatModel

gr = pytest.importorskip("gradio", reason="the demo needs gradio: pip install -e '.[dev]'")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "demo"))
import app as demo  # noqa: E402


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("demo") / "smat"
    SmatModel.from_backbone(tiny_vit_config(), num_experts=2).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def example():
    return demo.example_task()  # what the page's "load an example task" loads: emoji, 5 classes, 3 images each


def library_prediction(model, support: dict, queries: list) -> list:
    images = [image for class_images in support.values() for image in class_images]
    labels = [name for name, class_images in support.items() for _ in class_images]
    return model.predict(queries, images, labels)


def test_the_space_front_matter():
    import yaml

    front = yaml.safe_load((ROOT / "demo" / "README.md").read_text(encoding="utf-8").split("---")[1])
    assert front["sdk"] == "gradio" and (ROOT / "demo" / front["app_file"]).is_file()
    assert front["sdk_version"].split(".")[0] == gr.__version__.split(".")[0]
    assert {"title", "emoji", "colorFrom", "colorTo", "license"} <= set(front)


def test_example_task_is_deterministic():
    first, again = demo.example_task("digits", 4, 2, seed=3), demo.example_task("digits", 4, 2, seed=3)
    assert list(first.support) == sorted(first.support) == list(again.support)
    assert [len(images) for images in first.support.values()] == [2, 2, 2, 2]
    assert len(first.queries) == 8 and first.query_labels == again.query_labels
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(first.queries, again.queries, strict=True))
    assert demo.example_task("digits", 4, 2, seed=4).query_labels != first.query_labels


def test_classify_gives_the_library_prediction_with_probabilities(model_folder, example):
    model = demo.load_model(model_folder)
    assert demo.load_model(model_folder) is model  # cached
    rows = demo.classify(demo.make_task(model, example.support), example.queries)
    assert [row["prediction"] for row in rows] == library_prediction(model, example.support, example.queries)
    for row in rows:
        assert sum(row["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert row["probability"] == max(row["probabilities"].values())
        assert list(row["probabilities"]) == list(example.support)


def test_the_routing_shown_is_the_one_the_task_is_merged_with(model_folder, example):
    model = demo.load_model(model_folder)
    routing = demo.smat_routing(model, example.support)
    assert len(routing.expert_weights) == 2 and sum(routing.expert_weights) == pytest.approx(1.0)
    assert all(0 <= d <= 1 for d in [*routing.expert_density, routing.merged_density])
    backbone = copy.deepcopy(model.backbone)
    model.merge_task_weights_into(backbone, torch.tensor(routing.expert_weights))
    task = demo.make_task(model, example.support).task
    for (name, ours), theirs in zip(backbone.state_dict().items(), task.backbone.state_dict().values(), strict=True):
        torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0, msg=name)
    assert len(demo.routing_figure(routing).axes) == 2


def test_images_of_mixed_sizes_and_modes_are_fine(model_folder, tmp_path):
    model = demo.load_model(model_folder)
    rng = np.random.default_rng(0)
    sizes = [(12, 12), (40, 25), (64, 64), (9, 30)]
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes]
    images[1] = images[1].convert("L")
    images[2].save(tmp_path / "big.png")
    support = {"a": [images[0], tmp_path / "big.png"], "b": [images[1]]}
    rows = demo.classify(demo.make_task(model, support), [images[3], images[1]])
    assert [row["prediction"] for row in rows] == library_prediction(model, support, [images[3], images[1]])


@pytest.mark.parametrize(
    "case, message",
    [
        ("one class", "at least 2 classes"),
        ("a class without images", "'b' has no images"),
        ("an undecodable file", "class 'b': bad.png is not an image that can be decoded"),
        ("no queries", "at least one query image"),
        ("an undecodable query", "query images: bad.png is not an image"),
    ],
)
def test_bad_input_gets_a_message(model_folder, example, tmp_path, case, message):
    model = demo.load_model(model_folder)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    image = example.queries[0]
    support = {
        "one class": {"a": [image]},
        "a class without images": {"a": [image], "b": []},
        "an undecodable file": {"a": [image], "b": [bad]},
    }.get(case, {"a": [image], "b": [image]})
    queries = {"no queries": [], "an undecodable query": [image, bad]}.get(case, [image])
    with pytest.raises(ValueError, match=message):
        demo.classify(demo.make_task(model, support), queries)


def test_the_class_slots_of_the_page():
    support = demo.support_from_slots(["a ", "", "b", None], [["x.png"], None, [], None])
    assert support == {"a": ["x.png"], "b": []}  # b's missing images are make_task's message
    with pytest.raises(ValueError, match="slot 2 has images but no name"):
        demo.support_from_slots(["a", ""], [["x.png"], ["y.png"]])
    with pytest.raises(ValueError, match="Two classes are named 'a'"):
        demo.support_from_slots(["a", "a"], [["x.png"], ["y.png"]])


def test_a_missing_model_gets_a_message(tmp_path):
    with pytest.raises(ValueError, match="Type a model"):
        demo.load_model("  ")
    with pytest.raises(demo.USER_ERRORS):
        demo.load_model(str(tmp_path / "no-such-model"))


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_finetuning_shows_a_bar_over_its_steps(model_folder, example, mode, capsys):
    model = demo.load_model(model_folder)
    task = demo.make_task(model, example.support, mode, steps=3, learning_rate=1e-3)
    bar = capsys.readouterr().err  # the page shows the same tqdm bar (gr.Progress(track_tqdm=True))
    assert f"fine-tuning ({mode}, lr 0.0" in bar and "3/3" in bar
    assert len(demo.classify(task, example.queries)) == len(example.queries)


def test_the_export_is_a_plain_image_classifier(model_folder, example, tmp_path):
    from transformers import pipeline

    model = demo.load_model(model_folder)
    task = demo.make_task(model, example.support)
    folder = demo.export_classifier(task, tmp_path / "classifier")
    classify = pipeline("image-classification", model=str(folder))
    shown = [row["prediction"] for row in demo.classify(task, example.queries)]
    assert [scores[0]["label"] for scores in classify(example.queries)] == shown


def test_the_task_pushes_to_a_hub_repo(model_folder, example, tmp_path):
    import hub_server
    from huggingface_hub import HfApi

    task = demo.make_task(demo.load_model(model_folder), example.support)
    with pytest.raises(ValueError, match="Hub repo id"):
        demo.push_classifier(task, "")
    with hub_server.hub(tmp_path / "hub"):
        demo.push_classifier(task, "user/emoji-classifier")
        files = {sibling.rfilename for sibling in HfApi().model_info("user/emoji-classifier").siblings}
    assert {"config.json", "model.safetensors", "preprocessor_config.json"} <= files


@pytest.mark.slow
def test_the_page_in_headless_chromium(model_folder, example, tmp_path):
    """Load the example task, classify, compare the page's predictions with the library's; a bad file gets a
    message in the page and no traceback. The screenshot is the one `python demo/screenshot.py` saves."""
    pytest.importorskip("selenium", reason="the browser test needs selenium: pip install -e '.[dev]'")
    import screenshot as browser

    for program in (browser.CHROMIUM, browser.CHROMEDRIVER):
        if not Path(program).is_file():
            pytest.skip(f"{program} is missing: apt-get install chromium chromium-driver (.ci/run does)")
    expected = library_prediction(demo.load_model(model_folder), example.support, example.queries)
    app, url = browser.launch(model_folder)
    driver = browser.chromium()
    try:
        browser.load_example(driver, url)
        assert browser.classify(driver, rows=len(example.queries)) == expected
        with Image.open(browser.save_screenshot(driver, tmp_path / "demo.png")) as shot:
            assert shot.size == browser.WINDOW

        bad = tmp_path / "bad.png"
        bad.write_bytes(b"not an image")
        browser.upload(driver, 0, str(bad))
        driver.find_element(browser.By.CSS_SELECTOR, "#classify").click()
        shown = browser.message(driver, "bad.png is not an image that can be decoded")
        assert "Traceback" not in shown and "Traceback" not in driver.page_source
        assert driver.find_elements(browser.By.CSS_SELECTOR, "#predictions td.prediction") == []
    finally:
        driver.quit()
        app.close()
