"""What every few-shot model is built of: the checks of an episode's inputs, the cosine prototype head shared by
ProtoNet (P>M>F) and SMAT, backbone building and loading, the prepared task (`FewShotTask`) and the base model
(`FewShotPreTrainedModel`: building from a backbone, raw-image prediction, saving and pushing with processor and
card). Its configuration is `configuration_fewshot.FewShotConfig`.

`logits = scale · (cos(f(x), p_c) + bias)` where `p_c` is the mean support feature of class c (no
normalisation before averaging, as P>M>F). This file is copied next to the modeling files when a model
is saved with remote code, so it imports nothing from `hf_fewshot` (the card, written where the library is
installed, is imported lazily).
"""

import copy
import itertools
import os
import tempfile
from collections.abc import Hashable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from huggingface_hub import HfApi
from PIL import Image
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    BitImageProcessorPil,
    ImageClassificationPipeline,
    PreTrainedConfig,
    PreTrainedModel,
    ViTForImageClassification,
)
from transformers import initialization as init
from transformers.utils import ModelOutput

from .configuration_fewshot import DEFAULT_LOGIT_SCALE, FewShotConfig
from .image_processing import eval_image_processor, open_images


def check_episode(
    support_pixel_values: torch.Tensor,
    support_labels: torch.Tensor,
    query_pixel_values: torch.Tensor | None = None,
    query_labels: torch.Tensor | None = None,
) -> int:
    """Validate an episode and return its number of classes (ways).

    Labels must be episode-relative integers `0..n_way-1` with at least one support image per class;
    support and query images must have the same channels and size. Raises `ValueError` otherwise.
    """
    if support_pixel_values.ndim != 4:
        raise ValueError(
            f"support_pixel_values must be (n, channels, height, width), got {tuple(support_pixel_values.shape)}."
        )
    if support_labels.ndim != 1 or len(support_labels) != len(support_pixel_values):
        raise ValueError(
            f"support_labels must be 1-D with one label per support image: {tuple(support_labels.shape)} labels "
            f"for {len(support_pixel_values)} images."
        )
    _check_labels("support_labels", support_labels)
    if len(support_labels) == 0:
        raise ValueError("The support set is empty.")
    _check_pixels("support_pixel_values", support_pixel_values)
    n_way = int(support_labels.max()) + 1
    if int(support_labels.min()) < 0:
        raise ValueError(f"support_labels must be episode-relative ids 0..n_way-1, found {int(support_labels.min())}.")
    counts = torch.bincount(support_labels, minlength=n_way)
    if (counts == 0).any():
        empty = torch.nonzero(counts == 0).flatten().tolist()
        raise ValueError(
            f"support_labels must use every id 0..{n_way - 1}; class(es) {empty} have no support image. "
            "Relabel the episode's classes to 0..n_way-1."
        )
    if query_pixel_values is not None:
        if query_pixel_values.ndim != 4 or query_pixel_values.shape[1:] != support_pixel_values.shape[1:]:
            raise ValueError(
                f"Query images {tuple(query_pixel_values.shape[1:])} do not match support images "
                f"{tuple(support_pixel_values.shape[1:])} (channels, height, width); resize both the same way."
            )
        if len(query_pixel_values) == 0:  # else a NaN loss, or a reshape error deep in transformers
            raise ValueError("The query set is empty: an episode needs at least one query image.")
        _check_pixels("query_pixel_values", query_pixel_values)
        if query_labels is not None:
            _check_labels("query_labels", query_labels)
            if query_labels.shape != (len(query_pixel_values),):
                raise ValueError(
                    f"query_labels must hold one label per query image: {tuple(query_labels.shape)} for "
                    f"{len(query_pixel_values)} images."
                )
            if len(query_labels) and (int(query_labels.min()) < 0 or int(query_labels.max()) >= n_way):
                raise ValueError(f"query_labels must lie in 0..{n_way - 1} (the support set's classes).")
    return n_way


def encode_support_labels(support_labels: Sequence[Hashable], num_images: int) -> tuple[list[Hashable], list[int]]:
    """The classes of a raw support set (its labels sorted: names or ids) and each image's episode id 0..n_way-1."""
    if num_images != len(support_labels):
        raise ValueError(f"{num_images} support images but {len(support_labels)} labels: one label each.")
    try:
        classes = sorted(set(support_labels))
    except TypeError:
        raise ValueError("support_labels must all be names or all be integer ids, not a mixture.") from None
    if len(classes) < 2:
        raise ValueError(f"The support images show {len(classes)} class(es); a few-shot task needs at least 2.")
    index = {label: i for i, label in enumerate(classes)}
    return classes, [index[label] for label in support_labels]


def _check_labels(name: str, labels: torch.Tensor) -> None:
    if labels.dtype != torch.long:
        kind = "integer class ids" if labels.dtype.is_floating_point or labels.dtype == torch.bool else "int64"
        raise ValueError(f"{name} must be {kind} (torch.long), got {labels.dtype}: pass `{name}.long()`.")


def _check_pixels(name: str, pixel_values: torch.Tensor) -> None:
    if not pixel_values.is_floating_point():
        raise ValueError(f"{name} must be floating-point pixel values, got {pixel_values.dtype}.")
    if not torch.isfinite(pixel_values).all():
        raise ValueError(f"{name} hold NaN or inf: the images were not decoded or normalised correctly.")


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """`module` in eval mode inside the block, back in the mode it had on exit."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


def class_prototypes(features: torch.Tensor, labels: torch.Tensor, n_way: int) -> torch.Tensor:
    """Mean feature of each class, `(n_way, dim)`: `p_c = mean_{i: y_i = c} f(x_i)`."""
    sums = torch.zeros(n_way, features.shape[-1], dtype=features.dtype, device=features.device)
    sums = sums.index_add(0, labels, features)
    counts = torch.bincount(labels, minlength=n_way).clamp_min(1).to(features.dtype)
    return sums / counts.unsqueeze(-1)


def cosine_logits(
    features: torch.Tensor, prototypes: torch.Tensor, scale: torch.Tensor | float, bias: torch.Tensor | float = 0.0
) -> torch.Tensor:
    """`scale · (cos(f, p_c) + bias)` for every feature and prototype, `(n, n_way)`."""
    return scale * (F.normalize(features, dim=-1) @ F.normalize(prototypes, dim=-1).T + bias)


class CosinePrototypeHead(nn.Module):
    """Holds the scale `s` (init 10) and bias `b` (init 0) of the cosine prototype classifier.

    `learnable_scale` / `learnable_bias` decide whether meta-training updates them (P>M>F learns both,
    SMAT keeps `s` fixed and has no bias). They are always saved, so a checkpoint records the values used.
    """

    def __init__(
        self,
        scale: float = DEFAULT_LOGIT_SCALE,
        bias: float = 0.0,
        learnable_scale: bool = True,
        learnable_bias: bool = True,
    ):
        super().__init__()
        self.initial_scale, self.initial_bias = float(scale), float(bias)
        self.scale = nn.Parameter(torch.tensor(float(scale)), requires_grad=learnable_scale)
        self.bias = nn.Parameter(torch.tensor(float(bias)), requires_grad=learnable_bias)

    def reset_parameters(self) -> None:
        # transformers' init functions leave values loaded from a checkpoint alone.
        init.constant_(self.scale, self.initial_scale)
        init.constant_(self.bias, self.initial_bias)

    def forward(self, features: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
        return cosine_logits(features, prototypes, self.scale, self.bias)


@dataclass
class FewShotOutput(ModelOutput):
    """Output of an episodic forward: `logits` `(n_query, n_way)`, and `loss` when query labels are given."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None


def build_backbone(config: PreTrainedConfig) -> PreTrainedModel:
    """A randomly initialised HF vision backbone without a pooler (features = CLS token of the last layer)."""
    kwargs = {"add_pooling_layer": False} if config.model_type == "vit" else {}
    return AutoModel.from_config(config, **kwargs)


def load_backbone(name_or_path: str, **kwargs) -> PreTrainedModel:
    """Pre-trained backbone weights from the Hub or a folder (`facebook/dino-vits16`, a Dinov2 checkpoint, …)."""
    config = AutoConfig.from_pretrained(name_or_path, **kwargs)
    if isinstance(config, FewShotConfig):  # else a model inside a model, or an AttributeError deep in transformers
        raise ValueError(
            f"{name_or_path} is a saved few-shot model ({config.model_type}), not a backbone: load it with "
            "load_fewshot_model / AutoModel.from_pretrained, or pass its backbone."
        )
    extra = {"add_pooling_layer": False} if config.model_type == "vit" else {}
    return AutoModel.from_pretrained(name_or_path, config=config, **extra, **kwargs)


def backbone_features(backbone: nn.Module, pixel_values: torch.Tensor, parameters: dict | None = None) -> torch.Tensor:
    """CLS features `(n, dim)` after the final LayerNorm, at any image size (position embeddings interpolated).

    With `parameters`, the backbone runs functionally on those tensors instead of its own (SMAT's task weights).
    """
    kwargs = {"interpolate_pos_encoding": True} if backbone.config.model_type == "vit" else {}
    if parameters is None:
        output = backbone(pixel_values=pixel_values, **kwargs)
    else:
        output = torch.func.functional_call(backbone, parameters, (), {"pixel_values": pixel_values, **kwargs})
    return output.last_hidden_state[:, 0]


class FewShotTask:
    """A few-shot task prepared once from its support set: a backbone and the class prototypes.

    Calling it on query images gives `(n, n_way)` logits; `to_image_classifier` exports it as a plain
    `ViTForImageClassification` whose argmax is the same prediction.
    """

    def __init__(self, backbone: PreTrainedModel, prototypes: torch.Tensor, scale: float, bias: float, image_size):
        self.backbone, self.prototypes = backbone, prototypes.detach()
        self.scale, self.bias, self.image_size = float(scale), float(bias), tuple(image_size)

    @property
    def n_way(self) -> int:
        return len(self.prototypes)

    @property
    def image_processor(self) -> BitImageProcessorPil:
        """The transformers processor that gives this task's pixels (what `EvalTransform` computes)."""
        if self.image_size[0] != self.image_size[1]:
            raise ValueError(f"The evaluation processor crops squares; this task works at {self.image_size}.")
        return eval_image_processor(self.image_size[0])

    @torch.no_grad()
    def __call__(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if tuple(pixel_values.shape[-2:]) != self.image_size:
            raise ValueError(
                f"Images of size {tuple(pixel_values.shape[-2:])} given to a task prepared at {self.image_size}."
            )
        with eval_mode(self.backbone):
            features = backbone_features(self.backbone, pixel_values)
        return cosine_logits(features, self.prototypes, self.scale, self.bias)

    @torch.no_grad()
    def to_image_classifier(self, id2label: dict[int, str] | None = None) -> PreTrainedModel:
        """A `ViTForImageClassification` at the task's image size, head = scale · L2-normalised prototypes.

        Its logits are `scale · p̂_c · f(x)`: the cosine logits times |f(x)|, which leaves the argmax unchanged,
        so `pipeline("image-classification")` returns the few-shot prediction with no custom code.
        """
        backbone = self.backbone
        if hasattr(backbone, "merge_and_unload"):  # a PEFT-wrapped backbone (LoRA fine-tuning): fold the adapter in
            backbone = copy.deepcopy(backbone).merge_and_unload()
        if backbone.config.model_type != "vit":
            raise ValueError(
                f"Only ViT backbones export to ViTForImageClassification, not {backbone.config.model_type!r}."
            )
        id2label = id2label or {k: f"class_{k}" for k in range(self.n_way)}
        if sorted(int(k) for k in id2label) != list(range(self.n_way)):
            raise ValueError(f"id2label must name the classes 0..{self.n_way - 1}, got keys {sorted(id2label)}.")
        config = copy.deepcopy(backbone.config)
        config.image_size = list(self.image_size) if self.image_size[0] != self.image_size[1] else self.image_size[0]
        config.id2label = {int(k): str(v) for k, v in id2label.items()}
        config.label2id = {v: k for k, v in config.id2label.items()}
        config.architectures = ["ViTForImageClassification"]
        classifier = ViTForImageClassification(config).eval()
        state = backbone.state_dict()
        # Bake the position embeddings for the task's image size into the export.
        dummy = torch.zeros(1, 1 + classifier.vit.embeddings.patch_embeddings.num_patches, config.hidden_size)
        state["embeddings.position_embeddings"] = backbone.embeddings.interpolate_pos_encoding(dummy, *self.image_size)
        classifier.vit.load_state_dict(state)
        classifier.classifier.weight.copy_(self.scale * F.normalize(self.prototypes, dim=-1))
        classifier.classifier.bias.fill_(self.scale * self.bias)
        return classifier

    def to_pipeline(self, id2label: dict[int, str] | None = None) -> ImageClassificationPipeline:
        """`pipeline("image-classification")` on the exported classifier and this task's processor: PIL images or
        paths in, the few-shot prediction out."""
        classifier = self.to_image_classifier(id2label)
        return ImageClassificationPipeline(model=classifier, image_processor=self.image_processor)

    def save_adapter(self, folder: str | os.PathLike) -> Path:
        """Save a LoRA-fine-tuned task so that its adapter loads onto the weights it was trained on: the task's base
        backbone (for SMAT, the experts merged for this support set) and its processor at `folder`, the PEFT adapter
        in `folder/lora`, whose `base_model_name_or_path` is `folder` (`AutoPeftModel.from_pretrained(folder/lora)`
        works; `push_adapter_folder` rewrites it to the repo id)."""
        if not hasattr(self.backbone, "peft_config"):
            raise ValueError("This task holds no LoRA adapter: fine-tune it with finetune_on_support(mode='lora').")
        folder = Path(folder)
        copy.deepcopy(self.backbone).unload().save_pretrained(folder)
        self.image_processor.save_pretrained(folder)
        config = self.backbone.peft_config[self.backbone.active_adapter]
        recorded, config.base_model_name_or_path = config.base_model_name_or_path, str(folder.resolve())
        try:
            self.backbone.save_pretrained(folder / "lora")
        finally:
            config.base_model_name_or_path = recorded
        return folder

    def save_image_classifier(self, folder: str | os.PathLike, id2label: dict[int, str] | None = None) -> None:
        """Save `to_image_classifier(id2label)` with its processor: a folder `pipeline("image-classification",
        model=folder)` and `AutoImageProcessor` load with no custom code."""
        self.to_image_classifier(id2label).save_pretrained(folder)
        self.image_processor.save_pretrained(folder)


class FewShotPreTrainedModel(PreTrainedModel):
    """Base of the episodic models: building from a backbone, embedding, preparing tasks."""

    base_model_prefix = "fewshot"
    main_input_name = "support_pixel_values"
    input_modalities = ("image",)
    accepts_loss_kwargs = False

    @classmethod
    def from_backbone(cls, backbone: str | PreTrainedConfig, **config_kwargs):
        """A model around a pre-trained backbone (a Hub id such as `"facebook/dino-vits16"`, or a folder).

        Given a backbone config (`ViTConfig`, `Dinov2Config`) instead, the backbone is random: tests, tiny demos.
        """
        if isinstance(backbone, PreTrainedConfig):
            return cls(cls.config_class(backbone_config=backbone, **config_kwargs))
        pretrained = load_backbone(str(backbone))
        model = cls(
            cls.config_class(backbone_config=pretrained.config, backbone_name_or_path=str(backbone), **config_kwargs)
        )
        model.backbone.load_state_dict(pretrained.state_dict())
        return model

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """`PreTrainedModel.from_pretrained`, each loaded tensor then moved to memory of its own where it was left at
        an address that is not 64-byte aligned (as torch allocates).

        transformers leaves the tensors where safetensors read them, at the file's offsets, which are only 8-byte
        aligned; MKL's matrix-vector product sums in another order on a matrix that is not 16-byte aligned (SMAT's
        router logits `tokens[0] @ expert_keys.T`, for one), so a reloaded model's logits would differ from the saved
        model's by float rounding (a few 1e-6) instead of being bit-identical."""
        loaded = super().from_pretrained(*args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        with torch.no_grad():
            for tensor in itertools.chain(model.parameters(), model.buffers()):
                if tensor.data_ptr() % 64:
                    tensor.data = tensor.data.clone()
        return loaded

    def embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Backbone features `(n, dim)` of images (the model's own backbone weights)."""
        return backbone_features(self.backbone, pixel_values)

    @property
    def image_processor(self) -> BitImageProcessorPil:
        """The transformers processor of the model's evaluation pixels (saved as `preprocessor_config.json`)."""
        return eval_image_processor(self.config.eval_image_size)

    @property
    def card_details(self) -> dict[str, Any]:
        """What the card shows beyond the model itself: keyword arguments of `hf_fewshot.hub.fewshot_model_card`
        (`results`, `dataset_id`, `protocol`, `training`, `plots`, `diagnostics`); the recipes fill it."""
        if "_card_details" not in self.__dict__:
            self._card_details = {}
        return self._card_details

    def model_card(self, repo_id: str):
        """The hf-fewshot card for `repo_id` (a `huggingface_hub.ModelCard`), or None where `hf_fewshot` is not
        installed (remote code): then transformers' own card is kept."""
        try:
            from hf_fewshot.hub import fewshot_model_card
        except ImportError:
            return None
        return fewshot_model_card(self, repo_id, **self.card_details)

    def save_pretrained(self, save_directory: str | os.PathLike, *args, repo_id: str | None = None, **kwargs) -> None:
        """`PreTrainedModel.save_pretrained`, plus the image processor and the hf-fewshot card (`README.md`, named
        after `repo_id`, else the folder). With `push_to_hub=True` the saved folder is then uploaded to `repo_id`."""
        push = kwargs.pop("push_to_hub", False)
        if push:  # the repo first: the card is named after its full id (a bare name gets the user's namespace)
            api, repo_id = self._hub_repo(repo_id or Path(save_directory).resolve().name, kwargs.get("token"))
        super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            self.image_processor.save_pretrained(save_directory)
            card = self.model_card(repo_id or Path(save_directory).resolve().name)
            if card is not None:
                card.save(Path(save_directory) / "README.md")
        if push:
            api.upload_folder(folder_path=str(save_directory), repo_id=repo_id, commit_message="Upload few-shot model")

    def push_to_hub(
        self,
        repo_id: str,
        *,
        commit_message: str = "Upload few-shot model",
        private: bool | None = None,
        token: str | bool | None = None,
        revision: str | None = None,
        create_pr: bool = False,
        **kwargs,
    ) -> str:
        """Upload the model, its processor and its hf-fewshot card (named after `repo_id`) as one commit; returns the
        commit URL. transformers' own `push_to_hub` would replace the card with a placeholder."""
        if kwargs:
            raise TypeError(f"push_to_hub() got unexpected argument(s) {sorted(kwargs)}.")
        api, repo_id = self._hub_repo(repo_id, token, private)
        with tempfile.TemporaryDirectory() as folder:
            self.save_pretrained(folder, repo_id=repo_id)
            commit = api.upload_folder(
                folder_path=folder,
                repo_id=repo_id,
                commit_message=commit_message,
                revision=revision,
                create_pr=create_pr,
            )
        return commit.commit_url

    @staticmethod
    def _hub_repo(repo_id: str, token: str | bool | None, private: bool | None = None) -> tuple[HfApi, str]:
        """The Hub client and the full id of `repo_id`, created if needed."""
        api = HfApi(token=token)
        return api, api.create_repo(repo_id, private=private, exist_ok=True).repo_id

    @torch.no_grad()
    def predict(
        self,
        query_images: Sequence[Image.Image | str | os.PathLike],
        support_images: Sequence[Image.Image | str | os.PathLike],
        support_labels: Sequence[Hashable],
    ) -> list[Hashable]:
        """The class of each query image, learned from a few labelled support images (PIL images or paths to image
        files; labels are any names or ids, e.g. `["cat", "cat", "dog"]`). Images go through the model's processor.
        """
        support, queries = open_images(support_images), open_images(query_images)
        classes, ids = encode_support_labels(support_labels, len(support))
        task = self.prepare_task(self._pixel_values(support), torch.tensor(ids, device=self.device))
        return [classes[i] for i in task(self._pixel_values(queries)).argmax(-1).tolist()]

    def _pixel_values(self, images: list[Image.Image]) -> torch.Tensor:
        if len(images) == 0:
            raise ValueError("No images given.")
        pixels = self.image_processor(images, return_tensors="pt")["pixel_values"]
        return pixels.to(self.device, self.dtype)
