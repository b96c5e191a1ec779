"""Reading the official Meta-Dataset `dataset_spec.json` of each kind (flat, bi-level, hierarchical)."""

import io
import json
import shutil
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
from helpers import png_bytes, tiny_vit_config
from PIL import Image
from test_tfrecord import example, record

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "recipes"))

from hf_fewshot import EpisodeSampler, ProtoNetModel, evaluate_episodes, load_domain
from hf_fewshot.data.conversion import MetaDatasetSpec, convert_domain
from hf_fewshot.data.domains import validate_domain_split
from hf_fewshot.data.episodes import FrozenEpisodes


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


# ------------------------------------------------------------------------------------- records → datasets
def write_domain(root, spec: dict, images_per_class: int = 4, corrupt: tuple[int, int] | None = None):
    """The official layout: dataset_spec.json + one `{class}.tfrecords` of PNG examples per class."""
    folder = write_spec(root, spec).parent
    for class_id in range(len(spec["class_names"])):
        blobs = [record(example({"image": [png_bytes(class_id * 100 + k)], "label": [class_id]}))
                 for k in range(images_per_class)]  # fmt: skip
        data = b"".join(blobs)
        if corrupt == (class_id, 1):  # damage the second record's payload
            data = bytearray(data)
            data[len(blobs[0]) + 30] ^= 0xFF
            data = bytes(data)
        (folder / f"{class_id}.tfrecords").write_bytes(data)
    return folder


FLAT = {"__class__": "DatasetSpecification", "name": "aircraft",
        "classes_per_split": {"TRAIN": 3, "VALID": 1, "TEST": 2},
        "class_names": {str(k): f"plane-{k}" for k in range(6)}, "file_pattern": "{}.tfrecords"}  # fmt: skip


def test_a_flat_domain_converts_to_parquet_splits_load_domain_reads(tmp_path):
    records = write_domain(tmp_path / "records", FLAT, corrupt=(1, 1))
    files, corrupt = convert_domain(records, tmp_path / "converted", progress=False)
    assert sorted(files) == ["test", "train", "validation"]
    assert [(Path(c.path).name, c.offset, c.reason) for c in corrupt] == [
        ("1.tfrecords", len(record(example({"image": [png_bytes(100)], "label": [1]}))), "data checksum mismatch")
    ]
    train = load_domain(tmp_path / "converted", "aircraft", "train")
    assert train["label"] == [0] * 4 + [1] * 3 + [2] * 4, "sorted by class, the corrupt record skipped"
    assert set(train["class_name"]) == {"plane-0", "plane-1", "plane-2"} and set(train["domain"]) == {"aircraft"}
    pixels = [np.asarray(image).sum() for image in train["image"][:4]]
    originals = [np.asarray(Image.open(io.BytesIO(png_bytes(k)))).sum() for k in range(4)]
    assert sorted(pixels) == sorted(originals) and pixels != originals, "shuffled once within the class"
    assert load_domain(tmp_path / "converted", "aircraft", "test")["label"] == [4] * 4 + [5] * 4

    # Resume: finished splits are kept, a half-written one is redone.
    kept = files["train"].stat().st_mtime_ns
    files["test"].unlink()
    (files["test"].parent / ".test.parquet.partial").write_bytes(b"half")
    again, _ = convert_domain(records, tmp_path / "converted", progress=False)
    assert again["train"].stat().st_mtime_ns == kept
    assert len(load_domain(tmp_path / "converted", "aircraft", "test")) == 8


def test_superclasses_and_hierarchies_reach_the_sampler(tmp_path):
    bilevel = {"__class__": "BiLevelDatasetSpecification", "name": "omniglot",
               "superclasses_per_split": {"TRAIN": 2, "VALID": 0, "TEST": 1},
               "classes_per_superclass": {"0": 5, "1": 5, "2": 5},
               "superclass_names": {"0": "A", "1": "B", "2": "C"},
               "class_names": {str(k): f"char{k}" for k in range(15)}, "file_pattern": "{}.tfrecords"}  # fmt: skip
    convert_domain(write_domain(tmp_path / "records", bilevel, 2), tmp_path / "out", progress=False)
    train = load_domain(tmp_path / "out", "omniglot", "train")
    sampler = EpisodeSampler.from_dataset(train, seed=0)
    assert sampler.superclass_groups is not None
    for i in range(10):  # every episode's classes come from one alphabet
        assert len({c // 5 for c in sampler.episode(i).classes.tolist()}) == 1

    def node(wn_id, children=()):
        return {"wn_id": wn_id, "words": wn_id, "children_ids": list(children), "parents_ids": []}

    leaves = [f"n{k}" for k in range(12)]
    hierarchical = {"__class__": "HierarchicalDatasetSpecification", "name": "ilsvrc_2012",
                    "split_subgraphs": {"TRAIN": [node("root", ["dogs", "cats"]), node("dogs", leaves[:6]),
                                                  node("cats", leaves[5:10]), *map(node, leaves[:10])],
                                        "TEST": [node("t", leaves[10:]), *map(node, leaves[10:])]},
                    "class_names": {str(k): leaf for k, leaf in enumerate(leaves)},
                    "file_pattern": "{}.tfrecords"}  # fmt: skip
    convert_domain(write_domain(tmp_path / "records", hierarchical, 2), tmp_path / "out", progress=False)
    train = load_domain(tmp_path / "out", "ilsvrc_2012", "train")
    assert train["ancestors"][train["label"].index(5)] == ["cats", "dogs", "root"]
    sampler = EpisodeSampler.from_dataset(train, seed=0)
    spans = {tuple(group.tolist()) for group in sampler.hierarchy_groups}
    assert spans == {tuple(range(10)), tuple(range(6)), tuple(range(5, 10))}


def test_frozen_episodes_reload_identically_and_score_like_the_sampler(tmp_path):
    import freeze_episodes

    (path,) = freeze_episodes.main(
        ["--domains", "digits", "--num_episodes", "4", "--protocols", "fixed", "--output_dir", str(tmp_path)]
    )
    frozen = FrozenEpisodes.load(path)
    digits = load_domain("minimeta", "digits", "test")
    sampler = EpisodeSampler.from_dataset(digits, protocol="fixed", n_way=5, n_shot=5, n_query=15, seed=0)
    for i in range(4):
        for name in ("support_indices", "support_labels", "query_indices", "query_labels", "classes"):
            assert np.array_equal(getattr(frozen[i], name), getattr(sampler.episode(i), name)), name
    assert frozen.metadata["protocol"] == "fixed" and frozen.metadata["rows"] == len(digits)

    model = ProtoNetModel.from_backbone(tiny_vit_config(num_hidden_layers=1))
    settings = dict(protocol="fixed", n_way=5, n_shot=5, n_query=15, image_size=16, progress=False)
    sampled = evaluate_episodes(model, {"digits": digits}, 4, **settings)
    assert evaluate_episodes(model, {"digits": digits}, 4, frozen={"digits": frozen}, **settings) == sampled
    with pytest.raises(ValueError, match="does not match this split's labels"):
        shuffled = digits.select(np.random.default_rng(0).permutation(len(digits)))
        evaluate_episodes(model, {"digits": shuffled}, 4, frozen={"digits": frozen}, **settings)
    with pytest.raises(ValueError, match="made for a split of"):
        evaluate_episodes(model, {"digits": digits.select(range(900))}, 4, frozen={"digits": frozen}, **settings)


def test_the_convert_recipe_writes_configs_a_card_and_pushes(tmp_path):
    import convert_metadataset
    import datasets
    import hub_server
    import yaml

    write_domain(tmp_path / "records", FLAT, corrupt=(0, 1))
    mnist = tmp_path / "extra" / "mnist" / "test"
    for digit in range(2):
        (mnist / str(digit)).mkdir(parents=True)
        for k in range(3):
            Image.open(io.BytesIO(png_bytes(digit * 10 + k))).save(mnist / str(digit) / f"{k}.png")
    output = tmp_path / "converted"
    argv = ["--records_root", str(tmp_path / "records"), "--output_dir", str(output),
            "--image_folders_root", str(tmp_path / "extra")]  # fmt: skip
    convert_metadataset.main(argv)
    card = (output / "README.md").read_text()
    configs = {c["config_name"]: c for c in yaml.safe_load(card.split("---")[1])["configs"]}
    assert set(configs) == {"aircraft", "mnist"} and "non-commercial research (FGVC-Aircraft)" in card
    local = datasets.load_dataset(str(output), "aircraft", split="train")
    assert local["label"] == [0] * 3 + [1] * 4 + [2] * 4
    shutil.rmtree(tmp_path / "extra")  # the converted extras hold the image bytes, not paths to the source
    mnist_test = load_domain(output, "mnist", "test")
    assert len(mnist_test) == 6 and mnist_test[0]["image"].size == (12, 12)

    with hub_server.hub(tmp_path / "hub"):
        convert_metadataset.main([*argv, "--hub_repo_id", "user/meta-dataset"])
        assert load_domain("user/meta-dataset", "aircraft", "validation")["label"] == [3] * 4


def test_large_converted_splits_are_memory_mapped_not_loaded(tmp_path, monkeypatch):
    from hf_fewshot.data import domains

    convert_domain(write_domain(tmp_path / "records", FLAT), tmp_path / "out", progress=False)
    assert load_domain(tmp_path / "out", "aircraft", "train").cache_files == [], "small: in memory"
    monkeypatch.setattr(domains, "IN_MEMORY_BYTES", 0)
    mapped = load_domain(tmp_path / "out", "aircraft", "train")
    assert mapped.cache_files and mapped["label"][:4] == [0] * 4


# ------------------------------------------------------------------------ hostile specs, records and folders
@pytest.mark.parametrize(
    "changes", [{"name": "../escaped"}, {"name": "/tmp/abs"}, {"file_pattern": "../{}.tfrecords"}]
)
def test_a_spec_cannot_lead_reads_or_writes_outside_its_folders(tmp_path, changes):
    spec = {**FLAT, "name": "aircraft"}
    folder = write_domain(tmp_path / "records", spec)
    (folder / "dataset_spec.json").write_text(json.dumps({**spec, **changes}))
    with pytest.raises(ValueError, match="not a plain name"):
        convert_domain(folder, tmp_path / "converted", progress=False)
    assert not (tmp_path / "escaped").exists()


def test_a_record_file_symlinked_out_of_the_domain_folder_is_refused(tmp_path):
    folder = write_domain(tmp_path / "records", FLAT)
    secret = tmp_path / "secret.tfrecords"
    (folder / "0.tfrecords").rename(secret)
    (folder / "0.tfrecords").symlink_to(secret)
    with pytest.raises(ValueError, match="symlink out of"):
        convert_domain(folder, tmp_path / "converted", progress=False)


def test_bad_records_and_empty_classes_are_reported_and_the_conversion_goes_on(tmp_path):
    folder = write_domain(tmp_path / "records", FLAT)
    not_an_image = record(example({"image": [b"plain text, no image"], "label": [0]}))
    malformed = record(b"\x0a\xff\xff\xff\xff\x0f")  # a length field far past the end: struct / parse errors
    good = (folder / "0.tfrecords").read_bytes()
    (folder / "0.tfrecords").write_bytes(not_an_image + malformed + good)
    (folder / "2.tfrecords").write_bytes(b"")
    files, corrupt = convert_domain(folder, tmp_path / "converted", progress=False)
    reasons = {(Path(c.path).name, c.offset): c.reason for c in corrupt}
    assert reasons[("0.tfrecords", 0)].startswith("not an image")
    assert reasons[("0.tfrecords", len(not_an_image))].startswith("not an Example")
    assert "class 2 is left out" in reasons[("2.tfrecords", 0)]
    assert sorted(set(load_domain(tmp_path / "converted", "aircraft", "train")["label"])) == [0, 1]


def test_load_domain_stays_inside_its_source(tmp_path):
    (tmp_path / "src" / "toy" / "train" / "a").mkdir(parents=True)
    (tmp_path / "src" / "toy" / "train" / "b").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "src" / "toy" / "train" / "a" / "0.png")
    Image.new("RGB", (4, 4)).save(tmp_path / "secret.png")
    (tmp_path / "src" / "toy" / "train" / "b" / "0.png").symlink_to(tmp_path / "secret.png")
    (tmp_path / "sibling" / "train" / "c").mkdir(parents=True)
    with pytest.raises(ValueError, match="not a plain name"):
        load_domain(tmp_path / "src", "../sibling", "train")
    with pytest.raises(ValueError, match="1 image or class-folder symlink.*lead out of"):
        load_domain(tmp_path / "src", "toy", "train")
    (tmp_path / "src" / "toy" / "train" / "b" / "0.png").unlink()
    (tmp_path / "src" / "toy" / "train" / "b" / "0.png").symlink_to(tmp_path / "src" / "toy" / "train" / "a" / "0.png")
    assert len(load_domain(tmp_path / "src", "toy", "train")) == 2, "a symlink inside the source is fine"


def test_null_labels_are_refused(tmp_path):
    rows = {"image": [{"bytes": png_bytes(0), "path": None}] * 2, "label": [0, None]}
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
    datasets.Dataset.from_dict(rows, features=features).to_parquet(tmp_path / "toy" / "train.parquet")
    with pytest.raises(ValueError, match="missing \\(null\\) values"):
        load_domain(tmp_path, "toy", "train")
    filtered = datasets.Dataset.from_parquet(str(tmp_path / "toy" / "train.parquet")).filter(
        lambda row: row["label"] is not None
    )
    assert len(validate_domain_split(filtered, "toy", "train")) == 1, "a filtered view without nulls passes"
