"""The arguments of `unet segment`, and the typed settings a run's workers receive built from
them (the help text is jobs/segment.py's docstring)."""
from __future__ import annotations

import argparse
import hashlib
import json
import uuid

from jobs.options import (
    add_dicomweb_args,
    add_limit_args,
    add_output_args,
    add_ray_args,
    limits_from,
    load_config_file,
)
from unet_core import registry
from unet_core.bundle import bundle_identity
from unet_core.errors import ConfigError
from unet_core.io import dicomweb
from unet_core.io.lease import Lease
from unet_core.recipe.postprocess import resolve_postprocess
from unet_core.segmentation.layout import Layout
from unet_core.segmentation.selection import SelectionRules
from unet_core.segmentation.settings import SegmentSettings


def build_parser(doc: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="unet segment", description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", nargs="+", required=True,
                   help="prefixes or files: DICOM (any layout), NIfTI, .zip exports; or a PACS: dicomweb+https://host/path")
    p.add_argument("--model", required=True,
                   help="model bundle (local or s3://), or a registered model: models:/NAME/VERSION, models:/NAME@ALIAS")
    p.add_argument("--tracking-uri", default=None,
                   help="the MLflow registry of a models:/ model (default: MLFLOW_TRACKING_URI; its credentials from "
                        "MLflow's own variables)")
    p.add_argument("--output", required=True, help="output prefix (local or s3://)")
    p.add_argument("--config", help="JSON/YAML file of option values")
    p.add_argument("--batch-size", type=int, default=16, help="slices per model call")
    p.add_argument("--concurrency", type=int, default=None, help="predictor actors (sets both --min- and --max-predictors)")
    p.add_argument("--min-predictors", type=int, default=1, help="predictor actors started at once")
    p.add_argument("--max-predictors", type=int, default=None,
                   help="grow the pool up to this many while every predictor is busy (default: --min-predictors); "
                        "on a cluster the autoscaler adds the nodes")
    p.add_argument("--num-gpus", type=float, default=0, help="GPUs per predictor actor")
    p.add_argument("--prediction-attempts", type=int, default=3,
                   help="a volume whose prediction fails (or kills its predictor) this often becomes an error row")
    p.add_argument("--decode-concurrency", type=int, default=None,
                   help="at most this many volumes in flight (decoding, waiting for a predictor, writing); "
                        "default: the local instance's CPUs not held by predictors; on a cluster, no cap")
    p.add_argument("--precision", default="float32", choices=["float32", "mixed_float16", "mixed_bfloat16"])
    p.add_argument("--xla", action="store_true")
    p.add_argument("--threshold", type=float, default=None, help="override the bundle's threshold")
    p.add_argument("--largest-component", nargs="?", const="on", default="auto", choices=["auto", "on", "off"],
                   help="keep only the largest 3D connected component per label: auto (default) follows the "
                        "bundle's decision, taken by `unet train` on the validation cases; on; off")
    p.add_argument("--tta", default="none", choices=["none", "flip"],
                   help="flip: average the 4 mirrored passes of each slice (4x the model's work; native recipe "
                        "and seed recipe alike)")
    p.add_argument("--fill-holes", action="store_true", help="fill holes in 3D per label")
    p.add_argument("--qc", action="store_true", help="write a PNG montage per volume")
    p.add_argument("--dicom-seg", action="store_true",
                   help="also write a DICOM SEG per DICOM volume (seg/<volume_id>.dcm), referencing the source "
                        "images; it carries the source's patient and study modules, as PACS need, even without "
                        "--keep-phi (the tables stay free of identifiers)")
    p.add_argument("--rtstruct", action="store_true",
                   help="also write a DICOM RT Structure Set per DICOM volume (rtstruct/<volume_id>.dcm): one ROI "
                        "per label, closed planar contours on the source images, for radiotherapy planning "
                        "systems; patient and study modules as for --dicom-seg")
    p.add_argument("--keep-phi", action="store_true", help="keep patient name, ID and birth date in the outputs")
    p.add_argument("--assume-modality", default=None, metavar="MODALITY",
                   help="the modality of inputs whose format does not say (NIfTI), e.g. CT: then the model's "
                        "modality check and the HU statistics apply to them")
    p.add_argument("--keep-localizers", action="store_true",
                   help="segment localizer / scout images too (ImageType LOCALIZER); by default they are "
                        "skipped with reason 'localizer'")
    p.add_argument("--follow-symlinks", action="store_true",
                   help="follow directory symlinks of a local archive (loops are detected by real path)")
    p.add_argument("--overwrite", action="store_true", help="redo every volume, and read every header again")
    g = p.add_argument_group("choosing what to segment (README: \"Choosing what to segment\")")
    g.add_argument("--select", default=None, metavar="FILE.yaml",
                   help="selection rules (modality, image_type_includes, orientation, slice_thickness_mm, "
                        "one_per_study, ...): they replace the bundle's input_rules key by key; in --config, "
                        "a mapping under 'select'")
    g.add_argument("--plan-only", action="store_true",
                   help="list, scan and plan as a run would (incremental), load no model, write plan.parquet "
                        "and print what a run would do")
    g.add_argument("--limit", type=int, default=None, metavar="N",
                   help="segment at most N of the selected volumes (the same N on every run: by volume id hash)")
    g.add_argument("--sample", type=float, default=None, metavar="FRACTION",
                   help="segment this fraction of the selected volumes (by volume id hash; e.g. 0.01)")
    g.add_argument("--seed", type=int, default=0, help="of --limit and --sample")
    add_dicomweb_args(p)
    add_output_args(p)
    add_ray_args(p)
    add_limit_args(p)
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def model_of(model: str, info) -> dict:
    """The model's name and identity as the tables record them. A registered model is named by its
    registry reference and version, and its identity covers the version too: a new version is a
    model change for the re-run rule even when its files are the same."""
    identity = bundle_identity(model)
    ref = registry.parse_model_uri(model)
    if ref is None:
        return {"model_name": info.name, "model_identity": identity}
    got = registry.fetch(ref, None, bundle_identity)
    versioned = hashlib.sha256(f"{identity}:{got.registry}:{ref.name}:{got.version}".encode()).hexdigest()[:16]
    return {"model_name": f"models:/{ref.name}/{got.version}", "model_identity": versioned,
            "model_registry": got.registry, "model_version": got.version, "model_run_id": got.run_id or ""}


def settings_of(args, info, out: str, layout: Layout, lease: Lease | None = None,
                model: str | None = None) -> SegmentSettings:
    """The run's settings; `lease` (held) gives the token its tasks check before each write; `model`
    is the model as the user named it (a models:/ reference) when args.model is its local copy."""
    return SegmentSettings(
        output=out, bundle_info=info, **model_of(model or args.model, info),
        threshold=args.threshold if args.threshold is not None else info.threshold,
        modality="CT" if info.preprocess.modality == "CT" else None, limits=limits_from(args),
        largest_component=resolve_postprocess(info, args.largest_component).largest_component,
        fill_holes=args.fill_holes, tta=args.tta == "flip", qc=args.qc, dicom_seg=args.dicom_seg,
        rtstruct=args.rtstruct,
        keep_phi=args.keep_phi, keep_localizers=args.keep_localizers, assume_modality=args.assume_modality,
        follow_symlinks=args.follow_symlinks, resume=not args.overwrite, prediction_attempts=args.prediction_attempts,
        partitions=layout.partitions, buckets=layout.buckets, inputs=tuple(layout.inputs),
        selection=json.dumps(selection_rules(args, info).to_dict()), sample=args.sample, limit=args.limit,
        seed=args.seed, send_seg=args.send_seg or "", run_id=uuid.uuid4().hex,
        lease_token=lease.info.token if lease is not None else "")


def selection_rules(args, info) -> SelectionRules:
    """The bundle's input_rules, with --select's keys (a file, or a mapping from --config) over them."""
    override = args.select
    where = "--select"
    if isinstance(override, str):
        where = override
        override = load_config_file(override)
    elif override is not None and not isinstance(override, dict):
        raise ConfigError(f"select in --config must be a mapping of rules (got {type(override).__name__})")
    return SelectionRules.from_dict(info.input_rules, "the bundle's input_rules").merged(override, where)


def web_cap(args, n: int) -> int:
    """With a DICOMweb input, tasks that read it are at most --dicomweb-concurrency (each makes one
    request at a time): the PACS sees at most that many requests at once. 0 in: no cap but that."""
    if not (args.send_seg or any(dicomweb.is_dicomweb(i) for i in args.input)):
        return n
    return min(n, args.dicomweb_concurrency) if n else args.dicomweb_concurrency
