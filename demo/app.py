"""A few-shot image classifier in the browser: name 2–10 classes, give each a few images, classify query images.

Run it with `python demo/app.py [--model PATH_OR_HUB_ID] [--port 7860]` (docs/demo.md). The logic is in plain
functions (`load_model`, `example_task`, `make_task`, `classify`, `smat_routing`, `export_classifier`,
`push_classifier`) that the tests call without a browser; `create_app` lays them out with gradio.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import os
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from huggingface_hub.errors import HfHubHTTPError  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from PIL import Image  # noqa: E402

from hf_fewshot.adaptation import finetune_on_support  # noqa: E402
from hf_fewshot.data import load_domain  # noqa: E402
from hf_fewshot.defaults import DEFAULT_MODEL  # noqa: E402
from hf_fewshot.hub import push_model_folder  # noqa: E402
from hf_fewshot.models import FewShotPreTrainedModel, FewShotTask, SmatModel, load_fewshot_model  # noqa: E402
from hf_fewshot.models.image_processing import open_images  # noqa: E402

MAX_CLASSES = 10
EXAMPLE_DOMAINS = ("emoji", "digits", "clipart", "glyphs")  # MiniMeta's domains, test split
USER_ERRORS = (ValueError, OSError, TypeError, FloatingPointError, HfHubHTTPError)
"""What the library raises for a user's mistake (a bad file, a one-class task, a missing model): shown as a
message in the page. Anything else is a bug and gets gradio's generic error."""

ImageLike = Image.Image | str | os.PathLike


# ------------------------------------------------------------------------------------------------------ logic
_models: dict[str, FewShotPreTrainedModel] = {}


def load_model(name_or_path: str) -> FewShotPreTrainedModel:
    """A saved few-shot model (folder or Hub id; any other backbone becomes a ProtoNet), cached by name."""
    name = (name_or_path or "").strip()
    if not name:
        raise ValueError("Type a model: a folder (e.g. the main job's runs/minimeta-smat/model) or a Hub id.")
    key = str(Path(name).resolve()) if Path(name).is_dir() else name
    if key not in _models:
        _models[key] = load_fewshot_model(name).eval()
    return _models[key]


def describe_model(model: FewShotPreTrainedModel) -> str:
    config = model.config
    experts = f", {config.num_experts} experts" if isinstance(model, SmatModel) else ""
    return (
        f"{type(model).__name__} ({config.backbone_config.model_type} backbone{experts}), {config.eval_image_size} px"
    )


@dataclass
class ExampleTask:
    """A task drawn from a MiniMeta test domain: support images by class name, queries and their true classes."""

    support: dict[str, list[Image.Image]]
    queries: list[Image.Image]
    query_labels: list[str]


def example_task(
    domain: str = "emoji", n_classes: int = 5, shots: int = 3, queries_per_class: int = 2, seed: int = 0
) -> ExampleTask:
    """`n_classes` classes of `domain`'s test split (classes with enough images; names sorted), `shots` support and
    `queries_per_class` query images each, queries shuffled. Deterministic for a given `seed`."""
    if not 2 <= n_classes <= MAX_CLASSES:
        raise ValueError(f"An example task has 2 to {MAX_CLASSES} classes, not {n_classes}.")
    dataset = load_domain("minimeta", domain, "test")
    names = np.array(dataset["class_name"])
    rng = np.random.default_rng(seed)
    usable = sorted(name for name in set(names.tolist()) if (names == name).sum() >= shots + queries_per_class)
    if len(usable) < n_classes:
        raise ValueError(f"{domain} has only {len(usable)} classes with {shots + queries_per_class} images each.")
    chosen = sorted(rng.choice(usable, size=n_classes, replace=False).tolist())
    support, queries = {}, []
    for name in chosen:
        rows = rng.permutation(np.flatnonzero(names == name))[: shots + queries_per_class].tolist()
        support[name] = [dataset[row]["image"] for row in rows[:shots]]
        queries += [(dataset[row]["image"], name) for row in rows[shots:]]
    order = rng.permutation(len(queries))
    return ExampleTask(support, [queries[i][0] for i in order], [queries[i][1] for i in order])


def _open(images: Sequence[ImageLike], what: str) -> list[Image.Image]:
    """Decode images one by one, so that the message names the file that is not an image."""
    opened = []
    for image in images:
        try:
            opened += open_images([image])
        except OSError as error:  # PIL's UnidentifiedImageError, a truncated file, a missing one
            name = Path(image).name if isinstance(image, (str, os.PathLike)) else "an image"
            raise ValueError(f"{what}: {name} is not an image that can be decoded ({error}).") from None
    return opened


@dataclass
class DemoTask:
    """A prepared task (`FewShotTask`) and the names of its classes, in the order of its logits."""

    task: FewShotTask
    class_names: list[str]

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.class_names))


def support_tensors(
    model: FewShotPreTrainedModel, support: Mapping[str, Sequence[ImageLike]]
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Pixels and episode ids of a support set given as `{class name: images}`; checks what a user can get wrong."""
    names = [str(name).strip() for name in support]
    if len(names) < 2:
        raise ValueError(f"A few-shot task needs at least 2 classes; {len(names)} given.")
    if len(names) > MAX_CLASSES:
        raise ValueError(f"At most {MAX_CLASSES} classes, {len(names)} given.")
    if len(set(names)) < len(names):
        raise ValueError(f"Two classes have the same name: {sorted(n for n in names if names.count(n) > 1)[0]!r}.")
    images, ids = [], []
    for i, (name, files) in enumerate(support.items()):
        if not files:
            raise ValueError(f"Class {str(name).strip()!r} has no images: give it at least one.")
        opened = _open(files, f"class {str(name).strip()!r}")
        images += opened
        ids += [i] * len(opened)
    pixels = model.image_processor(images, return_tensors="pt")["pixel_values"].to(model.device, model.dtype)
    return pixels, torch.tensor(ids, device=model.device), names


def make_task(
    model: FewShotPreTrainedModel,
    support: Mapping[str, Sequence[ImageLike]],
    finetune: str = "none",
    steps: int = 20,
    learning_rate: float | str = "auto",
) -> DemoTask:
    """Prepare the task of `support` (`{class name: images}`, classes in that order); `finetune` "lora" or "full"
    fine-tunes on the support images (`finetune_on_support`, with its progress bars: the page tracks them)."""
    pixels, ids, names = support_tensors(model, support)
    if finetune == "none":
        return DemoTask(model.prepare_task(pixels, ids), names)
    return DemoTask(finetune_on_support(model, pixels, ids, finetune, learning_rate, steps, progress=True), names)


@torch.no_grad()
def classify(task: DemoTask, queries: Sequence[ImageLike]) -> list[dict]:
    """Per query image: `{"prediction": name, "probability": p, "probabilities": {name: p}}`, where p is the
    softmax of the task's logits (the prediction is their argmax, what `model.predict` returns)."""
    if not queries:
        raise ValueError("Give at least one query image to classify.")
    images = _open(queries, "query images")
    pixels = task.task.image_processor(images, return_tensors="pt")["pixel_values"]
    backbone = task.task.backbone
    probabilities = task.task(pixels.to(backbone.device, backbone.dtype)).softmax(-1).cpu()
    rows = []
    for p in probabilities:
        best = int(p.argmax())
        rows.append(
            {
                "prediction": task.class_names[best],
                "probability": float(p[best]),
                "probabilities": dict(zip(task.class_names, p.tolist(), strict=True)),
            }
        )
    return rows


@dataclass
class Routing:
    """What SMAT's router chose for a task: expert weights a `[M]`, each expert's eval-gate density, and the
    density of the merged gates Σ a_m z_m (the fraction of masked backbone weights the task's merge changes)."""

    expert_weights: list[float]
    expert_density: list[float]
    merged_density: float


@torch.no_grad()
def smat_routing(model: SmatModel, support: Mapping[str, Sequence[ImageLike]]) -> Routing:
    """The routing `model.prepare_task` does for this support set (eval mode): the router on the class prototypes
    (mean features) of the pre-trained backbone, eval expert weights, the experts' eval gates mixed with them."""
    pixels, ids, names = support_tensors(model, support)
    was_training = model.training
    model.eval()
    try:
        features = model.embed(pixels)
        prototypes = torch.stack([features[ids == c].mean(0) for c in range(len(names))])
        weights = model.expert_weights(model.router(prototypes), training=False)
        mixed = model.mix_expert_gates(weights, training=False, with_density=False)[0]
        density = 1 - model.expert_sparsity()
    finally:
        model.train(was_training)
    return Routing(weights.tolist(), density.tolist(), float((mixed != 0).float().mean()))


def routing_figure(routing: Routing) -> Figure:
    experts = np.arange(len(routing.expert_weights))
    figure = Figure(figsize=(6.4, 2.3), layout="constrained")
    figure.suptitle("SMAT routing", fontsize=10)
    left, right = figure.subplots(1, 2)
    left.bar(experts, routing.expert_weights, color="tab:blue")
    left.set(title="expert weights for this task", xlabel="expert", ylabel="weight", ylim=(0, 1), xticks=experts)
    labels = [f"expert {m}" for m in experts] + ["merged"]
    colours = ["tab:gray"] * len(experts) + ["tab:orange"]
    right.bar(np.arange(len(labels)), [*routing.expert_density, routing.merged_density], color=colours)
    right.set(title="gate density (open gates)", ylim=(0, 1), xticks=np.arange(len(labels)))
    right.set_xticklabels(labels, rotation=20)
    return figure


def export_classifier(task: DemoTask, folder: str | os.PathLike) -> Path:
    """The task as a plain `ViTForImageClassification` folder with its processor (no hf-fewshot needed to run it)."""
    task.task.save_image_classifier(folder, task.id2label)
    return Path(folder)


def push_classifier(task: DemoTask, repo_id: str) -> str:
    """Push the exported classifier to a Hub model repo (created if needed; the token of `hf auth login` or
    HF_TOKEN); returns the commit URL."""
    repo_id = (repo_id or "").strip()
    if not repo_id:
        raise ValueError("Type a Hub repo id such as `your-name/my-classifier`.")
    with tempfile.TemporaryDirectory() as folder:
        return push_model_folder(export_classifier(task, folder), repo_id)


# ------------------------------------------------------------------------------------------------------ page
def _thumbnail(path: str) -> str:
    with Image.open(path) as image:
        image = image.convert("RGB")
        image.thumbnail((96, 96))
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def predictions_html(paths: Sequence[str], rows: Sequence[dict]) -> str:
    """The results table: thumbnail, file, prediction, its probability, the runner-up (every class's probability
    in the row's tooltip)."""
    lines = []
    for path, row in zip(paths, rows, strict=True):
        ranked = sorted(row["probabilities"].items(), key=lambda item: -item[1])
        tooltip = html.escape(", ".join(f"{name} {p:.3f}" for name, p in ranked), quote=True)
        runner_up = f"{html.escape(ranked[1][0])} {ranked[1][1]:.2f}"
        lines.append(
            f'<tr title="{tooltip}"><td><img src="{_thumbnail(path)}" style="width: 28px; height: 28px; '
            f'image-rendering: pixelated"></td><td class="query">{html.escape(Path(path).name)}</td>'
            f'<td class="prediction"><b>{html.escape(row["prediction"])}</b></td>'
            f'<td class="probability">{row["probability"]:.2f}</td><td class="runner-up">{runner_up}</td></tr>'
        )
    return (
        "<style>#predictions td, #predictions th {padding: 2px 8px; white-space: nowrap}</style>"
        '<table style="font-size: 0.9em"><thead><tr><th></th><th>query</th><th>prediction</th><th>p</th>'
        f"<th>next best</th></tr></thead><tbody>{''.join(lines)}</tbody></table>"
    )


def support_from_slots(names: Sequence[str | None], files: Sequence[Sequence[str] | None]) -> dict[str, list]:
    """The support set of the page's class slots: a slot with a name or files is a class, empty slots are skipped."""
    support = {}
    for slot, (name, class_files) in enumerate(zip(names, files, strict=True), start=1):
        name = (name or "").strip()
        if name or class_files:
            if not name:
                raise ValueError(f"Class slot {slot} has images but no name.")
            if name in support:
                raise ValueError(f"Two classes are named {name!r}.")
            support[name] = list(class_files or [])
    return support


def _message(text: str, error: bool = False) -> str:
    return f"**⚠️ {text}**" if error else text


def _write_example(domain: str, n_classes: int, shots: int) -> tuple[list[str], list[list[str]], list[str]]:
    """`example_task` written to PNG files (what the File components hold): names, support files, query files."""
    example = example_task(domain, int(n_classes), int(shots))
    folder = Path(tempfile.mkdtemp(prefix=f"hf-fewshot-demo-{domain}-"))
    support_files = []
    for c, (name, images) in enumerate(example.support.items()):
        stem = re.sub(r"[^\w-]+", "_", name)
        support_files.append([str(folder / f"{c}_{stem}_{k}.png") for k in range(len(images))])
        for image, path in zip(images, support_files[-1], strict=True):
            image.save(path)
    query_files = [str(folder / f"query_{q:02d}.png") for q in range(len(example.queries))]
    for image, path in zip(example.queries, query_files, strict=True):
        image.save(path)
    return list(example.support), support_files, query_files


def create_app(model_path: str | None = None) -> gr.Blocks:
    """The demo's page. `model_path`: the model the picker starts with (default: the main job's SMAT if present)."""
    if model_path is None:
        model_path = DEFAULT_MODEL if Path(DEFAULT_MODEL).is_dir() else ""

    with gr.Blocks(title="hf-fewshot demo") as app:
        gr.Markdown(
            "# Few-shot image classification\nName 2–10 classes, give each a few support images, add query images "
            "and classify. Empty class slots are ignored."
        )
        task_state = gr.State(None)
        with gr.Row():
            with gr.Column(scale=3):
                with gr.Row():
                    model_box = gr.Textbox(model_path, label="model (folder or Hub id)", elem_id="model", scale=4)
                    load_button = gr.Button("load", elem_id="load", scale=1)
                model_info = gr.Markdown(elem_id="model-info")
                with gr.Row():
                    domain = gr.Dropdown(list(EXAMPLE_DOMAINS), value="emoji", label="MiniMeta test domain")
                    n_classes = gr.Slider(2, MAX_CLASSES, value=5, step=1, label="classes")
                    shots = gr.Slider(1, 10, value=3, step=1, label="images per class")
                example_button = gr.Button("load an example task", elem_id="example")
                names, files = [], []
                for row in range(MAX_CLASSES // 2):
                    with gr.Row():
                        for c in (2 * row, 2 * row + 1):
                            with gr.Group():
                                names.append(gr.Textbox(label=f"class {c + 1}", elem_id=f"class-name-{c}"))
                                files.append(
                                    gr.File(
                                        file_count="multiple",
                                        file_types=["image"],
                                        show_label=False,
                                        height=110,
                                        elem_id=f"class-files-{c}",
                                    )
                                )
                queries = gr.File(file_count="multiple", file_types=["image"], label="query images", elem_id="queries")
            with gr.Column(scale=2):
                classify_button = gr.Button("classify", variant="primary", elem_id="classify")
                message = gr.Markdown(elem_id="message")
                predictions = gr.HTML(elem_id="predictions")
                routing_plot = gr.Plot(show_label=False, elem_id="routing", format="png")
                with gr.Accordion("fine-tune on the support set (optional)", open=False):
                    finetune = gr.Radio(["none", "lora", "full"], value="none", show_label=False, elem_id="finetune")
                    steps = gr.Slider(
                        5, 100, value=20, step=5, label="steps (learning rate: chosen on the support set)"
                    )
                with gr.Accordion("export the task", open=False):
                    export_button = gr.Button("download as a ViTForImageClassification folder (zip)")
                    export_file = gr.File(label="classifier", elem_id="export-file")
                    with gr.Row():
                        repo_box = gr.Textbox(label="Hub repo id", placeholder="your-name/my-classifier", scale=3)
                        push_button = gr.Button("push to the Hub", scale=1)

        def on_load(name):
            try:
                return _message(f"Loaded {describe_model(load_model(name))}.")
            except USER_ERRORS as error:
                return _message(str(error), error=True)

        def on_example(domain, n_classes, shots):
            try:
                class_names, support_files, query_files = _write_example(domain, n_classes, shots)
            except USER_ERRORS as error:
                return [*[gr.skip()] * (2 * MAX_CLASSES + 1), _message(str(error), error=True)]
            pad = MAX_CLASSES - len(class_names)
            return [*class_names, *[""] * pad, *support_files, *[None] * pad, query_files, ""]

        def on_classify(name, finetune, steps, query_files, *slots, progress=gr.Progress(track_tqdm=True)):  # noqa: B008
            try:
                model = load_model(name)
                support = support_from_slots(slots[:MAX_CLASSES], slots[MAX_CLASSES:])
                task = make_task(model, support, finetune, int(steps))  # its tqdm bars show in the page
                paths = list(query_files or [])
                rows = classify(task, paths)
                figure = routing_figure(smat_routing(model, support)) if isinstance(model, SmatModel) else None
                tuned = "" if finetune == "none" else f", fine-tuned ({finetune}, {int(steps)} steps)"
                text = f"{len(paths)} queries, {task.task.n_way} classes{tuned}."
                return _message(text), predictions_html(paths, rows), figure, task
            except USER_ERRORS as error:
                return _message(str(error), error=True), "", None, None

        def on_export(task):
            if task is None:
                return None, _message("Classify first: the export is the task of the last classification.", True)
            folder = Path(tempfile.mkdtemp(prefix="hf-fewshot-export-"))
            try:
                export_classifier(task, folder / "classifier")
            except USER_ERRORS as error:  # e.g. a backbone that is not a ViT
                return None, _message(str(error), error=True)
            archive = shutil.make_archive(str(folder / "fewshot-classifier"), "zip", folder / "classifier")
            return archive, _message("Exported: unzip and load with `pipeline('image-classification', model=...)`.")

        def on_push(task, repo_id):
            if task is None:
                return _message("Classify first: the push is the task of the last classification.", True)
            try:
                return _message(f"Pushed: {push_classifier(task, repo_id)}")
            except USER_ERRORS as error:
                return _message(str(error), error=True)

        load_button.click(on_load, model_box, model_info)
        example_button.click(on_example, [domain, n_classes, shots], [*names, *files, queries, message])
        classify_button.click(
            on_classify,
            [model_box, finetune, steps, queries, *names, *files],
            [message, predictions, routing_plot, task_state],
        )
        export_button.click(on_export, task_state, [export_file, message])
        push_button.click(on_push, [task_state, repo_box], message)
        if model_path:
            app.load(on_load, model_box, model_info)
    return app


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help=f"folder or Hub id (default: {DEFAULT_MODEL} if present)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    args = parser.parse_args(argv)
    create_app(args.model).launch(server_name=args.host, server_port=args.port)


if __name__ == "__main__":
    main()
