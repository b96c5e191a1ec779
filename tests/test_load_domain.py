"""load_domain: every place a domain split can live, and the errors a user gets for bad data."""

import datasets
import numpy as np
import pytest
from helpers import make_split, png_bytes

from hf_fewshot.data import load_domain
from hf_fewshot.data.domains import column_as_numpy
from hf_fewshot.data.metadataset import resolve_domain


def assert_same_rows(loaded: datasets.Dataset, expected: datasets.Dataset) -> None:
    assert loaded.column_names == expected.column_names
    np.testing.assert_array_equal(column_as_numpy(loaded, "label"), column_as_numpy(expected, "label"))
    assert loaded[3]["image"].tobytes() == expected[3]["image"].tobytes()


def test_parquet_folder(tmp_path):
    split = make_split([5, 6, 7], domain="birds")
    (tmp_path / "birds").mkdir()
    split.to_parquet(str(tmp_path / "birds" / "test.parquet"))
    assert_same_rows(load_domain(tmp_path, "birds", "test"), split)


def test_save_to_disk_folder(tmp_path):
    split = make_split([5, 6, 7], domain="birds")
    datasets.DatasetDict({"validation": split}).save_to_disk(str(tmp_path / "birds"))
    assert_same_rows(load_domain(str(tmp_path), "birds", "validation"), split)
    with pytest.raises(ValueError, match="no split 'train'"):
        load_domain(tmp_path, "birds", "train")


def test_image_folder_gets_labels_from_sorted_class_folders(tmp_path):
    for class_name, count in (("zebra", 2), ("ant", 3)):
        folder = tmp_path / "animals" / "train" / class_name
        folder.mkdir(parents=True)
        for k in range(count):
            (folder / f"{k}.png").write_bytes(png_bytes(k))
    (tmp_path / "animals" / "train" / "ant" / "notes.txt").write_text("not an image")
    split = load_domain(tmp_path, "animals", "train")
    assert split["label"][:] == [0, 0, 0, 1, 1]
    assert split["class_name"][:] == ["ant", "ant", "ant", "zebra", "zebra"]
    assert set(split["superclass"][:]) == {-1} and set(split["domain"][:]) == {"animals"}
    assert split[4]["image"].size == (12, 12)


def test_optional_columns_are_filled(tmp_path):
    bare = make_split([4, 4], domain="x").select_columns(["image", "label"])
    (tmp_path / "x").mkdir()
    bare.to_parquet(str(tmp_path / "x" / "train.parquet"))
    split = load_domain(tmp_path, "x", "train")
    assert split.column_names == ["image", "label", "class_name", "superclass", "domain"]
    assert split[5]["class_name"] == "1" and split[5]["superclass"] == -1 and split[5]["domain"] == "x"


def write(tmp_path, dataset: datasets.Dataset, domain: str = "d", split: str = "train"):
    (tmp_path / domain).mkdir(exist_ok=True)
    dataset.to_parquet(str(tmp_path / domain / f"{split}.parquet"))
    return tmp_path


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: make_split([3, 3]).remove_columns("label"), r"lacks the column\(s\) \['label'\]"),
        (lambda: make_split([3, 3]).rename_column("image", "img"), r"lacks the column\(s\) \['image'\]"),
        (lambda: make_split([3, 3]).cast_column("label", datasets.Value("string")), "must be integer class ids"),
        (lambda: make_split([3, 3]).cast_column("label", datasets.Value("float32")), "must be integer class ids"),
        (lambda: make_split([3, 3]).filter(lambda row: False), "is empty"),
        (
            lambda: datasets.Dataset.from_dict({"image": ["a.png"], "label": [0]}),
            "not a datasets.Image",
        ),
    ],
)
def test_bad_splits_raise_clear_errors(tmp_path, make, message):
    with pytest.raises(ValueError, match=message):
        load_domain(write(tmp_path, make()), "d", "train")


def test_missing_data_and_unknown_splits(tmp_path):
    with pytest.raises(ValueError, match="Unknown split 'tain'"):
        load_domain(tmp_path, "d", "tain")
    with pytest.raises(ValueError, match="Found no data for domain 'd', split 'train'"):
        load_domain(tmp_path, "d", "train")


def test_hub_ids_fail_clearly_without_network():
    with pytest.raises(ValueError, match="neither a local folder nor a reachable Hub dataset"):
        load_domain("nobody/meta-dataset", "aircraft", "test")
    # A split the registry knows to be absent fails before any network access.
    with pytest.raises(ValueError, match="'traffic_sign' has no 'train' classes"):
        load_domain("nobody/meta-dataset", "traffic_sign", "train")


def test_registry_has_the_official_class_splits():
    omniglot = resolve_domain("omniglot")
    assert omniglot.num_classes == {"train": 883, "validation": 81, "test": 659}
    assert omniglot.sampling == "superclass" and not omniglot.is_test_only
    assert resolve_domain("imagenet").name == "ilsvrc_2012" and resolve_domain("ilsvrc_2012").sampling == "hierarchy"
    assert resolve_domain("traffic_sign").is_test_only and resolve_domain("mscoco").is_test_only
    assert resolve_domain("my_own_photos") is None
