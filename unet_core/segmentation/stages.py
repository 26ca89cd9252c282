"""The per-volume stage bodies, plain functions of typed rows (Ray only maps them):

    segment_volume(planned, settings, predict) -> VolumeRecord, written with its outputs
        decode_volume   read + preprocess (the voxels stay in the calling process)
        predict         a callable supplied by the caller: model input -> probabilities
        finish_and_write  labels on the source grid, outputs, then the completion record (last)
"""
from __future__ import annotations

import enum
import json
import time
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np

from unet_core.errors import ErrorType, InputError, ItemFailure
from unet_core.inference import PostProcess, finish_volume, prepare_volume, qc_montage_png, volume_stats
from unet_core.io import storage
from unet_core.io.dicom.grouping import VolumeMembers
from unet_core.io.dicom.rtstruct import RtstructSkipped, build_rtstruct, rtstruct_bytes
from unet_core.io.dicom.seg import SegIdentity, SegSkipped, build_seg, seg_bytes, software_version
from unet_core.io.dicom.series import SourceFrames, read_series_with_sources
from unet_core.io.lease import LeaseLost
from unet_core.io.mask_codec import slices_table_bytes
from unet_core.io.nifti import mask_to_nifti_bytes, read_nifti
from unet_core.io.volumes import read_object, read_objects
from unet_core.segmentation.delivery import send_record
from unet_core.segmentation.records import Format, PlannedVolume, Status, VolumeRecord
from unet_core.segmentation.settings import SegmentSettings
from unet_core.segmentation.store import OutputStore, VolumeOutput
from unet_core.volume import Volume


class PredictionFailed(Exception):
    """The model failed on this volume (or killed its process) on every attempt."""

    def __init__(self, message: str, attempts: int):
        super().__init__(message)
        self.attempts = attempts


# predict(x) -> (probabilities, model seconds, attempts); raises PredictionFailed
Predict = Callable[[np.ndarray], tuple[np.ndarray, float, int]]


class Outcome(enum.StrEnum):
    """What `segment_volume` did with a volume."""

    DONE = "done"  # segmented now (ok or error), its record written
    RESUMED = "resumed"  # a record of this fingerprint and model was already there: not redone
    RETRIED = "retried"  # as RESUMED, but written by this run: its task was retried (a lost node or worker)
    UNRECORDED = "unrecorded"  # the completion record could not be written; redone next run


@dataclass
class Decoded:
    volume: Volume | None
    x: np.ndarray | None
    error: ItemFailure | None
    seconds: float
    sources: SourceFrames | None = None  # header-only source datasets, kept for a DICOM SEG


def _failed(rec: VolumeRecord, failure: ItemFailure, **kw) -> VolumeRecord:
    return replace(rec, status=Status.ERROR, error=failure.error, error_type=failure.error_type, **kw)


def decode_volume(planned: PlannedVolume, s: SegmentSettings) -> Decoded:
    """Read one planned volume and make its model input; bad input comes back as `error`."""

    t = time.perf_counter()
    sources = None
    try:
        info = s.bundle_info
        if planned.format == Format.NIFTI:
            volume = read_nifti(read_object(planned.source, s.limits), planned.source, s.limits,
                                volume_id=planned.volume_id)
            volume.modality = volume.modality or s.assume_modality
        else:
            group = VolumeMembers(planned.volume_id, planned.series_uid, list(planned.members))
            volume, sources = read_series_with_sources(group, read_objects(group.uris, s.limits), s.limits,
                                                       s.keep_phi, keep_sources=s.keep_sources)
        # The model's modality check applies wherever the modality is known (not to a NIfTI
        # volume unless one is assumed).
        if s.modality and volume.modality is not None and volume.modality not in (s.modality, "OT"):
            raise InputError(f"{planned.source}: modality {volume.modality} does not match the model's "
                             f"{s.modality}", uri=planned.source)
        return Decoded(volume, prepare_volume(volume, info.preprocess, tta=s.tta), None, time.perf_counter() - t, sources)
    except Exception as exc:  # noqa: BLE001 - the stage's guard: one volume, not the job
        return Decoded(None, None, ItemFailure.of(planned.source, exc, "decoding"), time.perf_counter() - t)


def _record(planned: PlannedVolume, s: SegmentSettings, **kw) -> VolumeRecord:
    return VolumeRecord(volume_id=planned.volume_id, source=planned.source, format=planned.format,
                        series_uid=planned.series_uid, fingerprint=planned.fingerprint,
                        n_objects=len(planned.members), model=s.model_name,
                        model_identity=s.model_identity, model_registry=s.model_registry,
                        model_version=s.model_version, model_run_id=s.model_run_id,
                        keep_phi=s.keep_phi, selection_facts=planned.facts,
                        text_rules=s.rules.text_digest(), study_uid=_study_uid(planned), **kw)


def _study_uid(planned: PlannedVolume) -> str:
    """The volume's study, as its members' headers say (NIfTI and set-aside: "")."""
    if planned.format == Format.NIFTI or not planned.members:
        return ""
    return planned.members[0].study_uid


def segment_volume(planned: PlannedVolume, s: SegmentSettings, predict: Predict) -> tuple[VolumeRecord, Outcome]:
    """One volume through decode -> predict -> finish -> write. Returns (record, outcome)."""
    if s.resume:
        found = OutputStore(s.output).find_record(planned.volume_id, planned.fingerprint, ok_only=True)
        if found is not None and found[0].model_identity == s.model_identity and s.made_as_asked(found[0]):
            return found[0], Outcome.RETRIED if s.run_id and found[1] == s.run_id else Outcome.RESUMED
    d = decode_volume(planned, s)
    rec = _record(planned, s, status=Status.OK, decode_seconds=d.seconds)
    prob = None
    if d.error is not None:
        rec = _failed(rec, d.error)
    elif d.x is not None and len(d.x):
        t = time.perf_counter()
        try:
            prob, rec.model_seconds, rec.attempts = predict(d.x)
        except PredictionFailed as exc:
            rec = _failed(rec, ItemFailure(f"{planned.source}: prediction failed: {exc}", ErrorType.PREDICTION),
                          attempts=exc.attempts)
        except Exception as exc:  # noqa: BLE001 - the stage's guard: one volume, not the job
            rec = _failed(rec, ItemFailure.of(planned.source, exc, "prediction"))
        rec.predict_seconds = time.perf_counter() - t
    return finish_and_write(rec, d.volume, prob, s, d.sources)


def finish_and_write(rec: VolumeRecord, volume: Volume | None, prob: np.ndarray | None,
                     s: SegmentSettings, sources: SourceFrames | None = None) -> tuple[VolumeRecord, Outcome]:
    """Labels on the source grid, outputs written, then the completion record (last)."""

    t = time.perf_counter()
    vid, store = rec.volume_id, s.store()
    store.check_lease()  # a run that lost the output writes nothing more (LeaseLost stops the job)
    if rec.status == Status.OK and volume is not None:
        try:
            labels = finish_volume(np.asarray(prob), volume, s.threshold, PostProcess(s.largest_component, s.fill_holes),
                                   preprocess=s.bundle_info.preprocess, tta=s.tta)
            stats = volume_stats(labels, volume)
            mask_uri = store.output_uri(VolumeOutput.MASK, vid)
            storage.write_bytes(mask_uri, mask_to_nifti_bytes(labels, volume))
            slices_uri = store.output_uri(VolumeOutput.SLICES, vid)
            storage.write_bytes(slices_uri, slices_table_bytes(vid, labels))
            rec = replace(rec, mask_uri=mask_uri, slices_uri=slices_uri, modality=volume.modality or "",
                          metadata=json.dumps(volume.metadata, default=str), **stats)
            if s.qc:
                qc_uri = store.output_uri(VolumeOutput.QC, vid)
                storage.write_bytes(qc_uri, qc_montage_png(volume, labels, title=vid))
                rec.qc_uri = qc_uri
            if s.dicom_seg:
                rec.seg_uri, rec.seg_skipped = write_seg(labels, sources, rec, s)
            if s.rtstruct:
                rec.rtstruct_uri, rec.rtstruct_skipped = write_rtstruct(labels, sources, rec, s)
            if s.send_seg:  # a failed send keeps the volume ok: its row says, and a re-run sends
                store.check_lease()
                rec = send_record(rec, s.send_seg, s.output)
        except LeaseLost:
            raise
        except Exception as exc:  # noqa: BLE001 - the stage's guard: one volume, not the job
            rec = _failed(rec, ItemFailure.of(rec.source, exc, "writing the outputs"))
    rec.write_seconds = time.perf_counter() - t
    rec.finished = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    try:
        store.write_record(rec, s.run_id)
    except LeaseLost:
        raise
    except Exception as exc:  # noqa: BLE001 - the store failed past its retries (or worse): redo next run
        failure = ItemFailure.of(rec.source, exc, "recording the result")
        return _failed(rec, ItemFailure(f"{rec.source}: the result could not be recorded: {failure.error}",
                                        ErrorType.NOT_RECORDED),
                       mask_uri="", slices_uri="", qc_uri="", seg_uri="", rtstruct_uri=""), Outcome.UNRECORDED
    return rec, Outcome.DONE


def write_seg(labels: np.ndarray, sources: SourceFrames | None, rec: VolumeRecord,
              s: SegmentSettings) -> tuple[str, str]:
    """Write the volume's DICOM SEG: (seg uri, "") or ("", why there is none)."""

    if sources is None:
        return "", ("NIfTI input has no DICOM source images to reference" if rec.format == Format.NIFTI
                    else "no source images were kept")
    info = s.bundle_info
    repaired: set[str] = set()
    try:
        seg = build_seg(labels, sources, info.label_names, info.segment_codes,
                        SegIdentity(s.model_name, s.model_identity, software_version()), rec.volume_id, rec.fingerprint,
                        repaired)
        data = seg_bytes(seg)
    except SegSkipped as exc:
        return "", str(exc)
    except Exception as exc:  # noqa: BLE001 - highdicom's text may quote a source value: its type only
        failure = ItemFailure.of(rec.source, exc, "building the DICOM SEG")
        return "", failure.error
    uri = OutputStore(s.output).output_uri(VolumeOutput.SEG, rec.volume_id)
    storage.write_bytes(uri, data)
    note = (f"written; left empty or out for values not valid for their VR: {', '.join(sorted(repaired))}"
            if repaired else "")
    return uri, note


def write_rtstruct(labels: np.ndarray, sources: SourceFrames | None, rec: VolumeRecord,
                   s: SegmentSettings) -> tuple[str, str]:
    """Write the volume's DICOM RT Structure Set: (rtstruct uri, what it left out or "") or ("",
    why there is none). RtstructSkipped is a reason, any other failure is the item failure's text
    (never the library's own, which may quote a source value), as for the SEG."""

    if sources is None and rec.format != Format.NIFTI:
        return "", "no source images were kept"
    info = s.bundle_info
    try:
        rt = build_rtstruct(labels, sources, info.label_names, info.segment_codes,
                            SegIdentity(s.model_name, s.model_identity, software_version()), rec.volume_id,
                            rec.fingerprint)
        data = rtstruct_bytes(rt.dataset)
    except RtstructSkipped as exc:
        return "", str(exc)
    except Exception as exc:  # noqa: BLE001 - a library's text may quote a source value: its type only
        return "", ItemFailure.of(rec.source, exc, "building the RTSTRUCT").error
    uri = OutputStore(s.output).output_uri(VolumeOutput.RTSTRUCT, rec.volume_id)
    storage.write_bytes(uri, data)
    return uri, rt.note()
