"""How many listing partitions and volume buckets a first run's layout gets: sized to the work
(the listing units the fan-out found) and to the task slots of the instance, not fixed.

Each listing partition is one series_index part and each bucket one volume-table part, so a
re-run with nothing new reads partitions + buckets small Parquet files and pays a fixed cost
(open, schema, a task's share) per file; a first run wants enough of them to keep every slot
busy. The rule (docs/design.md, "Output layout"; its effect measured in docs/benchmarks.md,
"Archive scale"):

    partitions = ceil(units / UNITS_PER_PARTITION), at least PARTITIONS_PER_SLOT per task slot,
                 at most one per unit and MAX_PARTITIONS
    buckets    = ceil(units / UNITS_PER_BUCKET), at least BUCKETS_PER_SLOT per task slot (and
                 MIN_BUCKETS), at most MAX_BUCKETS

A listing unit is mostly one series folder, so UNITS_PER_BUCKET is about the volumes of a
table part. Both counts are written into layout.json by the first run and kept by every re-run
(layout.py), whatever the instance a re-run finds.
"""
from __future__ import annotations

from dataclasses import dataclass

UNITS_PER_PARTITION = 16  # at 50 objects a folder, about 800 objects per series_index part
UNITS_PER_BUCKET = 64  # about 64 volumes per volume-table part
PARTITIONS_PER_SLOT = 8  # the scan's tasks per slot (sizing.SCAN_BLOCKS_PER_SLOT): each gets a partition
BUCKETS_PER_SLOT = 2  # the merge's groups per slot (jobs/ray_executor.py: 2 per slot)
MAX_PARTITIONS = 1024  # the bounds of layout 4's first runs, kept: the driver's share stays bounded
MAX_BUCKETS = 256
MIN_BUCKETS = 4


@dataclass(frozen=True)
class Counts:
    """A first run's partitioning: listing partitions and volume-table buckets."""

    partitions: int
    buckets: int


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def choose_counts(n_units: int, slots: int) -> Counts:
    """The layout's counts for `n_units` listing units (>= 1) on an instance with `slots` task
    slots (CPUs not held by predictors, >= 1)."""
    n_units, slots = max(1, n_units), max(1, slots)
    partitions = min(n_units, MAX_PARTITIONS, max(_ceil_div(n_units, UNITS_PER_PARTITION), PARTITIONS_PER_SLOT * slots))
    buckets = min(MAX_BUCKETS, max(_ceil_div(n_units, UNITS_PER_BUCKET), BUCKETS_PER_SLOT * slots, MIN_BUCKETS))
    return Counts(partitions, buckets)
