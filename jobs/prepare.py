"""`unet prepare`: labelled cases -> Parquet shards of 2D slices, split train / val by case.

Two Ray Data passes, parallel across cases and bounded in memory. The first reads the training
cases (never the validation cases) into the dataset's fingerprint (`<output>/fingerprint.json`:
spacings, shapes, foreground intensity statistics, class fractions), from which the plan is
decided and printed. The second cuts every case into slices as the plan says (recipe "native":
normalised and resampled to the target spacing; recipe "seed": resized to --input-size and
windowed, the seed's) and streams them to Parquet (`<output>/slices/split=train|val/`). Each case
also records a small summary (`<output>/cases/<case>.json`); a case that cannot be used (grids
disagree, bad file) is reported there with its reason and the rest go on. `manifest.json` is
written last.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time

import numpy as np

from jobs.exits import Exit, run_main
from jobs.options import (
    add_limit_args,
    add_output_args,
    add_ray_args,
    apply_output_args,
    limits_from,
    parse_with_config,
)
from jobs.output import configure as configure_output
from jobs.output import log, safe, say
from jobs.progress import Polled, Progress, Timer
from jobs.runtime import init_ray
from unet_core import ownership
from unet_core.config import CT_WINDOWS, NORMALIZATIONS, RECIPES, Limits, PreprocessConfig, from_dict, to_dict
from unet_core.errors import ConfigError, InputError, ItemFailure
from unet_core.io import storage
from unet_core.io.lease import Lease
from unet_core.recipe.dataset import DatasetInfo, read_dataset
from unet_core.recipe.fingerprint import Fingerprint, samples_per_case
from unet_core.recipe.plan import PlanRequest, describe, parse_target_spacing, plan_preprocess
from unet_core.training.cases import Case, discover_cases, load_case, load_case_2d, read_manifest
from unet_core.training.shards import case_slices, image2d_rows, split_cases
from unet_core.volume import short_hash

MANIFEST = "manifest.json"
FINGERPRINT = "fingerprint.json"
FORMAT_VERSION = 1
# The recipe `unet prepare` uses when --recipe is not given. Issue #30 makes "native" the default
# once training on patches and sliding-window inference are merged; until then "seed" keeps
# prepare -> train -> segment whole.
DEFAULT_RECIPE = "native"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="unet prepare", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_argument_group("input (a manifest, or two prefixes paired by case name)")
    src.add_argument("--manifest", help="CSV with header case_id,image,mask")
    src.add_argument("--images", help="prefix of images: NIfTI files, DICOM folders (one per case) or PNG/TIFF")
    src.add_argument("--masks", help="prefix of masks: NIfTI files on the image grid, or PNG/TIFF")
    src.add_argument("--dataset", help="an nnU-Net raw / Decathlon folder: dataset.json, imagesTr/, labelsTr/ "
                     "(its labels become the bundle's label names)")
    p.add_argument("--output", required=True, help="where the shards go (local path or s3://)")
    p.add_argument("--config", help="JSON/YAML file of option values")
    pre = p.add_argument_group("preprocessing (stored in the manifest and the model bundle)")
    pre.add_argument("--recipe", choices=RECIPES, default=DEFAULT_RECIPE,
                     help="native: slices at the target spacing, CT normalised from the training foreground, "
                     "patches of --input-size (nnU-Net's 2D scheme); seed: every slice resized to --input-size and "
                     f"windowed (the seed's). Default {DEFAULT_RECIPE}")
    pre.add_argument("--target-spacing", default=None,
                     help="native recipe: in-plane mm (default: the median of the training cases), or 'source' "
                     "to keep each image's own spacing")
    pre.add_argument("--normalization", choices=NORMALIZATIONS, default=None,
                     help="default: window for the seed recipe; for native, ct_foreground on CT and zscore otherwise")
    pre.add_argument("--modality", choices=["CT", "uint8", "uint16"], default="CT")
    pre.add_argument("--window", default="abdomen", help=f"named CT window: {', '.join(CT_WINDOWS)}")
    pre.add_argument("--window-lower", type=float, default=None, help="HU; with --window-upper overrides --window")
    pre.add_argument("--window-upper", type=float, default=None)
    pre.add_argument("--input-size", type=int, default=256, help="seed: the size every slice is resized to; "
                     "native: the patch size at the target spacing")
    pre.add_argument("--context-slices", type=int, default=0, help="neighbouring slices each side as channels")
    pre.add_argument("--labels", action="store_true", help="keep multi-class labels 0..K (default: a binary mask)")
    pre.add_argument("--foreground-labels", default=None,
                     help="comma-separated mask labels that form the binary foreground (default: every non-zero label)")
    sp = p.add_argument_group("split and balance")
    sp.add_argument("--val-fraction", type=float, default=0.2)
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--empty-slice-ratio", type=float, default=None,
                    help="keep at most R empty slices per foreground slice of a case (default: keep all)")
    p.add_argument("--rows-per-shard", type=int, default=256, help="slices per Parquet file (about)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing prepared output")
    add_output_args(p)
    add_ray_args(p)
    add_limit_args(p)
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def process_case(row: dict, cfg: dict) -> list[dict]:
    """Ray Data flat_map body: one case -> its slice rows. Writes the case summary as a side
    effect (idempotent, so task retries are harmless)."""

    case = Case(row["case_id"], row["image"], row["mask"])
    pre = from_dict(PreprocessConfig, cfg["preprocess"])
    limits = from_dict(Limits, cfg["limits"])
    summary = {"case_id": case.case_id, "image": case.image, "mask": case.mask, "split": row["split"],
               "status": "ok", "error": "", "n_slices": 0, "n_foreground_slices": 0}
    rows: list[dict] = []
    try:
        if case.kind == "2d":
            pixels, bits, mask = load_case_2d(case, limits)
            rows = image2d_rows(pixels, bits, mask, case.case_id, row["split"], pre)
        else:
            image, mask = load_case(case, limits)
            summary["shape"], summary["spacing"] = list(image.shape), list(image.spacing)
            rows = list(case_slices(image, mask, case.case_id, row["split"], pre, cfg["empty_slice_ratio"],
                                    cfg["seed"], binary=not cfg["labels"],
                                    foreground_labels=tuple(cfg["foreground_labels"] or ()) or None))
    except Exception as exc:  # noqa: BLE001 - the item guard: one case's failure is its row, not the job's end
        failure = ItemFailure.of(case.case_id, exc, "preparing the case")
        summary.update(status="error", error=failure.error, error_type=failure.error_type.value)
        rows = []
    summary["n_slices"] = len(rows)
    summary["n_foreground_slices"] = sum(r["foreground"] > 0 for r in rows)
    storage.write_bytes(case_summary_uri(cfg["output"], case.case_id), json.dumps(summary).encode())
    return rows


def fingerprint_case(row: dict, cfg: dict) -> dict:
    """Ray Data map body of the first pass: one training case -> its fingerprint as a row (the
    foreground sample as float32 bytes), or its error."""
    from unet_core.recipe.fingerprint import case_fingerprint
    from unet_core.training.shards import canonical_case

    case = Case(row["case_id"], row["image"], row["mask"])
    out = {"case_id": case.case_id, "error": "", "shape": [0, 0, 0], "spacing": [0.0, 0.0, 0.0],
           "class_voxels": [0], "n_foreground": 0, "sample": b""}
    try:
        image, mask = load_case(case, from_dict(Limits, cfg["limits"]))
        vox, lab, spacing = canonical_case(image, mask, case.case_id, binary=not cfg["labels"],
                                           foreground_labels=tuple(cfg["foreground_labels"] or ()) or None)
        fp = case_fingerprint(case.case_id, vox, lab, tuple(spacing), cfg["per_case"], cfg["seed"])
        out.update(shape=list(fp.shape), spacing=list(fp.spacing), class_voxels=list(fp.class_voxels),
                   n_foreground=fp.n_foreground, sample=fp.sample.tobytes())
    except Exception as exc:  # noqa: BLE001 - the item guard: the second pass reports the case's error
        out["error"] = ItemFailure.of(case.case_id, exc, "reading the case for the fingerprint").error
    return out


def main(argv: list[str]) -> int:
    return run_main(_main, argv)


def _main(argv: list[str]) -> int:
    args = parse_with_config(build_parser(), argv)
    configure_output(args.verbose)
    apply_output_args(args)

    given = [name for name, v in (("--dataset", args.dataset), ("--manifest", args.manifest),
                                  ("--images", args.images or args.masks)) if v]
    if len(given) != 1 or (args.images or args.masks) and not (args.images and args.masks):
        raise ConfigError("give one input: --dataset, or --manifest, or both --images and --masks")
    dataset = read_dataset(storage.absolute(args.dataset)) if args.dataset else None
    request = PlanRequest(recipe=args.recipe, modality=dataset.modality if dataset else args.modality,
                          normalization=args.normalization, window=args.window, window_lower=args.window_lower,
                          window_upper=args.window_upper, input_size=args.input_size,
                          context_slices=args.context_slices, target_spacing=parse_target_spacing(args.target_spacing))
    out = storage.absolute(args.output)
    with Lease(out, "unet prepare") as lease:  # one writer per output
        if lease.took_over:
            say(f"took over the output from a run that is gone: {lease.took_over.describe(time.time())}")
        _prepare_output(out, tuple(storage.absolute(u) for u in (args.images, args.masks, args.manifest,
                                                                  args.dataset) if u), args.overwrite)
        return _prepare(args, request, dataset, out)


def _prepare(args, request: PlanRequest, dataset: DatasetInfo | None, out: str) -> int:
    if dataset is not None:
        found = dataset.cases
    else:
        found = read_manifest(args.manifest) if args.manifest else discover_cases(args.images, args.masks)
    for uri in found.unpaired_images:
        log.warning("unpaired image (no mask with its case id): %s", uri)
    for uri in found.unpaired_masks:
        log.warning("unpaired mask (no image with its case id): %s", uri)
    if not found.cases:
        raise InputError("no image/mask pairs found; check --images/--masks or the manifest")
    splits = split_cases([c.case_id for c in found.cases], args.val_fraction, args.seed)
    items = [{"case_id": c.case_id, "image": c.image, "mask": c.mask, "split": splits[c.case_id]} for c in found.cases]
    log.info("preparing %d cases (%d train, %d val) into %s", len(items),
             sum(s == "train" for s in splits.values()), sum(s == "val" for s in splits.values()), out)

    try:
        foreground = [int(v) for v in args.foreground_labels.split(",")] if args.foreground_labels else None
    except ValueError as exc:
        raise ConfigError(f"--foreground-labels must be integers separated by commas, got {args.foreground_labels!r}") from exc
    multi_class = args.labels or bool(dataset and dataset.multi_class and not foreground)
    label_names = prepared_label_names(dataset, multi_class, foreground)
    storage.probe_writable(out)  # a refused output fails before any case is read (exit 5)
    init_ray(args.address, args.num_cpus, verbose=args.verbose)
    import ray

    cfg = {"limits": to_dict(limits_from(args)), "output": out, "empty_slice_ratio": args.empty_slice_ratio,
           "seed": args.seed, "labels": multi_class, "foreground_labels": foreground}
    timer = Timer()
    fingerprint = _fingerprint(ray, [i for i in items if i["split"] == "train"], cfg, request.needs_fingerprint)
    if fingerprint is not None:
        storage.write_bytes(storage.join(out, FINGERPRINT), json.dumps(fingerprint.to_dict(), indent=1).encode())
    pre = plan_preprocess(request, fingerprint)
    for line in describe(pre, fingerprint):
        say(line)
    cfg["preprocess"] = to_dict(pre)
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    ds = ds.flat_map(process_case, fn_kwargs={"cfg": cfg})
    fs, path = storage.resolve(storage.join(out, "slices"))

    def cases_done() -> int:
        return min(len(items), sum(1 for e in storage.list_files(storage.join(out, "cases")) if e.uri.endswith(".json")))

    with Polled(Progress("prepare", len(items), "cases"), cases_done):
        ds.write_parquet(path, filesystem=fs, partition_cols=["split"], min_rows_per_file=args.rows_per_shard,
                         compression="zstd")

    summaries = [json.loads(storage.read_bytes(case_summary_uri(out, c["case_id"]))) for c in items]
    ok = [s for s in summaries if s["status"] == "ok" and s["n_slices"] > 0]
    errors = [s for s in summaries if s["status"] != "ok"]
    counts = {split: sum(s["n_slices"] for s in ok if s["split"] == split) for split in ("train", "val")}
    manifest = {
        "format_version": FORMAT_VERSION, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "preprocess": to_dict(pre), "binary": not multi_class, "foreground_labels": foreground,
        "label_names": label_names, "fingerprint": FINGERPRINT if fingerprint is not None else None,
        "val_fraction": args.val_fraction, "seed": args.seed,
        "empty_slice_ratio": args.empty_slice_ratio, "counts": counts,
        "cases": {split: sorted(s["case_id"] for s in ok if s["split"] == split) for split in ("train", "val")},
        "errors": [{"case_id": s["case_id"], "error": s["error"]} for s in errors],
        "unpaired": {"images": found.unpaired_images, "masks": found.unpaired_masks},
    }
    manifest["identity"] = hashlib.sha256(json.dumps(
        {k: manifest[k] for k in ("preprocess", "binary", "cases", "counts", "seed")}, sort_keys=True).encode()
    ).hexdigest()[:16]
    storage.write_bytes(storage.join(out, MANIFEST), json.dumps(manifest, indent=2).encode())

    print(f"prepared {len(ok)} of {len(items)} cases in {timer.seconds:.1f}s: "
          f"{counts['train']} train slices ({len(manifest['cases']['train'])} cases), "
          f"{counts['val']} val slices ({len(manifest['cases']['val'])} cases) -> {out}")
    for e in errors:
        print(safe(f"  case {e['case_id']}: {e['error']}"))
    if not counts["train"]:
        raise InputError("no training slices were produced; see the case errors above")
    return Exit.SOME_FAILED if errors else Exit.OK


def _fingerprint(ray, train_items: list[dict], cfg: dict, needed: bool) -> Fingerprint | None:
    """The first pass: the training cases' fingerprint, the samples streamed to the driver (at most
    about 10^7 float32 values in all). None when there is no 3D training case and the plan does
    not need one (the seed's 2D layout)."""
    from unet_core.recipe.fingerprint import CaseFingerprint, pool

    volumes = [i for i in train_items if Case(i["case_id"], i["image"], i["mask"]).kind != "2d"]
    if not volumes:
        if needed:
            raise InputError("the native recipe plans from the training cases' spacings and intensities, and there "
                             "is no 3D training case; use --recipe seed, or --target-spacing source with "
                             "--normalization zscore")
        return None
    fp_cfg = {**cfg, "per_case": samples_per_case(len(volumes))}
    ds = ray.data.from_items(volumes, override_num_blocks=len(volumes)).map(fingerprint_case, fn_kwargs={"cfg": fp_cfg})
    cases = []
    with Progress("fingerprint", len(volumes), "cases") as progress:
        for n, row in enumerate(ds.iter_rows(), start=1):
            progress.update(done=n, amount=n)
            if row["error"]:
                log.info("fingerprint: %s", safe(row["error"]))
                continue  # the second pass reports it with the case
            cases.append(CaseFingerprint(row["case_id"], tuple(row["shape"]), tuple(row["spacing"]),
                                         tuple(row["class_voxels"]), row["n_foreground"],
                                         np.frombuffer(row["sample"], np.float32)))
    if not cases:
        if not needed:  # the seed recipe plans without it: the second pass reports the cases' errors
            return None
        raise InputError("no training case could be read for the fingerprint; see the case errors with -v")
    return pool(cases, seed=cfg["seed"])


def prepared_label_names(dataset: DatasetInfo | None, multi_class: bool, foreground: list[int] | None) -> list[str] | None:
    """The label names the bundle will carry, from dataset.json: all of them for multi-class
    shards; for binary shards the background and the foreground's names joined by '+'. None
    without a dataset.json (unet train's --label-names or its defaults apply)."""
    if dataset is None:
        return None
    names = dataset.label_names
    if multi_class:
        return list(names)
    chosen = foreground or list(range(1, len(names)))
    unknown = [k for k in chosen if not 0 < k < len(names)]
    if unknown:
        raise ConfigError(f"--foreground-labels {unknown} are not labels of dataset.json (1..{len(names) - 1})")
    return [names[0], "+".join(names[k] for k in chosen)]


def read_fingerprint(uri: str) -> dict | None:
    """The prepared data's fingerprint (`Fingerprint.to_dict`), or None when it has none (data
    prepared before the fingerprint, or the seed's 2D layout). For BundleInfo.fingerprint."""
    m = storage.join(uri, FINGERPRINT)
    if not storage.exists(m):
        return None
    fingerprint = json.loads(storage.read_bytes(m))
    if not isinstance(fingerprint, dict):
        raise ConfigError(f"{m}: a fingerprint is a JSON object, found {type(fingerprint).__name__}")
    return fingerprint


def case_summary_uri(out: str, case_id: str) -> str:
    """A case's summary object: named by a hash of its case id, which folder names and manifests
    often make of a patient's name or record number (the id itself is inside, as data)."""
    return storage.join(out, "cases", f"case-{short_hash(case_id)}.json")


def _prepare_output(out: str, inputs: tuple[str, ...], overwrite: bool) -> None:
    """The output must be empty or this tool's (unet_core/ownership.py); --overwrite removes the
    objects it names, never anything else (images kept under the output stay)."""
    kind = ownership.PREPARE_OUTPUT
    ownership.check_inputs(inputs, out, kind)
    ours = ownership.check_output(out, kind, inputs)
    leftovers = any(True for _ in ownership.owned_objects(out, kind))
    if not (ours or leftovers):
        return
    if not overwrite:
        raise ConfigError(f"{out} already holds prepared data; pass --overwrite to replace it")
    storage.delete(storage.join(out, MANIFEST))  # first: a half-cleared output is never taken for a complete one
    _, left = ownership.delete_owned(out, kind.overwrite, kind)
    if left:
        say(f"left {left} objects under {out} that `unet prepare` did not write (-v lists them)")


def read_prepared(uri: str) -> dict:
    """The manifest of a prepared dataset, with a clear error when it is missing."""
    m = storage.join(uri, MANIFEST)
    if not storage.exists(m):
        raise InputError(f"{uri}: no {MANIFEST}; run `unet prepare --output {uri}` first (or it did not finish)", uri=uri)
    return json.loads(storage.read_bytes(m))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
