"""The output policy, without starting a job: progress lines and the terminal display, the
training watcher's lines from typed events, the loggers that may never show credentials, and the
one private Ray API the quieting relies on (checked against the pinned Ray version)."""
from __future__ import annotations

import inspect
import io
import logging

import pytest

from unet_core.training.events import EpochDone, HistoryEvent, HistoryKind, Resumed, StepDone


def test_progress_lines_when_not_a_terminal(monkeypatch):
    from jobs import progress

    monkeypatch.setattr(progress, "interval", lambda: 0.0)
    stream = io.StringIO()
    p = progress.Progress("segment", 4, "volumes", rate_unit="slices", stream=stream, tty=False)
    for n in range(1, 5):
        p.update(n, failed=int(n > 2), amount=10 * n)
    p.close()
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("segment: 1/4 volumes (25%)") and "slices/s" in lines[0] and "ETA" in lines[0]
    assert "1 failed" in lines[-1] and lines[-1].startswith("segment: 4/4 volumes (100%)")


def test_progress_display_on_a_terminal():
    from jobs.progress import Progress

    stream = io.StringIO()
    with Progress("segment", 3, "volumes", rate_unit="slices", stream=stream, tty=True) as p:
        for n in range(1, 4):
            p.update(n, failed=1, amount=5 * n)
    text = stream.getvalue()
    assert "segment" in text and "3/3" in text and "1 failed" in text and "slices/s" in text


def test_epoch_line_format():
    from jobs.train_progress import epoch_line

    line = epoch_line(EpochDone(2, 12, {"train_loss": 0.41234, "train_dice_hard": 0.8, "val_dice_hard": 0.77,
                                        "learning_rate": 1e-4, "slices_per_second": 24.13, "epoch_seconds": 38.2},
                                None, False, 0, 0.0))
    assert line == "epoch   3/12  loss 0.4123  dice 0.8000  val dice 0.7700  lr 1.00e-04  24.1 slices/s  38s"


def test_learning_rate_changes_and_early_stopping_are_announced_once():
    from jobs.train_progress import TrainWatcher

    stream = io.StringIO()
    watcher = TrainWatcher(box=None, stream=stream)
    metrics = {"train_loss": 0.5, "train_dice_hard": 0.5, "val_dice_hard": 0.4, "learning_rate": 1e-3,
               "slices_per_second": 10.0, "epoch_seconds": 3.0}
    watcher._handle(Resumed(3))
    for step in (1, 2, 3):
        watcher._handle(StepDone(3, step, 3))
    watcher._handle(EpochDone(3, 9, metrics, new_learning_rate=5e-4, stop=False, best_epoch=1, best_value=0.45))
    watcher._handle(EpochDone(4, 9, metrics, new_learning_rate=None, stop=True, best_epoch=1, best_value=0.45))
    text = stream.getvalue()
    assert text.count("learning rate reduced to 5.00e-04") == 1
    assert text.count("stopped early: best val Dice 0.4500 at epoch 2") == 1
    assert "resumed from the last checkpoint: epoch 4" in text
    assert [line.split()[1] for line in text.splitlines() if line.startswith("epoch ")] == ["4/9", "5/9"]


def test_history_events_keep_the_stored_json_shape():
    resumed = HistoryEvent(HistoryKind.RESUMED, 2, time=5.0)
    assert resumed.to_json() == {"event": "resumed", "from_epoch": 2, "time": 5.0}
    assert HistoryEvent.from_json(resumed.to_json()) == resumed
    stopped = HistoryEvent(HistoryKind.EARLY_STOPPING, 7, best_epoch=3, time=6.0)
    assert stopped.to_json() == {"event": "early_stopping", "epoch": 7, "best_epoch": 3, "time": 6.0}
    assert HistoryEvent.from_json(stopped.to_json()) == stopped


@pytest.mark.parametrize("verbose", [False, True])
def test_credential_loggers_stay_at_info_even_with_v(verbose):
    """botocore / urllib3 log request headers (a session token among them) at DEBUG."""
    from jobs.output import CREDENTIAL_LOGGERS, configure

    saved = {n: logging.getLogger(n).level for n in (*CREDENTIAL_LOGGERS, "")}
    try:
        configure(verbose)
        for name in CREDENTIAL_LOGGERS:
            assert not logging.getLogger(name).isEnabledFor(logging.DEBUG), name
            assert logging.getLogger(name).isEnabledFor(logging.INFO) == verbose, name  # quiet: nothing below WARNING
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def test_the_private_ray_api_the_quieting_patches_is_where_it_was():
    """jobs/quieting.py: drop_raylet_noise replaces ray._private.worker.print_to_stdstream. Checked
    against the pinned Ray version: an upgrade that moves or reshapes it fails here."""
    import ray
    import ray._private.worker as ray_worker

    from jobs import quieting

    assert ray.__version__ == "2.60.0", "the pinned Ray changed: check drop_raylet_noise against it, then this pin"
    original = getattr(ray_worker.print_to_stdstream, "_unet_original", ray_worker.print_to_stdstream)
    assert list(inspect.signature(original).parameters)[:2] == ["data", "ignore_prefix"]
    printed = []
    saved = ray_worker.print_to_stdstream
    try:
        ray_worker.print_to_stdstream = lambda data, ignore_prefix: printed.append(data)
        quieting.drop_raylet_noise(verbose=False)
        notice = {"pid": "raylet", "lines": [f"WARNING: 12 PYTHON {quieting.RAYLET_NOTICE} ..."]}
        other = {"pid": "raylet", "lines": ["something else"]}
        # what the driver receives when a node goes (jobs/nodes.py says it in one line instead)
        death = {"pid": "raylet", "lines": ["The node with node id: 3f2a and address: 10.0.0.7 and node name: "
                                            "10.0.0.7 has been marked dead because the detector has missed too many "
                                            "heartbeats from it."]}
        ray_worker.print_to_stdstream(notice, False)
        ray_worker.print_to_stdstream(other, False)
        ray_worker.print_to_stdstream(death, False)
        assert printed == [other]
        quieting.drop_raylet_noise(verbose=True)  # patches the original again, not the filter
        ray_worker.print_to_stdstream(notice, False)
        ray_worker.print_to_stdstream(death, False)
        assert printed == [other, notice, death]
    finally:
        ray_worker.print_to_stdstream = saved


def test_quiet_mode_holds_back_a_dead_nodes_raylet_log_tail_and_verbose_shows_it(tmp_path):
    """The notice a lost node's agents publish to the driver, as the pinned Ray writes it (its own
    report_raylet_error_logs on a raylet.out that ends without SIGTERM): quiet drops it whole (jobs/nodes.py
    says one line instead), -v prints it."""
    import ray._private.worker as ray_worker
    from ray._private import process_watcher

    from jobs import quieting

    (tmp_path / "raylet.out").write_text("".join(f"[2026-12-06 08:00:{i:02d}] raylet line {i}\n" for i in range(30)))

    class Publisher:  # the GCS client's one call that report_raylet_error_logs makes
        messages: list[str] = []

        def publish_error(self, key, error_type, message, job_id, timeout):
            self.messages.append(message)

    process_watcher.report_raylet_error_logs(str(tmp_path), Publisher())
    (message,) = Publisher.messages
    assert message.startswith("Raylet is terminated") and message.count("raylet line") == 20
    # as listen_error_messages hands it to print_to_stdstream on the driver
    data = {"lines": [message], "pid": "raylet", "is_err": False}
    printed = []
    saved = ray_worker.print_to_stdstream
    try:
        ray_worker.print_to_stdstream = lambda data, ignore_prefix: printed.append(data)
        quieting.drop_raylet_noise(verbose=False)
        ray_worker.print_to_stdstream(data, False)
        assert printed == []
        quieting.drop_raylet_noise(verbose=True)
        ray_worker.print_to_stdstream(data, False)
        assert printed == [data]
    finally:
        ray_worker.print_to_stdstream = saved


def test_printed_text_never_carries_control_characters():
    from jobs.output import SafeFormatter, safe

    name = "/archive/\x1b]0;pwned\x07scan\x1b[2J.dcm\nfake line\udce9"
    shown = safe(f"failed: {name}")
    assert not any(ord(c) < 32 or 0x7f <= ord(c) <= 0x9f for c in shown)
    assert "\\x1b]0;pwned\\x07" in shown and "\\x0afake line" in shown and "\\udce9" in shown
    record = logging.LogRecord("unet", logging.ERROR, __file__, 1, "%s: bad", (name,), None)
    assert "\x1b" not in SafeFormatter("%(message)s").format(record)


def test_report_links_are_relative_or_https_only():
    from unet_core.report import safe_href

    assert safe_href("qc/dcm-0123.png") == "qc/dcm-0123.png"
    assert safe_href("https://pacs.example.org/viewer?s=1") == "https://pacs.example.org/viewer?s=1"
    for bad in ("javascript:alert(1)", "file:///etc/passwd", "/etc/passwd", "data:text/html,x", "qc/\x00.png"):
        assert safe_href(bad) == "#", bad
    assert safe_href("qc/a b\"<x>.png") == "qc/a%20b%22%3Cx%3E.png"


def test_report_groups_failures_by_reason_and_folder_and_scales_its_time_axis():
    """24 identical failures of one folder are one line with a count and examples; the throughput
    of a one-minute run is binned in seconds, of a day-long run in hours."""
    from unet_core.errors import ErrorType
    from unet_core.report import VolumeAggregates, _throughput_series
    from unet_core.segmentation.records import Format, Status, VolumeRecord

    def row(**kw) -> VolumeRecord:
        return VolumeRecord(**{"source": "", "format": Format.DICOM, "series_uid": "", **kw})

    agg = VolumeAggregates()
    agg.add([row(volume_id=f"obj-{i:016x}", source=f"/a/gz/f{i}.dcm", status=Status.ERROR, error_type=ErrorType.NOT_DICOM, error="x")
             for i in range(24)]
            + [row(volume_id="dcm-1", source="/a/ct/", status=Status.ERROR, error_type=ErrorType.TRUNCATED, error="y")])
    groups, rest = agg.failure_table()
    assert rest == 0 and groups[0] == {"reason": "not_dicom", "folder": "/a/gz/", "count": 24,
                                       "examples": ["f0.dcm", "f1.dcm", "f2.dcm"]}
    assert groups[1]["folder"] == "/a/" and groups[1]["count"] == 1

    short = VolumeAggregates()
    short.add([row(volume_id=f"v{i}", status=Status.OK, finished=f"2026-01-01T10:00:{i:02d}Z", n_slices=10)
               for i in range(0, 60, 3)])
    x, volumes, slices, width, unit = _throughput_series(short)
    assert unit == "seconds" and sum(volumes) == 20 and 20 <= len(x) <= 61 and max(slices) > 0
    long = VolumeAggregates()
    long.add([row(volume_id=f"v{i}", status=Status.OK, finished=f"2026-01-01T{h:02d}:{m:02d}:00Z", n_slices=1)
              for i, (h, m) in enumerate((h, m) for h in range(20) for m in (0, 30))])
    x, volumes, _, width, unit = _throughput_series(long)
    assert unit == "hours" and sum(volumes) == 40 and len(x) <= 41


def test_a_lost_node_is_one_line_naming_it():
    from jobs.nodes import lost_node_line

    node = {"NodeID": "1a2b3c4d5e6f", "NodeManagerAddress": "10.0.3.7"}
    assert lost_node_line(node, 5) == ("lost node 10.0.3.7 (node 1a2b3c4d): 5 tasks there failed and are retried on "
                                       "the other nodes")
    assert "\n" not in lost_node_line(node, None) and "retried" in lost_node_line(node, None)
