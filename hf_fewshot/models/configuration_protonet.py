"""Configuration of the P>M>F ProtoNet (Hu et al., CVPR 2022): a backbone and a learnable cosine prototype head."""

from .configuration_fewshot import FewShotConfig


class ProtoNetConfig(FewShotConfig):
    r"""
    backbone_config (`dict` or `PreTrainedConfig`): the HF vision backbone (`ViTConfig` for DINO v1, `Dinov2Config`).
    backbone_name_or_path (`str`, *optional*): the checkpoint the backbone weights came from.
    logit_scale (`float`, defaults to 10.0): initial scale `s` of `s · (cos(f, p_c) + b)`.
    logit_bias (`float`, defaults to 0.0): initial bias `b`.
    learn_logit_scale / learn_logit_bias (`bool`, default True): whether meta-training updates `s` / `b`.
    """

    model_type = "fewshot_protonet"
    summary = (
        "**P>M>F** ProtoNet: a pre-trained ViT meta-tuned end to end as a prototypical network with a cosine head "
        "(learnable scale and bias)."
    )
    papers = (
        "Hu et al., *Pushing the Limits of Simple Pipelines for Few-Shot Learning: External Data and Fine-Tuning "
        "Make a Difference* (P>M>F), CVPR 2022 ([arXiv:2204.07305](https://arxiv.org/abs/2204.07305))",
        "Snell et al., *Prototypical Networks for Few-shot Learning*, NeurIPS 2017",
    )

    learn_logit_scale: bool = True
    learn_logit_bias: bool = True


__all__ = ["ProtoNetConfig"]
