"""The data layer: domain splits in `datasets`, episode sampling and collation, image transforms."""

from hf_fewshot.data.episodes import (
    Episode,
    EpisodeCollator,
    EpisodeSampler,
    MultiDomainEpisodeSampler,
    episode_loader,
)
from hf_fewshot.data.metadataset import (
    MD_EVAL_DOMAINS,
    MD_TRAIN_DOMAINS,
    META_DATASET_DOMAINS,
    DomainInfo,
    load_domain,
)
from hf_fewshot.data.transforms import EvalTransform, TrainTransform

__all__ = [
    "MD_EVAL_DOMAINS",
    "MD_TRAIN_DOMAINS",
    "META_DATASET_DOMAINS",
    "DomainInfo",
    "Episode",
    "EpisodeCollator",
    "EpisodeSampler",
    "EvalTransform",
    "MultiDomainEpisodeSampler",
    "TrainTransform",
    "episode_loader",
    "load_domain",
]
