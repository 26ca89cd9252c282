"""`unet bench select`: what the selection rules cost at planning. The same archive of synthetic
hospital studies (unet_core/synthetic_studies.py: nine series per study, 136 objects), planned
without rules and with the README's chest CT rules (seven rules, a kernel pattern, one_per_study).

What `--check` holds to its target (<= 1.1, jobs/bench/common.py): the planning itself (listing,
header scan, grouping, rules: the segment run's own stages) on the serial executor in this
process, measured in CPU seconds of this process, PAIRS times per side in alternating order
(without-with, with-without, ...) after one unmeasured run of each, each on a fresh output; the
ratio of the two sides' medians. Why not the wall time of `unet segment --plan-only` processes, as
before: on a shared 2-CPU machine the neighbours' load and Ray's start (the same on both sides)
swung that ratio from 0.56x to 1.22x between two runs (docs/benchmarks.md), more than the rules
cost. CPU seconds do not count the time a loaded machine keeps the process waiting.

Without `--quick`, the end-to-end figure is printed too: `unet segment --plan-only` of each side,
each a separate process on a fresh output (order without, with, with, without; the faster of each
side's two counts), then each re-planned with nothing changed.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import yaml

from jobs.bench.common import TARGETS, Check, make_bundle
from unet_core.bundle import BundleInfo
from unet_core.config import PreprocessConfig
from unet_core.segmentation.executor import SerialExecutor
from unet_core.segmentation.run import SegmentRun, open_output
from unet_core.segmentation.selection import SelectionRules
from unet_core.segmentation.settings import SegmentSettings
from unet_core.segmentation.store import OutputStore
from unet_core.synthetic_studies import write_studies

SIZE = 32
OBJECTS_PER_STUDY = 136  # scout 1, thin 32, thick 8, lung 32, contrast 32, coronal 13, sagittal 13, mip 4, dose 1
CHEST = {"modality": ["CT"], "image_type_includes": ["ORIGINAL"], "image_type_excludes": ["LOCALIZER", "DERIVED"],
         "orientation": "axial", "slice_thickness_mm": [0.5, 3.0], "convolution_kernel": "^B[1-4]", "contrast": "no",
         "one_per_study": "thinnest"}
_PLANNING = re.compile(r"planning: ([\d,]+) objects listed .* in (\d+)s")
PAIRS = 5  # measured runs per side (after one unmeasured run of each)


@dataclass(frozen=True)
class Planning:
    """One in-process planning of the archive: CPU and wall seconds, volumes it leaves to segment."""

    cpu_s: float
    wall_s: float
    todo: int


def _write(args: tuple[str, int, int]) -> int:
    root, first, count = args
    for p in range(first, first + count):
        write_studies(os.path.join(root, f"batch{p:05d}"), n_patients=1, studies_per_patient=1, size=SIZE, seed=p)
    return count


def write_archive(root: str, studies: int) -> None:
    step = 20
    jobs = [(root, a, min(step, studies - a)) for a in range(0, studies, step)]
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        list(pool.map(_write, jobs))


def plan_only(archive: str, bundle: str, out: str, select: str | None) -> dict:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, "-m", "jobs.cli", "segment", "--input", archive, "--model", bundle, "--output", out,
           "--plan-only", *(["--select", select] if select else [])]
    t = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if done.returncode != 0:
        raise RuntimeError(f"unet segment --plan-only exited {done.returncode}:\n{done.stderr[-3000:]}")
    m = _PLANNING.search(done.stderr)
    return {"wall_s": wall, "planning_s": int(m.group(2)) if m else None, "printed": done.stdout}


def plan_in_process(archive: str, parent: str, rules: dict | None) -> Planning:
    """Plan `archive` into a fresh output as `unet segment --plan-only` does (open, list, scan,
    group, choose), on the serial executor in this process: no Ray, no model (none is loaded to plan).
    The output is a new folder made under `parent` for this run, removed after it: nothing the
    bench did not make itself is ever deleted, whatever --workdir holds."""
    os.makedirs(parent, exist_ok=True)
    out = tempfile.mkdtemp(prefix="plan-", dir=parent)
    try:
        return _plan(archive, out, rules)
    finally:
        shutil.rmtree(out, ignore_errors=True)  # the folder mkdtemp made above, and only it


def _plan(archive: str, out: str, rules: dict | None) -> Planning:
    store = OutputStore(out)
    cpu, wall = time.process_time(), time.perf_counter()
    opened = open_output(store, (archive,), False)
    run = SegmentRun(store, SerialExecutor(predict=None))
    units, layout = run.layout((archive,), opened.layout, False)
    settings = SegmentSettings(
        output=out, bundle_info=BundleInfo(PreprocessConfig(input_size=SIZE)), model_name="bench",
        model_identity="bench", threshold=0.5, modality="CT", partitions=layout.partitions, buckets=layout.buckets,
        inputs=tuple(layout.inputs), selection=json.dumps(SelectionRules.from_dict(rules).to_dict()))
    planned = run.plan(units, settings, layout)
    return Planning(time.process_time() - cpu, time.perf_counter() - wall, planned.todo)


def paired(archive: str, work: str, rules: dict, pairs: int = PAIRS) -> dict[str, list[Planning]]:
    """`pairs` plannings per side, alternating which side goes first, after one unmeasured run of
    each (imports, first allocations): a drift of the machine over the run falls on both sides."""
    runs: dict[str, list[Planning]] = {"without": [], "with": []}
    order = [("without", None), ("with", rules)]
    for _, r in order:
        plan_in_process(archive, work, r)
    for i in range(pairs):
        for name, r in order if i % 2 == 0 else order[::-1]:
            runs[name].append(plan_in_process(archive, work, r))
    return runs


def _median(runs: list[Planning], key: str) -> float:
    return statistics.median(getattr(p, key) for p in runs)


def _warm(root: str) -> None:
    for folder, _, names in os.walk(root):
        for name in names:
            with open(os.path.join(folder, name), "rb") as f:
                f.read()


def run(args, work: str) -> dict:
    os.makedirs(work, exist_ok=True)
    studies = max(1, args.select_objects // OBJECTS_PER_STUDY)
    archive = os.path.join(work, f"archive{studies}")
    t = time.perf_counter()
    if not os.path.isdir(archive):
        write_archive(archive, studies)
    written = time.perf_counter() - t
    result: dict = {"studies": studies, "objects": studies * OBJECTS_PER_STUDY, "write_s": written}
    _warm(archive)  # both sides read from the page cache: the first run would otherwise pay for both
    inproc = paired(archive, work, CHEST)
    w_cpu, r_cpu = _median(inproc["without"], "cpu_s"), _median(inproc["with"], "cpu_s")
    ratio = r_cpu / w_cpu if w_cpu else float("nan")
    pair_ratios = [b.cpu_s / a.cpu_s for a, b in zip(inproc["without"], inproc["with"], strict=True) if a.cpu_s]
    result["in_process"] = {k: [(p.cpu_s, p.wall_s) for p in v] for k, v in inproc.items()}
    result["planning_cpu_ratio"] = ratio
    print(f"select: {result['objects']:,} objects in {studies:,} studies (nine series each); planning (listing, "
          f"header scan, grouping, rules) in this process, {PAIRS} runs per side in alternating order")
    print(f"  {'median of the runs':<28}{'without rules':>16}{'with rules':>14}{'ratio':>9}   target")
    print(f"  {'planning, CPU s':<28}{w_cpu:>16.2f}{r_cpu:>14.2f}{ratio:>8.2f}x   {TARGETS['select.planning']}")
    w_wall, r_wall = _median(inproc["without"], "wall_s"), _median(inproc["with"], "wall_s")
    print(f"  {'planning, wall s':<28}{w_wall:>16.2f}{r_wall:>14.2f}{r_wall / w_wall if w_wall else 0:>8.2f}x")
    print(f"  each pair's CPU ratio: {', '.join(f'{x:.2f}' for x in pair_ratios)}; volumes to segment: "
          f"{inproc['without'][0].todo:,} without rules, {inproc['with'][0].todo:,} with")
    result["checks"] = [Check("select.planning", ratio)]
    if args.quick:
        return result
    bundle = os.path.join(work, "bundle")
    make_bundle(bundle, SIZE, 8)  # only the end-to-end runs load TensorFlow (to read the bundle)
    rules = os.path.join(work, "chest.yaml")
    with open(rules, "w") as f:
        yaml.safe_dump(CHEST, f)
    runs: dict = {"without": [], "with": []}
    # Fresh outputs in the order without, with, with, without; then a re-plan of each (nothing
    # changed). The best of each side's two first runs counts.
    for name in ("without", "with", "with", "without"):
        out = os.path.join(work, f"out-{name}-{len(runs[name])}")
        subprocess.run(["rm", "-rf", out], check=True)
        runs[name].append((out, plan_only(archive, bundle, out, rules if name == "with" else None)))
    for name in ("without", "with"):
        out, first = min(runs[name], key=lambda r: r[1]["wall_s"])
        result[name] = {"first": first, "firsts": [r[1]["wall_s"] for r in runs[name]],
                        "again": plan_only(archive, bundle, out, rules if name == "with" else None)}
    w, r = result["without"], result["with"]
    print("  end to end: `unet segment --plan-only`, each run a separate process (wall time: not checked)")
    for run_name in ("first", "again"):
        for key, label in (("planning_s", "planning, s"), ("wall_s", "whole process, s")):
            a, b = w[run_name][key], r[run_name][key]
            ratio = b / a if a else float("nan")
            result[f"{run_name}_{key}_ratio"] = ratio
            print(f"  {run_name + ': ' + label:<28}{a or 0:>16.1f}{b or 0:>14.1f}{ratio:>8.2f}x")
    print("  with rules: " + r["first"]["printed"].strip().splitlines()[0])
    return result
