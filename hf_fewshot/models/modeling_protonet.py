"""P>M>F's ProtoNet (Hu et al., CVPR 2022): a whole backbone meta-trained with a cosine prototype head.

Episodic forward: prototypes are the mean support features per class, logits `s · (cos(f(q), p_c) + b)`,
loss the cross-entropy on the query set; every backbone weight, `s` and `b` are trained.
"""

import torch
import torch.nn.functional as F

from .configuration_protonet import ProtoNetConfig
from .modeling_fewshot import (
    CosinePrototypeHead,
    FewShotOutput,
    FewShotPreTrainedModel,
    FewShotTask,
    build_backbone,
    check_episode,
    class_prototypes,
    eval_mode,
)


class ProtoNetModel(FewShotPreTrainedModel):
    """The P>M>F baseline. `model.backbone` is the HF backbone; `model.head` holds the scale and bias."""

    config: ProtoNetConfig
    config_class = ProtoNetConfig

    def __init__(self, config: ProtoNetConfig):
        super().__init__(config)
        self.backbone = build_backbone(config.backbone_config)
        self.head = CosinePrototypeHead(
            config.logit_scale, config.logit_bias, config.learn_logit_scale, config.learn_logit_bias
        )
        self.post_init()

    def _init_weights(self, module):
        if isinstance(module, CosinePrototypeHead):
            module.reset_parameters()
        elif module is not self:
            self.backbone._init_weights(module)

    def forward(
        self,
        support_pixel_values: torch.Tensor,
        support_labels: torch.Tensor,
        query_pixel_values: torch.Tensor,
        query_labels: torch.Tensor | None = None,
    ) -> FewShotOutput:
        """Logits `(n_query, n_way)` of the query images against the support prototypes; loss if labels are given."""
        n_way = check_episode(support_pixel_values, support_labels, query_pixel_values, query_labels)
        # One backbone pass over support and query together.
        features = self.embed(torch.cat([support_pixel_values, query_pixel_values]))
        support_features, query_features = features[: len(support_labels)], features[len(support_labels) :]
        logits = self.head(query_features, class_prototypes(support_features, support_labels, n_way))
        loss = F.cross_entropy(logits, query_labels) if query_labels is not None else None
        return FewShotOutput(loss=loss, logits=logits)

    @torch.no_grad()
    def prepare_task(self, support_pixel_values: torch.Tensor, support_labels: torch.Tensor) -> FewShotTask:
        """The support set's prototypes on this backbone, as a callable task (the backbone is shared, not copied)."""
        n_way = check_episode(support_pixel_values, support_labels)
        with eval_mode(self):
            prototypes = class_prototypes(self.embed(support_pixel_values), support_labels, n_way)
        return FewShotTask(
            self.backbone, prototypes, self.head.scale.item(), self.head.bias.item(), support_pixel_values.shape[-2:]
        )


__all__ = ["ProtoNetModel"]
