"""Inference on volumes, as pure functions and one callable class (Ray only maps them).

    prepare_volume(volume, preprocess, tta)   -> model input rows of the canonical slices
    SlicePredictor(bundle)(batch)              -> probabilities (model loaded once, in __init__)
    finish_volume(prob, volume, threshold, post, preprocess=, tta=)
                                               -> labels on the source grid, post-processed

Shapes: a volume is (i, j, k) on its source grid; the model sees rows of the canonical
(closest-RAS) grid's slices, (rows, size, size, channels), and gives (rows, size, size, K).
- recipe "seed" (and bundles made before the native recipe): one row per slice, the slice resized
  to size x size; probabilities resized back linearly.
- recipe "native": each slice resampled to the target spacing, padded to the patch if smaller,
  cut into overlapping patch x patch tiles (unet_core/recipe/sliding.py); the rows are every tile
  of every slice, slice-major. `finish_volume` recomputes the same layout (a pure function of the
  canonical shape, the spacing and the plan), stitches with Gaussian weights, resamples the
  probabilities (not labels) linearly back to the canonical slice grid, then thresholds.
- `tta`: each slice's rows under the four 2D mirrors (`sliding.MIRRORS`) in turn; the predictions
  are flipped back and averaged before stitching. It costs 4x the model's work.

Size. The rows of a volume are `SlidingPlan.rows`: a 512 x 512 x 1000 CT at 0.7 mm with a 0.7 mm
target and a 256 patch is 9 tiles a slice, 9,000 rows of 256 x 256: 1.2 GB of float16 input and as
much of probabilities per class (4.7 GB each with TTA). `iter_model_input` and `finish_slices`
work a run of slices at a time (`max_rows` rows), so a stage can hold one run, not the volume;
`segment_in_runs` is that loop with a predict callable.
"""
from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from unet_core.bundle import load_bundle
from unet_core.config import PreprocessConfig
from unet_core.io.orientation import canonical_grid, from_canonical, to_canonical
from unet_core.plots import display_slice
from unet_core.preprocessing import (
    normalise,
    probabilities_to_grid,
    probabilities_to_labels,
    slices_at_target,
    slices_to_model_input,
)
from unet_core.recipe import sliding
from unet_core.recipe.resample import in_plane_spacing, resample_slices, target_shape
from unet_core.volume import Volume

MAX_CHUNK_ROWS = 1024  # model-input rows per run of slices: 128 MiB of float16 at 256 x 256
# Slices resampled and stitched together (CACHE_SLICES), resampled and cut into tiles together
# (INPUT_SLICES): their float32 temporaries stay a few MB, in the CPU's cache, instead of fresh
# pages for a whole run; the results are the same, slice by slice. Measured best on this machine's
# CPU (docs/benchmarks.md, sliding-window section).
CACHE_SLICES = 4
INPUT_SLICES = 16


@dataclass(frozen=True)
class SlidingPlan:
    """Where a volume's model-input rows come from: a pure function of the volume's canonical grid
    (shape, spacing) and the bundle's preprocessing. `source` is the canonical slice (I, J),
    `target` the slice at the recipe's spacing (the seed recipe: its input size), `layout` the
    tiles (None for the seed recipe: one row per slice)."""

    n_slices: int
    source: tuple[int, int]
    target: tuple[int, int]
    layout: sliding.TileLayout | None
    tta: bool

    @property
    def rows_per_slice(self) -> int:
        return (self.layout.tiles_per_slice if self.layout else 1) * (len(sliding.MIRRORS) if self.tta else 1)

    @property
    def rows(self) -> int:
        return self.n_slices * self.rows_per_slice

    def chunks(self, max_rows: int = MAX_CHUNK_ROWS) -> list[range]:
        """Runs of slices of at most `max_rows` rows (at least one slice each)."""
        per = max(1, max_rows // self.rows_per_slice)
        return [range(a, min(a + per, self.n_slices)) for a in range(0, self.n_slices, per)]


def sliding_plan(volume: Volume, preprocess: PreprocessConfig, tta: bool = False) -> SlidingPlan:
    """The row layout of a volume, without touching its voxels."""
    shape, affine = canonical_grid(volume.affine, volume.shape)
    source = (int(shape[0]), int(shape[1]))
    if preprocess.recipe != "native":
        size = preprocess.input_size
        return SlidingPlan(int(shape[2]), source, (size, size), None, tta)
    target = target_shape(source, in_plane_spacing(affine), preprocess.target_spacing)
    layout = sliding.TileLayout(target, preprocess.input_size, preprocess.tile_overlap)
    return SlidingPlan(int(shape[2]), source, target, layout, tta)


def _canonical_slices(volume: Volume) -> np.ndarray:
    canonical, _ = to_canonical(volume.voxels, volume.affine)
    return np.moveaxis(canonical, 2, 0)  # (n, I, J)


@dataclass
class StageSeconds:
    """Wall seconds of each host-side step of inference, summed over the calls given it (what a
    benchmark reads; None, the default, times nothing). `preprocess`: normalise, resample to the
    model grid, cut tiles, cast to float16; `stitch`: un-mirror and Gaussian stitching;
    `resample_back`: probabilities to the canonical slice grid; `labels`: threshold / argmax,
    post-processing and reorientation to the source grid. With `cpu`, the same steps' CPU seconds
    of this process (`time.process_time`: what a loaded machine changes least) go there too."""

    preprocess: float = 0.0
    stitch: float = 0.0
    resample_back: float = 0.0
    labels: float = 0.0
    cpu: StageSeconds | None = None


@contextmanager
def _timed(seconds: StageSeconds | None, step: str) -> Iterator[None]:
    if seconds is None:
        yield
        return
    t, c = time.perf_counter(), time.process_time()
    try:
        yield
    finally:
        setattr(seconds, step, getattr(seconds, step) + time.perf_counter() - t)
        if seconds.cpu is not None:
            setattr(seconds.cpu, step, getattr(seconds.cpu, step) + time.process_time() - c)


def prepare_volume(volume: Volume, preprocess: PreprocessConfig, tta: bool = False,
                   seconds: StageSeconds | None = None) -> np.ndarray:
    """(rows, size, size, channels) float16 model input of the canonical axial slices: one row per
    slice (recipe seed), or every tile of every slice (recipe native); with `tta`, each slice's
    rows under the four mirrors. See the module's docstring for the order and the size. The native
    rows are written run by run into the one array returned (no concatenation copy)."""
    if preprocess.recipe != "native":
        with _timed(seconds, "preprocess"):
            x = slices_to_model_input(_canonical_slices(volume), preprocess)
            return (sliding.mirrored(x, 1) if tta else x).astype(np.float16)
    plan = sliding_plan(volume, preprocess, tta)
    out = np.empty((plan.rows, preprocess.input_size, preprocess.input_size, preprocess.channels), np.float16)
    for _ in iter_model_input(volume, preprocess, tta, out=out, seconds=seconds):
        pass
    return out


def iter_model_input(volume: Volume, preprocess: PreprocessConfig, tta: bool = False,
                     max_rows: int = MAX_CHUNK_ROWS, *, out: np.ndarray | None = None,
                     seconds: StageSeconds | None = None) -> Iterator[tuple[range, np.ndarray]]:
    """(slices, float16 rows) a run of canonical slices at a time, at most `max_rows` rows each
    (one slice's rows at least); their concatenation is `prepare_volume`. Voxels are normalised
    once for the whole volume (a per-image normalisation sees the whole image). With `out` (the
    whole volume's (rows, size, size, channels) float16, native recipe), each run is written into
    it and the rows yielded are views of it."""
    plan = sliding_plan(volume, preprocess, tta)
    slices = _canonical_slices(volume)
    if plan.layout is None:  # the seed's rows are small (model size): made at once, as before
        with _timed(seconds, "preprocess"):
            x = slices_to_model_input(slices, preprocess)
        for ks in plan.chunks(max_rows):
            with _timed(seconds, "preprocess"):
                rows = x[ks.start:ks.stop]
                rows = (sliding.mirrored(rows, 1) if tta else rows).astype(np.float16)
            yield ks, rows
        return
    with _timed(seconds, "preprocess"):
        normalised = normalise(slices, preprocess)
    per, layout = plan.rows_per_slice, plan.layout
    for ks in plan.chunks(max_rows):
        rows = out[ks.start * per:ks.stop * per] if out is not None else \
            np.empty((len(ks) * per, layout.patch, layout.patch, preprocess.channels), np.float16)
        for a in range(ks.start, ks.stop, INPUT_SLICES):  # a few slices at a time: temporaries in cache
            run = range(a, min(ks.stop, a + INPUT_SLICES))
            with _timed(seconds, "preprocess"):
                x = slices_at_target(normalised, plan.target, preprocess.context_slices, run)
                dest = rows[(run.start - ks.start) * per:(run.stop - ks.start) * per]
                # Padding as in training: the normalised value of the slice's minimum (its
                # background). Cut straight to float16 (the one cast the rows get) into the rows.
                pad = x.min(axis=(1, 2, 3))
                if tta:
                    dest[...] = sliding.mirrored(sliding.extract_tiles(x, layout, pad, np.float16),
                                                 layout.tiles_per_slice)
                else:
                    sliding.extract_tiles(x, layout, pad, np.float16, out=dest)
        yield ks, rows


class SlicePredictor:
    """Loads a bundle once; `predict(x)` maps (n, size, size, C) model input to float16
    (n, size, size, K) probabilities, and `__call__(batch)` does so for every volume of a batch
    dict (batch["x"] -> batch["prob"]). Slices are fed in fixed-size mini-batches (the last one
    padded) so the compiled function is traced once. The rows of one call (a volume's: every tile
    of every slice, slice-major) fill each mini-batch across slice boundaries; only a call's last
    one is padded, so a volume wastes fewer than `batch_size` rows of model work (`batches` and
    `rows` count what was fed).
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
        self.batches = 0  # mini-batches fed; rows / (batches x batch_size) is how full they were
        self.rows = 0

    def warm_up(self) -> None:
        """Trace the compiled function once on zeros, before the first real volume arrives."""
        _, height, width, channels = self.model.input_shape
        size = self.info.preprocess.input_size
        self.predict(np.zeros((1, height or size, width or size, channels), np.float32))
        self.model_seconds, self.batches, self.rows = 0.0, 0, 0

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
            self.batches, self.rows = self.batches + 1, self.rows + n
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


def finish_volume(prob: np.ndarray, volume: Volume, threshold: float, post: PostProcess, *,
                  preprocess: PreprocessConfig | None = None, tta: bool = False,
                  seconds: StageSeconds | None = None) -> np.ndarray:
    """Model-output rows of a volume (as `prepare_volume` made them) -> uint8 labels on the source
    grid. Probabilities are taken to the canonical slice grid linearly (un-mirrored and averaged
    with `tta`; stitched for recipe native), thresholded (argmax for several classes),
    post-processed in 3D, and reoriented exactly back to the source grid. Without `preprocess`
    (or with the seed recipe) the rows are one per slice at any model size, as before the native
    recipe. The work goes a run of slices at a time, so its float32 working set stays small."""
    plan = sliding_plan(volume, preprocess or PreprocessConfig(input_size=int(prob.shape[1])), tta)
    if prob.shape[0] != plan.rows:
        raise ValueError(f"{prob.shape[0]} probability rows do not fit the volume's {plan.rows} "
                         f"({plan.n_slices} slices x {plan.rows_per_slice}); pass the bundle's preprocess and the "
                         "tta that prepare_volume was given")
    labels = np.empty((*plan.source, plan.n_slices), np.uint8)
    per = plan.rows_per_slice
    for ks in plan.chunks():
        labels[:, :, ks.start:ks.stop] = finish_slices(prob[ks.start * per:ks.stop * per], plan, threshold, seconds)
    with _timed(seconds, "labels"):
        return labels_to_source(labels, volume, post)


def finish_slices(prob: np.ndarray, plan: SlidingPlan, threshold: float,
                  seconds: StageSeconds | None = None) -> np.ndarray:
    """The model-output rows of a run of slices -> (I, J, n) uint8 canonical labels."""
    n = prob.shape[0] // plan.rows_per_slice
    if plan.layout is None:
        if plan.tta:
            with _timed(seconds, "stitch"):
                prob = sliding.unmirrored_mean(prob, 1)
        labels = np.empty((n, *plan.source), np.uint8)
        for k in range(n):  # slice by slice keeps the float32 working set small
            with _timed(seconds, "resample_back"):
                on_grid = probabilities_to_grid(prob[k:k + 1].astype(np.float32), plan.source)
            with _timed(seconds, "labels"):
                labels[k] = probabilities_to_labels(on_grid, threshold)[0]
        return np.moveaxis(labels, 0, 2)
    labels = np.empty((n, *plan.source), np.uint8)
    per = plan.rows_per_slice
    for a in range(0, n, CACHE_SLICES):  # a few slices at a time: the float32 temporaries stay in cache
        b = min(n, a + CACHE_SLICES)
        with _timed(seconds, "stitch"):
            rows = prob[a * per:b * per]
            tiles = sliding.unmirrored_mean(rows, plan.layout.tiles_per_slice) if plan.tta else rows
            on_target = sliding.stitch(tiles, plan.layout)
        with _timed(seconds, "resample_back"):
            on_source = resample_slices(on_target, plan.source)
        with _timed(seconds, "labels"):
            labels[a:b] = probabilities_to_labels(on_source, threshold)
    return np.moveaxis(labels, 0, 2)


def labels_to_source(labels: np.ndarray, volume: Volume, post: PostProcess) -> np.ndarray:
    """(I, J, n) canonical labels -> post-processed labels on the volume's source grid."""
    return from_canonical(postprocess(labels, post), volume.affine, volume.shape)


def segment_in_runs(volume: Volume, preprocess: PreprocessConfig, predict: Callable[[np.ndarray], np.ndarray],
                    threshold: float, post: PostProcess, tta: bool = False,
                    max_rows: int = MAX_CHUNK_ROWS) -> np.ndarray:
    """`finish_volume(predict(prepare_volume(...)), ...)` a run of slices at a time: at most
    `max_rows` rows of model input and of probabilities are held at once, plus the volume's uint8
    canonical labels. `predict` maps (rows, size, size, C) float16 to (rows, size, size, K)."""
    plan = sliding_plan(volume, preprocess, tta)
    labels = np.empty((*plan.source, plan.n_slices), np.uint8)
    for ks, x in iter_model_input(volume, preprocess, tta, max_rows):
        labels[:, :, ks.start:ks.stop] = finish_slices(np.asarray(predict(x)), plan, threshold)
    return labels_to_source(labels, volume, post)


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
