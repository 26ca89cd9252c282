"""Model bundles: a folder (local or `s3://`) with everything inference needs.

    model.keras     the Keras 3 model
    bundle.json     format version, model config, preprocessing (window, input size, context
                    slices), threshold, label names, and the training summary (configuration,
                    metric history, best epoch, data manifest identity)
    curves.png      training curves, when the bundle came from `unet train`

`unet segment` reads preprocessing from the bundle, so training and inference cannot disagree.
Package your own Keras model with `package_model`.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from unet_core import registry
from unet_core.config import ModelConfig, PreprocessConfig, from_dict
from unet_core.errors import ConfigError, InputError
from unet_core.io import storage
from unet_core.io.dicom.seg import check_segment_codes
from unet_core.segmentation.selection import SelectionRules

if TYPE_CHECKING:  # Keras is imported where a model is loaded or saved: reading a bundle's
    import keras  # description (every decode task does) must not pay for TensorFlow.

FORMAT_VERSION = 1
MODEL_FILE = "model.keras"
INFO_FILE = "bundle.json"


@dataclass
class BundleInfo:
    preprocess: PreprocessConfig
    model: ModelConfig | None = None  # None for a user's own architecture
    threshold: float = 0.5
    label_names: list[str] = field(default_factory=lambda: ["background", "foreground"])
    training: dict = field(default_factory=dict)
    name: str = "unet"
    format_version: int = FORMAT_VERSION
    # Python modules that register a user model's custom Keras objects
    # (`keras.saving.register_keras_serializable`); imported before the model is loaded.
    keras_modules: list[str] = field(default_factory=list)
    # DICOM SEG segment descriptions per foreground label: {label: {"category": code, "type": code}},
    # a code being {"scheme": "SCT", "value": "...", "meaning": "..."}; labels not named get the
    # generic default (unet_core/io/dicom_seg.py, DEFAULT_CODES).
    segment_codes: dict = field(default_factory=dict)
    # The input the model is made for: selection rules (unet_core/segmentation/selection.py) that
    # `unet segment` applies unless --select overrides them key by key.
    input_rules: dict = field(default_factory=dict)
    # The prepared data's fingerprint (unet_core/recipe/fingerprint.py, `Fingerprint.to_dict`):
    # per-case spacing and shape, foreground intensity statistics, class fractions. Empty for
    # bundles made before the native recipe and for packaged models.
    fingerprint: dict = field(default_factory=dict)
    # Post-processing decided on the validation cases by `unet train`:
    # {"largest_component": bool, "val_dice": {"plain": [...], "largest_component": [...]}}.
    # `unet segment --largest-component auto` follows "largest_component"; empty means off.
    postprocessing: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_segment_codes(self.segment_codes, self.label_names)
        SelectionRules.from_dict(self.input_rules, "the bundle's input_rules")  # refused at packaging, not at a run

    def to_json(self) -> str:
        d = asdict(self)
        return json.dumps(d, indent=2, sort_keys=True, default=float)

    @classmethod
    def from_json(cls, text: str, uri: str = "bundle") -> "BundleInfo":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"{uri}: {INFO_FILE} is not valid JSON ({exc})", uri=uri) from exc
        if d.get("format_version") != FORMAT_VERSION:
            raise ConfigError(f"{uri}: bundle format {d.get('format_version')} is not {FORMAT_VERSION}")
        d["preprocess"] = from_dict(PreprocessConfig, d["preprocess"])
        d["model"] = from_dict(ModelConfig, d["model"]) if d.get("model") else None
        return cls(**d)


def save_bundle(uri: str, model: keras.Model, info: BundleInfo, extra: dict[str, bytes] | None = None) -> None:
    """Write the bundle; bundle.json is published last, so a bundle without it is incomplete."""
    _check_model_fits(model, info)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, MODEL_FILE)
        model.save(path)
        with open(path, "rb") as f:
            storage.write_bytes(storage.join(uri, MODEL_FILE), f.read())
    for name, data in (extra or {}).items():
        storage.write_bytes(storage.join(uri, name), data)
    storage.write_bytes(storage.join(uri, INFO_FILE), info.to_json().encode())


def resolve(uri: str) -> str:
    """Where a bundle's files are: the URI itself, or for a registered model (`models:/NAME/VERSION`,
    `models:/NAME@ALIAS`) its checked copy in the local cache (unet_core/registry.py; the registry's
    address from MLFLOW_TRACKING_URI, as in every process of a job)."""
    ref = registry.parse_model_uri(uri)
    return uri if ref is None else registry.fetch(ref, None, bundle_identity).path


def read_info(uri: str) -> BundleInfo:
    uri = resolve(uri)
    info_uri = storage.join(uri, INFO_FILE)
    if not storage.exists(info_uri):
        raise InputError(f"{uri}: not a model bundle (no {INFO_FILE}); train one with `unet train` or "
                         "package a Keras model with unet_core.bundle.package_model (README: Bring your own "
                         "Keras model)", uri=uri)
    return BundleInfo.from_json(storage.read_bytes(info_uri).decode(), uri)


def load_bundle(uri: str) -> tuple[keras.Model, BundleInfo]:
    uri = resolve(uri)
    info = read_info(uri)

    for module in info.keras_modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ConfigError(f"{uri}: the bundle needs the module {module!r} for its custom layers, and it cannot "
                              f"be imported ({exc}); install it on every node (or put it on PYTHONPATH)") from exc
    data = storage.read_bytes(storage.join(uri, MODEL_FILE))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, MODEL_FILE)
        with open(path, "wb") as f:
            f.write(data)
        try:
            import keras

            model = keras.saving.load_model(path, compile=False)
        except Exception as exc:
            raise InputError(f"{uri}: {MODEL_FILE} cannot be loaded ({exc})", uri=uri) from exc
    _check_model_fits(model, info)
    return model, info


def bundle_identity(uri: str) -> str:
    """A short content identity of a bundle (sha256 of bundle.json + model.keras)."""
    uri = resolve(uri)

    h = hashlib.sha256()
    for name in (INFO_FILE, MODEL_FILE):
        h.update(storage.read_bytes(storage.join(uri, name)))
    return h.hexdigest()[:16]


def _check_model_fits(model: keras.Model, info: BundleInfo) -> None:
    shape = tuple(model.input_shape)
    p = info.preprocess
    want = (p.input_size, p.input_size, p.channels)
    if len(shape) != 4 or tuple(shape[1:]) != want:
        raise ConfigError(
            f"model input {shape} does not fit the bundle's preprocessing (batch, {want[0]}, {want[1]}, {want[2]})"
        )
    out = model.output_shape[-1]
    k = len(info.label_names)
    if not ((out == 1 and k == 2) or out == k):
        raise ConfigError(f"model has {out} output channels but the bundle names {k} labels {info.label_names}")


def package_model(keras_file: str, uri: str, preprocess: PreprocessConfig, threshold: float = 0.5,
                  label_names: list[str] | None = None, name: str = "user-model",
                  keras_modules: list[str] | None = None, segment_codes: dict | None = None,
                  input_rules: dict | None = None) -> BundleInfo:
    """Turn a user's own `.keras` model (input (s, s, C), sigmoid or softmax output) into a bundle.
    `keras_modules` name the modules that register its custom layers, if it has any;
    `segment_codes` the coded category and type of each foreground label in DICOM SEG output;
    `input_rules` the series it is made for (selection rules: the README, "Choosing what to segment")."""

    from unet_core.model.pretrained import load_model_file

    for module in keras_modules or []:
        importlib.import_module(module)
    model = load_model_file(keras_file)
    k = model.output_shape[-1]
    labels = label_names or (["background", "foreground"] if k == 1 else [f"label_{i}" for i in range(k)])
    info = BundleInfo(preprocess=preprocess, model=None, threshold=threshold, label_names=labels, name=name,
                      training={"source": os.path.basename(keras_file)}, keras_modules=list(keras_modules or []),
                      segment_codes=dict(segment_codes or {}), input_rules=dict(input_rules or {}))
    save_bundle(uri, model, info)
    return info
