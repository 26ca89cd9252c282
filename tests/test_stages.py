"""The per-volume stages guard each volume, without Ray: whatever goes wrong in decode, predict or
write is that volume's row (and its completion record), never an exception out of the stage."""
from __future__ import annotations

import os

import numpy as np
import pytest

from tests.support.segment_run import segment_settings
from unet_core.errors import (
    ConfigError,
    InputError,
    InternalError,
    JobError,
    StorageError,
    UnetError,
)
from unet_core.segmentation import planning
from unet_core.segmentation.records import Action, Status
from unet_core.segmentation.stages import PredictionFailed, segment_volume
from unet_core.segmentation.store import OutputStore
from unet_core.synthetic import Phantom, SeriesSpec, dicom_series


def _planned(tmp_path):
    for fname, data in dicom_series(Phantom.random(3), SeriesSpec(rows=16, columns=16, n_slices=5), seed=3)[0]:
        (tmp_path / "in" / fname).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "in" / fname).write_bytes(data)
    s = segment_settings(str(tmp_path / "out"), buckets=1, resume=False)
    rows, _, _ = planning.scan_partition([planning.Unit(str(tmp_path / "in"), True)], [], s.limits, False, ())
    (p,) = planning.merge_bucket(planning.fragments_of(rows, 1), {}, s)
    assert p.action == Action.SEGMENT
    return p, s


def _ones(x):
    return np.ones((*x.shape[:3], 1), np.float32), 0.0, 1


def test_a_good_volume_is_ok(tmp_path):
    p, s = _planned(tmp_path)
    rec, how = segment_volume(p, s, _ones)
    assert how == "done" and rec.status == Status.OK and rec.mask_voxels == 16 * 16 * 5
    assert os.path.exists(rec.mask_uri) and OutputStore(s.output).read_record(p.volume_id, p.fingerprint).status == Status.OK


@pytest.mark.parametrize("stage", ["decode", "predict", "write"])
def test_an_unexpected_exception_in_any_stage_is_the_volumes_internal_row(tmp_path, monkeypatch, stage):
    p, s = _planned(tmp_path)
    predict = _ones

    def boom(*a, **kw):
        raise RuntimeError(f"boom in {stage}")

    if stage == "decode":
        monkeypatch.setattr("unet_core.segmentation.stages.read_series_with_sources", boom)
    elif stage == "predict":
        predict = boom
    else:
        monkeypatch.setattr("unet_core.segmentation.stages.volume_stats", boom)
    rec, how = segment_volume(p, s, predict)
    assert how == "done" and rec.status == Status.ERROR and rec.error_type == "internal"
    # the exception's type is named; its text (which could quote data) goes to the -v log only
    assert rec.error.startswith(p.source) and "(RuntimeError" in rec.error and "boom" not in rec.error
    # nothing of the volume's outputs was written before the failure (the write stage fails in
    # the mask's statistics, before its first object), and its row names none
    assert not rec.mask_uri and not rec.slices_uri and not (tmp_path / "out" / "masks").exists()
    # the error is recorded, so the volume table has its row and the next run retries it
    assert OutputStore(s.output).read_record(p.volume_id, p.fingerprint).error_type == "internal"


def test_a_prediction_that_fails_every_attempt_is_a_prediction_row(tmp_path):
    p, s = _planned(tmp_path)

    def dies(x):
        raise PredictionFailed("the predictor process died on every attempt", attempts=3)

    rec, _ = segment_volume(p, s, dies)
    assert rec.status == Status.ERROR and rec.error_type == "prediction" and rec.attempts == 3


def test_an_object_gone_since_planning_is_a_storage_row(tmp_path):
    p, s = _planned(tmp_path)
    os.remove(sorted((tmp_path / "in").rglob("*.dcm"))[2])
    rec, _ = segment_volume(p, s, _ones)
    assert rec.status == Status.ERROR and rec.error_type == "storage" and "object not found" in rec.error


def test_error_kinds_are_separate_classes_with_their_exit_status():
    """Four kinds (input, storage, configuration, internal), none a subclass of another, each with
    its exit status through the one enum."""
    from jobs.exits import Exit, run_main

    kinds = (InputError, StorageError, ConfigError, InternalError)
    for a in kinds:
        assert issubclass(a, UnetError)
        for b in kinds:
            assert a is b or not issubclass(a, b), (a, b)

    def raising(exc):
        def body(argv):
            raise exc
        return body

    assert run_main(raising(StorageError("s3://out/x: access denied")), []) == Exit.STORAGE == 5
    assert run_main(raising(InputError("no objects under s3://in/")), []) == Exit.USAGE == 2
    assert run_main(raising(ConfigError("--buckets must be positive")), []) == Exit.USAGE
    assert run_main(raising(JobError("training failed after 2 restarts")), []) == Exit.INTERNAL == 1
    assert run_main(lambda argv: Exit.SOME_FAILED, []) == 3
    with pytest.raises(ZeroDivisionError):  # a bug keeps its traceback
        run_main(raising(ZeroDivisionError()), [])


def test_storage_settings_reach_a_worker_in_the_run_settings_not_its_environment(tmp_path, monkeypatch):
    """Retries and --private-outputs travel in SegmentSettings.storage: a worker that rebuilds the
    settings (ray_executor.worker_settings, as every Ray stage does) uses them, whatever its environment."""
    import json

    from jobs import ray_executor
    from unet_core.config import to_dict
    from unet_core.io import dicomweb, storage
    from unet_core.io.process_settings import StorageSettings

    monkeypatch.setattr(storage, "RETRY_ATTEMPTS", 6)
    monkeypatch.setattr(dicomweb, "RETRY_ATTEMPTS", 6)
    monkeypatch.setattr(storage, "PRIVATE_OUTPUTS", None)
    # on the driver, the environment (and --private-outputs, which sets it) are the defaults
    monkeypatch.setenv(storage.PRIVATE_OUTPUTS_ENV, "1")
    assert segment_settings().storage == StorageSettings(6, 6, private_outputs=True)
    monkeypatch.delenv(storage.PRIVATE_OUTPUTS_ENV)
    assert StorageSettings.of_process() == StorageSettings(6, 6, private_outputs=False)

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.dcm").write_bytes(b"not DICOM")
    s = segment_settings(str(tmp_path / "out"), buckets=1, storage=StorageSettings(2, 3, private_outputs=True))
    cfg = to_dict(s)  # what crosses to a worker, whose environment says nothing
    frags = ray_executor.scan_partitions({"partition": [0], "units": [json.dumps([[str(tmp_path / "in") + "/", True]])]},
                                         cfg, [str(tmp_path / "in")])
    assert frags.num_rows == 1
    assert (storage.RETRY_ATTEMPTS, dicomweb.RETRY_ATTEMPTS) == (2, 3)
    part = OutputStore(s.output).index_part_uri(0)
    assert os.stat(part).st_mode & 0o777 == 0o600  # written private although no variable said so
    with pytest.raises(ConfigError, match="retries must be >= 1"):
        StorageSettings(retries=0)
