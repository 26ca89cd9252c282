"""Inference on volumes, as pure functions and one callable class (Ray only maps them).

    prepare_volume(volume, preprocess) -> model input of the canonical slices
    SlicePredictor(bundle)(batch)       -> probabilities (model loaded once, in __init__)
    finish_volume(prob, volume, ...)    -> labels on the source grid, post-processed, with stats

Shapes: a volume is (i, j, k) on its source grid; the model sees slices of the canonical
(closest-RAS) grid, (n, size, size, channels); probabilities come back (n, size, size, K).
"""
from __future__ import annotations

import io
import time
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from unet_core.bundle import load_bundle
from unet_core.config import PreprocessConfig
from unet_core.io.orientation import canonical_grid, from_canonical, to_canonical
from unet_core.plots import display_slice
from unet_core.preprocessing import (
    probabilities_to_grid,
    probabilities_to_labels,
    slices_to_model_input,
)
from unet_core.volume import Volume


def prepare_volume(volume: Volume, preprocess: PreprocessConfig) -> np.ndarray:
    """(n, size, size, channels) float16 model input of the canonical axial slices."""
    canonical, _ = to_canonical(volume.voxels, volume.affine)
    return slices_to_model_input(np.moveaxis(canonical, 2, 0), preprocess).astype(np.float16)


class SlicePredictor:
    """Loads a bundle once; `predict(x)` maps (n, size, size, C) model input to float16
    (n, size, size, K) probabilities, and `__call__(batch)` does so for every volume of a batch
    dict (batch["x"] -> batch["prob"]). Slices are fed in fixed-size mini-batches (the last one
    padded) so the compiled function is traced once.
    """

    def __init__(self, bundle_uri: str, batch_size: int = 16, precision: str = "float32", xla: bool = False):
        import tensorflow as tf

        from unet_core.model.precision import with_precision

        model, self.info = load_bundle(bundle_uri)
        # Rebuilt under the policy: a loaded model keeps its saved float32 layers otherwise.
        self.model = with_precision(model, precision)
        self.precision = precision
        self.batch_size = batch_size
        self._predict = tf.function(lambda x: self.model(x, training=False), jit_compile=xla)
        self.model_seconds = 0.0

    def warm_up(self) -> None:
        """Trace the compiled function once on zeros, before the first real volume arrives."""
        _, height, width, channels = self.model.input_shape
        size = self.info.preprocess.input_size
        self.predict(np.zeros((1, height or size, width or size, channels), np.float32))
        self.model_seconds = 0.0

    def predict(self, x: np.ndarray) -> np.ndarray:
        import tensorflow as tf

        out = []
        b = self.batch_size
        for start in range(0, len(x), b):
            chunk = x[start:start + b].astype(np.float32)
            n = len(chunk)
            if n < b:
                chunk = np.concatenate([chunk, np.zeros((b - n, *chunk.shape[1:]), np.float32)])
            t = time.perf_counter()
            pred = self._predict(tf.constant(chunk)).numpy()
            self.model_seconds += time.perf_counter() - t
            out.append(pred[:n].astype(np.float16))
        return np.concatenate(out) if out else np.zeros((0,), np.float16)

    def __call__(self, batch: dict) -> dict:
        batch = dict(batch)
        batch["prob"] = [self.predict(np.asarray(x)) if x is not None and len(x) else None for x in batch.pop("x")]
        return batch


@dataclass
class PostProcess:
    largest_component: bool = False
    fill_holes: bool = False


def postprocess(labels: np.ndarray, cfg: PostProcess) -> np.ndarray:
    """Per label (3D, 26-connectivity): keep the largest connected component, fill holes."""
    if not (cfg.largest_component or cfg.fill_holes):
        return labels

    out = np.zeros_like(labels)
    for value in np.unique(labels):
        if value == 0:
            continue
        region = labels == value
        if cfg.largest_component:
            comp, n = ndimage.label(region, structure=np.ones((3, 3, 3)))
            if n > 1:
                sizes = np.bincount(comp.ravel())
                sizes[0] = 0
                region = comp == int(np.argmax(sizes))
        if cfg.fill_holes:
            region = ndimage.binary_fill_holes(region)
        out[region & (out == 0)] = value
    return out


def finish_volume(prob: np.ndarray, volume: Volume, threshold: float, post: PostProcess) -> np.ndarray:
    """Model-size probabilities of the canonical slices -> uint8 labels on the source grid.
    Probabilities are resized linearly to the canonical slice size, then thresholded (argmax for
    several classes), post-processed in 3D, and reoriented exactly back to the source grid."""
    shape, _ = canonical_grid(volume.affine, volume.shape)
    size = shape[:2]
    labels = np.empty((prob.shape[0], *size), np.uint8)
    for k in range(prob.shape[0]):  # slice by slice keeps the float32 working set small
        labels[k] = probabilities_to_labels(probabilities_to_grid(prob[k:k + 1].astype(np.float32), size), threshold)[0]
    labels = postprocess(np.moveaxis(labels, 0, 2), post)
    return from_canonical(labels, volume.affine, volume.shape)


def volume_stats(labels: np.ndarray, volume: Volume) -> dict:
    mask = labels > 0
    n = int(mask.sum())
    mean_hu = float(volume.voxels[mask].mean()) if n and volume.modality == "CT" else None
    return {"n_slices": int(volume.shape[2]), "mask_voxels": n, "mask_volume_ml": n * volume.voxel_volume_ml,
            "mean_hu_in_mask": mean_hu}


def qc_montage_png(volume: Volume, labels: np.ndarray, truth: np.ndarray | None = None, n: int = 8,
                   window: tuple[float, float] = (-160.0, 240.0), title: str = "") -> bytes:
    """A PNG montage of up to `n` canonical axial slices through the mask, with the predicted
    outline (red) and, when given, the true outline (green)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    img, can_affine = to_canonical(volume.voxels, volume.affine)
    sx, sy = np.linalg.norm(can_affine[:3, :2], axis=0)  # display rows run along j, columns along i
    lab, _ = to_canonical(labels, volume.affine)
    tru = to_canonical(truth, volume.affine)[0] if truth is not None else None
    ref = lab if lab.any() or tru is None else tru
    ks = np.flatnonzero(ref.reshape(-1, ref.shape[2]).any(axis=0)) if ref.any() else np.arange(img.shape[2])
    ks = ks[np.linspace(0, len(ks) - 1, min(n, len(ks))).round().astype(int)] if len(ks) else ks
    cols = min(4, max(len(ks), 1))
    rows = int(np.ceil(max(len(ks), 1) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3 * rows), dpi=80, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, k in zip(axes.ravel(), ks, strict=False):  # more panels than slices: the rest stay blank
        ax.imshow(display_slice(np.clip(img[:, :, k], *window)), cmap="gray", vmin=window[0], vmax=window[1],
                  aspect=sy / sx)
        if lab[:, :, k].any():
            ax.contour(display_slice(lab[:, :, k] > 0), levels=[0.5], colors="red", linewidths=1.0)
        if tru is not None and tru[:, :, k].any():
            ax.contour(display_slice(tru[:, :, k] > 0), levels=[0.5], colors="lime", linewidths=1.0, linestyles="dashed")
        ax.set_title(f"k={k}", fontsize=8)
    fig.suptitle(title + ("   red: predicted, green: truth" if tru is not None else "   red: predicted"), fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
