"""`pipeline("few-shot-image-classification")`: classify images by a few labelled examples, no training.

```python
from transformers import pipeline
import hf_fewshot  # registers the task

classify = pipeline("few-shot-image-classification", model="user/smat-minimeta")
classify(["query.png"], support_images=["cat_1.png", "dog_1.png"], support_labels=["cat", "dog"])
```

Images go through the model folder's image processor (what `AutoImageProcessor` loads), decoded by the library's
one rule (`to_rgb`: EXIF, bit depths, transparency). The support set is prepared once per call, then every query
image runs through the usual pipeline steps (batching, devices).
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Sequence
from typing import Any

import torch
from PIL import Image
from transformers import AutoModel, Pipeline
from transformers.pipelines import PIPELINE_REGISTRY

from hf_fewshot.models.image_processing import open_images
from hf_fewshot.models.modeling_fewshot import encode_support_labels

ImageInput = Image.Image | str | os.PathLike


class FewShotImageClassificationPipeline(Pipeline):
    """For each query image, the support labels ranked by probability (`[{"label", "score"}, ...]`, best first)."""

    _load_image_processor = True
    _load_tokenizer = False
    _load_feature_extractor = False
    _load_processor = False

    def __call__(
        self,
        images: ImageInput | Sequence[ImageInput],
        support_images: Sequence[ImageInput],
        support_labels: Sequence[Hashable],
        top_k: int | None = None,
        **kwargs,
    ) -> list[dict[str, Any]] | list[list[dict[str, Any]]]:
        """Classify `images` (one, or a list) among the classes of `support_labels` (names or ids, one per support
        image); `top_k` limits the ranking."""
        support = open_images(support_images)
        classes, ids = encode_support_labels(support_labels, len(support))
        task = self.model.prepare_task(self._pixel_values(support), torch.tensor(ids, device=self.model.device))
        return super().__call__(images, task=task, classes=classes, top_k=top_k, **kwargs)

    def _pixel_values(self, images: list[Image.Image]) -> torch.Tensor:
        if len(images) == 0:
            raise ValueError("No images given.")
        pixels = self.image_processor(images, return_tensors="pt")["pixel_values"]
        return pixels.to(self.model.device, self.model.dtype)

    def _sanitize_parameters(self, task=None, classes=None, top_k=None):
        return {}, {"task": task}, {"classes": classes, "top_k": top_k}

    def preprocess(self, image: ImageInput) -> dict[str, torch.Tensor]:
        return {"pixel_values": self._pixel_values(open_images([image]))}

    def _forward(self, model_inputs: dict[str, torch.Tensor], task) -> dict[str, torch.Tensor]:
        return {"probabilities": task(model_inputs["pixel_values"]).softmax(-1)}

    def postprocess(self, model_outputs: dict[str, torch.Tensor], classes: list, top_k: int | None):
        probabilities = model_outputs["probabilities"][0]
        scores, ids = probabilities.topk(len(classes) if top_k is None else min(top_k, len(classes)))
        return [{"label": classes[i], "score": s} for s, i in zip(scores.tolist(), ids.tolist(), strict=True)]


PIPELINE_REGISTRY.register_pipeline(
    "few-shot-image-classification", pipeline_class=FewShotImageClassificationPipeline, pt_model=AutoModel
)

__all__ = ["FewShotImageClassificationPipeline"]
