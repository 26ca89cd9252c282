"""What a person sees: quiet by default in every process, -v shows everything, live progress, one
line per epoch, the run reports (every image and link resolves), and `unet status`."""
from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from support.bundles import tiny_bundle
from support.jobrun import job_env, run_unet

pytestmark = pytest.mark.e2e

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
        target = page.parent / ref
        assert target.is_file() or (ref.endswith("/") and target.is_dir()), f"{page}: {ref} does not resolve"
    return parser.refs


def test_segment_report_and_status(small, tmp_path):
    out = tmp_path / "out"
    rc, text = run_unet("segment", "--input", str(small / "archive"), "--model", str(small / "bundle"), "--output",
                        str(out), "--qc")
    assert rc == 0, text
    refs = _check_page(out / "report.html")
    assert {"report/throughput.png", "report/volume_ml.png", "report/mean_hu.png", "summary.json"} <= set(refs)
    assert sum(r.startswith("qc/") and r != "qc/" for r in refs) == 6  # 3 montages, each an image inside its link
    assert {"volumes/", "series_index/", "masks/", "qc/"} <= set(refs)  # each table folder once
    assert not any(r.startswith("volumes/part-") for r in refs)
    page = (out / "report.html").read_text()
    assert "Slowest volumes" in page and "ok</td>" in page
    rc, status = run_unet("status", str(out))
    assert rc == 0
    assert "volumes: 3 ok, 0 failed, 0 not selected, 0 objects skipped" in status
    assert "selection: every volume (no selection rules)" in status
    assert "a re-run would" in status and "report:" in status and "model: tiny" in status
    rc, status = run_unet("status", str(tmp_path))
    assert rc == 2 and "not a `unet segment` output" in status
