"""How a segment run is cut into tasks, from counts alone (no Ray here; jobs/segment.py asks Ray
for the counts and passes them in). See docs/design.md, "Driver memory" and "Grouping".

    predictor_counts(...)   the predictor pool's (min, max)
    local_cpus(...)         logical CPUs of a local Ray instance
    volume_slots(...)       volumes in flight
    scan_blocks(...)        tasks of the listing and header scan
    segment_blocks(...)     tasks of the segment stage
"""
from __future__ import annotations

SCAN_PARTITIONS_PER_BLOCK = 8  # listing partitions a scan task takes on: tasks of a few ms each cost more than they do
SCAN_BLOCKS_PER_SLOT = 8  # at most this many scan tasks per task slot (each one's output is a block of the shuffle)
SHUFFLE_BLOCKS = 16  # blocks into the sort shuffle: its cost and its objects grow as blocks squared
VOLUMES_PER_TASK = 32  # on large runs: each segment task costs the driver ~100 KB of RSS and ~12 ms
MAX_SEGMENT_TASKS = 1024  # beyond it tasks take more volumes each: the driver's share stays bounded


def predictor_counts(concurrency: int | None, min_predictors: int, max_predictors: int | None) -> tuple[int, int]:
    """(min, max) predictors: --concurrency sets both; else --min-predictors (at least 1) up to
    --max-predictors (at least the minimum)."""
    if concurrency:
        return concurrency, concurrency
    low = max(1, min_predictors)
    return low, max(low, max_predictors or low)


def local_cpus(machine_cpus: int, predictors: int, num_gpus: float) -> int:
    """Logical CPUs of a local Ray instance: the machine's cores for decoding and writing, plus one
    per CPU predictor actor (whose reservation would otherwise starve the CPU tasks)."""
    return machine_cpus + (0 if num_gpus else predictors)


def task_slots(cluster_cpus: float, predictors: int, num_gpus: float) -> int:
    """CPU slots not held by predictors: scan and volume tasks use only those."""
    return max(1, int(cluster_cpus) - (0 if num_gpus else predictors))


def volume_slots(decode_concurrency: int | None, on_cluster: bool, slots: int, n_volumes: int) -> int | None:
    """Volumes in flight. On the local instance, its CPUs not held by predictors: a volume task
    waiting on its predictor releases its CPU, and Ray would start (and later reap) one more worker
    process per waiting task, on the same cores. On a cluster, no cap unless asked for, so that an
    autoscaler can add CPU nodes for decoding."""
    if decode_concurrency:
        return min(decode_concurrency, n_volumes)
    return None if on_cluster else min(slots, n_volumes)


def scan_blocks(n_partitions: int, slots: int) -> int:
    """Scan tasks: partitions in groups of SCAN_PARTITIONS_PER_BLOCK, at least two per slot, at
    most SCAN_BLOCKS_PER_SLOT per slot (each task's output is one block of the shuffle)."""
    return max(1, min(n_partitions, max(2 * slots, min(-(-n_partitions // SCAN_PARTITIONS_PER_BLOCK),
                                                       SCAN_BLOCKS_PER_SLOT * slots))))


def segment_blocks(n_volumes: int, slots: int) -> int:
    """Tasks of the segment stage: one volume each while there are few (every slot busy four
    times over), else VOLUMES_PER_TASK volumes each, and never more than MAX_SEGMENT_TASKS (or four
    per slot on a larger cluster), so that neither the driver's memory nor the scheduling cost
    grows with the archive."""
    return max(1, min(n_volumes, max(4 * slots, min(-(-n_volumes // VOLUMES_PER_TASK), MAX_SEGMENT_TASKS))))
