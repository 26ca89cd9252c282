"""`summary.json` of a segment output: what the last run did, as one typed record that the job
writes and `unet status`, the report, the benchmarks and the demo read."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields

from unet_core.errors import NotFoundError
from unet_core.io import storage
from unet_core.segmentation.store import OutputStore


def describe_selection(rules: dict, sample: float | None, limit: int | None, seed: int) -> str:
    """Selection rules (SelectionRules.to_dict), --sample and --limit in one line."""
    parts = [f"{k}={v}" for k, v in rules.items()]
    if sample is not None:
        parts.append(f"--sample {sample:g} (seed {seed})")
    if limit is not None:
        parts.append(f"--limit {limit} (seed {seed})")
    return "; ".join(parts) if parts else "every volume (no selection rules)"


@dataclass
class RunSummary:
    output: str
    model: str
    model_identity: str
    finished: str  # UTC, ISO 8601
    model_registry: str = ""  # a registered model's registry, version and MLflow run (--model models:/...)
    model_version: str = ""
    model_run_id: str = ""
    # the volume table after the run
    volumes_ok: int = 0
    volumes_failed: int = 0
    objects_skipped: int = 0
    failures_by_type: dict[str, int] = field(default_factory=dict)
    volumes_not_selected: int = 0  # left out by the selection rules, --sample or --limit (skipped rows)
    not_selected_by_rule: dict[str, int] = field(default_factory=dict)
    volume_table_parts_written: int = 0
    # listing and planning
    objects_listed: int = 0
    headers_read: int = 0
    headers_unchanged: int = 0
    # this run's work
    segmented_now: int = 0
    resumed_from_records: int = 0  # found complete, recorded by an earlier (interrupted) run
    retried_complete: int = 0  # found complete after a retry: recorded by this run's own earlier attempt
    slices_now: int = 0
    slices_per_second: float = 0.0
    # where the time went
    scan_seconds: float = 0.0
    predictor_wait_seconds: float = 0.0
    pipeline_seconds: float = 0.0
    total_seconds: float = 0.0
    predictors_started: int = 0
    predictors_live: int = 0
    # what the output was made with
    dicom_seg: bool = False
    rtstruct: bool = False
    qc: bool = False
    keep_phi: bool = False
    selection: dict = field(default_factory=dict)  # the selection rules (the bundle's, then --select's)
    sample: float | None = None
    limit: int | None = None
    seed: int = 0
    # delivery (--send): DICOM objects (SEGs and RTSTRUCTs, despite the names) stored at `sent_to` by
    # this run, and those that failed (send_error, rtstruct_send_error)
    sent_to: str = ""
    segs_sent: int = 0
    segs_send_failed: int = 0

    def privacy(self) -> str:
        """What the output may carry of patients' identity, in one line."""
        tables = ("the tables' metadata column holds patient name, ID and birth date (--keep-phi)" if self.keep_phi
                  else "tables, reports and logs hold no patient name, ID or birth date")
        seg = "; seg/ carries the patient and study modules (DICOM SEG)" if self.dicom_seg else ""
        rt = "; rtstruct/ carries the patient and study modules (RTSTRUCT)" if self.rtstruct else ""
        return tables + seg + rt

    def selection_line(self) -> str:
        """The rules the output was made with, in one line."""
        return describe_selection(self.selection, self.sample, self.limit, self.seed)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> RunSummary:
        """A summary as written by any version: keys it does not know are left out, missing ones
        take their defaults."""
        data = json.loads(text)
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def write(self) -> str:
        uri = OutputStore(self.output).summary_uri
        storage.write_bytes(uri, self.to_json().encode())
        return uri

    @classmethod
    def read(cls, out: str) -> RunSummary | None:
        """The output's summary, or None when no run has finished there."""
        try:
            return cls.from_json(storage.read_bytes(OutputStore(out).summary_uri).decode())
        except NotFoundError:
            return None
