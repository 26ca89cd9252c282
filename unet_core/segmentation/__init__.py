"""Bulk segmentation as pure functions and typed rows; `jobs/segment.py` maps them with Ray.

    records   the rows that cross a stage, with their Parquet schemas
    settings  the one typed object a worker receives
    layout    where outputs live and how units / volumes are partitioned across runs
    planning  fan-out listing, the per-partition scan and manifest join, merging, the change rule
    stages    decode -> predict -> finish -> write of one volume
    tables    the volume table, part by part, and the counts of a summary
"""
