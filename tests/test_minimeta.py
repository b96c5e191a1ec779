"""MiniMeta: the committed copy has the promised shape, and the builder reproduces it deterministically."""

import json

import numpy as np
import pytest
import yaml

from hf_fewshot.data import EpisodeSampler, load_domain
from hf_fewshot.data.domains import column_as_numpy
from hf_fewshot.data.minimeta import DOMAINS, PREBUILT_DIR, TEST_ONLY_DOMAINS, TRAIN_DOMAINS, build_minimeta
from hf_fewshot.data.minimeta import source_packages_available as sources_present

METADATA = json.loads((PREBUILT_DIR / "metadata.json").read_text())


def splits_of(domain: str) -> list[str]:
    return [
        split for split in ("train", "validation", "test") if (PREBUILT_DIR / domain / f"{split}.parquet").exists()
    ]


def test_benchmark_shape_meets_the_contract():
    assert len(DOMAINS) >= 4 and set(TRAIN_DOMAINS) | set(TEST_ONLY_DOMAINS) == set(DOMAINS)
    for domain in TRAIN_DOMAINS:
        assert len(set(column_as_numpy(load_domain("minimeta", domain, "train"), "label"))) >= 30
    for domain in DOMAINS:
        assert len(set(column_as_numpy(load_domain("minimeta", domain, "test"), "label"))) >= 5
    for domain in TEST_ONLY_DOMAINS:
        assert splits_of(domain) == ["test"]
        with pytest.raises(ValueError, match="test-only"):
            load_domain("minimeta", domain, "train")
    total_bytes = sum(f.stat().st_size for f in PREBUILT_DIR.rglob("*") if f.is_file())
    assert total_bytes <= 30 * 2**20


@pytest.mark.parametrize("domain", DOMAINS)
def test_splits_are_class_disjoint_sorted_and_match_the_metadata(domain):
    seen_labels, seen_names = set(), set()
    for split in splits_of(domain):
        data = load_domain("minimeta", domain, split)
        labels = column_as_numpy(data, "label")
        assert (np.diff(labels) >= 0).all(), "rows are sorted by label"
        first, end = METADATA["domains"][domain]["splits"][split]["classes"]
        assert labels.min() >= first and labels.max() < end
        assert len(data) == METADATA["domains"][domain]["splits"][split]["num_images"]
        names = set(column_as_numpy(data, "class_name").tolist())
        assert not (set(labels.tolist()) & seen_labels) and not (names & seen_names)
        seen_labels |= set(labels.tolist())
        seen_names |= names
        assert set(column_as_numpy(data, "domain").tolist()) == {domain}
        # every split works with the default Meta-Dataset protocol
        EpisodeSampler.from_dataset(data).episode(0)


def test_glyphs_are_split_by_script_like_omniglot_alphabets():
    scripts = {
        split: set(column_as_numpy(load_domain("minimeta", "glyphs", split), "superclass").tolist())
        for split in splits_of("glyphs")
    }
    assert all(-1 not in found for found in scripts.values())
    assert not (scripts["train"] & scripts["test"]) and not (scripts["train"] & scripts["validation"])
    sampler = EpisodeSampler.from_dataset(load_domain("minimeta", "glyphs", "train"), seed=0)
    assert sampler.superclass_groups is not None


def test_dataset_card_lists_every_config_and_licence():
    card = (PREBUILT_DIR / "README.md").read_text()
    front_matter = yaml.safe_load(card.split("---")[1])
    configs = {config["config_name"]: config for config in front_matter["configs"]}
    assert set(configs) == set(DOMAINS)
    for domain, config in configs.items():
        for entry in config["data_files"]:
            assert (PREBUILT_DIR / entry["path"]).exists() and entry["split"] in splits_of(domain)
    for licence in ("Open Font License", "Public domain", "CC BY 4.0", "Unicode"):
        assert licence in card


@pytest.mark.skipif(not all(sources_present(d) for d in DOMAINS), reason="MiniMeta source packages not installed")
def test_builder_is_deterministic_and_writes_the_schema(tmp_path):
    first = build_minimeta(tmp_path / "a", max_classes_per_domain=12, show_progress=False)
    build_minimeta(tmp_path / "b", max_classes_per_domain=12, show_progress=False)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.parquet"))
    assert files, "the builder wrote no parquet file"
    for relative in files:
        assert (tmp_path / "a" / relative).read_bytes() == (tmp_path / "b" / relative).read_bytes()
    for domain in DOMAINS:
        test = load_domain(tmp_path / "a", domain, "test")
        assert test.column_names == ["image", "label", "class_name", "superclass", "domain"]
        assert test[0]["image"].size == (32, 32)
        assert first["domains"][domain]["splits"]["test"]["num_images"] == len(test)
