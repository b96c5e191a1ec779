"""Few-shot episodes: which rows form a task (`EpisodeSampler`) and how they become tensors (`EpisodeCollator`).

The sampler reads only the integer label column and returns row indices; the collator decodes just
the rows of one episode. Every episode is a pure function of `(seed, epoch, index)`, so the same test
tasks come out on every machine, in every DataLoader worker and in every distributed rank.

Protocols (docs/data.md, "Episodes"):
- `"md"`: Meta-Dataset's variable way / variable shot episodes, with Omniglot-style superclass and
  ImageNet-style hierarchy sampling of the classes when the split has that structure;
- `"fixed"`: N-way K-shot with Q queries per class, classes drawn uniformly;
- `"md_5shot"`: varying ways as in "md", 5 shots per class, q = min(10, min n_c − 5).
"""

from __future__ import annotations

import itertools
import json
import numbers
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import datasets
import numpy as np
import torch
from PIL import Image

from hf_fewshot.data.domains import column_as_numpy, domain_of
from hf_fewshot.data.images import decode_image, raw_images
from hf_fewshot.data.schema import NO_SUPERCLASS
from hf_fewshot.files import write_atomically

PROTOCOLS = ("md", "fixed", "md_5shot")


@dataclass(frozen=True)
class Episode:
    """One few-shot task as dataset row indices.

    Labels are episode-relative (`0..n_way-1`); `classes[k]` is the dataset label of episode class k.
    `(seed, epoch, index)` identify the episode and seed its augmentation in the collator.
    """

    support_indices: np.ndarray
    support_labels: np.ndarray
    query_indices: np.ndarray
    query_labels: np.ndarray
    classes: np.ndarray
    index: int
    seed: int
    epoch: int = 0
    domain: str | None = None

    @property
    def n_way(self) -> int:
        return len(self.classes)


class _EpisodeSequence:
    """A map-style sequence of episodes for anything with `episode(i)` and `num_episodes`."""

    num_episodes: int | None

    def episode(self, index: int) -> Episode:
        raise NotImplementedError

    def __len__(self) -> int:
        if self.num_episodes is None:
            raise TypeError("This sampler is endless (num_episodes=None); give num_episodes to take its length.")
        return self.num_episodes

    def __getitem__(self, index: int) -> Episode:
        if self.num_episodes is not None and index >= self.num_episodes:
            raise IndexError(f"Episode {index} is past the end ({self.num_episodes} episodes).")
        return self.episode(index)

    def __iter__(self) -> Iterator[Episode]:
        indices = range(self.num_episodes) if self.num_episodes is not None else itertools.count()
        return (self.episode(i) for i in indices)


class EpisodeSampler(_EpisodeSequence):
    """Draws episodes from one split given its label column (one integer per dataset row).

    `superclasses` (aligned with `labels` row by row, −1 for none) turns on superclass sampling: a
    superclass is drawn uniformly, then 5..min(50, its classes) of its classes. `hierarchy` maps a node
    to its children (a DAG whose leaves are class ids): an internal node spanning between `min_ways`
    and `hierarchy_max_leaves` of the split's classes is drawn uniformly and its leaves are the
    classes (at most `max_ways`, subsampled). Both apply to the "md" and "md_5shot" protocols.

    The sampler is a map-style sequence of episodes: `sampler[i] == sampler.episode(i)`, so
    `torch.utils.data.DataLoader(sampler, batch_size=None, collate_fn=collator)` deals whole episodes to
    workers and ranks. Iteration yields episodes 0, 1, 2, … (forever when `num_episodes` is None).
    """

    def __init__(
        self,
        labels: Sequence[int] | np.ndarray,
        superclasses: Sequence[int] | np.ndarray | None = None,
        hierarchy: Mapping[Hashable, Sequence[Hashable]] | None = None,
        protocol: str = "md",
        n_way: int | None = None,
        n_shot: int | None = None,
        n_query: int | None = None,
        seed: int = 0,
        num_episodes: int | None = None,
        *,
        min_ways: int = 5,
        max_ways: int = 50,
        max_support: int = 500,
        max_support_per_class: int = 100,
        max_query: int = 10,
        hierarchy_max_leaves: int = 392,
        domain: str | None = None,
    ) -> None:
        if protocol not in PROTOCOLS:
            raise ValueError(f"Unknown protocol {protocol!r}; expected one of {PROTOCOLS}.")
        labels = np.asarray(labels)
        if labels.ndim != 1 or len(labels) == 0:
            raise ValueError(f"labels must be a non-empty 1-D array, got shape {labels.shape}.")
        if not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"labels must be integer class ids, got dtype {labels.dtype}.")
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
            raise ValueError(f"seed must be an integer ≥ 0, got {seed!r}.")
        self.protocol = protocol
        self.n_way, self.n_shot, self.n_query = n_way, n_shot, n_query
        self.seed, self.epoch, self.num_episodes = seed, 0, num_episodes
        self.min_ways, self.max_ways = min_ways, max_ways
        self.max_support, self.max_support_per_class, self.max_query = max_support, max_support_per_class, max_query
        self.domain = domain

        order = np.argsort(labels, kind="stable")
        self.classes, starts, self.class_sizes = np.unique(labels[order], return_index=True, return_counts=True)
        self.class_rows = np.split(order, starts[1:])
        self._check_class_sizes()

        self.class_superclass = self._class_superclasses(labels, superclasses, order, starts)
        self.superclass_groups = self._superclass_groups() if protocol != "fixed" else None
        self.hierarchy_groups = (
            self._hierarchy_groups(hierarchy, hierarchy_max_leaves)
            if hierarchy is not None and protocol != "fixed"
            else None
        )

    @classmethod
    def from_dataset(
        cls,
        dataset: datasets.Dataset,
        hierarchy: Mapping[Hashable, Sequence[Hashable]] | None = None,
        **kwargs,
    ) -> EpisodeSampler:
        """A sampler over a domain split with the schema of docs/data.md, "The schema"; no image is decoded.

        The `superclass` column (when present and not all −1) turns on superclass sampling; an `ancestors`
        column (the hierarchy nodes above each row's class, written by the Meta-Dataset converter) turns on
        hierarchy sampling unless `hierarchy` is given; the `domain` column names the episodes' domain.
        """
        labels = column_as_numpy(dataset, "label")
        superclasses = column_as_numpy(dataset, "superclass") if "superclass" in dataset.column_names else None
        if hierarchy is None and "ancestors" in dataset.column_names:
            hierarchy = _hierarchy_from_ancestors(dataset, labels)
        if "domain" not in kwargs:
            kwargs["domain"] = domain_of(dataset)
        return cls(labels, superclasses=superclasses, hierarchy=hierarchy, **kwargs)

    # ----------------------------------------------------------------------------------- validation
    def _check_class_sizes(self) -> None:
        sizes = ("n_way", "n_shot", "n_query")
        if self.protocol == "fixed":
            for name in sizes:
                setattr(self, name, _positive_int(name, getattr(self, name), "The 'fixed' protocol needs"))
            fewest_ways, needed = self.n_way, self.n_shot + self.n_query
            rule = f"{self.n_shot} shots + {self.n_query} queries"
        else:
            given = [name for name in sizes if getattr(self, name) is not None]
            if given:  # else silently ignored: these protocols draw each episode's sizes
                raise ValueError(
                    f"{', '.join(given)} apply to the 'fixed' protocol only; {self.protocol!r} draws each episode's "
                    "ways and shots (bound them with max_ways / max_support)."
                )
            for name in ("min_ways", "max_ways", "max_support", "max_support_per_class", "max_query"):
                setattr(self, name, _positive_int(name, getattr(self, name), "Episodes need"))
            if not self.min_ways <= self.max_ways:
                raise ValueError(f"Need 1 ≤ min_ways ≤ max_ways, got {self.min_ways} and {self.max_ways}.")
            if self.protocol == "md" and self.max_support < self.max_ways:
                raise ValueError(
                    f"max_support ({self.max_support}) must be at least max_ways ({self.max_ways}): every class of "
                    "an episode needs a support image."
                )
            fewest_ways = self.min_ways
            needed, rule = (6, "5 shots + ≥ 1 query") if self.protocol == "md_5shot" else (2, "≥ 1 shot + ≥ 1 query")
        if len(self.classes) < fewest_ways:
            raise ValueError(
                f"The split has {len(self.classes)} classes; the {self.protocol!r} protocol needs at least "
                f"{fewest_ways} classes per episode."
            )
        too_small = self.classes[self.class_sizes < needed]
        if len(too_small):
            sizes = dict(zip(self.classes.tolist(), self.class_sizes.tolist(), strict=True))
            listed = ", ".join(f"class {c} ({sizes[c]} images)" for c in too_small[:10].tolist())
            raise ValueError(
                f"{len(too_small)} class(es) have fewer than {needed} images, the minimum of the "
                f"{self.protocol!r} protocol ({rule}): {listed}. Drop them or pick another protocol."
            )

    def _class_superclasses(self, labels, superclasses, order, starts) -> np.ndarray | None:
        if superclasses is None:
            return None
        superclasses = np.asarray(superclasses)
        if superclasses.shape != labels.shape:
            raise ValueError(f"superclasses must align with labels: shapes {superclasses.shape} vs {labels.shape}.")
        by_class = superclasses[order]
        first = by_class[starts]
        mixed = np.flatnonzero(np.minimum.reduceat(by_class, starts) != np.maximum.reduceat(by_class, starts))
        if len(mixed):
            raise ValueError(f"Class {self.classes[mixed[0]]} has rows with different superclasses.")
        has_superclass = first != NO_SUPERCLASS
        if not has_superclass.any():
            return None
        if not has_superclass.all():
            missing = self.classes[~has_superclass][:10].tolist()
            raise ValueError(f"Some classes have a superclass and some have none (−1), e.g. classes {missing}.")
        return first

    def _superclass_groups(self) -> list[np.ndarray] | None:
        """Class positions of each superclass with at least `min_ways` classes."""
        if self.class_superclass is None:
            return None
        groups = [np.flatnonzero(self.class_superclass == s) for s in np.unique(self.class_superclass)]
        eligible = [g for g in groups if len(g) >= self.min_ways]
        if not eligible:
            raise ValueError(
                f"No superclass has the {self.min_ways} classes an episode needs (largest: "
                f"{max(len(g) for g in groups)} classes)."
            )
        return eligible

    def _hierarchy_groups(self, hierarchy, max_leaves: int) -> list[np.ndarray]:
        """Class positions under each internal node spanning `min_ways..max_leaves` of the split's classes."""
        position = {int(c): k for k, c in enumerate(self.classes.tolist())}
        leaves_of: dict[Hashable, frozenset[int]] = {}

        def leaves(node: Hashable, path: frozenset) -> frozenset[int]:
            if node in leaves_of:
                return leaves_of[node]
            if node in path:
                raise ValueError(f"The hierarchy has a cycle through node {node!r}.")
            children = hierarchy.get(node)
            if not children:
                found = frozenset([position[node]]) if node in position else frozenset()
            else:
                found = frozenset().union(*(leaves(child, path | {node}) for child in children))
            leaves_of[node] = found
            return found

        groups = []
        for node in hierarchy:
            spanned = leaves(node, frozenset())
            if hierarchy[node] and self.min_ways <= len(spanned) <= max_leaves:
                groups.append(np.array(sorted(spanned)))
        if not groups:
            raise ValueError(
                f"No internal node of the hierarchy spans between {self.min_ways} and {max_leaves} of the "
                "split's classes; check that its leaves are this split's label ids."
            )
        return groups

    # ------------------------------------------------------------------------------------- sampling
    def set_epoch(self, epoch: int) -> None:
        """Switch to another stream of episodes (training); epoch 0 is the evaluation stream."""
        self.epoch = int(epoch)

    def episode(self, index: int) -> Episode:
        """Episode `index` of the current epoch: a pure function of `(seed, epoch, index)`."""
        if index < 0:
            raise IndexError(f"Episode index must be ≥ 0, got {index}.")
        rng = np.random.default_rng((self.seed, self.epoch, index))
        chosen = self._choose_classes(rng)
        sizes = self.class_sizes[chosen]
        n_way = len(chosen)
        if self.protocol == "fixed":
            queries, shots = self.n_query, np.full(n_way, self.n_shot)
        elif self.protocol == "md_5shot":
            queries, shots = min(self.max_query, int(sizes.min()) - 5), np.full(n_way, 5)
        else:
            queries = min(self.max_query, int(sizes.min()) // 2)
            shots = self._variable_shots(rng, sizes, queries)

        support, query = [], []
        for position, n_shots in zip(chosen, shots, strict=True):
            rows = self.class_rows[position]
            picked = rows[rng.choice(len(rows), queries + n_shots, replace=False)]
            query.append(picked[:queries])
            support.append(picked[queries:])
        way_labels = np.arange(n_way)
        return Episode(
            support_indices=np.concatenate(support),
            support_labels=np.repeat(way_labels, shots),
            query_indices=np.concatenate(query),
            query_labels=np.repeat(way_labels, queries),
            classes=self.classes[chosen],
            index=index,
            seed=self.seed,
            epoch=self.epoch,
            domain=self.domain,
        )

    def _choose_classes(self, rng: np.random.Generator) -> np.ndarray:
        """Positions (into `self.classes`) of the episode's classes, in episode-label order."""
        if self.protocol == "fixed":
            return rng.choice(len(self.classes), self.n_way, replace=False)
        if self.hierarchy_groups is not None:
            pool = self.hierarchy_groups[rng.integers(len(self.hierarchy_groups))]
            return rng.choice(pool, min(len(pool), self.max_ways), replace=False)
        if self.superclass_groups is not None:
            pool = self.superclass_groups[rng.integers(len(self.superclass_groups))]
        else:
            pool = np.arange(len(self.classes))
        n_way = rng.integers(self.min_ways, min(self.max_ways, len(pool)) + 1)
        return rng.choice(pool, n_way, replace=False)

    def _variable_shots(self, rng: np.random.Generator, sizes: np.ndarray, queries: int) -> np.ndarray:
        """Meta-Dataset's support size and imbalanced shots per class (docs/data.md, "Episodes")."""
        remaining = sizes - queries
        beta = rng.uniform()
        support_size = min(
            self.max_support, int(np.floor(beta * np.minimum(self.max_support_per_class, remaining) + 1).sum())
        )
        weights = sizes * np.exp(rng.uniform(np.log(0.5), np.log(2.0), size=len(sizes)))
        shares = weights / weights.sum()
        return np.minimum(np.floor(shares * (support_size - len(sizes))).astype(np.int64) + 1, remaining)


def _hierarchy_from_ancestors(dataset: datasets.Dataset, labels: np.ndarray) -> dict[str, list[int]]:
    """Node → the classes below it, from the `ancestors` of one row per class (all that hierarchy sampling uses)."""
    classes, first_rows = np.unique(labels, return_index=True)
    ancestors = dataset.with_format("arrow")["ancestors"].take(first_rows).to_pylist()
    below: dict[str, list[int]] = {}
    for class_id, nodes in zip(classes.tolist(), ancestors, strict=True):
        for node in nodes or ():
            below.setdefault(node, []).append(class_id)
    return below


class MultiDomainEpisodeSampler(_EpisodeSequence):
    """Episodes from several domains, the domain drawn uniformly per episode (multi-domain meta-training).

    Episode `i` is a pure function of `(seed, epoch, i)` like a single-domain sampler; its `domain`
    field names the dataset the collator must read.
    """

    def __init__(self, samplers: Mapping[str, EpisodeSampler], seed: int = 0, num_episodes: int | None = None):
        if not samplers:
            raise ValueError("MultiDomainEpisodeSampler needs at least one domain sampler.")
        self.samplers = dict(samplers)
        self.domains = sorted(self.samplers)
        self.seed, self.epoch, self.num_episodes = seed, 0, num_episodes

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        for sampler in self.samplers.values():
            sampler.set_epoch(epoch)

    def episode(self, index: int) -> Episode:
        # Its own stream for the domain draw, so adding a domain does not reshuffle the episodes' contents.
        rng = np.random.default_rng((self.seed, self.epoch, index, len(self.domains)))
        domain = self.domains[rng.integers(len(self.domains))]
        return replace(self.samplers[domain].episode(index), domain=domain)


class FrozenEpisodes(_EpisodeSequence):
    """Episodes fixed once and stored as row indices, so that every user scores the same test tasks even if the
    sampler changes. `FrozenEpisodes.from_sampler(sampler, n).save(path)`; `FrozenEpisodes.load(path)`."""

    def __init__(self, episodes: Sequence[Episode], metadata: Mapping | None = None):
        self.episodes, self.metadata = list(episodes), dict(metadata or {})
        self.num_episodes = len(self.episodes)

    @classmethod
    def from_sampler(cls, sampler: EpisodeSampler, num_episodes: int, **metadata) -> FrozenEpisodes:
        info = {"protocol": sampler.protocol, "seed": sampler.seed, "domain": sampler.domain, **metadata}
        return cls([sampler.episode(i) for i in range(num_episodes)], info)

    def episode(self, index: int) -> Episode:
        return self.episodes[index]

    def save(self, path: str | Path) -> Path:
        """A small JSON file (written whole or not at all): the metadata and, per episode, its row indices and
        episode-relative labels."""
        fields = ("support_indices", "support_labels", "query_indices", "query_labels", "classes")
        payload = {
            "metadata": self.metadata,
            "episodes": [{name: getattr(e, name).tolist() for name in fields} for e in self.episodes],
        }
        return write_atomically(path, json.dumps(payload, separators=(",", ":")))

    @classmethod
    def load(cls, path: str | Path) -> FrozenEpisodes:
        payload = json.loads(Path(path).read_text())
        metadata = payload.get("metadata", {})
        seed, domain = int(metadata.get("seed") or 0), metadata.get("domain")
        episodes = [
            Episode(
                **{name: np.asarray(values, dtype=np.int64) for name, values in stored.items()},
                index=index,
                seed=seed,
                domain=domain,
            )
            for index, stored in enumerate(payload["episodes"])
        ]
        return cls(episodes, metadata)


ImageTransform = Callable[[list[Image.Image], np.random.Generator], torch.Tensor]


class EpisodeCollator:
    """Turns an `Episode` into the tensors of the models' episodic forward.

    Returns `support_pixel_values` `(n_support, 3, H, W)`, `support_labels`, `query_pixel_values`,
    `query_labels` (int64). Only the episode's rows are read and decoded. The augmentation of an
    episode is seeded by the episode itself, so a collated episode is reproducible in any worker.
    `datasets` is one split, or a mapping domain → split for multi-domain episodes.
    """

    def __init__(
        self,
        datasets_by_domain: datasets.Dataset | Mapping[str, datasets.Dataset],
        transform: ImageTransform,
        image_column: str = "image",
    ) -> None:
        if isinstance(datasets_by_domain, datasets.Dataset):
            datasets_by_domain = {None: datasets_by_domain}
        self.images = {}
        for domain, dataset in datasets_by_domain.items():
            if image_column not in dataset.column_names:
                raise ValueError(f"Domain {domain!r} has no column {image_column!r}: {dataset.column_names}.")
            self.images[domain] = raw_images(dataset, image_column)
        self.transform = transform
        self.image_column = image_column

    def __call__(self, episode: Episode) -> dict[str, torch.Tensor]:
        images = self.images.get(episode.domain, self.images.get(None))
        if images is None:
            raise KeyError(f"The collator has no dataset for domain {episode.domain!r}; it has {sorted(self.images)}.")
        rows = np.concatenate([episode.support_indices, episode.query_indices])
        records = images[rows.tolist()][self.image_column].to_pylist()
        decoded = [decode_image(record, int(row), episode.domain) for record, row in zip(records, rows, strict=True)]
        rng = np.random.default_rng((episode.seed, episode.epoch, episode.index, 1))
        pixel_values = self.transform(decoded, rng)
        n_support = len(episode.support_indices)
        return {
            "support_pixel_values": pixel_values[:n_support],
            "support_labels": torch.as_tensor(episode.support_labels, dtype=torch.long),
            "query_pixel_values": pixel_values[n_support:],
            "query_labels": torch.as_tensor(episode.query_labels, dtype=torch.long),
        }


def episode_loader(
    sampler: _EpisodeSequence, collator: EpisodeCollator, num_workers: int = 0, **kwargs
) -> torch.utils.data.DataLoader:
    """A DataLoader yielding one collated episode per step (whole episodes per worker / rank)."""
    if sampler.num_episodes is None:
        raise ValueError("A DataLoader needs a finite sampler: pass num_episodes.")
    return torch.utils.data.DataLoader(
        sampler, batch_size=None, shuffle=False, collate_fn=collator, num_workers=num_workers, **kwargs
    )


def _positive_int(name: str, value, needs: str) -> int:
    """`value` as a Python int ≥ 1 (NumPy integers welcome; booleans and floats refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{needs} a positive integer {name}, got {value!r}.")
    return int(value)
