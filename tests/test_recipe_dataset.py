"""dataset.json (nnU-Net v2 and Decathlon): labels in order, cases paired by id, and every malformed
dataset refused naming the file and the problem."""
from __future__ import annotations

import json

import pytest

from unet_core.errors import ConfigError, InputError
from unet_core.recipe.dataset import read_dataset

V2 = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1, "tumour": 2}, "numTraining": 2,
      "file_ending": ".nii.gz"}


def _write(root, meta, images=("a_0000", "b_0000"), labels=("a", "b")):
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(parents=True, exist_ok=True)
    (root / "dataset.json").write_text(meta if isinstance(meta, str) else json.dumps(meta))
    for name in images:
        (root / "imagesTr" / f"{name}.nii.gz").write_bytes(b"x")
    for name in labels:
        (root / "labelsTr" / f"{name}.nii.gz").write_bytes(b"x")
    return str(root)


def test_nnunet_v2_layout_pairs_cases_and_orders_label_names(tmp_path):
    info = read_dataset(_write(tmp_path, V2))
    assert info.label_names == ["background", "liver", "tumour"] and info.multi_class
    assert (info.channel_names, info.modality) == (["CT"], "CT")
    assert [(c.case_id, c.image.rsplit("/", 1)[1], c.mask.rsplit("/", 1)[1]) for c in info.cases.cases] == [
        ("a", "a_0000.nii.gz", "a.nii.gz"), ("b", "b_0000.nii.gz", "b.nii.gz")]


def test_decathlon_layout_reads_its_training_list(tmp_path):
    meta = {"modality": {"0": "MRI"}, "labels": {"0": "background", "2": "cancer", "1": "pancreas"},
            "training": [{"image": "./imagesTr/p_1.nii.gz", "label": "./labelsTr/p_1.nii.gz"}]}
    info = read_dataset(_write(tmp_path, meta, images=("p_1",), labels=("p_1",)))
    assert info.label_names == ["background", "pancreas", "cancer"]
    assert info.modality == "uint16"  # not CT: no Hounsfield window, z-scored per image
    assert [c.case_id for c in info.cases.cases] == ["p_1"]


@pytest.mark.parametrize("meta, error, match", [
    ("{not json", ConfigError, r"dataset\.json: not valid JSON"),
    ({**V2, "labels": {"background": 0, "liver": 2}}, ConfigError, r"label values must be 0\.\.1 .* got \[0, 2\]"),
    ({**V2, "labels": {"background": 0, "liver": [1, 2]}}, ConfigError, "region-based labels are not supported"),
    ({**V2, "labels": {"background": 0}}, ConfigError, "only a background label"),
    ({**V2, "channel_names": {"0": "T1", "1": "T2"}}, ConfigError, r"2 channels \['T1', 'T2'\]; only single-channel"),
    ({"labels": V2["labels"]}, ConfigError, "needs 'channel_names'"),
    ({**V2, "labels": {"background": 0, "liver": "one"}}, ConfigError, "has no integer value"),
])
def test_a_malformed_dataset_json_is_refused_naming_the_file(tmp_path, meta, error, match):
    with pytest.raises(error, match=match) as info:
        read_dataset(_write(tmp_path, meta))
    assert "dataset.json" in str(info.value)


def test_a_case_without_its_label_is_refused_naming_it(tmp_path):
    with pytest.raises(InputError, match=r"1 case\(s\) in imagesTr/ have no label in labelsTr/, e\.g\. b\.nii\.gz"):
        read_dataset(_write(tmp_path, V2, labels=("a",)))
    meta = {**V2, "training": [{"image": "./imagesTr/a_0000.nii.gz", "label": "./labelsTr/zz.nii.gz"}]}
    with pytest.raises(InputError, match=r"case zz: its label .*labelsTr/zz\.nii\.gz is missing"):
        read_dataset(_write(tmp_path / "msd", meta))


def test_a_folder_without_dataset_json_says_what_it_expects(tmp_path):
    with pytest.raises(InputError, match="expects an nnU-Net raw / Decathlon folder with dataset.json"):
        read_dataset(str(tmp_path))
