"""Datasets people already have: the nnU-Net raw / Medical Segmentation Decathlon layout.

    DIR/dataset.json
    DIR/imagesTr/<case>_0000.nii.gz    (nnU-Net v2: one file per channel, _0000 the first)
    DIR/imagesTr/<case>.nii.gz         (Decathlon: the file its "training" list names)
    DIR/labelsTr/<case>.nii.gz

dataset.json, either flavour:
- nnU-Net v2: {"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1, ...},
  "file_ending": ".nii.gz", "numTraining": n}
- Decathlon:  {"modality": {"0": "CT"}, "labels": {"0": "background", "1": "liver", ...},
  "training": [{"image": "./imagesTr/x.nii.gz", "label": "./labelsTr/x.nii.gz"}, ...]}
The labels become the bundle's label names (and so the DICOM SEG's segment names), in label
order; they must be 0, 1, ..., K-1 with 0 the background. One channel is supported; a CT channel
is normalised from the fingerprint, any other by a per-image z-score.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from unet_core.errors import ConfigError, InputError
from unet_core.io import storage
from unet_core.training.cases import Case, CaseList, check_unique
from unet_core.volume import sanitise

DATASET_JSON = "dataset.json"
CHANNEL_SUFFIX = re.compile(r"_(\d{4})$")


@dataclass(frozen=True)
class DatasetInfo:
    """What dataset.json says that the product uses."""

    label_names: list[str]  # index = label value; [0] is the background
    channel_names: list[str]  # index = channel; one is supported
    # PreprocessConfig's modality: "CT" when the channel is CT; any other channel is "uint16" (not
    # Hounsfield units, no CT window), which the native recipe z-scores per image.
    modality: str
    cases: CaseList = field(default_factory=CaseList)

    @property
    def multi_class(self) -> bool:
        return len(self.label_names) > 2


def read_dataset(root: str) -> DatasetInfo:
    """The dataset below `root` (local or s3://): its labels, channel and cases, paired by case id.
    Refuses, naming dataset.json or the case, a malformed file, several channels, labels that are
    not 0..K-1, and a case whose image or label is missing."""
    uri = storage.join(root, DATASET_JSON)
    if not storage.exists(uri):
        raise InputError(f"{uri}: not found; --dataset expects an nnU-Net raw / Decathlon folder with dataset.json, "
                         "imagesTr/ and labelsTr/", uri=uri)
    try:
        meta = json.loads(storage.read_bytes(uri))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{uri}: not valid JSON ({exc})") from exc
    if not isinstance(meta, dict):
        raise ConfigError(f"{uri}: expected a JSON object, got {type(meta).__name__}")
    labels = _label_names(meta, uri)
    channels = _channel_names(meta, uri)
    if len(channels) != 1:
        raise ConfigError(f"{uri}: {len(channels)} channels {channels}; only single-channel datasets are supported "
                          "(prepare one channel's images with --images / --masks)")
    ending = meta.get("file_ending", ".nii.gz")
    if not isinstance(ending, str) or not ending.startswith("."):
        raise ConfigError(f"{uri}: file_ending must be a string such as '.nii.gz', got {ending!r}")
    cases = _cases_from_list(meta["training"], root, uri) if "training" in meta else _cases_from_folders(root, ending)
    if not cases.cases:
        raise InputError(f"{root}: no cases found in imagesTr/ with labels in labelsTr/", uri=root)
    modality = "CT" if channels[0].strip().upper() == "CT" else "uint16"
    return DatasetInfo(label_names=labels, channel_names=channels, modality=modality, cases=cases)


def _label_names(meta: dict, uri: str) -> list[str]:
    raw = meta.get("labels")
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{uri}: 'labels' must be a non-empty object of label names and values")
    by_value: dict[int, str] = {}
    for key, value in raw.items():
        if isinstance(value, (list, tuple)):
            raise ConfigError(f"{uri}: label {key!r} is a region ({value}); region-based labels are not supported")
        name, number = (key, value) if isinstance(value, int) and not isinstance(value, bool) else (value, key)
        try:
            label = int(number)
        except (TypeError, ValueError):
            raise ConfigError(f"{uri}: label entry {key!r}: {value!r} has no integer value") from None
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"{uri}: label {label} has no name")
        if label in by_value:
            raise ConfigError(f"{uri}: label value {label} is given twice ({by_value[label]!r}, {name!r})")
        by_value[label] = name.strip()
    expected = list(range(len(by_value)))
    if sorted(by_value) != expected:
        raise ConfigError(f"{uri}: label values must be 0..{len(by_value) - 1} with 0 the background, "
                          f"got {sorted(by_value)}")
    if len(by_value) < 2:
        raise ConfigError(f"{uri}: only a background label; name at least one structure")
    return [by_value[k] for k in expected]


def _channel_names(meta: dict, uri: str) -> list[str]:
    raw = meta.get("channel_names", meta.get("modality"))
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{uri}: needs 'channel_names' (nnU-Net v2) or 'modality' (Decathlon), e.g. {{\"0\": \"CT\"}}")
    try:
        ordered = sorted((int(k), str(v)) for k, v in raw.items())
    except ValueError:
        raise ConfigError(f"{uri}: channel keys must be integers as strings, got {sorted(raw)}") from None
    if [k for k, _ in ordered] != list(range(len(ordered))):
        raise ConfigError(f"{uri}: channels must be numbered 0..{len(ordered) - 1}, got {[k for k, _ in ordered]}")
    return [v for _, v in ordered]


def _cases_from_list(entries: object, root: str, uri: str) -> CaseList:
    """The Decathlon's "training" list of {"image", "label"} paths relative to the root."""
    if not isinstance(entries, list):
        raise ConfigError(f"{uri}: 'training' must be a list of {{\"image\", \"label\"}} entries")
    out = CaseList()
    for n, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("image"), str) or not isinstance(entry.get("label"), str):
            raise ConfigError(f"{uri}: training entry {n} needs 'image' and 'label' paths")
        image, label = (storage.join(root, entry[k].removeprefix("./")) for k in ("image", "label"))
        case_id = sanitise(_stem(storage.basename(label)))
        for what, path in (("image", image), ("label", label)):
            if not storage.exists(path):
                raise InputError(f"{uri}: case {case_id}: its {what} {path} is missing", uri=path)
        out.cases.append(Case(case_id, image, label))
    check_unique(out.cases)
    return out


def _cases_from_folders(root: str, ending: str) -> CaseList:
    """nnU-Net v2: imagesTr/<case>_0000<ending> paired with labelsTr/<case><ending> by case id."""
    images: dict[str, str] = {}
    for e in storage.list_files(storage.join(root, "imagesTr")):
        name = storage.basename(e.uri)
        if not name.endswith(ending) or name.startswith("."):
            continue
        match = CHANNEL_SUFFIX.search(name[: -len(ending)])
        if match is None:
            raise ConfigError(f"{e.uri}: an nnU-Net image is named <case>_0000{ending} (the channel after the case)")
        if match.group(1) == "0000":
            images[name[: -len(ending)][:-5]] = e.uri
    labels = {storage.basename(e.uri)[: -len(ending)]: e.uri for e in storage.list_files(storage.join(root, "labelsTr"))
              if storage.basename(e.uri).endswith(ending) and not storage.basename(e.uri).startswith(".")}
    missing = sorted(set(images) - set(labels))
    if missing:
        raise InputError(f"{root}: {len(missing)} case(s) in imagesTr/ have no label in labelsTr/, e.g. "
                         f"{missing[0]}{ending}", uri=root)
    out = CaseList(unpaired_masks=sorted(labels[c] for c in set(labels) - set(images)))
    out.cases = check_unique([Case(sanitise(c), images[c], labels[c]) for c in sorted(images)])
    return out


def _stem(name: str) -> str:
    for ending in (".nii.gz", ".nii", ".nrrd", ".mha"):
        if name.endswith(ending):
            return name[: -len(ending)]
    return name


__all__ = ["DATASET_JSON", "DatasetInfo", "read_dataset"]
