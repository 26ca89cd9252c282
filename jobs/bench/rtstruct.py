"""`unet bench rtstruct`: the time to write one RT Structure Set of a 512 x 512 x 300 CT volume
with an anatomy-like mask of several labels (a body with lungs, liver, kidneys and a spine whose
bone rings its marrow; vessels as islands inside the lungs; a few stray voxels, as a model leaves
them), against the time the predictor takes for the same 300 slices on this machine (the
`unet bench inference` model: --infer-size, --infer-filters, --infer-batch). One core, in
process; the sources are header-only datasets, as the segment stage holds them."""
from __future__ import annotations

import os
import time

import numpy as np
from pydicom.uid import CTImageStorage, generate_uid

from jobs.bench.common import make_bundle
from unet_core.io.dicom.rtstruct import build_rtstruct, rtstruct_bytes
from unet_core.io.dicom.seg import SegIdentity
from unet_core.io.dicom.series import SourceFrames
from unet_core.synthetic import SeriesSpec, new_dataset, series_geometry_of

SIZE, SLICES = 512, 300
LABELS = ["background", "body", "lung", "liver", "bone", "kidney"]
BODY, LUNG, LIVER, BONE, KIDNEY = 1, 2, 3, 4, 5
SPEC = SeriesSpec(rows=SIZE, columns=SIZE, n_slices=SLICES, pixel_spacing=(0.78125, 0.78125), slice_step=1.5)


def header_sources(spec: SeriesSpec = SPEC) -> SourceFrames:
    """Header-only CT datasets of a series (what the segment stage keeps after decoding)."""
    row, col, positions = series_geometry_of(spec)
    study, series = generate_uid(), generate_uid()
    frame_of_reference = generate_uid()
    datasets = []
    for n, position in enumerate(positions, start=1):
        ds = new_dataset(CTImageStorage, study, series)
        ds.FrameOfReferenceUID = frame_of_reference
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "CT", 1, n
        ds.PatientName, ds.PatientID, ds.StudyDate = "BENCH^RTSTRUCT", "BENCH", "20260101"
        ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in (*row, *col)]
        ds.PixelSpacing = [f"{v:.6f}" for v in spec.pixel_spacing]
        ds.Rows, ds.Columns = spec.rows, spec.columns
        datasets.append(ds)
    return SourceFrames(datasets, [(k, 0) for k in range(len(datasets))])


def anatomy_labels(size: int = SIZE, slices: int = SLICES, seed: int = 0) -> np.ndarray:
    """uint8 (i, j, k) labels of LABELS: smooth organs with wavy outlines that change along k."""
    rng = np.random.default_rng(seed)
    ii, jj = np.meshgrid(np.arange(size, dtype=np.float32), np.arange(size, dtype=np.float32), indexing="ij")
    c = size / 2
    angle = np.arctan2(jj - c, ii - c)
    out = np.zeros((size, size, slices), np.uint8)

    def ellipse(ci, cj, ai, aj, z, wobble=0.03):
        r = ((ii - ci) / ai) ** 2 + ((jj - cj) / aj) ** 2
        return r < (1 + wobble * np.sin(5 * angle + 7 * z) + wobble * np.cos(3 * angle - 5 * z)) ** 2

    for k in range(slices):
        z = k / max(slices - 1, 1)
        plane = out[:, :, k]
        plane[ellipse(c, c, 0.40 * size * (1 + 0.05 * np.sin(3 * z)), 0.28 * size, z)] = BODY
        if z < 0.55:  # lungs, with vessels left as body inside them
            for side in (-1, 1):
                lung = ellipse(c + side * 0.15 * size, c - 0.02 * size, 0.11 * size * (1 - z), 0.17 * size * (1 - 0.5 * z), z)
                plane[lung] = LUNG
                vessels = rng.integers(0, size, (2, 15))
                keep = lung[vessels[0], vessels[1]]
                plane[vessels[0][keep], vessels[1][keep]] = BODY
        if 0.4 < z < 0.75:
            plane[ellipse(c - 0.14 * size, c + 0.02 * size, 0.12 * size, 0.10 * size, z)] = LIVER
        if 0.6 < z < 0.85:
            for side in (-1, 1):
                plane[ellipse(c + side * 0.13 * size, c + 0.12 * size, 0.035 * size, 0.05 * size, z)] = KIDNEY
        bone = ellipse(c, c + 0.20 * size, 0.045 * size, 0.04 * size, z, 0.01)
        marrow = ellipse(c, c + 0.20 * size, 0.03 * size, 0.025 * size, z, 0.01)
        plane[bone & ~marrow] = BONE
        stray = rng.integers(0, size, (2, 10))  # a model's stray voxels, of any label
        plane[stray[0], stray[1]] = rng.integers(1, len(LABELS), 10)
    return out


def _predictor_rate(args, work: str) -> tuple[float, float]:
    """(slices per second of wall time, of CPU time) of the predictor."""
    from unet_core.inference import SlicePredictor

    bundle = os.path.join(work, "bundle")
    make_bundle(bundle, args.infer_size, args.infer_filters)
    predictor = SlicePredictor(bundle, batch_size=args.infer_batch)
    predictor.warm_up()
    x = np.random.default_rng(0).random((args.infer_batch * 2, args.infer_size, args.infer_size, 1)).astype(np.float16)
    predictor.predict(x[:args.infer_batch])
    t, cpu = time.perf_counter(), time.process_time()
    predictor.predict(x)
    return len(x) / (time.perf_counter() - t), len(x) / (time.process_time() - cpu)


def run(args, work: str) -> dict:
    os.makedirs(work, exist_ok=True)
    sources = header_sources()
    labels = anatomy_labels()
    ident = SegIdentity("bench", "0" * 16, "bench")
    t, cpu = time.perf_counter(), time.process_time()
    rt = build_rtstruct(labels, sources, LABELS, {}, ident, "bench-volume", "fp")
    built, built_cpu = time.perf_counter() - t, time.process_time() - cpu
    t, cpu = time.perf_counter(), time.process_time()
    data = rtstruct_bytes(rt.dataset)
    encoded, encoded_cpu = time.perf_counter() - t, time.process_time() - cpu
    points = sum(int(c.NumberOfContourPoints) for r in rt.dataset.ROIContourSequence for c in r.ContourSequence)
    write, write_cpu = built + encoded, built_cpu + encoded_cpu
    rate, rate_cpu = _predictor_rate(args, work)
    model, model_cpu = SLICES / rate, SLICES / rate_cpu
    out = {"shape": [SIZE, SIZE, SLICES], "labels": len(LABELS) - 1, "contours": rt.n_contours, "points": points,
           "bytes": len(data), "build_s": built, "encode_s": encoded, "write_s": write, "write_cpu_s": write_cpu,
           "ms_per_slice": 1000 * write / SLICES, "predictor_slices_per_s": rate, "predictor_s": model,
           "predictor_cpu_s": model_cpu, "write_over_predictor": write / model,
           "write_over_predictor_cpu": write_cpu / model_cpu}
    print(f"rtstruct ({SIZE}x{SIZE}x{SLICES}, {len(LABELS) - 1} labels; the writer on one core, in process)")
    print(f"  contours {rt.n_contours:,}, points {points:,}, file {len(data) / 2**20:.1f} MiB")
    print(f"  build {built:.1f} s + encode {encoded:.1f} s = {write:.1f} s wall ({out['ms_per_slice']:.0f} ms per slice), "
          f"{write_cpu:.1f} s CPU")
    print(f"  predictor ({args.infer_size}x{args.infer_size}, {args.infer_filters} base filters, batch {args.infer_batch}): "
          f"{rate:.1f} slices/s -> {model:.1f} s wall, {model_cpu:.1f} s CPU for {SLICES} slices")
    print(f"  RTSTRUCT / predictor: {write / model:.2f} (wall), {write_cpu / model_cpu:.2f} (CPU)")
    return out
