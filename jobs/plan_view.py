"""What `unet segment --plan-only` prints: the plan table's totals and an estimate of the run.

The estimate divides the slices to segment by a throughput: the last run's on this output (the
same cluster, as a rule), else a stated default per predictor. It is a guide, not a promise:
`unet bench inference` measures a machine.
"""
from __future__ import annotations

from jobs.exits import Exit
from jobs.output import safe
from unet_core.segmentation.store import PLAN_TABLE
from unet_core.segmentation.summary import RunSummary, describe_selection
from unet_core.segmentation.tables import write_plan_table

DEFAULT_SLICES_PER_SECOND = 20.0  # per predictor: a 256 x 256 U-Net of 16 filters on one CPU core
GIB = 2**30


def throughput(out: str, predictors: int) -> tuple[float, str]:
    """(slices per second, where that figure comes from)."""
    try:
        last = RunSummary.read(out)  # None: no earlier run; a store that fails raises (exit 5)
    except ValueError:  # a summary that is not this tool's JSON: the estimate is a guide, use the default
        last = None
    if last is not None and last.slices_now >= 100 and last.slices_per_second > 0:
        return last.slices_per_second, f"this output's last run ({last.finished})"
    return DEFAULT_SLICES_PER_SECOND * predictors, (f"a default of {DEFAULT_SLICES_PER_SECOND:g} per predictor on CPU "
                                                    f"x {predictors}; `unet bench inference` measures yours")


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def plan_only(planned, out: str, predictors: int) -> int:
    totals = write_plan_table(out, planned.layout.buckets, {b for b, _ in planned.pending})
    n = sum(totals.by_plan.values())
    print(f"plan: {n:,} volumes: {totals.by_plan['segment']:,} to segment ({totals.slices:,} slices, "
          f"{totals.estimated_bytes / GIB:,.1f} GiB decoded), {totals.by_plan['done']:,} done already, "
          f"{totals.by_plan['not_selected']:,} not selected, {totals.by_plan['error']:,} errors "
          f"({planned.listed:,} objects listed, {planned.scanned:,} headers read)")
    s = planned.settings
    print(f"  selection: {describe_selection(s.rules.to_dict(), s.sample, s.limit, s.seed)}")
    if totals.not_selected:
        print("  not selected, by rule: " + ", ".join(f"{k} {v:,}" for k, v in totals.not_selected.most_common()))
    if totals.slices:
        rate, source = throughput(out, predictors)
        print(f"  estimate: {totals.slices:,} slices at {rate:,.0f} slices/s ({source}): about "
              f"{_duration(totals.slices / rate)}")
    print(safe(f"  plan: {out}/{PLAN_TABLE} (one row per volume: plan, reason, slices, estimated bytes); "
               "the same command without --plan-only carries it out"))
    return Exit.OK
