"""A segment run without Ray: the one `SegmentSettings` factory of the tests, a model stand-in,
and the whole run (open, plan, segment, finish, summarise) on the serial executor, as
jobs/segment.py drives it on Ray."""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from unet_core.bundle import BundleInfo
from unet_core.config import PreprocessConfig
from unet_core.io import storage
from unet_core.segmentation.delivery import SendCounts
from unet_core.segmentation.executor import SerialExecutor
from unet_core.segmentation.run import Planned, Pool, Segmented, SegmentRun, open_output, summarise
from unet_core.segmentation.settings import SegmentSettings
from unet_core.segmentation.store import OutputStore
from unet_core.segmentation.summary import RunSummary
from unet_core.segmentation.tables import TableCounts

BUNDLE_INFO = BundleInfo(PreprocessConfig(input_size=16))


def segment_settings(output: str = "o", **kw) -> SegmentSettings:
    """Settings as the job builds them, with small defaults (16-pixel model input, 4 buckets);
    `rules` (a dict) becomes the selection rules."""
    rules = kw.pop("rules", None)
    if rules is not None:
        kw["selection"] = json.dumps(rules)
    return SegmentSettings(**{"output": output, "bundle_info": BUNDLE_INFO, "model_name": "m",
                              "model_identity": "id-1", "threshold": 0.5, "buckets": 4, **kw})


def bright(x: np.ndarray) -> tuple[np.ndarray, float, int]:
    """The model stand-in: probability 1 where the (normalised) input is above its mean."""
    x = np.asarray(x, np.float32)
    return (x[..., :1] > x.mean()).astype(np.float32), 0.0, 1


@dataclass
class RunResult:
    planned: Planned
    done: Segmented
    totals: TableCounts
    summary: RunSummary
    sent: SendCounts | None


def serial_plan(inputs: list[str], out: str, overwrite: bool = False, predict=bright, unchanged: bool = False,
                **kw) -> tuple[SegmentRun, Planned | None]:
    """Open the output and plan, as `unet segment` (and --plan-only) does, in this process (local
    paths made absolute first, as the job makes them). `unchanged`: a re-run's plan_unchanged
    (None when a partition changed) instead of plan."""
    out = storage.absolute(out)
    store = OutputStore(out)
    ins = tuple(storage.absolute(i) for i in inputs)
    opened = open_output(store, ins, overwrite)
    run = SegmentRun(store, None if unchanged else SerialExecutor(predict))  # plan_unchanged needs none
    units, layout = run.layout(ins, opened.layout, kw.get("follow_symlinks", False))
    s = segment_settings(out, **{"partitions": layout.partitions, "buckets": layout.buckets, "inputs": layout.inputs,
                                 "resume": not overwrite, **kw})
    return run, (run.plan_unchanged if unchanged else run.plan)(units, s, layout)


def serial_run(inputs: list[str], out: str, overwrite: bool = False, predict=bright, **kw) -> RunResult:
    """One whole `unet segment` run in this process (settings: `segment_settings`'s keywords)."""
    run, planned = serial_plan(inputs, out, overwrite, predict, **kw)
    done = run.segment(planned)
    totals = run.finish(planned)
    sent = run.deliver(planned, 2)
    summary = summarise(planned, done, totals, sent, Pool(), 0.0)
    summary.write()
    return RunResult(planned, done, totals, summary, sent)
