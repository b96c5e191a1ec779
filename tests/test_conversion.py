"""Reading the official Meta-Dataset `dataset_spec.json` of each kind (flat, bi-level, hierarchical)."""

import json

import numpy as np
import pytest

from hf_fewshot import EpisodeSampler
from hf_fewshot.data.conversion import MetaDatasetSpec


def write_spec(tmp_path, spec: dict):
    path = tmp_path / spec["name"] / "dataset_spec.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(spec))
    return path


def test_flat_spec_gives_contiguous_class_ids_per_split(tmp_path):
    spec = MetaDatasetSpec.from_json(write_spec(tmp_path, {
        "__class__": "DatasetSpecification", "name": "aircraft",
        "classes_per_split": {"TRAIN": 3, "VALID": 1, "TEST": 2},
        "images_per_class": {str(k): 10 for k in range(6)},
        "class_names": {str(k): f"plane-{k}" for k in range(6)},
        "path": "/somewhere/else", "file_pattern": "{}.tfrecords",
    }))  # fmt: skip
    assert spec.split_classes == {"train": [0, 1, 2], "validation": [3], "test": [4, 5]}
    assert spec.class_names[4] == "plane-4" and spec.superclass_of(4) == -1 and spec.hierarchies == {}


def test_bilevel_spec_maps_classes_to_their_alphabet(tmp_path):
    spec = MetaDatasetSpec.from_json(write_spec(tmp_path, {
        "__class__": "BiLevelDatasetSpecification", "name": "omniglot",
        "superclasses_per_split": {"TRAIN": 2, "VALID": 1, "TEST": 1},
        "classes_per_superclass": {"0": 2, "1": 3, "2": 1, "3": 2},
        "images_per_class": {str(k): 20 for k in range(8)},
        "superclass_names": {"0": "Futhorc", "1": "Arcadian", "2": "Blackfoot", "3": "Mongolian"},
        "class_names": {str(k): f"char{k:02d}" for k in range(8)},
        "file_pattern": "{}.tfrecords",
    }))  # fmt: skip
    assert spec.split_classes == {"train": [0, 1, 2, 3, 4], "validation": [5], "test": [6, 7]}
    assert [spec.superclass_of(k) for k in range(8)] == [0, 0, 1, 1, 1, 2, 3, 3]
    assert spec.superclass_names[2] == "Blackfoot"


def test_hierarchical_spec_gives_each_split_its_wordnet_dag_over_class_ids(tmp_path):
    def node(wn_id, children=()):
        return {"wn_id": wn_id, "words": wn_id, "children_ids": list(children), "parents_ids": []}

    train = [node("root", ["a", "b"]), node("a", ["n1", "n2"]), node("b", ["n2", "n3"]),
             node("n1"), node("n2"), node("n3")]  # fmt: skip
    spec = MetaDatasetSpec.from_json(write_spec(tmp_path, {
        "__class__": "HierarchicalDatasetSpecification", "name": "ilsvrc_2012",
        "split_subgraphs": {"TRAIN": train, "VALID": [node("v", ["n4", "n5"]), node("n4"), node("n5")],
                            "TEST": [node("n6")]},
        "images_per_class": {}, "class_names": {"0": "n1", "1": "n2", "2": "n3", "3": "n4", "4": "n5", "5": "n6"},
        "file_pattern": "{}.tfrecords",
    }))  # fmt: skip
    assert spec.split_classes == {"train": [0, 1, 2], "validation": [3, 4], "test": [5]}
    assert spec.hierarchies["train"] == {"root": ["a", "b"], "a": [0, 1], "b": [1, 2]}
    labels = np.repeat(spec.split_classes["train"], 4)
    sampler = EpisodeSampler(labels, hierarchy=spec.hierarchies["train"], min_ways=2, seed=0)
    assert {len(sampler.episode(i).classes) for i in range(30)} <= {2, 3}


def test_bad_specs_are_explained(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset_spec.json"):
        MetaDatasetSpec.from_json(tmp_path / "missing" / "dataset_spec.json")
    with pytest.raises(ValueError, match="unknown spec type"):
        MetaDatasetSpec.from_json(write_spec(tmp_path, {"__class__": "Other", "name": "x", "class_names": {}}))
    with pytest.raises(ValueError, match="needs the key 'classes_per_split'"):
        MetaDatasetSpec.from_json(write_spec(tmp_path, {"__class__": "DatasetSpecification", "name": "y",
                                                        "class_names": {}}))  # fmt: skip
    with pytest.raises(ValueError, match="no class id"):
        MetaDatasetSpec.from_json(write_spec(tmp_path, {
            "__class__": "HierarchicalDatasetSpecification", "name": "z", "class_names": {"0": "n1"},
            "split_subgraphs": {"TRAIN": [{"wn_id": "n9", "children_ids": []}]},
        }))  # fmt: skip
