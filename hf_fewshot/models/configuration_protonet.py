"""Configuration of the P>M>F ProtoNet (Hu et al., CVPR 2022): a backbone and a learnable cosine prototype head."""

from .prototypes import FewShotConfig


class ProtoNetConfig(FewShotConfig):
    r"""
    backbone_config (`dict` or `PreTrainedConfig`): the HF vision backbone (`ViTConfig` for DINO v1, `Dinov2Config`).
    backbone_name_or_path (`str`, *optional*): the checkpoint the backbone weights came from.
    logit_scale (`float`, defaults to 10.0): initial scale `s` of `s · (cos(f, p_c) + b)`.
    logit_bias (`float`, defaults to 0.0): initial bias `b`.
    learn_logit_scale / learn_logit_bias (`bool`, default True): whether meta-training updates `s` / `b`.
    """

    model_type = "fewshot_protonet"

    learn_logit_scale: bool = True
    learn_logit_bias: bool = True


__all__ = ["ProtoNetConfig"]
