"""`unet bench segment`: the bulk segmentation pipeline against its own stages and a naive loop.

On one archive of DICOM CT series (written here) and one model bundle:
  end-to-end      `unet segment` (Ray Data) after Ray has started: listing, header scan, predictor
                  start-up (overlapping the scan), then the streaming pipeline
  stages alone    scan, decode, model and write, each by itself on the same data, one after the
                  other; the model stage runs in a fresh process as in a predictor actor (import
                  TensorFlow, load and trace the model, then predict the in-memory inputs)
  naive loop      the seed's way: one file at a time, one `model.predict` per slice, then write
  recipes         in one process, the comparison a user makes (RecipeCase): 512 x 512 CT at 0.7 mm,
                  the seed recipe at its default input (256) against the native recipe at its
                  default patch (256 at 0.8 mm: 3 x 3 tiles a slice), one network of the default
                  size, through prepare_volume -> SlicePredictor -> finish_volume -> NIfTI:
                  source slices/s, the ratio, tiles a slice, how full the batches were, and the
                  wall and CPU seconds of each step (`--seg-recipes-only` runs this alone)
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
from dataclasses import asdict, dataclass, replace

import numpy as np

from jobs import segment
from jobs.bench.common import RayMemorySampler, make_bundle, write_ct_archive
from jobs.predictors import no_predictor_left
from jobs.runtime import init_ray
from unet_core.bundle import load_bundle, read_info
from unet_core.inference import (
    PostProcess,
    SlicePredictor,
    StageSeconds,
    finish_volume,
    prepare_volume,
    sliding_plan,
)
from unet_core.io import mask_to_nifti_bytes, read_volume, storage
from unet_core.io.dicom.grouping import group_series
from unet_core.io.dicom.header import scan_header
from unet_core.io.dicom.parse import HEADER_PREFIX_BYTES
from unet_core.io.dicom.seg import SegIdentity, build_seg, seg_bytes, software_version
from unet_core.io.dicom.series import read_series_with_sources
from unet_core.io.orientation import canonical_grid, from_canonical
from unet_core.preprocessing import probabilities_to_grid, probabilities_to_labels
from unet_core.segmentation.sizing import local_cpus
from unet_core.segmentation.summary import RunSummary
from unet_core.synthetic import Phantom, phantom_volume
from unet_core.volume import Volume


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


@dataclass(frozen=True)
class RecipeCase:
    """The comparison a user makes: CT slices as scanners write them (512 x 512 at 0.7 mm), the seed
    recipe at its default input (each slice resized to 256) against the native recipe at its
    default patch (256 x 256 tiles at the target spacing, 50 % overlap), one network of the default
    size (64 base filters, depth 4) with random weights (speed does not depend on them)."""

    rows: int = 512  # source slice pixels (square)
    spacing: float = 0.7  # source in-plane mm
    target_spacing: float = 0.8  # the native plan's (the training median of such data)
    size: int = 256  # seed input = native patch
    filters: int = 64
    volumes: int = 2  # separate predict calls, as the job's volume tasks make them
    slices: int = 16  # per volume: a multiple of the batch, so that the seed's batches are full too
    batch: int = 16
    precision: str = "float32"
    tta: bool = False  # also native + --tta flip (4x the native's model rows)


def _native_bundle(seed_bundle: str, path: str, target_spacing: float) -> str:
    """The seed bundle's model file (the same network and weights) with a native-recipe plan:
    tiles of the seed's input size at `target_spacing` mm."""
    info = read_info(seed_bundle)
    info.preprocess = replace(info.preprocess, recipe="native", target_spacing=target_spacing)
    storage.write_bytes(storage.join(path, "model.keras"), storage.read_bytes(storage.join(seed_bundle, "model.keras")))
    storage.write_bytes(storage.join(path, "bundle.json"), info.to_json().encode())
    return path


HOST_STEPS = ("preprocess", "stitch", "resample_back", "labels")
STEPS = ("preprocess", "model", "stitch", "resample_back", "labels", "write")


def _recipe_volumes(case: RecipeCase) -> list[Volume]:
    """`case.volumes` phantom CTs of (rows, rows, slices) at case.spacing, 2.5 mm slices."""
    out = []
    for k in range(case.volumes):
        shape = (case.rows, case.rows, case.slices)
        affine = np.diag([case.spacing, case.spacing, 2.5, 1.0])
        affine[:3, 3] = [-(case.rows - 1) * case.spacing / 2, -(case.rows - 1) * case.spacing / 2,
                         -40.0 - (case.slices - 1) * 2.5 / 2]  # through the phantom's organ
        hu, _ = phantom_volume(Phantom.random(k), affine, shape, seed=k)
        out.append(Volume(hu, affine, f"recipe-{k}", modality="CT"))
    return out


def compare_recipes(case: RecipeCase, work: str) -> dict:
    """Seed and native side by side in one process, on the same volumes and network, through the
    segment job's code path: prepare_volume -> SlicePredictor.predict -> finish_volume -> the NIfTI
    mask written. Per variant: wall and CPU seconds of each step, source slices/s, model rows per
    slice, how full the predictor's batches were; the ratios to the seed."""

    bundle = os.path.join(work, "seed")
    make_bundle(bundle, case.size, case.filters)
    native = _native_bundle(bundle, os.path.join(work, "native"), case.target_spacing)
    volumes = _recipe_volumes(case)
    variants = [("seed", bundle, False), ("native", native, False)] + ([("native + TTA", native, True)] if case.tta else [])
    n_slices = sum(v.shape[2] for v in volumes)
    load = os.getloadavg()
    out: dict = {"case": asdict(case), "slices": n_slices}
    for label, uri, tta in variants:
        predictor = SlicePredictor(uri, batch_size=case.batch, precision=case.precision)
        predictor.warm_up()
        pre = predictor.info.preprocess
        wall, cpu = StageSeconds(cpu=StageSeconds()), {"model": 0.0, "write": 0.0}
        extra = {"model": 0.0, "write": 0.0}
        for v in volumes:
            x = prepare_volume(v, pre, tta=tta, seconds=wall)
            t, c = time.perf_counter(), time.process_time()
            prob = predictor.predict(x)
            extra["model"] += time.perf_counter() - t
            cpu["model"] += time.process_time() - c
            labels = finish_volume(prob, v, predictor.info.threshold, PostProcess(), preprocess=pre, tta=tta,
                                   seconds=wall)
            t, c = time.perf_counter(), time.process_time()
            storage.write_bytes(os.path.join(work, f"{label}-{v.volume_id}.nii.gz"), mask_to_nifti_bytes(labels, v))
            extra["write"] += time.perf_counter() - t
            cpu["write"] += time.process_time() - c
        wall_s = {**{k: getattr(wall, k) for k in HOST_STEPS}, **extra}
        cpu_s = {**{k: getattr(wall.cpu, k) for k in HOST_STEPS}, **cpu}
        plan = sliding_plan(volumes[0], pre, tta)
        out[label] = {
            "wall_s": wall_s, "cpu_s": cpu_s, "rows": predictor.rows,
            "rows_per_slice": plan.rows_per_slice,
            "tiles_per_slice": plan.layout.tiles_per_slice if plan.layout else 1,
            "model_grid": list(plan.target),
            "batch_fill": predictor.rows / max(1, predictor.batches * case.batch),
            "slices_per_s": n_slices / sum(wall_s.values()),
            "slices_per_cpu_s": n_slices / sum(cpu_s.values()),
            "model_ms_per_row": 1e3 * wall_s["model"] / predictor.rows,
            "host_ms_per_slice": 1e3 * sum(wall_s[k] for k in STEPS if k != "model") / n_slices,
            "host_cpu_ms_per_slice": 1e3 * sum(cpu_s[k] for k in STEPS if k != "model") / n_slices,
        }
        del predictor
    for label, _, _ in variants:
        r = out[label]
        r["ratio_to_seed"] = r["slices_per_s"] / out["seed"]["slices_per_s"]
        r["cpu_ratio_to_seed"] = r["slices_per_cpu_s"] / out["seed"]["slices_per_cpu_s"]
        r["model_only_ratio_to_seed"] = (out["seed"]["wall_s"]["model"] / r["wall_s"]["model"])
    out["load_average"] = [load, os.getloadavg()]
    return out


def print_recipes(r: dict) -> None:
    c = r["case"]
    print(f"  recipes side by side, one process (prepare_volume -> predictor -> finish_volume -> NIfTI): "
          f"{c['volumes']} volumes x {c['slices']} slices of {c['rows']} x {c['rows']} at {c['spacing']} mm "
          f"({r['slices']} source slices); one network of {c['filters']} base filters (depth 4), batch {c['batch']}, "
          f"{c['precision']}; seed input {c['size']}, native patch {c['size']} at {c['target_spacing']} mm")
    print(f"    load average {r['load_average'][0][0]:.1f} at the start, {r['load_average'][1][0]:.1f} at the end")
    for label, v in r.items():
        if not (isinstance(v, dict) and "wall_s" in v):
            continue
        w, cpu = v["wall_s"], v["cpu_s"]
        print(f"    {label:<13}{v['slices_per_s']:7.2f} source slices/s {v['ratio_to_seed']:5.2f}x the seed "
              f"(CPU time: {v['cpu_ratio_to_seed']:.2f}x; model alone {v['model_only_ratio_to_seed']:.2f}x)  "
              f"{v['tiles_per_slice']} tile(s) a slice on a {v['model_grid'][0]} x {v['model_grid'][1]} grid, "
              f"{v['rows_per_slice']} model rows a slice, batches {v['batch_fill']:.0%} full")
        print("      wall s  " + ", ".join(f"{k} {w[k]:.2f}" for k in STEPS)
              + f"  | model {v['model_ms_per_row']:.0f} ms a row; the rest {v['host_ms_per_slice']:.1f} ms a slice "
              f"({v['host_cpu_ms_per_slice']:.1f} CPU ms)")
        print("      CPU s   " + ", ".join(f"{k} {cpu[k]:.2f}" for k in STEPS))


def case_from_args(args) -> RecipeCase:
    return RecipeCase(filters=args.recipe_filters, slices=args.recipe_slices, batch=args.recipe_batch,
                      tta=args.recipe_tta)


STAGES = ("scan_s", "decode_s", "model_s", "write_s")


def _efficiency(e2e: dict, alone: dict) -> float:
    """The stages one after the other, each alone, against the whole job (after Ray has started)."""
    return sum(alone[k] for k in STAGES) / e2e["total_seconds"]


def run(args, work: str) -> dict:
    if args.seg_recipes_only:  # no archive, no Ray: the recipe comparison alone
        recipes = compare_recipes(case_from_args(args), os.path.join(work, "recipes"))
        print("segment")
        print_recipes(recipes)
        return {"recipes": recipes}
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
    recipes = compare_recipes(case_from_args(args), os.path.join(work, "recipes"))

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
    print_recipes(recipes)
    return out
