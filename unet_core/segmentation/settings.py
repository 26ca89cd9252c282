"""Everything a segment worker needs, as one typed object: the driver builds it once, sends
`to_dict(settings)` to the workers, and each worker rebuilds it with `from_dict` (a misspelt key
fails at once; defaults live here)."""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field

from unet_core.bundle import BundleInfo
from unet_core.config import Limits
from unet_core.errors import ConfigError
from unet_core.io.lease import Fence
from unet_core.io.process_settings import StorageSettings
from unet_core.segmentation.records import VolumeRecord
from unet_core.segmentation.selection import SelectionRules
from unet_core.segmentation.store import OutputStore


@dataclass(frozen=True)
class SegmentSettings:
    output: str  # output prefix (local or s3://), without a trailing "/"
    bundle_info: BundleInfo  # the bundle's bundle.json: preprocessing, labels, segment codes
    model_name: str
    model_identity: str
    threshold: float
    model_registry: str = ""  # --model models:/NAME/VERSION: where the registry is (scheme, host, path)
    model_version: str = ""
    model_run_id: str = ""
    modality: str | None = None  # a volume of another modality is refused (None: any)
    assume_modality: str | None = None  # the modality of volumes whose format does not say (NIfTI)
    limits: Limits = field(default_factory=Limits)
    largest_component: bool = False
    fill_holes: bool = False
    tta: bool = False  # --tta flip: the 4 mirrored passes of each slice, averaged
    qc: bool = False
    dicom_seg: bool = False  # a DICOM SEG per DICOM volume (seg/<volume id>.dcm)
    rtstruct: bool = False  # a DICOM RT Structure Set per DICOM volume (rtstruct/<volume id>.dcm)
    keep_phi: bool = False
    keep_localizers: bool = False  # segment localizer / scout images too (unet_core.io.dicom.is_localizer)
    follow_symlinks: bool = False
    resume: bool = True  # a planned volume first looks for this fingerprint's completion record
    prediction_attempts: int = 3  # a volume whose prediction fails this often becomes an error row
    partitions: int = 1  # listing partitions (stable across runs: see layout.py)
    buckets: int = 1  # volume-table parts (stable across runs)
    inputs: tuple[str, ...] = ()  # as the layout names them (the output is never listed as one of them)
    selection: str = "{}"  # the selection rules, JSON (SelectionRules.to_dict): the bundle's, then --select's
    sample: float | None = None  # --sample: this fraction of the selected volumes (by volume id hash)
    limit: int | None = None  # --limit: at most this many of the selected volumes (by volume id hash)
    seed: int = 0  # of --sample and --limit
    send_seg: str = ""  # --send (--send-seg): a DICOMweb service each SEG and RTSTRUCT is stored at (STOW-RS) once written
    run_id: str = ""  # this run's, in its completion records: a record of this run is a retried task's
    lease_token: str = ""  # the run's lease (io/lease.py): checked before each delete, part rewrite and send
    # Retries and file mode of every storage and DICOMweb call of the run, in each of its processes
    # (applied by a worker before its stage): the driver's, by default (its flags and environment).
    storage: StorageSettings = field(default_factory=StorageSettings.of_process)

    @property
    def fence(self) -> Fence | None:
        return Fence.of(self.output, self.lease_token) if self.lease_token else None

    def store(self) -> OutputStore:
        """The output, fenced by the run's lease (unfenced without a token: tests, --plan-only views)."""
        return OutputStore(self.output, self.fence)

    def check_lease(self) -> None:
        """Raises LeaseLost once another run holds the output (no token: nothing to check)."""
        self.store().check_lease()

    @property
    def selecting(self) -> bool:
        """Whether this run leaves volumes out: rules, --sample or --limit."""
        return not self.rules.empty or self.sample is not None or self.limit is not None

    @functools.cached_property
    def rules(self) -> SelectionRules:
        return SelectionRules.from_dict(json.loads(self.selection), "the run's selection rules")

    def made_as_asked(self, rec: VolumeRecord) -> bool:
        """Whether a volume's earlier ok row was made as this run asks: every output it asks for
        (a run that adds --qc, --dicom-seg or --rtstruct redoes the volumes without them), and the same privacy
        setting (a run with or without --keep-phi redoes the rows made the other way: identifiers
        never survive dropping it)."""
        if bool(rec.keep_phi) != self.keep_phi:
            return False
        if self.qc and not rec.qc_uri:
            return False
        if self.rtstruct and not rec.rtstruct_uri and not rec.rtstruct_skipped:
            return False
        return not (self.dicom_seg and not rec.seg_uri and not rec.seg_skipped)

    @property
    def keep_sources(self) -> bool:
        """Whether a DICOM volume's source datasets are kept (header only): a SEG or an RTSTRUCT references them."""
        return self.dicom_seg or self.rtstruct

    def __post_init__(self) -> None:
        if self.prediction_attempts < 1 or self.partitions < 1 or self.buckets < 1:
            raise ConfigError("prediction_attempts, partitions and buckets must be >= 1")
