"""What a person sees: quiet by default in every process, -v shows everything, live progress, one
line per epoch, the run reports (every image and link resolves), and `unet status`."""
from __future__ import annotations

import io
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from support.bundles import tiny_bundle
from support.jobrun import job_env, run_unet

# Lines that used to flood a run (issue: the run experience), from every kind of process.
NOISE = ["oneDNN", "cuda", "cuInit", "absl::InitializeLog", "Token authentication", "Execution plan",
         "streaming_executor", "PYTHON worker processes", "(PredictorServer", "(RayTrainWorker",
         "Reporting training result", "all_reduce", "PlacementGroupCleaner", "DeprecationWarning",
         "Progress bars disabled"]


def _noise(out: str) -> list[str]:
    return [n for n in NOISE if n.lower() in out.lower()]


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A 3-series CT archive, a tiny bundle, prepared training shards: all local files."""

    from unet_core.synthetic import (
        Phantom,
        SeriesSpec,
        dicom_series,
        write_training_set,
    )

    root = tmp_path_factory.mktemp("small")
    for s in range(3):
        folder = root / "archive" / f"series_{s}"
        folder.mkdir(parents=True)
        spec = SeriesSpec(rows=48, columns=48, n_slices=6, pixel_spacing=(8.0, 8.0), slice_step=10.0)
        for name, data in dicom_series(Phantom.random(s), spec, seed=s)[0]:
            (folder / name).write_bytes(data)
    tiny_bundle(str(root / "bundle"))
    write_training_set(str(root / "raw"), 4, size=32, n_slices=8, seed=1)
    rc, out = run_unet("prepare", "--images", str(root / "raw/images"), "--masks", str(root / "raw/masks"),
                       "--output", str(root / "prep"), "--input-size", "32", "--foreground-labels", "1",
                       "--val-fraction", "0.25")
    assert rc == 0, out
    return root


def test_segment_default_output_is_quiet_and_v_shows_everything(small, tmp_path):
    args = ["segment", "--input", str(small / "archive"), "--model", str(small / "bundle"), "--qc"]
    rc, out = run_unet(*args, "--output", str(tmp_path / "quiet"), env=job_env(UNET_PROGRESS_INTERVAL="1"))
    assert rc == 0, out
    assert _noise(out) == [], out
    assert "segmented 3 volumes" in out and "report:" in out
    assert len(out.strip().splitlines()) <= 12, out
    rc, loud = run_unet(*args, "--output", str(tmp_path / "loud"), "-v")
    assert rc == 0
    assert {"Execution plan", "(PredictorServer"} <= set(_noise(loud)), loud[-3000:]


def test_train_prints_one_line_per_epoch_from_rank_0_only(small, tmp_path):
    args = ["train", "--data", str(small / "prep"), "--workers", "2", "--epochs", "2", "--base-filters", "4",
            "--depth", "2", "--batch-size", "4", "--no-augment"]
    rc, out = run_unet(*args, "--output", str(tmp_path / "quiet"))
    assert rc == 0, out
    assert _noise(out) == [], out
    epochs = [line for line in out.splitlines() if line.startswith("epoch ")]
    assert [line.split()[1] for line in epochs] == ["1/2", "2/2"], out
    assert all(re.search(r"loss [\d.]+ +dice [\d.]+ +val dice [\d.]+ +lr [\d.e+-]+ +[\d.]+ slices/s +\d+s", e)
               for e in epochs), epochs
    _check_page(tmp_path / "quiet" / "report.html")
    rc, loud = run_unet(*args, "--output", str(tmp_path / "loud"), "-v")
    assert rc == 0
    assert "(RayTrainWorker" in loud or "oneDNN" in loud, loud[-3000:]


class _Refs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.refs.append(a["src"])
        if tag == "a":
            self.refs.append(a["href"])


def _check_page(page: Path) -> list[str]:
    """Every image and link of a report resolves to a file next to the page."""
    parser = _Refs()
    parser.feed(page.read_text())
    assert parser.refs
    for ref in parser.refs:
        assert "://" not in ref and not ref.startswith("/"), ref  # relative: opens from a bucket or a laptop
        assert (page.parent / ref).is_file(), f"{page}: {ref} does not resolve"
    return parser.refs


def test_segment_report_and_status(small, tmp_path):
    out = tmp_path / "out"
    rc, text = run_unet("segment", "--input", str(small / "archive"), "--model", str(small / "bundle"), "--output",
                        str(out), "--qc")
    assert rc == 0, text
    refs = _check_page(out / "report.html")
    assert {"report/throughput.png", "report/volume_ml.png", "report/mean_hu.png", "summary.json"} <= set(refs)
    assert sum(r.startswith("qc/") for r in refs) == 6  # 3 montages, each an image inside its link
    assert any(r.startswith("volumes/part-") for r in refs)
    page = (out / "report.html").read_text()
    assert "Slowest volumes" in page and "ok</td>" in page
    rc, status = run_unet("status", str(out))
    assert rc == 0
    assert "volumes: 3 ok, 0 failed, 0 objects skipped" in status
    assert "a re-run would" in status and "report:" in status and "model: tiny" in status
    rc, status = run_unet("status", str(tmp_path))
    assert rc == 2 and "not a `unet segment` output" in status


def test_progress_lines_when_not_a_terminal(monkeypatch):
    from jobs import console

    monkeypatch.setattr(console, "interval", lambda: 0.0)
    stream = io.StringIO()
    p = console.Progress("segment", 4, "volumes", rate_unit="slices", stream=stream, tty=False)
    for n in range(1, 5):
        p.update(n, failed=int(n > 2), amount=10 * n)
    p.close()
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("segment: 1/4 volumes (25%)") and "slices/s" in lines[0] and "ETA" in lines[0]
    assert "1 failed" in lines[-1] and lines[-1].startswith("segment: 4/4 volumes (100%)")


def test_progress_display_on_a_terminal():
    from jobs import console

    stream = io.StringIO()
    with console.Progress("segment", 3, "volumes", rate_unit="slices", stream=stream, tty=True) as p:
        for n in range(1, 4):
            p.update(n, failed=1, amount=5 * n)
    text = stream.getvalue()
    assert "segment" in text and "3/3" in text and "1 failed" in text and "slices/s" in text


def test_epoch_line_format():
    from jobs.console import epoch_line

    line = epoch_line({"epoch": 2, "epochs": 12, "metrics": {"train_loss": 0.41234, "train_dice_hard": 0.8,
                                                             "val_dice_hard": 0.77, "learning_rate": 1e-4,
                                                             "slices_per_second": 24.13, "epoch_seconds": 38.2}})
    assert line == "epoch   3/12  loss 0.4123  dice 0.8000  val dice 0.7700  lr 1.00e-04  24.1 slices/s  38s"


def test_learning_rate_changes_and_early_stopping_are_announced_once():
    from jobs.console import TrainWatcher

    stream = io.StringIO()
    watcher = TrainWatcher(box=None, stream=stream)
    metrics = {"train_loss": 0.5, "train_dice_hard": 0.5, "val_dice_hard": 0.4, "learning_rate": 1e-3,
               "slices_per_second": 10.0, "epoch_seconds": 3.0}
    watcher._handle({"kind": "resumed", "epoch": 3})
    for step in (1, 2, 3):
        watcher._handle({"kind": "step", "epoch": 3, "step": step, "steps": 3})
    watcher._handle({"kind": "epoch", "epoch": 3, "epochs": 9, "metrics": metrics, "new_learning_rate": 5e-4,
                     "stop": False, "best_epoch": 1, "best_value": 0.45})
    watcher._handle({"kind": "epoch", "epoch": 4, "epochs": 9, "metrics": metrics, "new_learning_rate": None,
                     "stop": True, "best_epoch": 1, "best_value": 0.45})
    text = stream.getvalue()
    assert text.count("learning rate reduced to 5.00e-04") == 1
    assert text.count("stopped early: best val Dice 0.4500 at epoch 2") == 1
    assert "resumed from the last checkpoint: epoch 4" in text
    assert [line.split()[1] for line in text.splitlines() if line.startswith("epoch ")] == ["4/9", "5/9"]
