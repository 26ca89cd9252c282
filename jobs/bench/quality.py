"""`unet bench quality`: the seed recipe against the native recipe on a task where resolution matters.

The task (unet_core/synthetic_quality.py): synthetic CT with thin cortical shells and small
vessels, training cases at mixed spacings (0.6-1.0 mm), one held-out case finer (0.6 mm) than the
training median. For each recipe, with the same network and the same training budget, through
the CLI's own functions: `unet prepare --dataset` -> `unet train` -> `unet segment` on the held-out
case, with and without `--tta flip`. It prints per recipe:
  ceiling        Dice / HD95 of a perfect model at the recipe's resolution (the truth through the
                 recipe's grid and back, unet_core/recipe/ceiling.py): as hard labels, and as
                 covered fractions (a trained model can beat the first: it is not a bound)
  held-out       Dice / HD95 of the trained model, over --quality-seeds training seeds (mean, spread)
  train          training slices/s (the bundle's summary)
  segment        source slices/s of `unet segment` on the held-out case, without and with --tta flip:
                 end to end (the job's start-up included) and in the stage (the predictor on the
                 volume in process, after a warm-up)
`unet segment` runs with `--largest-component auto`: it follows the decision `unet train` took on
the validation cases, which is printed per seed. Foreground: cortical bone and vessels together
(a binary task).

The default (DEFAULT, DEFAULT_SIZE, ...) is the size docs/benchmarks.md reports: a 96 mm field,
8 cases of 24 slices, 64 x 64 patches, 16 base filters, batch normalisation, no convolution between
the last decoder block and the head, 50 epochs; the native recipe over 3 seeds, the
seed recipe over 1 (bounded by its ceiling whatever the seed); it trains both recipes to
convergence on 2 CPU cores. `--quality-quick` is a small size for a test (a 64 mm field, 2 epochs).
One recipe, chosen seeds or another normalisation run alone with `--quality-recipes native`,
`--quality-seed-list 2`, `--quality-norm {none,batch,instance}` and `--quality-head-conv-filters N`
(each run is the default's own).
"""
from __future__ import annotations

import glob
import json
import os
import time

import numpy as np

from jobs import prepare, segment, train
from unet_core.config import PreprocessConfig, from_dict
from unet_core.errors import ConfigError
from unet_core.evaluation import dice, hausdorff95
from unet_core.io import read_volume
from unet_core.io.orientation import to_canonical
from unet_core.recipe.ceiling import ceiling_labels, coverage_ceiling_labels
from unet_core.synthetic_quality import QualityTask, write_quality_task

QUICK = QualityTask(train_spacings=(0.7, 0.8, 0.9, 1.0, 0.75), heldout_spacing=0.6, fov=64.0, n_slices=4)
# The default: sized to train both recipes to convergence on 2 shared CPU cores (docs/benchmarks.md).
DEFAULT = QualityTask(fov=96.0, n_slices=24)
DEFAULT_SIZE, DEFAULT_EPOCHS = 64, 50
# Training seeds per recipe unless --quality-seeds: the native recipe's spread is a claim of the
# benchmark; the seed recipe is bounded by its ceiling whatever the seed.
DEFAULT_SEEDS = {"seed": 1, "native": 3}
RECIPES = ("seed", "native")
# The one network both recipes train, beside --quality-filters: the seed's U-Net with batch
# normalisation and without the seed's 2-filter 3x3 ReLU convolution before the 1x1 head.
# Batch normalisation: without it the seed recipe's whole slices (2% foreground) drove the network
# dead in its first epoch (every output 0.0, validation Dice 0.0002 for 50 epochs). The head
# convolution: with it, one native seed in three (seed 2) learnt both channels as background
# detectors with negative head weights, so a foreground pixel (both channels 0) could score at most
# sigmoid(head bias) = 0.65 and thin structures fell under 0.5 (held-out Dice 0.7984 against
# 0.88-0.89; the same with instance normalisation, 0.7980). docs/benchmarks.md has the runs.
NETWORK = ("--norm", "batch", "--head-conv-filters", "0")


def run(args, work: str) -> dict:
    task = QUICK if args.quality_quick else DEFAULT
    size = args.quality_size or (64 if args.quality_quick else DEFAULT_SIZE)
    epochs = args.quality_epochs or (2 if args.quality_quick else DEFAULT_EPOCHS)
    recipes = _recipes(args)
    seeds = {recipe: _seeds(args, recipe) for recipe in recipes}
    network = network_flags(args.quality_norm, args.quality_head_conv_filters)
    os.makedirs(work, exist_ok=True)
    data = os.path.join(work, "task")
    heldout = write_quality_task(data, task)
    truth = read_volume(heldout["heldout_label"])
    results: dict = {"task": {"train_spacings": list(task.train_spacings), "heldout_spacing": task.heldout_spacing,
                              "fov_mm": task.fov, "slices_per_case": task.n_slices, "heldout_shape": list(truth.shape)},
                     "budget": {"size": size, "epochs": epochs, "base_filters": args.quality_filters, "network": list(network),
                                "batch": args.quality_batch, "seeds": seeds}}
    for recipe in recipes:
        results[recipe] = _recipe(args, recipe, data, heldout, truth, size, epochs, seeds[recipe], network,
                                  os.path.join(work, recipe))
    _print(results)
    return results


def network_flags(norm: str | None, head_conv_filters: int | None = None) -> tuple[str, ...]:
    """`unet train`'s network flags for the bench: NETWORK, with `--norm` / `--head-conv-filters`
    replaced when asked."""
    flags = dict(zip(NETWORK[::2], NETWORK[1::2], strict=True))
    if norm is not None:
        flags["--norm"] = norm
    if head_conv_filters is not None:
        flags["--head-conv-filters"] = str(head_conv_filters)
    return tuple(x for pair in flags.items() for x in pair)


def _recipes(args) -> list[str]:
    asked = [r.strip() for r in (args.quality_recipes or ",".join(RECIPES)).split(",") if r.strip()]
    unknown = sorted(set(asked) - set(RECIPES))
    if unknown or not asked:
        raise ConfigError(f"--quality-recipes {args.quality_recipes!r}: give some of {', '.join(RECIPES)}")
    return [r for r in RECIPES if r in asked]


def _seeds(args, recipe: str) -> list[int]:
    if args.quality_seed_list:
        try:
            return [int(s) for s in args.quality_seed_list.split(",") if s.strip()]
        except ValueError:
            raise ConfigError(f"--quality-seed-list {args.quality_seed_list!r}: give integers, e.g. 0,2") from None
    return list(range(args.quality_seeds or (1 if args.quality_quick else DEFAULT_SEEDS[recipe])))


def _recipe(args, recipe: str, data: str, heldout: dict, truth, size: int, epochs: int, seeds: list[int],
            network: tuple[str, ...], work: str) -> dict:
    prepared = os.path.join(work, "prepared")
    rc = prepare.main(["--dataset", data, "--output", prepared, "--overwrite", "--recipe", recipe, "--input-size",
                       str(size), "--foreground-labels", "1,2", "--val-fraction", "0.2", "--seed", "0", *_ray(args)])
    if rc != 0:
        return {"error": f"unet prepare exited {rc}"}
    pre = from_dict(PreprocessConfig, prepare.read_prepared(prepared)["preprocess"])
    out: dict = {"plan": {"target_spacing": pre.target_spacing, "normalization": pre.normalization,
                          "input_size": pre.input_size}, "ceiling": ceiling(truth, pre), "runs": []}
    for seed in seeds:
        out["runs"].append(_train_and_segment(args, prepared, heldout, truth, epochs, seed, network,
                                              os.path.join(work, f"seed{seed}")))
    for key in ("dice", "dice_tta", "hd95_mm", "hd95_mm_tta"):
        values = [r[key] for r in out["runs"] if key in r]
        if values:
            out[f"{key}_mean"], out[f"{key}_spread"] = float(np.mean(values)), float(np.max(values) - np.min(values))
    return out


def ceiling(truth, pre: PreprocessConfig) -> dict:
    """Dice and HD95 (mm) of the held-out truth through the recipe's grid and back (binary): as hard
    labels (`dice`, the model reproduces its training labels) and as covered fractions
    (`coverage_dice`); unet_core/recipe/ceiling.py says why there are two."""
    labels, _ = to_canonical((truth.voxels > 0).astype(np.uint8), truth.affine)
    spacing = tuple(float(s) for s in np.linalg.norm(truth.affine[:3, :3], axis=0))
    slices = np.moveaxis(labels, 2, 0)
    best = ceiling_labels(slices, spacing[:2], pre)
    covered = coverage_ceiling_labels(slices, spacing[:2], pre)
    return {"dice": dice(best, slices), "hd95_mm": hausdorff95(best, slices, (spacing[2], *spacing[:2])),
            "coverage_dice": dice(covered, slices),
            "coverage_hd95_mm": hausdorff95(covered, slices, (spacing[2], *spacing[:2]))}


def _train_and_segment(args, prepared: str, heldout: dict, truth, epochs: int, seed: int, network: tuple[str, ...],
                       work: str) -> dict:
    bundle = os.path.join(work, "bundle")
    rc = train.main(["--data", prepared, "--output", bundle, "--workers", "1", "--cpus-per-worker", "1",
                     "--max-failures", "0",
                     "--epochs", str(epochs), "--batch-size", str(args.quality_batch), "--base-filters",
                     str(args.quality_filters), "--seed", str(seed), "--early-stopping-patience", "1000",
                     "--loss", "bce_dice", *network, *_ray(args)])
    if rc != 0:
        return {"seed": seed, "error": f"unet train exited {rc}"}
    info = json.load(open(os.path.join(bundle, "bundle.json")))
    t = info["training"]
    run: dict = {"seed": seed, "train_slices_per_s": t.get("slices_per_second"), "best_val_dice": t.get("best_val_dice"),
                 "best_epoch": t.get("best_epoch"), "largest_component": info["postprocessing"].get("largest_component")}
    n_slices = int(truth.shape[2])
    for tta in (False, True):
        name = "tta" if tta else "plain"
        output = os.path.join(work, f"segment-{name}")
        started = time.perf_counter()
        rc = segment.main(["--input", os.path.dirname(heldout["heldout_image"]), "--model", bundle,
                           "--output", output, *(["--tta", "flip"] if tta else []), *_ray(args)])
        seconds = time.perf_counter() - started
        masks = glob.glob(os.path.join(output, "masks", "*.nii.gz"))
        if rc != 0 or len(masks) != 1:
            run[f"segment_{name}_error"] = f"unet segment{' --tta flip' if tta else ''} exited {rc}"
            continue
        run[f"segment_{name}_slices_per_s"] = n_slices / seconds
        pred = read_volume(masks[0]).voxels > 0
        suffix = "_tta" if tta else ""
        run[f"dice{suffix}"] = dice(pred, truth.voxels > 0)
        run[f"hd95_mm{suffix}"] = hausdorff95(pred, truth.voxels > 0, truth.spacing)
    run.update(_inference_speed(bundle, heldout["heldout_image"]))
    return run


def _inference_speed(bundle: str, image: str) -> dict:
    """Source slices/s of the segment stage's own work on the held-out volume (model input, the
    predictor, stitching and resampling back), in process, without the job's start-up: the best of
    two passes, after a warm-up."""
    from unet_core.inference import PostProcess, SlicePredictor, segment_in_runs

    predictor = SlicePredictor(bundle)
    predictor.warm_up()
    volume = read_volume(image)
    out = {}
    for tta in (False, True):
        best = float("inf")
        for _ in range(2):
            started = time.perf_counter()
            segment_in_runs(volume, predictor.info.preprocess, predictor.predict, predictor.info.threshold,
                            PostProcess(), tta=tta)
            best = min(best, time.perf_counter() - started)
        out[f"infer_{'tta' if tta else 'plain'}_slices_per_s"] = volume.shape[2] / best
    return out


def _ray(args) -> list[str]:
    return ["--address", args.address] if args.address else []


def _print(results: dict) -> None:
    t = results["task"]
    print(f"\nquality task: {t['fov_mm']:g} mm field, training spacings {t['train_spacings']} mm, held-out "
          f"{t['heldout_spacing']} mm {t['heldout_shape']}; budget {results['budget']}")
    for recipe in RECIPES:
        if recipe not in results:
            continue
        r = results[recipe]
        if "error" in r:
            print(f"  {recipe:7s} {r['error']}")
            continue
        c = r["ceiling"]
        print(f"  {recipe:7s} plan {r['plan']}; ceiling Dice {c['dice']:.4f}, HD95 {c['hd95_mm']:.2f} mm "
              f"(hard labels); {c['coverage_dice']:.4f}, {c['coverage_hd95_mm']:.2f} mm (covered fractions)")
        for run in r["runs"]:
            if "error" in run:
                print(f"          seed {run['seed']}: {run['error']}")
                continue
            parts = [f"seed {run['seed']}: held-out Dice {run.get('dice', float('nan')):.4f} "
                     f"(--tta flip {run.get('dice_tta', float('nan')):.4f}), HD95 {run.get('hd95_mm', float('nan')):.2f} mm",
                     f"largest component {'kept' if run.get('largest_component') else 'not kept'}",
                     f"train {run['train_slices_per_s'] or 0:.1f} slices/s"]
            for name in ("plain", "tta"):
                flag = " --tta flip" if name == "tta" else ""
                key = f"segment_{name}_slices_per_s"
                parts.append(f"segment{flag} " + (f"{run[key]:.2f} source slices/s end to end, "
                                                  f"{run.get(f'infer_{name}_slices_per_s', float('nan')):.1f} in the stage"
                                                  if key in run else run.get(f"segment_{name}_error", "")))
            print("          " + "; ".join(parts))
        if "dice_mean" in r:
            print(f"          over {len(r['runs'])} seeds: held-out Dice mean {r['dice_mean']:.4f}, spread "
                  f"{r['dice_spread']:.4f} ({r['dice_mean'] - c['dice']:+.4f} from the ceiling); HD95 mean "
                  f"{r['hd95_mm_mean']:.2f} mm")
