"""EpisodeSampler / EpisodeCollator: Meta-Dataset's episode rules, determinism, and clear errors."""

import multiprocessing

import numpy as np
import pytest
import torch
from helpers import make_split

from hf_fewshot.data import (
    EpisodeCollator,
    EpisodeSampler,
    EvalTransform,
    MultiDomainEpisodeSampler,
    TrainTransform,
    episode_loader,
)


def episode_statistics(sampler: EpisodeSampler, count: int) -> tuple[float, float, float]:
    episodes = [sampler.episode(i) for i in range(count)]
    return (
        float(np.mean([e.n_way for e in episodes])),
        float(np.mean([len(e.support_indices) for e in episodes])),
        float(np.mean([len(e.query_indices) for e in episodes])),
    )


@pytest.mark.parametrize(
    ("num_classes", "images_per_class", "expected"),
    [
        (15, 100, (9.9, 335, 99)),  # Aircraft test split (docs/data.md, "Episodes" sanity targets, official sampler)
        (7, 120, (6.0, 281, 60)),  # Textures test split
    ],
)
def test_md_statistics_match_the_official_sampler(num_classes, images_per_class, expected):
    sampler = EpisodeSampler(np.repeat(np.arange(num_classes), images_per_class), seed=0)
    ways, support, query = episode_statistics(sampler, 2000)
    # Tolerances ≈ 3.5 standard errors of a 2,000-episode mean.
    assert ways == pytest.approx(expected[0], abs=0.25)
    assert support == pytest.approx(expected[1], abs=13)
    assert query == pytest.approx(expected[2], abs=2.5)


def check_episode_rules(sampler: EpisodeSampler, labels: np.ndarray, episode) -> None:
    """The invariants every episode must satisfy, whatever the protocol."""
    support, query = episode.support_indices, episode.query_indices
    assert len(np.intersect1d(support, query)) == 0, "an image is in both support and query"
    assert len(np.unique(support)) == len(support) and len(np.unique(query)) == len(query)
    np.testing.assert_array_equal(labels[support], episode.classes[episode.support_labels])
    np.testing.assert_array_equal(labels[query], episode.classes[episode.query_labels])
    assert len(np.unique(episode.classes)) == episode.n_way
    assert set(np.unique(episode.support_labels)) == set(range(episode.n_way)), "a class has no shot"
    queries_per_class = np.bincount(episode.query_labels, minlength=episode.n_way)
    assert len(set(queries_per_class.tolist())) == 1, "query size differs between classes"


def test_md_episodes_respect_every_rule_on_an_imbalanced_split():
    rng = np.random.default_rng(7)
    sizes = rng.integers(4, 300, size=80)
    labels = np.repeat(np.arange(80), sizes)
    rng.shuffle(labels)  # rows of a class need not be contiguous
    sampler = EpisodeSampler(labels, seed=3)
    class_size = np.bincount(labels)
    for i in range(1000):
        episode = sampler.episode(i)
        check_episode_rules(sampler, labels, episode)
        assert 5 <= episode.n_way <= 50
        n_c = class_size[episode.classes]
        expected_query = min(10, int(n_c.min()) // 2)
        assert len(episode.query_indices) == expected_query * episode.n_way
        assert len(episode.support_indices) <= 500
        shots = np.bincount(episode.support_labels, minlength=episode.n_way)
        assert (shots >= 1).all() and (shots <= n_c - expected_query).all()


def test_ways_cover_the_whole_range_and_support_size_varies():
    sampler = EpisodeSampler(np.repeat(np.arange(60), 30), seed=0)
    episodes = [sampler.episode(i) for i in range(1000)]
    ways = {e.n_way for e in episodes}
    assert min(ways) == 5 and max(ways) == 50
    assert np.std([len(e.support_indices) for e in episodes]) > 50


def test_images_are_drawn_uniformly_within_a_class_not_first_rows():
    labels = np.repeat(np.arange(5), 200)
    sampler = EpisodeSampler(labels, protocol="fixed", n_way=5, n_shot=1, n_query=1, seed=0)
    picked = np.concatenate(
        [np.concatenate([sampler.episode(i).support_indices, sampler.episode(i).query_indices]) for i in range(2000)]
    )
    # 20,000 draws over 200 positions per class: each tenth of a class is hit about equally often.
    tenths = np.bincount((picked % 200) // 20, minlength=10)
    assert tenths.min() > 0.8 * tenths.mean()


def test_superclass_sampling_stays_inside_one_superclass():
    class_superclass = np.repeat(np.arange(6), [5, 8, 12, 20, 3, 60])
    labels = np.repeat(np.arange(len(class_superclass)), 20)
    superclasses = class_superclass[labels]
    sampler = EpisodeSampler(labels, superclasses=superclasses, seed=1)
    seen = set()
    for i in range(1000):
        episode = sampler.episode(i)
        check_episode_rules(sampler, labels, episode)
        owners = np.unique(class_superclass[episode.classes])
        assert len(owners) == 1
        owner = int(owners[0])
        seen.add(owner)
        assert owner != 4, "a superclass with fewer than min_ways classes was drawn"
        assert 5 <= episode.n_way <= min(50, int((class_superclass == owner).sum()))
    assert seen == {0, 1, 2, 3, 5}, "superclasses are drawn uniformly, each appears"


def test_hierarchy_sampling_takes_the_leaves_of_one_internal_node():
    # A DAG (node "shared" has two parents) over 70 classes; "root" spans 70 leaves > max_ways.
    hierarchy = {
        "root": ["animals", "things"],
        "animals": ["dogs", "cats", "shared"],
        "things": ["tools", "shared"],
        "dogs": list(range(0, 6)),
        "cats": list(range(6, 10)),  # 4 leaves: too few to be drawn on its own
        "shared": list(range(10, 17)),
        "tools": list(range(17, 70)),
    }
    labels = np.repeat(np.arange(70), 12)
    sampler = EpisodeSampler(labels, hierarchy=hierarchy, seed=0)
    leaf_sets = {
        "root": set(range(70)),
        "animals": set(range(17)),
        "things": set(range(10, 70)),
        "dogs": set(range(6)),
        "shared": set(range(10, 17)),
        "tools": set(range(17, 70)),
    }
    drawn = set()
    for i in range(1000):
        episode = sampler.episode(i)
        check_episode_rules(sampler, labels, episode)
        classes = set(episode.classes.tolist())
        owners = [node for node, leaves in leaf_sets.items() if classes <= leaves]
        assert owners, f"episode {i} mixes classes of no single node"
        exact = [node for node in owners if len(leaf_sets[node]) <= 50 and classes == leaf_sets[node]]
        if episode.n_way < 50:
            assert exact, "a node with ≤ 50 leaves must give all of its leaves"
            drawn.update(exact)
        else:
            assert episode.n_way == 50
    assert {"animals", "dogs", "shared"} <= drawn


def test_fixed_and_varying_way_five_shot_protocols():
    labels = np.repeat(np.arange(20), np.arange(20) + 16)
    fixed = EpisodeSampler(labels, protocol="fixed", n_way=5, n_shot=1, n_query=15, seed=0)
    for i in range(200):
        episode = fixed.episode(i)
        check_episode_rules(fixed, labels, episode)
        assert episode.n_way == 5
        assert len(episode.support_indices) == 5 and len(episode.query_indices) == 75

    five_shot = EpisodeSampler(labels, protocol="md_5shot", seed=0)
    for i in range(300):
        episode = five_shot.episode(i)
        check_episode_rules(five_shot, labels, episode)
        assert (np.bincount(episode.support_labels) == 5).all()
        n_c = np.bincount(labels)[episode.classes]
        assert len(episode.query_indices) == min(10, int(n_c.min()) - 5) * episode.n_way


def test_an_episode_is_a_pure_function_of_seed_and_index():
    labels = np.repeat(np.arange(30), 40)
    first, second = EpisodeSampler(labels, seed=5), EpisodeSampler(labels, seed=5)
    for i in (0, 17, 999, 10**9):
        a, b = first.episode(i), second.episode(i)
        np.testing.assert_array_equal(a.support_indices, b.support_indices)
        np.testing.assert_array_equal(a.query_indices, b.query_indices)
    # Order of requests does not matter, and another seed or epoch gives other episodes.
    late_then_early = [second.episode(3), second.episode(1)]
    np.testing.assert_array_equal(late_then_early[1].support_indices, first.episode(1).support_indices)
    other = EpisodeSampler(labels, seed=6).episode(0)
    assert not np.array_equal(other.support_indices, first.episode(0).support_indices)
    first.set_epoch(1)
    assert not np.array_equal(first.episode(0).support_indices, second.episode(0).support_indices)
    first.set_epoch(0)
    np.testing.assert_array_equal(first.episode(0).support_indices, second.episode(0).support_indices)


def _episodes_in_child(seed: int) -> list[list[int]]:
    sampler = EpisodeSampler(np.repeat(np.arange(30), 40), seed=seed)
    return [sampler.episode(i).support_indices.tolist() for i in range(20)]


@pytest.mark.slow
def test_episodes_are_identical_in_another_process():
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        in_child = pool.apply(_episodes_in_child, (11,))
    assert in_child == _episodes_in_child(11)


def test_collated_episodes_do_not_depend_on_the_worker_count():
    split = make_split([12, 9, 15, 8, 10, 11, 14])
    sampler = EpisodeSampler.from_dataset(split, seed=2, num_episodes=6)
    collator = EpisodeCollator(split, TrainTransform(8))  # random augmentation, seeded per episode
    batches = {workers: list(episode_loader(sampler, collator, num_workers=workers)) for workers in (0, 2)}
    assert len(batches[0]) == len(batches[2]) == 6
    for single, parallel in zip(batches[0], batches[2], strict=True):
        assert single.keys() == parallel.keys()
        for key in single:
            torch.testing.assert_close(single[key], parallel[key], rtol=0, atol=0)


def test_collator_returns_the_episode_images_and_labels():
    split = make_split([6, 7, 8, 9, 10])
    sampler = EpisodeSampler.from_dataset(split, protocol="fixed", n_way=5, n_shot=2, n_query=3, seed=0)
    episode = sampler.episode(0)
    batch = EpisodeCollator(split, EvalTransform(12, resize_ratio=1.0, mean=(0, 0, 0), std=(1, 1, 1)))(episode)
    assert batch["support_pixel_values"].shape == (10, 3, 12, 12)
    assert batch["query_pixel_values"].shape == (15, 3, 12, 12)
    assert batch["support_labels"].dtype == torch.long
    torch.testing.assert_close(batch["query_labels"], torch.as_tensor(episode.query_labels))
    # With an identity eval transform, pixels are exactly the stored image of that row.
    row = int(episode.query_indices[4])
    stored = torch.from_numpy(np.array(split[row]["image"].convert("RGB"))).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(batch["query_pixel_values"][4], stored)


def test_collator_decodes_only_the_sampled_rows_and_names_a_corrupt_one():
    corrupt_row = 35  # the last image of class 5
    split = make_split([6, 6, 6, 6, 6, 6], corrupt_rows={corrupt_row})
    collator = EpisodeCollator(split, EvalTransform(8))
    sampler = EpisodeSampler.from_dataset(split, protocol="fixed", n_way=5, n_shot=1, n_query=1, seed=0)
    episodes = [sampler.episode(i) for i in range(100)]
    touches = [corrupt_row in np.concatenate([e.support_indices, e.query_indices]) for e in episodes]
    assert any(touches) and not all(touches)
    collator(episodes[touches.index(False)])  # the broken image is never decoded
    with pytest.raises(ValueError, match=f"row {corrupt_row} "):
        collator(episodes[touches.index(True)])


def test_multi_domain_sampler_draws_domains_uniformly_and_collates_from_the_right_split():
    splits = {
        "alpha": make_split([6] * 5, domain="alpha"),
        "beta": make_split([7] * 6, domain="beta"),
        "gamma": make_split([8] * 7, domain="gamma"),
    }
    samplers = {name: EpisodeSampler.from_dataset(split, seed=0) for name, split in splits.items()}
    sampler = MultiDomainEpisodeSampler(samplers, seed=4, num_episodes=3000)
    counts = {name: 0 for name in splits}
    for episode in sampler:
        counts[episode.domain] += 1
        assert episode.support_indices.max() < len(splits[episode.domain])
    assert all(900 < count < 1100 for count in counts.values()), counts
    collator = EpisodeCollator(splits, EvalTransform(8))
    episode = sampler.episode(0)
    batch = collator(episode)
    assert batch["support_pixel_values"].shape[0] == len(episode.support_indices)


def test_sampler_reads_superclasses_from_the_dataset():
    split = make_split([6] * 12, superclasses=[0] * 6 + [1] * 6)
    sampler = EpisodeSampler.from_dataset(split, seed=0)
    assert sampler.domain == "toy"
    for i in range(50):
        classes = sampler.episode(i).classes
        assert len({int(c) // 6 for c in classes}) == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"labels": np.repeat(np.arange(4), 10)}, "4 classes.*at least 5"),
        ({"labels": np.repeat(np.arange(6), [10, 10, 1, 10, 10, 10])}, r"class 2 \(1 images\)"),
        (
            {"labels": np.repeat(np.arange(6), 10), "protocol": "fixed", "n_way": 5, "n_shot": 5, "n_query": 10},
            r"fewer than 15 images.*5 shots \+ 10 queries",
        ),
        ({"labels": np.repeat(np.arange(6), 10), "protocol": "fixed", "n_way": 5}, "positive integer n_shot"),
        (
            {"labels": np.repeat(np.arange(6), 10), "protocol": "fixed", "n_way": 7, "n_shot": 1, "n_query": 1},
            "6 classes.*at least 7",
        ),
        ({"labels": np.repeat(np.arange(6), [10, 10, 5, 10, 10, 10]), "protocol": "md_5shot"}, r"class 2 \(5"),
        ({"labels": np.repeat(np.arange(6), 10), "protocol": "5way"}, "Unknown protocol"),
        ({"labels": np.linspace(0, 1, 10)}, "integer class ids"),
        (
            {"labels": np.repeat(np.arange(6), 10), "superclasses": np.repeat([0, 0, 0, 1, 1, 1], 10)},
            "No superclass has the 5 classes",
        ),
        (
            {"labels": np.repeat(np.arange(6), 10), "superclasses": np.repeat([0, 0, 0, -1, -1, -1], 10)},
            "some have none",
        ),
        ({"labels": np.repeat(np.arange(6), 10), "superclasses": np.arange(60) % 2}, "different superclasses"),
        ({"labels": np.repeat(np.arange(6), 10), "hierarchy": {"a": [0, 1], "b": [2, 3]}}, "No internal node"),
        ({"labels": np.repeat(np.arange(6), 10), "hierarchy": {"a": ["b", 0], "b": ["a", 1]}}, "cycle"),
        ({"labels": np.repeat(np.arange(6), 10), "n_way": 5}, "apply to the 'fixed' protocol only"),
        ({"labels": np.repeat(np.arange(6), 10), "max_ways": 6, "max_support": 5}, "every class of an episode"),
        ({"labels": np.repeat(np.arange(6), 10), "max_query": 0}, "positive integer max_query"),
        (
            {"labels": np.repeat(np.arange(6), 10), "protocol": "fixed", "n_way": True, "n_shot": 1, "n_query": 1},
            "positive integer n_way",
        ),
        (
            {"labels": np.repeat(np.arange(6), 10), "protocol": "fixed", "n_way": 5.0, "n_shot": 1, "n_query": 1},
            "positive integer n_way",
        ),
        ({"labels": np.repeat(np.arange(6), 10), "seed": 0.5}, "seed must be an integer"),
    ],
)
def test_bad_inputs_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        EpisodeSampler(**kwargs)


def test_length_and_iteration():
    finite = EpisodeSampler(np.repeat(np.arange(6), 4), num_episodes=3)
    assert len(finite) == 3 and [e.index for e in finite] == [0, 1, 2]
    with pytest.raises(IndexError):
        finite[3]
    endless = EpisodeSampler(np.repeat(np.arange(6), 4))
    with pytest.raises(TypeError, match="endless"):
        len(endless)
    iterator = iter(endless)
    assert [next(iterator).index for _ in range(4)] == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="finite"):
        episode_loader(endless, EpisodeCollator(make_split([4] * 6), EvalTransform(8)))


def test_numpy_integers_are_valid_episode_sizes():
    sampler = EpisodeSampler(np.repeat(np.arange(6), 10), protocol="fixed", n_way=np.int64(5), n_shot=2, n_query=1)
    assert sampler.episode(0).n_way == 5
