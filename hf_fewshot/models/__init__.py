"""Few-shot models as `transformers` PreTrainedModels.

`hf_fewshot.methods` registers each with the Auto classes and for remote code (every `save_pretrained` folder
carries its modeling files and loads with `trust_remote_code=True` where `hf_fewshot` is not installed).
"""

from transformers import AutoConfig, AutoModel, PreTrainedModel

from .configuration_fewshot import FewShotConfig
from .configuration_protonet import ProtoNetConfig
from .configuration_smat import SmatConfig
from .modeling_fewshot import CosinePrototypeHead, FewShotOutput, FewShotPreTrainedModel, FewShotTask
from .modeling_protonet import ProtoNetModel
from .modeling_smat import SmatModel, SmatOutput


def from_pretrained_strictly(model_class: type[PreTrainedModel], name_or_path: str, **kwargs) -> PreTrainedModel:
    """`model_class.from_pretrained` that refuses a checkpoint with missing, unexpected or mis-shaped tensors.

    `from_pretrained` re-initialises a missing tensor with a mere warning: a checkpoint without SMAT's `delta`
    would load as a model whose learned delta is gone. For a saved few-shot model that is never what a user wants.
    """
    model, info = model_class.from_pretrained(name_or_path, output_loading_info=True, **kwargs)
    problems = {kind: info.get(kind) for kind in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    problems = {kind: sorted(map(str, keys)) for kind, keys in problems.items() if keys}
    if problems:
        listed = "; ".join(f"{kind.replace('_', ' ')}: {', '.join(keys[:5])}" for kind, keys in problems.items())
        raise ValueError(
            f"{name_or_path} does not hold the tensors of a {type(model).__name__} ({listed}): it was written by "
            "another model or version, or is incomplete."
        )
    return model


def load_fewshot_model(name_or_path: str) -> FewShotPreTrainedModel:
    """A saved few-shot model (SMAT, ProtoNet, any registered method) as itself (strictly: every tensor must be
    there); any other checkpoint (e.g. `facebook/dino-vits16`) as the backbone of a fresh ProtoNet, i.e. cosine
    prototypes on its CLS features with scale 10 — the "no meta-tuning" baseline."""
    if isinstance(AutoConfig.from_pretrained(name_or_path), FewShotConfig):
        return from_pretrained_strictly(AutoModel, name_or_path)
    return ProtoNetModel.from_backbone(name_or_path)


__all__ = [
    "CosinePrototypeHead",
    "FewShotConfig",
    "FewShotOutput",
    "FewShotTask",
    "ProtoNetConfig",
    "ProtoNetModel",
    "SmatConfig",
    "SmatModel",
    "SmatOutput",
    "from_pretrained_strictly",
    "load_fewshot_model",
]
