"""Few-shot models as `transformers` PreTrainedModels, registered with the Auto classes on import.

Both models also register for remote code, so every `save_pretrained` folder carries its modeling files
and loads with `trust_remote_code=True` where `hf_fewshot` is not installed.
"""

from transformers import AutoConfig, AutoModel

from .configuration_protonet import ProtoNetConfig
from .configuration_smat import SmatConfig
from .modeling_protonet import ProtoNetModel
from .modeling_smat import SmatModel, SmatOutput
from .prototypes import CosinePrototypeHead, FewShotOutput, FewShotPreTrainedModel, FewShotTask

for _config_class, _model_class in ((ProtoNetConfig, ProtoNetModel), (SmatConfig, SmatModel)):
    AutoConfig.register(_config_class.model_type, _config_class, exist_ok=True)
    AutoModel.register(_config_class, _model_class, exist_ok=True)
    _config_class.register_for_auto_class()
    _model_class.register_for_auto_class("AutoModel")


def load_fewshot_model(name_or_path: str) -> FewShotPreTrainedModel:
    """A saved SMAT / ProtoNet model as itself; any other checkpoint (e.g. `facebook/dino-vits16`) as the backbone
    of a fresh ProtoNet, i.e. cosine prototypes on its CLS features with scale 10 — the "no meta-tuning" baseline."""
    if AutoConfig.from_pretrained(name_or_path).model_type in (SmatConfig.model_type, ProtoNetConfig.model_type):
        return AutoModel.from_pretrained(name_or_path)
    return ProtoNetModel.from_backbone(name_or_path)


__all__ = [
    "CosinePrototypeHead",
    "FewShotOutput",
    "FewShotTask",
    "ProtoNetConfig",
    "ProtoNetModel",
    "SmatConfig",
    "SmatModel",
    "SmatOutput",
    "load_fewshot_model",
]
