"""Post-processing decided on data: keep each label's largest connected component only if that
raises Dice on the validation cases and no class gets worse (nnU-Net's rule).

    decide_postprocessing(cases, n_labels)  -> PostprocessDecision (its to_dict() is the bundle's
                                               `postprocessing`), called by `unet train` through
                                               unet_core/training/postprocess_decision.py
    describe(postprocessing)                -> the decision in one line
    resolve_postprocess(info, choice, fill_holes) -> PostProcess for `unet segment
                                               --largest-component auto|on|off`

The largest component is `inference.postprocess`'s (per label, 3D, 26-connectivity), so the
decision is taken on exactly what the segment run would do.
"""
from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from unet_core.errors import ConfigError
from unet_core.inference import PostProcess, postprocess

if TYPE_CHECKING:
    from unet_core.bundle import BundleInfo


class LargestComponent(enum.StrEnum):
    """`unet segment --largest-component`: follow the bundle's decision, or force it."""

    AUTO = "auto"
    ON = "on"
    OFF = "off"


@dataclass(frozen=True)
class PostprocessDecision:
    """Mean Dice per foreground label (1..K-1) over the validation cases, without and with the
    largest component; None for a label absent from every case's truth and prediction."""

    largest_component: bool
    plain: list[float | None]
    with_largest: list[float | None]
    cases: int

    def to_dict(self) -> dict:
        """The bundle's `postprocessing` (BundleInfo), JSON-ready."""
        return {"largest_component": self.largest_component, "cases": self.cases,
                "labels": list(range(1, len(self.plain) + 1)),
                "val_dice": {"plain": list(self.plain), "largest_component": list(self.with_largest)},
                "rule": "largest component kept only if the mean Dice rises and no label's falls"}


def describe(postprocessing: dict) -> str:
    """One line for `unet train`'s summary from a bundle's `postprocessing` (PostprocessDecision.to_dict)."""
    cases = int(postprocessing.get("cases", 0))
    if not cases:
        return "post-processing: no 3D validation case to decide on; the largest component stays off"
    dice = postprocessing["val_dice"]
    plain, largest = _fmt(dice["plain"]), _fmt(dice["largest_component"])
    verdict = "kept" if postprocessing["largest_component"] else "not kept"
    return (f"post-processing: largest component {verdict} (validation Dice per label {plain} without, {largest} "
            f"with, over {cases} case{'s' if cases != 1 else ''}); `unet segment --largest-component auto` follows it")


def _fmt(values: list[float | None]) -> str:
    return "/".join("-" if v is None else f"{v:.4f}" for v in values)


def dice_per_label(pred: np.ndarray, truth: np.ndarray, n_labels: int) -> np.ndarray:
    """(n_labels - 1,) float64 Dice of labels 1..n_labels-1; NaN where both masks are empty."""
    out = np.full(n_labels - 1, np.nan)
    for label in range(1, n_labels):
        p, t = pred == label, truth == label
        total = int(p.sum()) + int(t.sum())
        if total:
            out[label - 1] = 2.0 * int((p & t).sum()) / total
    return out


def decide_postprocessing(cases: Iterable[tuple[np.ndarray, np.ndarray]], n_labels: int) -> PostprocessDecision:
    """Per validation case (predicted labels, true labels), both 3D integer arrays of one shape
    (a case's slices stacked; the axis order does not matter to 26-connectivity), with labels
    0..n_labels-1 (0 background; a sigmoid model's is 2). Cases are read one at a time."""
    if n_labels < 2:
        raise ConfigError(f"post-processing needs at least one foreground label, got {n_labels} labels")
    plain, largest, n = [], [], 0
    for i, (pred, truth) in enumerate(cases):
        pred, truth = np.asarray(pred), np.asarray(truth)
        if pred.shape != truth.shape or pred.ndim != 3:
            raise ConfigError(f"validation case {i}: prediction {pred.shape} and truth {truth.shape} must be "
                              "3D arrays of one shape")
        plain.append(dice_per_label(pred, truth, n_labels))
        largest.append(dice_per_label(postprocess(pred, PostProcess(largest_component=True)), truth, n_labels))
        n += 1
    if not n:
        return PostprocessDecision(False, [None] * (n_labels - 1), [None] * (n_labels - 1), 0)
    before, after = _mean(plain), _mean(largest)
    known = [(b, a) for b, a in zip(before, after, strict=True) if b is not None]
    adopt = bool(known) and all(a >= b for b, a in known) and sum(a - b for b, a in known) > 0
    return PostprocessDecision(adopt, before, after, n)


def _mean(rows: list[np.ndarray]) -> list[float | None]:
    stack = np.stack(rows)
    seen = ~np.isnan(stack)
    return [float(stack[seen[:, c], c].mean()) if seen[:, c].any() else None for c in range(stack.shape[1])]


def resolve_postprocess(info: BundleInfo, choice: LargestComponent | str = LargestComponent.AUTO,
                        fill_holes: bool = False) -> PostProcess:
    """The segment run's PostProcess: `auto` follows the bundle's decision (off for bundles that
    hold none: made before the decision existed, or packaged models); `on` / `off` force it."""
    try:
        choice = LargestComponent(choice)
    except ValueError:
        raise ConfigError(f"--largest-component must be one of {[c.value for c in LargestComponent]}, "
                          f"got {choice!r}") from None
    if choice == LargestComponent.AUTO:
        keep = bool((info.postprocessing or {}).get("largest_component", False))
    else:
        keep = choice == LargestComponent.ON
    return PostProcess(largest_component=keep, fill_holes=fill_holes)
