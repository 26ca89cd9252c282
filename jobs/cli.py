"""The `unet` command: `unet <job> [options]`, one module per job under `jobs/`."""
from __future__ import annotations

import importlib
import os
import sys

from jobs.exits import Exit

JOBS: dict[str, str] = {
    "prepare": "labelled cases (NIfTI, DICOM, 2D images) -> Parquet slice shards, split by case",
    "train": "data-parallel U-Net training with Ray Train over the shards -> model bundle",
    "tune": "hyperparameter search of unet train with Ray Tune (ASHA), trials tracked in MLflow",
    "segment": "bulk segmentation of DICOM / NIfTI archives with Ray Data -> NIfTI + Parquet",
    "evaluate": "Dice, IoU and HD95 of predicted masks against ground truth",
    "send": "store an output's DICOM SEGs at a PACS over DICOMweb (STOW-RS), once each",
    "status": "where an existing segment output stands, and what a re-run would do (no recompute)",
    "demo": "the whole product on a synthetic CT archive, on this machine",
    "bench": "benchmarks measured side by side (io, train, segment, scale, inference, gpu)",
    "submit": "submit any job to a Ray cluster through the Jobs API",
}


def usage() -> str:
    width = max(map(len, JOBS))
    lines = ["usage: unet <job> [options]    (unet <job> --help for a job's options)", "", "jobs:"]
    lines += [f"  {name:<{width}}  {text}" for name, text in JOBS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return Exit.OK if argv else Exit.USAGE
    job, rest = argv[0], argv[1:]
    if job not in JOBS:
        print(f"unet: unknown job {job!r}\n\n{usage()}", file=sys.stderr)
        return Exit.USAGE
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return int(importlib.import_module(f"jobs.{job}").main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
