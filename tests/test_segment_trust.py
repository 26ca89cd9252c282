"""Issue 32 on the segment run, on the serial executor: only "not found" is absence (an output
object that cannot be read fails `unet status` / `unet send` with exit 5, naming it); a run that
lost its lease stops and changes nothing more; a bug that fails every volume stops the run (exit 1); volumes found complete after a retry are
named as such, not as an interrupted run's."""
from __future__ import annotations

import logging
import os
import shutil
from dataclasses import replace

import pytest

from jobs import send, status
from jobs.exits import Exit, run_main
from jobs.segment_view import print_outcome
from tests.support.segment_run import bright, serial_plan, serial_run
from unet_core.errors import InternalError
from unet_core.io import dicomweb
from unet_core.io.lease import LEASE_FILE, Lease, LeaseInfo, LeaseLost
from unet_core.segmentation.executor import SerialExecutor, segment_stage, volumes_stage
from unet_core.segmentation.run import BREAKER_INTERNAL_ROWS, Pool, summarise
from unet_core.segmentation.store import Folder, OutputStore
from unet_core.synthetic_studies import write_studies


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    root = tmp_path_factory.mktemp("studies")
    write_studies(str(root), n_patients=1, studies_per_patient=1, size=16, seed=5, roles=("thick",))
    return root


@pytest.fixture
def output(studies, tmp_path):
    root = tmp_path / "in"
    shutil.copytree(studies, root)
    out = str(tmp_path / "out")
    serial_run([str(root)], out)
    return out


def _unreadable(uri: str) -> None:
    """Replace an object by a folder of the same name: it is there, and reading it fails."""
    os.remove(uri)
    os.makedirs(uri)


def test_status_fails_with_the_storage_error_when_the_summary_cannot_be_read(output, caplog):
    _unreadable(OutputStore(output).summary_uri)
    with caplog.at_level(logging.ERROR, logger="unet"):
        assert status.main([output]) == Exit.STORAGE
    assert "summary.json" in caplog.text and "not a `unet segment` output" not in caplog.text


def test_status_fails_with_the_storage_error_when_the_layout_cannot_be_read(output, caplog):
    _unreadable(OutputStore(output).layout_uri)
    with caplog.at_level(logging.ERROR, logger="unet"):
        assert status.main([output]) == Exit.STORAGE
    assert "layout.json" in caplog.text and "not a `unet segment` output" not in caplog.text


def test_status_of_a_folder_without_layout_is_still_not_a_segment_output(tmp_path, caplog):
    (tmp_path / "empty").mkdir()
    with caplog.at_level(logging.ERROR, logger="unet"):
        assert status.main([str(tmp_path / "empty")]) == Exit.USAGE
    assert "not a `unet segment` output" in caplog.text


def test_send_fails_with_the_storage_error_when_a_table_part_cannot_be_read(output, caplog, monkeypatch):
    monkeypatch.setattr(dicomweb, "probe", lambda uri: None)  # no server: the part fails before any send
    store = OutputStore(output)
    part = next(store.volume_part_uri(b) for b in range(4) if os.path.exists(store.volume_part_uri(b)))
    _unreadable(part)
    with caplog.at_level(logging.ERROR, logger="unet"):
        assert send.main([output, "--to", "dicomweb+http://127.0.0.1:9/dicom-web"]) == Exit.STORAGE
    assert os.path.basename(part) in caplog.text


# ---- the lease fence -------------------------------------------------------------------------------
def _files(out: str) -> dict[str, float]:
    return {os.path.join(d, n): os.stat(os.path.join(d, n)).st_mtime_ns
            for d, _, names in os.walk(out) for n in names if n != LEASE_FILE}


def test_a_run_whose_lease_is_taken_over_stops_and_writes_nothing_more(tmp_path):
    root = tmp_path / "in"
    write_studies(str(root), n_patients=1, studies_per_patient=1, size=16, seed=5, roles=("thick", "coronal", "mip"))
    out = str(tmp_path / "out")
    os.makedirs(out)
    lease_file = os.path.join(out, LEASE_FILE)
    seen: dict[str, float] = {}

    def taken_over(x):
        if not seen:  # another run takes the output over while this one predicts its first volume
            info = LeaseInfo.from_json(open(lease_file, "rb").read(), lease_file)
            with open(lease_file, "wb") as f:
                f.write(replace(info, token="another-run").to_json())
            seen.update(_files(out))
        return bright(x)

    with Lease(out, "unet segment") as lease, pytest.raises(LeaseLost):
        serial_run([str(root)], out, predict=taken_over, lease_token=lease.info.token)
    assert seen, "the run never reached a prediction"
    assert _files(out) == seen  # nothing written, rewritten or deleted after the takeover
    store = OutputStore(out)
    assert not os.path.exists(store.folder(Folder.RECORDS)) and not os.path.exists(store.folder(Folder.MASKS))


def test_a_fenced_run_that_keeps_its_lease_completes(studies, tmp_path):
    root = tmp_path / "in"
    shutil.copytree(studies, root)
    out = str(tmp_path / "out")
    os.makedirs(out)
    with Lease(out, "unet segment") as lease:
        result = serial_run([str(root)], out, lease_token=lease.info.token)
    assert result.summary.volumes_ok >= 1 and not os.path.exists(OutputStore(out).folder(Folder.PLAN))


# ---- the breaker -----------------------------------------------------------------------------------
def test_a_bug_that_fails_every_volume_stops_the_run_as_a_bug(tmp_path):
    root = tmp_path / "in"
    write_studies(str(root), n_patients=8, studies_per_patient=1, size=16, seed=7, roles=("thick", "coronal", "mip"))
    out = str(tmp_path / "out")
    calls = []

    def broken(x):
        calls.append(1)
        return {}["probabilities"]  # a regression: a plain KeyError on every volume

    with pytest.raises(InternalError, match="looks like a bug") as caught:
        serial_run([str(root)], out, predict=broken)
    assert len(calls) == BREAKER_INTERNAL_ROWS  # stopped at the 20th, not after every volume
    assert f"{BREAKER_INTERNAL_ROWS} of the {BREAKER_INTERNAL_ROWS} volumes" in str(caught.value)
    assert run_main(lambda argv: serial_run([str(root)], out, predict=broken), []) == Exit.INTERNAL


def test_internal_errors_below_the_breaker_stay_error_rows(studies, tmp_path):
    root = tmp_path / "in"
    shutil.copytree(studies, root)

    def broken(x):
        raise KeyError("probabilities")

    result = serial_run([str(root)], str(tmp_path / "out"), predict=broken)
    assert result.done.internal == result.done.failed >= 1
    assert result.summary.failures_by_type.get("internal") == result.done.internal


# ---- the summary's wording of volumes found complete -------------------------------------------------
class RetryingExecutor(SerialExecutor):
    """The serial executor, with the first volume's task run twice: as Ray retries a task whose
    node was lost after the task had written its completion record."""

    def segment_volumes(self, buckets, s, volumes):
        first = True
        for bucket in buckets:
            for planned in volumes_stage(bucket, s):
                if first:
                    segment_stage(planned, s, self.predict)  # its result lost with its node
                    first = False
                yield segment_stage(planned, s, self.predict)


def test_a_volume_found_complete_after_a_retry_is_not_called_an_interrupted_runs(studies, tmp_path, capsys):
    root = tmp_path / "in"
    shutil.copytree(studies, root)
    out = str(tmp_path / "out")
    run, planned = serial_plan([str(root)], out, run_id="run-1")
    run.executor = RetryingExecutor(bright)
    done = run.segment(planned)
    totals = run.finish(planned)
    summary = summarise(planned, done, totals, None, Pool(), 0.0)
    assert (done.retried, done.resumed, summary.retried_complete, summary.resumed_from_records) == (1, 0, 1, 0)
    print_outcome(planned, done, totals, summary, None, "report.html", 0.0)
    text = capsys.readouterr().out
    assert "1 found complete after a retry (recorded by this run's own earlier attempt" in text
    assert "interrupted" not in text


def test_a_volume_recorded_by_an_interrupted_run_is_named_as_such(studies, tmp_path, capsys):
    root = tmp_path / "in"
    shutil.copytree(studies, root)
    out = str(tmp_path / "out")
    run, planned = serial_plan([str(root)], out, run_id="run-1")
    first = run.segment(planned)  # interrupted before its table parts were written
    result = serial_run([str(root)], out, run_id="run-2")
    assert (result.done.resumed, result.done.retried) == (first.segmented, 0)
    assert result.summary.resumed_from_records == first.segmented and result.summary.retried_complete == 0
    print_outcome(result.planned, result.done, result.totals, result.summary, None, "report.html", 0.0)
    assert f"{first.segmented} already complete (recorded by an interrupted run" in capsys.readouterr().out


def test_status_says_when_the_last_run_did_not_finish_after_a_finished_one(studies, tmp_path, capsys):
    root = tmp_path / "in"
    shutil.copytree(studies, root)
    out = str(tmp_path / "out")
    serial_run([str(root)], out)
    write_studies(str(root / "new"), n_patients=1, studies_per_patient=1, size=16, seed=9, roles=("thick",))
    run, planned = serial_plan([str(root)], out)
    run.segment(planned)  # interrupted before its table parts were written: its plan is still there
    assert planned.todo and os.listdir(OutputStore(out).folder(Folder.PLAN))
    assert status.main([out]) == Exit.OK
    assert "the last run did not finish" in capsys.readouterr().out


def test_a_domain_error_inside_rays_wrapping_reaches_the_job_as_itself():
    from jobs.ray_executor import as_domain_errors, domain_error

    lost = LeaseLost("o/.unet-lease.json: another run holds the output")

    class RayTaskErrorLike(RuntimeError, LeaseLost):  # Ray's dual class (as_instanceof_cause)
        __module__ = "ray.exceptions"

        def __init__(self, cause):
            RuntimeError.__init__(self, "long Ray text")
            self.cause = cause

    class UserCodeExceptionLike(Exception):
        pass

    try:
        try:
            raise RayTaskErrorLike(lost)
        except RayTaskErrorLike as e:
            raise UserCodeExceptionLike("Ray Data: exception in user code") from e
    except UserCodeExceptionLike as wrapped:
        assert domain_error(wrapped) is lost
    with pytest.raises(LeaseLost) as caught, as_domain_errors():
        raise UserCodeExceptionLike("x") from RayTaskErrorLike(lost)
    assert caught.value is lost
    with pytest.raises(KeyError), as_domain_errors():  # anything else stays as it is
        raise KeyError("probabilities")
