"""Typed configuration: one home for every default.

The driver builds these dataclasses, sends `to_dict(cfg)` to Ray workers, and each worker rebuilds
them with `from_dict`, so a misspelt key fails at once and a default lives in exactly one place.
"""
from __future__ import annotations

import dataclasses
import enum
import json
import types
import typing
from dataclasses import dataclass
from typing import Any, TypeVar

from unet_core.errors import ConfigError

T = TypeVar("T")

RECIPES = ("seed", "native")
NORMALIZATIONS = ("window", "ct_foreground", "zscore")

# Named CT windows as (lower HU, upper HU): level -/+ width/2.
CT_WINDOWS: dict[str, tuple[float, float]] = {
    "abdomen": (-160.0, 240.0),  # L 40 / W 400, soft tissue
    "liver": (-25.0, 175.0),  # L 75 / W 200
    "lung": (-1350.0, 150.0),  # L -600 / W 1500
    "bone": (-500.0, 1300.0),  # L 400 / W 1800
    "brain": (0.0, 80.0),  # L 40 / W 80
    "wide": (-1024.0, 1024.0),
}


class Norm(enum.StrEnum):
    """Normalisation after each 3x3 convolution of the U-Net."""

    NONE = "none"  # the seed's network: convolution with bias, then ReLU
    # running statistics: training normalises with the batch's, inference with averages gathered
    # over training batches (foreground-oversampled patches, for the native recipe)
    BATCH = "batch"
    # per sample and channel over the image (nnU-Net's choice): training and inference normalise
    # alike, no running statistics and no state shared between replicas
    INSTANCE = "instance"


@dataclass(frozen=True)
class ModelConfig:
    """The U-Net. Defaults reproduce the seed network exactly (31,031,685 parameters at 256x256x1)."""

    input_size: int = 256
    input_channels: int = 1
    num_classes: int = 1  # 1: sigmoid foreground; K >= 2: softmax over labels 0..K-1
    base_filters: int = 64
    depth: int = 4  # number of 2x2 poolings
    dropout: float = 0.5  # after the two deepest levels, as in the seed
    # kept for bundles and commands from before `norm`: True means norm "batch" (and is set to
    # norm == "batch" whichever of the two was given)
    batch_norm: bool = False
    upsampling: str = "upsample_conv"  # "upsample_conv" (seed 1) | "transpose" (seed 2)
    head_conv_filters: int = 2  # the seed's extra 3x3 conv before the 1x1 head; 0 disables
    norm: Norm = Norm.NONE

    def __post_init__(self) -> None:
        try:
            norm = Norm(self.norm)
        except ValueError:
            raise ConfigError(f"norm must be one of {[n.value for n in Norm]}, got {self.norm!r}") from None
        if self.batch_norm and norm is Norm.INSTANCE:
            raise ConfigError("batch_norm (--batch-norm) and norm 'instance' contradict each other: give one")
        if self.batch_norm:
            norm = Norm.BATCH
        object.__setattr__(self, "norm", norm)
        object.__setattr__(self, "batch_norm", norm is Norm.BATCH)
        if self.upsampling not in ("upsample_conv", "transpose"):
            raise ConfigError(
                f"upsampling must be 'upsample_conv' or 'transpose', got {self.upsampling!r}"
            )
        if self.depth < 1 or self.base_filters < 1 or self.input_channels < 1:
            raise ConfigError("depth, base_filters and input_channels must be positive")
        if self.num_classes < 1:
            raise ConfigError(f"num_classes must be >= 1, got {self.num_classes}")
        if self.head_conv_filters < 0:
            raise ConfigError(f"head_conv_filters must be >= 0 (0: no convolution before the head), "
                              f"got {self.head_conv_filters}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.input_size % (2**self.depth):
            raise ConfigError(
                f"input size {self.input_size} is not divisible by 2**depth = {2**self.depth} "
                f"(depth {self.depth}); choose a multiple of {2**self.depth}"
            )


@dataclass(frozen=True)
class PreprocessConfig:
    """How voxels become model input. Stored in the model bundle so inference cannot disagree."""

    modality: str = "CT"  # "CT": window in HU; "uint8" / "uint16": the seed's normalisation
    window: str | None = "abdomen"  # a name in CT_WINDOWS, or None to use window_lower/upper
    window_lower: float | None = None
    window_upper: float | None = None
    # recipe "seed": each slice resized to input_size x input_size. recipe "native": slices
    # resampled to target_spacing, input_size is the patch size, inference by sliding window.
    input_size: int = 256
    context_slices: int = 0  # neighbouring slices each side fed as extra channels
    recipe: str = "seed"  # one of RECIPES; bundles made before the native recipe carry no key: "seed"
    # "window": clip to the CT window, scale to [0, 1] (the seed's); "ct_foreground": clip to the
    # dataset's foreground 0.5 / 99.5 percentiles, then z-score with its foreground mean and std
    # (nnU-Net's CT scheme); "zscore": each image's own mean and std (non-CT modalities)
    normalization: str = "window"
    target_spacing: float | None = None  # in-plane mm for recipe "native"; None: each image's own spacing
    foreground_mean: float | None = None  # the fingerprint's foreground statistics ("ct_foreground")
    foreground_std: float | None = None
    foreground_p005: float | None = None
    foreground_p995: float | None = None
    tile_overlap: float = 0.5  # sliding-window step is (1 - overlap) x patch

    def __post_init__(self) -> None:
        if self.modality not in ("CT", "uint8", "uint16"):
            raise ConfigError(f"modality must be CT, uint8 or uint16, got {self.modality!r}")
        if self.recipe not in RECIPES:
            raise ConfigError(f"recipe must be one of {RECIPES}, got {self.recipe!r}")
        if self.normalization not in NORMALIZATIONS:
            raise ConfigError(f"normalization must be one of {NORMALIZATIONS}, got {self.normalization!r}")
        if self.modality == "CT" and self.normalization == "window":
            lower, upper = self.window_bounds()
            if not lower < upper:
                raise ConfigError(f"window lower {lower} must be below upper {upper}")
        if self.normalization == "ct_foreground":
            stats = (self.foreground_mean, self.foreground_std, self.foreground_p005, self.foreground_p995)
            if any(v is None for v in stats):
                raise ConfigError("normalization ct_foreground needs the fingerprint's foreground mean, std and "
                                  "0.5 / 99.5 percentiles")
            if not self.foreground_std > 0 or not self.foreground_p005 < self.foreground_p995:
                raise ConfigError(f"foreground statistics out of range: std {self.foreground_std}, percentiles "
                                  f"{self.foreground_p005} / {self.foreground_p995}")
        if self.target_spacing is not None and not self.target_spacing > 0:
            raise ConfigError(f"target_spacing must be positive (mm), got {self.target_spacing}")
        if not 0.0 <= self.tile_overlap < 1.0:
            raise ConfigError(f"tile_overlap must be in [0, 1), got {self.tile_overlap}")
        if self.context_slices < 0:
            raise ConfigError("context_slices must be >= 0")

    def window_bounds(self) -> tuple[float, float]:
        if self.window_lower is not None and self.window_upper is not None:
            return float(self.window_lower), float(self.window_upper)
        if self.window is None:
            raise ConfigError("give a window name or both window_lower and window_upper")
        if self.window not in CT_WINDOWS:
            raise ConfigError(f"unknown window {self.window!r}; known: {sorted(CT_WINDOWS)}")
        return CT_WINDOWS[self.window]

    @property
    def channels(self) -> int:
        return 1 + 2 * self.context_slices


@dataclass(frozen=True)
class AugmentConfig:
    """The seed's ImageDataGenerator parameters, as TensorFlow ops (see unet_core/augment.py)."""

    enabled: bool = True
    rotation_degrees: float = 20.0
    width_shift: float = 0.1  # fraction of width
    height_shift: float = 0.1
    # Keras' ImageDataGenerator read shear_range in degrees; kept so the seed's 0.1 means the same.
    shear_degrees: float = 0.1
    zoom: float = 0.1  # zoom factors drawn from [1 - zoom, 1 + zoom], x and y independently
    horizontal_flip: bool = True


@dataclass(frozen=True)
class TrainConfig:
    """The seed's recipe is the default."""

    batch_size: int = 16  # per worker; global batch = batch_size x workers
    epochs: int = 100
    learning_rate: float = 1e-3
    loss: str = "bce"  # "bce" | "bce_dice" | "dice" (multi-class: "cce" | "cce_dice" | "dice")
    early_stopping_patience: int = 15
    reduce_lr_patience: int = 10
    reduce_lr_factor: float = 0.2
    min_learning_rate: float = 1e-7
    seed: int = 0
    precision: str = "float32"  # "float32" | "mixed_float16" | "mixed_bfloat16"
    xla: bool = False
    steps_per_epoch: int | None = None  # None: one pass over this worker's shard

    def __post_init__(self) -> None:
        if self.precision not in ("float32", "mixed_float16", "mixed_bfloat16"):
            raise ConfigError(f"unknown precision {self.precision!r}")
        if self.batch_size < 1 or self.epochs < 1:
            raise ConfigError("batch_size and epochs must be positive")


@dataclass(frozen=True)
class Limits:
    """Safety budgets for untrusted input. Every number can be raised on the command line."""

    max_volume_bytes: int = 2 * 1024**3  # decoded voxels (float32) of one volume
    max_file_bytes: int = 1024**3  # one stored object
    max_decompressed_bytes: int = 2 * 1024**3  # gzip / zip expansion of one member
    max_zip_members: int = 100_000


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-ready dict of a (nested) config dataclass."""
    return dataclasses.asdict(cfg)


def to_json(cfg: Any) -> str:
    return json.dumps(to_dict(cfg), indent=2, sort_keys=True)


def from_dict(cls: type[T], data: dict[str, Any] | None) -> T:
    """Rebuild a config dataclass; unknown keys raise ConfigError naming them and the known ones."""
    data = dict(data or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} keys {unknown}; known: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        target = _dataclass_in(hints[name])
        kwargs[name] = from_dict(target, value) if target and isinstance(value, dict) else value
    return cls(**kwargs)  # type: ignore[call-arg]


def _dataclass_in(hint: Any) -> type | None:
    if dataclasses.is_dataclass(hint):
        return hint  # type: ignore[return-value]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        for arg in typing.get_args(hint):
            if dataclasses.is_dataclass(arg):
                return arg  # type: ignore[return-value]
    return None


__all__ = [
    "CT_WINDOWS",
    "NORMALIZATIONS",
    "RECIPES",
    "AugmentConfig",
    "Limits",
    "ModelConfig",
    "Norm",
    "PreprocessConfig",
    "TrainConfig",
    "from_dict",
    "to_dict",
    "to_json",
]
