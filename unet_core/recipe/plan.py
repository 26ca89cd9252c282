"""The plan: a recipe's preprocessing decided from the options and the dataset's fingerprint.

recipe "seed"    each slice resized to input_size x input_size, intensities windowed (the seed's).
recipe "native"  slices resampled to a target in-plane spacing (default: the median of the
                 training cases; "source": each image's own), input_size is the patch size; CT
                 normalised from the fingerprint's foreground (clip to its 0.5 / 99.5
                 percentiles, z-score with its mean and std), other modalities z-scored per image,
                 unless `--normalization window` keeps the named CT window.

The result is a `PreprocessConfig`: prepare writes it into the manifest, train into the bundle,
and segment applies it, so the three cannot disagree.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from unet_core.config import NORMALIZATIONS, RECIPES, PreprocessConfig
from unet_core.errors import ConfigError
from unet_core.recipe.fingerprint import Fingerprint
from unet_core.recipe.resample import target_shape

SOURCE_SPACING = "source"  # --target-spacing source: train and infer at each image's own spacing


@dataclass(frozen=True)
class PlanRequest:
    """What the user asked for; None means "decide from the data"."""

    recipe: str = "native"
    modality: str = "CT"
    normalization: str | None = None  # None: ct_foreground for CT, zscore otherwise (native); window (seed)
    window: str | None = "abdomen"
    window_lower: float | None = None
    window_upper: float | None = None
    input_size: int = 256  # seed: the resize target; native: the patch size
    context_slices: int = 0
    target_spacing: float | str | None = None  # mm, SOURCE_SPACING, or None for the median

    def __post_init__(self) -> None:
        if self.recipe not in RECIPES:
            raise ConfigError(f"recipe must be one of {RECIPES}, got {self.recipe!r}")
        if self.normalization is not None and self.normalization not in NORMALIZATIONS:
            raise ConfigError(f"normalization must be one of {NORMALIZATIONS}, got {self.normalization!r}")
        if isinstance(self.target_spacing, str) and self.target_spacing != SOURCE_SPACING:
            raise ConfigError(f"target spacing must be a number of mm or {SOURCE_SPACING!r}, got {self.target_spacing!r}")
        if self.recipe == "seed" and self.target_spacing is not None:
            raise ConfigError("--target-spacing belongs to the native recipe; the seed recipe resizes every slice "
                              "to --input-size")
        if self.recipe == "seed" and self.normalization not in (None, "window"):
            raise ConfigError(f"the seed recipe windows intensities; --normalization {self.normalization} needs "
                              "--recipe native")
        if self.input_size < 1:
            raise ConfigError(f"input size must be positive, got {self.input_size}")

    @property
    def needs_fingerprint(self) -> bool:
        """Whether the plan depends on the training cases' statistics (the first pass of prepare)."""
        return self.recipe == "native" and (self.target_spacing is None or self.normalization_for() == "ct_foreground")

    def normalization_for(self) -> str:
        if self.normalization is not None:
            return self.normalization
        if self.recipe == "seed":
            return "window"
        return "ct_foreground" if self.modality == "CT" else "zscore"


def parse_target_spacing(text: str | None) -> float | str | None:
    """--target-spacing: None (the median), "source", or a positive number of mm."""
    if text is None or text == SOURCE_SPACING:
        return text
    try:
        value = float(text)
    except ValueError as exc:
        raise ConfigError(f"--target-spacing must be a number of mm or {SOURCE_SPACING!r}, got {text!r}") from exc
    if not value > 0:
        raise ConfigError(f"--target-spacing must be positive, got {text}")
    return value


def plan_preprocess(request: PlanRequest, fingerprint: Fingerprint | None) -> PreprocessConfig:
    """The PreprocessConfig of a request, completed from the fingerprint where it must be."""
    normalization = request.normalization_for()
    common = {"modality": request.modality, "window": request.window, "window_lower": request.window_lower,
              "window_upper": request.window_upper, "input_size": request.input_size,
              "context_slices": request.context_slices, "recipe": request.recipe, "normalization": normalization}
    if request.recipe == "seed":
        return PreprocessConfig(**common)
    if request.needs_fingerprint and fingerprint is None:
        raise ConfigError("the native recipe's plan needs the training cases' fingerprint")
    if request.target_spacing == SOURCE_SPACING:
        target = None
    elif request.target_spacing is None:
        # Rounded to a micrometre: spacings read from float32 headers carry digits that mean nothing.
        target = round(fingerprint.median_in_plane_spacing(), 3)  # type: ignore[union-attr]
    else:
        target = float(request.target_spacing)
    stats = {}
    if normalization == "ct_foreground":
        if request.modality != "CT":
            raise ConfigError(f"--normalization ct_foreground is for CT (Hounsfield units), not {request.modality}; "
                              "use zscore")
        if not fingerprint.intensity:  # type: ignore[union-attr]
            raise ConfigError("no foreground voxels in the training cases' masks: --normalization ct_foreground has no "
                              "statistics to use; check the masks (or --foreground-labels), or use --normalization window")
        s = fingerprint.intensity[0]  # type: ignore[union-attr]
        if not s.std > 0 or not s.p005 < s.p995:
            raise ConfigError(f"the training foreground's intensities are constant (mean {s.mean:g}, 0.5 / 99.5 "
                              f"percentiles {s.p005:g} / {s.p995:g}): ct_foreground cannot scale them; use "
                              "--normalization window")
        stats = {"foreground_mean": s.mean, "foreground_std": s.std, "foreground_p005": s.p005,
                 "foreground_p995": s.p995}
    return PreprocessConfig(**common, target_spacing=target, **stats)


def describe(pre: PreprocessConfig, fingerprint: Fingerprint | None) -> list[str]:
    """The short plan printed by `unet prepare`: a few lines a person reads at a glance."""
    lines = [f"plan: recipe {pre.recipe}"]
    if fingerprint is not None and fingerprint.cases:
        sp = fingerprint.in_plane_spacings
        lines.append(f"  fingerprint of {len(fingerprint.cases)} training cases: in-plane spacing "
                     f"{sp.min():.3g}-{sp.max():.3g} mm (median {np.median(sp):.3g}); class fractions "
                     + ", ".join(f"{k}: {f:.4f}" for k, f in enumerate(fingerprint.class_fractions)))
    if fingerprint is not None and fingerprint.intensity:
        s = fingerprint.intensity[0]
        lines.append(f"  foreground intensities ({s.n_samples:,} sampled): mean {s.mean:.1f}, std {s.std:.1f}, "
                     f"0.5 / 99.5 percentiles {s.p005:.1f} / {s.p995:.1f}")
    if pre.recipe == "seed":
        lines.append(f"  every slice resized to {pre.input_size} x {pre.input_size}; {_normalization(pre)}")
        return lines
    if pre.target_spacing is None:
        lines.append(f"  slices at each image's own spacing; patches of {pre.input_size} x {pre.input_size}")
    else:
        lines.append(f"  slices resampled to {pre.target_spacing:.4g} mm; patches of {pre.input_size} x "
                     f"{pre.input_size} ({pre.input_size * pre.target_spacing:.0f} mm)")
        if fingerprint is not None and fingerprint.cases:
            sizes = [target_shape(tuple(c["shape"][:2]), tuple(c["spacing"][:2]), pre.target_spacing)
                     for c in fingerprint.cases]
            h, w = np.median(np.array(sizes), axis=0)
            note = " (smaller than the patch: padded)" if min(h, w) < pre.input_size else ""
            lines.append(f"  median slice at that spacing {h:.0f} x {w:.0f}{note}")
    lines.append(f"  {_normalization(pre)}")
    return lines


def _normalization(pre: PreprocessConfig) -> str:
    if pre.normalization == "ct_foreground":
        return (f"CT clipped to {pre.foreground_p005:.1f} / {pre.foreground_p995:.1f} HU, then "
                f"(HU - {pre.foreground_mean:.1f}) / {pre.foreground_std:.1f}")
    if pre.normalization == "zscore":
        return "each image z-scored with its own mean and std"
    if pre.modality == "CT":
        lower, upper = pre.window_bounds()
        return f"CT window {pre.window or 'custom'} ({lower:g} to {upper:g} HU) scaled to [0, 1]"
    return f"{pre.modality} intensities scaled to [0, 1]"


__all__ = ["SOURCE_SPACING", "PlanRequest", "describe", "parse_target_spacing", "plan_preprocess"]
