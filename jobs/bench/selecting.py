"""`unet bench select`: what the selection rules cost at planning. The same archive of synthetic
hospital studies (unet_core/synthetic_studies.py: nine series per study, 136 objects), planned
by `unet segment --plan-only` without rules and with the README's chest CT rules (seven rules, a
kernel pattern, one_per_study), each a separate process on a fresh output, then each re-planned
with nothing changed. Printed: planning seconds side by side and their ratio (target <= 1.1).

`--quick` skips the re-plans. `--check` holds the first runs' planning ratio to its target
(jobs/bench/common.py); the job prints planning in whole seconds, so when either side planned in
under 10 s the whole-process ratio is checked instead (Ray's start on both sides dilutes it: it
catches rules that blow up, not a few per cent).
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import yaml

from jobs.bench.common import TARGETS, Check, make_bundle
from unet_core.synthetic_studies import write_studies

SIZE = 32
OBJECTS_PER_STUDY = 136  # scout 1, thin 32, thick 8, lung 32, contrast 32, coronal 13, sagittal 13, mip 4, dose 1
CHEST = {"modality": ["CT"], "image_type_includes": ["ORIGINAL"], "image_type_excludes": ["LOCALIZER", "DERIVED"],
         "orientation": "axial", "slice_thickness_mm": [0.5, 3.0], "convolution_kernel": "^B[1-4]", "contrast": "no",
         "one_per_study": "thinnest"}
_PLANNING = re.compile(r"planning: ([\d,]+) objects listed .* in (\d+)s")


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


def _warm(root: str) -> None:
    for folder, _, names in os.walk(root):
        for name in names:
            with open(os.path.join(folder, name), "rb") as f:
                f.read()


def run(args, work: str) -> dict:
    os.makedirs(work, exist_ok=True)
    bundle = os.path.join(work, "bundle")
    make_bundle(bundle, SIZE, 8)
    studies = max(1, args.select_objects // OBJECTS_PER_STUDY)
    archive = os.path.join(work, f"archive{studies}")
    t = time.perf_counter()
    if not os.path.isdir(archive):
        write_archive(archive, studies)
    written = time.perf_counter() - t
    rules = os.path.join(work, "chest.yaml")
    with open(rules, "w") as f:
        yaml.safe_dump(CHEST, f)
    result: dict = {"studies": studies, "objects": studies * OBJECTS_PER_STUDY, "write_s": written}
    _warm(archive)  # both sides read from the page cache: the first run would otherwise pay for both
    runs: dict = {"without": [], "with": []}
    # Fresh outputs in the order without, with, with, without; then a re-plan of each (nothing
    # changed). The best of each side's two first runs counts.
    for name in ("without", "with", "with", "without"):
        out = os.path.join(work, f"out-{name}-{len(runs[name])}")
        subprocess.run(["rm", "-rf", out], check=True)
        runs[name].append((out, plan_only(archive, bundle, out, rules if name == "with" else None)))
    for name in ("without", "with"):
        out, first = min(runs[name], key=lambda r: r[1]["wall_s"])
        result[name] = {"first": first, "firsts": [r[1]["wall_s"] for r in runs[name]]}
        if not args.quick:
            result[name]["again"] = plan_only(archive, bundle, out, rules if name == "with" else None)
    w, r = result["without"], result["with"]
    print(f"select: {result['objects']:,} objects in {studies:,} studies (nine series each), planned by "
          "`unet segment --plan-only`, each run a separate process")
    print(f"  {'run':<28}{'without rules':>16}{'with rules':>14}{'ratio':>9}   target")
    for run_name in ("first",) if args.quick else ("first", "again"):
        for key, label in (("planning_s", "planning, s"), ("wall_s", "whole process, s")):
            a, b = w[run_name][key], r[run_name][key]
            ratio = b / a if a else float("nan")
            result[f"{run_name}_{key}_ratio"] = ratio
            print(f"  {run_name + ': ' + label:<28}{a or 0:>16.1f}{b or 0:>14.1f}{ratio:>8.2f}x   "
                  f"{TARGETS['select.planning'] if key == 'planning_s' else ''}")
    print("  with rules: " + r["first"]["printed"].strip().splitlines()[0])
    whole = min(w["first"]["planning_s"] or 0, r["first"]["planning_s"] or 0) < 10
    if whole:
        print("  check: planning took under 10 s (printed in whole seconds): the whole-process ratio is checked")
    result["checks"] = [Check("select.planning", result["first_wall_s_ratio" if whole else "first_planning_s_ratio"])]
    return result
