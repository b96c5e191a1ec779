"""The data layer: domain splits in `datasets`, episode sampling and collation, image transforms.

`domains` loads and checks any domain split; `metadataset` is the Meta-Dataset registry and release spec,
`conversion` (with `tfrecord`) turns that release into parquet; `minimeta` is the offline benchmark that ships
with the package; `episodes` samples and collates tasks; `images` reads stored images lazily; `labelled_images`
serves splits to a plain classifier; `schema` is the columns they share; `cards` writes dataset cards.
"""

from hf_fewshot.data.domains import load_domain
from hf_fewshot.data.episodes import (
    Episode,
    EpisodeCollator,
    EpisodeSampler,
    MultiDomainEpisodeSampler,
    episode_loader,
)
from hf_fewshot.data.metadataset import MD_EVAL_DOMAINS, MD_TRAIN_DOMAINS, META_DATASET_DOMAINS, DomainInfo
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
