"""The validation pass after training: predict the validation cases whole, as `unet segment` does,
and decide on them whether keeping each label's largest connected component raises Dice
(`recipe.postprocess.decide_postprocessing`, nnU-Net's rule).

    keras_predictor(model)           a trained in-memory Keras model as the predict callable
    validation_predictions(...)      (predicted labels, true labels) per validation case, on the
                                     case's source grid, one case at a time
    decide_on_validation(...)        the decision (its to_dict() is the bundle's `postprocessing`)

The prediction is `inference.segment_in_runs` with the bundle's preprocessing and threshold and no
post-processing: the seed recipe's resized slices or the native recipe's sliding window, exactly
the labels a segment run would post-process. The truth is the case's mask as it was trained
(`TruthRule`: binary masks are `labels in foreground_labels`, else any non-zero label).

A case that cannot be read or predicted is skipped and named (`on_skip`); the decision is taken on
the others. 2D (PNG / TIFF) cases have no 3D components and are left out.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from unet_core.config import Limits, PreprocessConfig
from unet_core.errors import ItemFailure
from unet_core.inference import PostProcess, segment_in_runs
from unet_core.recipe.postprocess import PostprocessDecision, decide_postprocessing
from unet_core.training.cases import Case, load_case
from unet_core.training.shards import check_pair
from unet_core.volume import Volume

PREDICT_BATCH = 16  # model-input rows per call: the segment stage's default mini-batch


@dataclass(frozen=True)
class TruthRule:
    """How the prepared data turned a case's mask into training labels (its manifest's `binary`
    and `foreground_labels`)."""

    binary: bool = True
    foreground_labels: tuple[int, ...] | None = None

    def labels(self, mask: Volume) -> np.ndarray:
        """(i, j, k) uint8 labels on the mask's own grid: {0, 1} when binary, else the labels."""
        lab = np.asarray(mask.voxels).astype(np.uint8)
        if not self.binary:
            return lab
        fg = np.isin(lab, self.foreground_labels) if self.foreground_labels else lab > 0
        return fg.astype(np.uint8)


def keras_predictor(model, batch_size: int = PREDICT_BATCH) -> Callable[[np.ndarray], np.ndarray]:
    """(rows, s, s, C) float16 -> (rows, s, s, K) float16 probabilities of an in-memory Keras model,
    `batch_size` rows per call (the last call padded, so the traced function keeps one shape)."""
    import tensorflow as tf

    call = tf.function(lambda x: model(x, training=False))

    def predict(x: np.ndarray) -> np.ndarray:
        out = []
        for start in range(0, len(x), batch_size):
            chunk = np.asarray(x[start:start + batch_size], np.float32)
            n = len(chunk)
            if n < batch_size:
                chunk = np.concatenate([chunk, np.zeros((batch_size - n, *chunk.shape[1:]), np.float32)])
            out.append(call(tf.constant(chunk)).numpy()[:n].astype(np.float16))
        return np.concatenate(out)

    return predict


def validation_predictions(predict: Callable[[np.ndarray], np.ndarray], preprocess: PreprocessConfig,
                           threshold: float, cases: Iterable[Case], rule: TruthRule, limits: Limits | None = None,
                           on_skip: Callable[[str], None] | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Per 3D validation case: (predicted labels, true labels), both (i, j, k) uint8 on the case's
    source grid. Read, predicted and yielded one case at a time."""
    limits = limits or Limits()
    for case in cases:
        if case.kind == "2d":
            continue
        try:
            image, mask = load_case(case, limits)
            check_pair(image, mask, case.case_id)
            pred = segment_in_runs(image, preprocess, predict, threshold, PostProcess())
            truth = rule.labels(mask)
        except Exception as exc:  # noqa: BLE001 - the item guard: one bad case is skipped, the rest decide
            if on_skip is not None:
                on_skip(ItemFailure.of(case.case_id, exc, "predicting the validation case").error)
            continue
        yield pred, truth


def decide_on_validation(predict: Callable[[np.ndarray], np.ndarray], preprocess: PreprocessConfig,
                         threshold: float, n_labels: int, cases: Iterable[Case], rule: TruthRule,
                         limits: Limits | None = None,
                         on_skip: Callable[[str], None] | None = None) -> PostprocessDecision:
    """The largest-component decision on the validation cases. `n_labels` counts background: 2 for
    a sigmoid (binary) model, K for a softmax over K classes."""
    pairs = validation_predictions(predict, preprocess, threshold, cases, rule, limits, on_skip)
    return decide_postprocessing(pairs, n_labels)


__all__ = ["PREDICT_BATCH", "TruthRule", "decide_on_validation", "keras_predictor", "validation_predictions"]
