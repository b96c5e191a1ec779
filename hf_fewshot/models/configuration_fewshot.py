"""The configuration every few-shot model shares (`FewShotConfig`): the nested backbone configuration, where its
weights came from, the cosine head's scale and bias, the image size; strict about unknown keys and value types.

This file is copied next to the modeling files when a model is saved with remote code, so it imports nothing from
`hf_fewshot`.
"""

import dataclasses
import difflib
import numbers
import types
import typing
from typing import Any

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

DEFAULT_LOGIT_SCALE = 10.0
"""The cosine head's scale `s` (P>M>F's initial value, SMAT's fixed one, and the plain-backbone baseline's)."""


class FewShotConfig(PreTrainedConfig):
    """What both few-shot models share: the nested backbone config, where it came from, and the head's scale/bias.

    Loading a checkpoint of another model type into this config raises a `ValueError` instead of
    silently building a wrong model.
    """

    sub_configs_defaults = {"backbone_config": SubConfigSpec(config_class=AutoConfig, model_type="vit")}

    backbone_config: dict | PreTrainedConfig | None = None
    backbone_name_or_path: str | None = None
    logit_scale: float = DEFAULT_LOGIT_SCALE
    logit_bias: float = 0.0
    image_size: int | None = None  # the size it is meta-trained and evaluated at; None: the backbone's

    # What a model card says of the method (class attributes, not settings): a Markdown summary, the papers.
    summary = "A few-shot image classifier: cosine similarity of query features to the class prototypes."
    papers = ()

    @classmethod
    def settings_for_training(cls, settings: dict[str, Any], num_tasks: int) -> dict[str, Any]:
        """`settings` of this configuration completed with what depends on the training length (`num_tasks`
        meta-training tasks); given values are kept. The base configuration has nothing of the kind."""
        return dict(settings)

    @property
    def eval_image_size(self) -> int:
        """The image size of the model's processor: `image_size`, else the backbone's (224 for DINO ViT-S/16)."""
        size = self.image_size or self.backbone_config.image_size
        return size if isinstance(size, int) else int(size[0])

    def __post_init__(self, **kwargs):
        """Refuse settings this config does not have (`sparsity_targt` would be kept as a stray attribute while the
        default is used) and values of the wrong type, before anything is built from them."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(key for key in kwargs if key not in names and key not in _PRETRAINED_CONFIG_KEYS)
        if unknown:
            hints = [
                f"{key!r} (did you mean {close[0]!r}?)"
                if (close := difflib.get_close_matches(key, names, 1))
                else repr(key)
                for key in unknown
            ]
            raise ValueError(f"{type(self).__name__} has no setting {', '.join(hints)}.")
        for klass in type(self).__mro__:  # the settings of the few-shot configs, not PreTrainedConfig's own
            if isinstance(klass, type) and issubclass(klass, FewShotConfig):
                for name, expected in klass.__dict__.get("__annotations__", {}).items():
                    _check_type(type(self).__name__, name, getattr(self, name), expected)
        super().__post_init__(**kwargs)

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs) -> PreTrainedConfig:
        found = config_dict.get("model_type")
        if found and cls.model_type and found != cls.model_type:
            raise ValueError(
                f"This checkpoint is a {found!r} model, not {cls.model_type!r}: load it with its own class "
                "or with transformers.AutoModel after `import hf_fewshot`."
            )
        return super().from_dict(config_dict, **kwargs)


# Keys PreTrainedConfig itself accepts (or writes into config.json) beyond its fields.
_PRETRAINED_CONFIG_KEYS = {
    "auto_map", "model_type", "transformers_version", "torch_dtype", "name_or_path", "_name_or_path", "_commit_hash",
    "output_attentions", "attn_implementation", "experts_implementation", "num_labels", "per_layer_config",
    "_attn_implementation_internal", "_experts_implementation_internal", "use_cache",  # the Trainer sets use_cache
    "quantization_config", "fusion_config",  # set (and saved) by from_pretrained when given
}  # fmt: skip


def _check_type(owner: str, name: str, value: Any, expected: Any) -> None:
    """A clear error for a config value of the wrong type (`num_experts=2.5`, `sparsity_target="0.5"`). Only
    scalar settings are checked here; lists and nested configs are checked where they are used."""
    allowed = (
        typing.get_args(expected) if typing.get_origin(expected) in (typing.Union, types.UnionType) else (expected,)
    )
    if value is None and type(None) in allowed:
        return
    kinds = [kind for kind in allowed if kind is not type(None)]
    if any(kind not in (bool, int, float) for kind in kinds):
        return
    plain_number = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if (bool in kinds and isinstance(value, bool)) or (float in kinds and plain_number):
        return
    if int in kinds and plain_number and isinstance(value, numbers.Integral):
        return
    names = " or ".join(kind.__name__ for kind in allowed).replace("NoneType", "None")
    raise ValueError(f"{owner}.{name} must be {names}, got {value!r} ({type(value).__name__}).")


__all__ = ["DEFAULT_LOGIT_SCALE", "FewShotConfig"]
