"""`unet bench segment`: the bulk segmentation pipeline against its own stages and a naive loop.

On one archive of DICOM CT series (written here) and one model bundle:
  end-to-end      `unet segment` (Ray Data) after Ray has started: listing, header scan, predictor
                  start-up (overlapping the scan), then the streaming pipeline
  stages alone    scan, decode, model and write, each by itself on the same data, one after the
                  other; the model stage runs in a fresh process as in a predictor actor (import
                  TensorFlow, load and trace the model, then predict the in-memory inputs)
  naive loop      the seed's way: one file at a time, one `model.predict` per slice, then write
  recipes         in one process, the same volumes and the same network: the seed recipe (each
                  slice resized to the input size) against the native recipe (sliding-window
                  tiles of that size at the target spacing, Gaussian stitching), with and without
                  --tta flip: source slices/s through prepare -> model -> finish, and the ratios
It prints orchestration efficiency = (sum of the stage times alone) / (end-to-end time) for the
archive and for one 4x larger, the speed-up over the naive loop, and the peak memory summed over
all Ray processes for both archives.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, replace

import numpy as np

from jobs import segment
from jobs.bench.common import RayMemorySampler, make_bundle, write_ct_archive
from jobs.predictors import no_predictor_left
from jobs.runtime import init_ray
from unet_core.bundle import load_bundle, read_info
from unet_core.inference import PostProcess, SlicePredictor, finish_volume, prepare_volume, sliding_plan
from unet_core.io import mask_to_nifti_bytes, read_volume, storage
from unet_core.io.dicom.grouping import group_series
from unet_core.io.dicom.header import scan_header
from unet_core.io.dicom.parse import HEADER_PREFIX_BYTES
from unet_core.io.dicom.seg import SegIdentity, build_seg, seg_bytes, software_version
from unet_core.io.dicom.series import read_series_with_sources
from unet_core.io.orientation import canonical_grid, from_canonical
from unet_core.preprocessing import probabilities_to_grid, probabilities_to_labels
from unet_core.recipe.resample import in_plane_spacing
from unet_core.segmentation.sizing import local_cpus
from unet_core.segmentation.summary import RunSummary


def _model_stage(bundle: str, inputs: str, outputs: str) -> None:
    """The model stage alone, in a fresh process as in a predictor actor: import TensorFlow, load
    and trace the model, then predict every volume's in-memory input. Prints its times as JSON."""
    with np.load(inputs) as f:  # the in-memory batches (reading them is not timed)
        xs = [f[k] for k in sorted(f.files)]
    t = time.perf_counter()

    predictor = SlicePredictor(bundle, batch_size=16)
    predictor.warm_up()
    start = time.perf_counter() - t
    probs = [predictor.predict(x) for x in xs]
    total = time.perf_counter() - t
    np.savez(outputs, *probs)
    print(json.dumps({"model_s": total, "model_start_s": start}))


def _stages_alone(archive: str, bundle: str, scratch: str) -> dict:
    """Scan, decode, model and write, each by itself on one machine, one after the other."""


    os.makedirs(scratch, exist_ok=True)
    info = read_info(bundle)
    t = time.perf_counter()
    headers = []
    for e in storage.list_files(archive):
        with open(e.uri, "rb") as f:
            h = scan_header(f.read(HEADER_PREFIX_BYTES), e.uri, e.size)
        headers.append(h if h is not None else scan_header(open(e.uri, "rb").read(), e.uri))
    groups, _ = group_series(headers)
    scan = time.perf_counter() - t
    t = time.perf_counter()
    volumes = []
    sources = []
    for g in groups:
        v, src = read_series_with_sources(g, [open(u, "rb").read() for u in g.uris])
        volumes.append((v, prepare_volume(v, info.preprocess)))
        sources.append(src)
    decode = time.perf_counter() - t
    inputs, outputs = os.path.join(scratch, "inputs.npz"), os.path.join(scratch, "probs.npz")
    np.savez(inputs, **{f"v{k:06d}": x for k, (_, x) in enumerate(volumes)})
    run = subprocess.run([sys.executable, "-c", "import sys; from jobs.bench.segment import _model_stage; "
                          "_model_stage(*sys.argv[1:])", bundle, inputs, outputs],
                         check=True, capture_output=True, text=True)
    model = json.loads(run.stdout.strip().splitlines()[-1])
    with np.load(outputs) as f:
        probs = [f[k] for k in sorted(f.files, key=lambda k: int(k.split("_")[1]))]
    t = time.perf_counter()
    all_labels = []
    for (v, _), prob in zip(volumes, probs, strict=True):
        labels = finish_volume(prob, v, info.threshold, PostProcess())
        storage.write_bytes(os.path.join(scratch, f"{v.volume_id}.nii.gz"), mask_to_nifti_bytes(labels, v))
        all_labels.append(labels)
    write = time.perf_counter() - t
    # --dicom-seg's extra output, on the same labels: build with highdicom, encode, write
    ident = SegIdentity(info.name, "0" * 16, software_version())
    t = time.perf_counter()
    for (v, _), labels, src in zip(volumes, all_labels, sources, strict=True):
        seg = build_seg(labels, src, info.label_names, info.segment_codes, ident, v.volume_id, "bench")
        storage.write_bytes(os.path.join(scratch, f"{v.volume_id}.dcm"), seg_bytes(seg))
    seg_s = time.perf_counter() - t
    return {"scan_s": scan, "decode_s": decode, **model, "write_s": write, "seg_s": seg_s, "volumes": len(volumes),
            "foreground_slices": sum(int(lab.any(axis=(0, 1)).sum()) for lab in all_labels),
            "slices": sum(v.shape[2] for v, _ in volumes)}


def _naive_loop(archive: str, bundle: str, scratch: str) -> dict:
    """The seed's way: a file at a time, `model.predict` per slice."""

    model, info = load_bundle(bundle)
    folders = sorted({os.path.dirname(e.uri) for e in storage.list_files(archive)})
    t, n = time.perf_counter(), 0
    for folder in folders:
        v = read_volume(folder)
        x = prepare_volume(v, info.preprocess)

        shape, _ = canonical_grid(v.affine, v.shape)
        labels = np.zeros(shape, np.uint8)
        for k in range(len(x)):
            prob = model.predict(x[k:k + 1].astype(np.float32), verbose=0)
            labels[:, :, k] = probabilities_to_labels(probabilities_to_grid(prob, shape[:2]), info.threshold)[0]
        storage.write_bytes(os.path.join(scratch, f"{v.volume_id}.nii.gz"),
                            mask_to_nifti_bytes(from_canonical(labels, v.affine, v.shape), v))
        n += len(x)
    seconds = time.perf_counter() - t
    return {"slices": n, "seconds": seconds, "slices_per_s": n / seconds}


def _end_to_end(archive: str, bundle: str, out: str, concurrency: int) -> dict:
    no_predictor_left()
    with RayMemorySampler() as mem:
        segment.main(["--input", archive, "--model", bundle, "--output", out, "--overwrite",
                      "--concurrency", str(concurrency), "--batch-size", "16"])
    summary = asdict(RunSummary.read(out))
    return {**summary, "peak_ray_rss_bytes": mem.peak, "peak_by_process_gib": {k: round(v / 1024**3, 2) for k, v in sorted(mem.parts.items())}}


RECIPE_SERIES = 4  # volumes of the recipe comparison (native + TTA runs 4x the native's tiles)


def _native_bundle(seed_bundle: str, path: str, target_spacing: float) -> str:
    """The seed bundle's model file (the same network and weights) with a native-recipe plan:
    tiles of the seed's input size at `target_spacing` mm."""
    info = read_info(seed_bundle)
    info.preprocess = replace(info.preprocess, recipe="native", target_spacing=target_spacing)
    storage.write_bytes(storage.join(path, "model.keras"), storage.read_bytes(storage.join(seed_bundle, "model.keras")))
    storage.write_bytes(storage.join(path, "bundle.json"), info.to_json().encode())
    return path


def _recipes(archive: str, bundle: str, scratch: str, size: int) -> dict:
    """Seed against native (at the archive's own spacing, the plan's median for such data, and at
    the spacing where a slice is one tile) and native + TTA, on the same volumes, in one process:
    prepare -> predict -> finish per volume, timed by stage."""
    folders = sorted({os.path.dirname(e.uri) for e in storage.list_files(archive)})[:RECIPE_SERIES]
    volumes = [read_volume(f) for f in folders]
    spacing = in_plane_spacing(canonical_grid(volumes[0].affine, volumes[0].shape)[1])[0]
    one_tile = spacing * canonical_grid(volumes[0].affine, volumes[0].shape)[0][0] / size
    native = _native_bundle(bundle, os.path.join(scratch, "native"), spacing)
    coarse = _native_bundle(bundle, os.path.join(scratch, "native-one-tile"), one_tile)
    variants = (("seed", bundle, False), (f"native at {spacing:.2f} mm", native, False),
                (f"native at {spacing:.2f} mm + TTA", native, True), (f"native at {one_tile:.2f} mm", coarse, False))
    n_slices = sum(v.shape[2] for v in volumes)
    out = {}
    for label, uri, tta in variants:
        predictor = SlicePredictor(uri, batch_size=16)
        predictor.warm_up()
        pre = predictor.info.preprocess
        times = {"prepare_s": 0.0, "model_s": 0.0, "finish_s": 0.0}
        rows = 0
        for v in volumes:
            t = time.perf_counter()
            x = prepare_volume(v, pre, tta=tta)
            times["prepare_s"] += time.perf_counter() - t
            t = time.perf_counter()
            prob = predictor.predict(x)
            times["model_s"] += time.perf_counter() - t
            t = time.perf_counter()
            finish_volume(prob, v, predictor.info.threshold, PostProcess(), preprocess=pre, tta=tta)
            times["finish_s"] += time.perf_counter() - t
            rows += len(x)
        total = sum(times.values())
        out[label] = {**times, "rows_per_slice": rows / n_slices, "slices_per_s": n_slices / total,
                      "rows_per_s_in_model": rows / times["model_s"],
                      "tiles_per_slice": sliding_plan(volumes[0], pre).rows_per_slice}
    base = out["seed"]["slices_per_s"]
    for r in out.values():
        r["ratio_to_seed"] = r["slices_per_s"] / base
    out["volumes"], out["slices"] = len(volumes), n_slices
    return out


def print_recipes(r: dict, size: int, filters: int) -> None:
    print(f"  recipes, same network ({filters} base filters, input / patch {size}), {r['volumes']} volumes, "
          f"{r['slices']} source slices, in one process (prepare -> model -> finish):")
    for label, v in r.items():
        if isinstance(v, dict):
            print(f"    {label:<28}{v['slices_per_s']:7.1f} source slices/s  {v['ratio_to_seed']:5.2f}x the seed's  "
                  f"({v['rows_per_slice']:.0f} model rows a slice, {v['rows_per_s_in_model']:.0f} rows/s in the model; "
                  f"prepare {v['prepare_s']:.1f}s, model {v['model_s']:.1f}s, finish {v['finish_s']:.1f}s)")


STAGES = ("scan_s", "decode_s", "model_s", "write_s")


def _efficiency(e2e: dict, alone: dict) -> float:
    """The stages one after the other, each alone, against the whole job (after Ray has started)."""
    return sum(alone[k] for k in STAGES) / e2e["total_seconds"]


def run(args, work: str) -> dict:
    series, rows, slices = args.seg_series, 256, args.seg_slices
    size, filters = args.seg_size, args.seg_filters
    small, large = os.path.join(work, "archive"), os.path.join(work, "archive4x")
    write_ct_archive(small, series, rows, slices)
    write_ct_archive(large, 4 * series, rows, slices)
    bundle = os.path.join(work, "bundle")
    make_bundle(bundle, size, filters)

    init_ray(args.address, args.num_cpus or local_cpus(os.cpu_count() or 1, predictors=1, num_gpus=0), verbose=False)

    e2e = _end_to_end(small, bundle, os.path.join(work, "out"), concurrency=1)
    e2e_large = _end_to_end(large, bundle, os.path.join(work, "out4x"), concurrency=1)
    alone = _stages_alone(small, bundle, os.path.join(work, "scratch"))
    alone_large = _stages_alone(large, bundle, os.path.join(work, "scratch4x"))
    naive = _naive_loop(small, bundle, os.path.join(work, "scratch-naive"))
    recipes = _recipes(small, bundle, os.path.join(work, "scratch-recipes"), size)

    out = {"archive": f"{series} CT series of {slices} x {rows}x{rows} slices; model {filters} base filters at {size}"}
    for tag, e, a in (("", e2e, alone), ("4x_", e2e_large, alone_large)):
        out.update({f"{tag}end_to_end_slices_per_s": e["slices_now"] / e["total_seconds"], f"{tag}end_to_end_s": e["total_seconds"],
                    f"{tag}scan_s": e["scan_seconds"], f"{tag}predictor_wait_s": e["predictor_wait_seconds"],
                    f"{tag}pipeline_s": e["pipeline_seconds"], f"{tag}pipeline_slices_per_s": e["slices_per_second"],
                    **{f"{tag}alone_{k}": v for k, v in a.items()}, f"{tag}orchestration_efficiency": _efficiency(e, a),
                    f"{tag}seg_fraction_of_volume_cost": a["seg_s"] / sum(a[k] for k in STAGES),
                    f"{tag}peak_by_process_gib": e["peak_by_process_gib"]})
    out.update({"naive_slices_per_s": naive["slices_per_s"],
                "speedup_over_naive": out["end_to_end_slices_per_s"] / naive["slices_per_s"],
                "peak_rss_gib": e2e["peak_ray_rss_bytes"] / 1024**3, "peak_rss_4x_gib": e2e_large["peak_ray_rss_bytes"] / 1024**3,
                "memory_growth_4x": e2e_large["peak_ray_rss_bytes"] / e2e["peak_ray_rss_bytes"]})
    out["recipes"] = recipes
    print(f"segment ({out['archive']}; the 4x archive has {4 * series} series):")
    for name, tag, e, a in (("archive", "", e2e, alone), ("4x archive", "4x_", e2e_large, alone_large)):
        print(f"  {name} ({a['slices']} slices)")
        print(f"    end to end, `unet segment`  {out[tag + 'end_to_end_slices_per_s']:6.1f} slices/s in {e['total_seconds']:.1f}s: "
              f"list and scan {e['scan_seconds']:.1f}s, pipeline {e['pipeline_seconds']:.1f}s (of which "
              f"{e['predictor_wait_seconds']:.1f}s waiting for the predictor to finish starting)")
        print(f"    stages alone, one by one    scan {a['scan_s']:.1f}s + decode {a['decode_s']:.1f}s + model {a['model_s']:.1f}s "
              f"(of which start {a['model_start_s']:.1f}s) + write {a['write_s']:.1f}s = {sum(a[k] for k in STAGES):.1f}s")
        print(f"    orchestration efficiency    {out[tag + 'orchestration_efficiency']:.2f}  (target >= 0.85)")
        n = a["volumes"]
        per_volume = sum(a[k] for k in STAGES) / n
        print(f"    DICOM SEG (--dicom-seg)     {a['seg_s'] / n * 1e3:.0f} ms per volume against {a['write_s'] / n * 1e3:.0f} ms for "
              f"the NIfTI mask and slices; {a['seg_s'] / n / per_volume:.1%} of a volume's cost without it "
              f"({a['foreground_slices']} of {a['slices']} slices with foreground)")
    print(f"  naive loop (seed's way)    {naive['slices_per_s']:7.1f} slices/s (model already loaded); speed-up of end to end "
          f"{out['speedup_over_naive']:.2f}x (target >= 2)")
    print(f"  peak memory, all Ray processes: {out['peak_rss_gib']:.2f} GiB; 4x archive {out['peak_rss_4x_gib']:.2f} GiB; "
          f"growth {out['memory_growth_4x']:.2f}x (target < 1.25)")
    print(f"    at the peak: {out['peak_by_process_gib']}; 4x archive {out['4x_peak_by_process_gib']}")
    print_recipes(recipes, size, filters)
    return out
