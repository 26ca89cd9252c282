"""Budgets hold while decoding: the resident memory of every process of a `unet segment` run (the
driver, Ray's raylet and GCS, every worker, the predictor) is sampled while it meets each bomb
beside a good series (slow tier: real processes, GiB-sized expansions).

The bound: no process goes over the decompression budget the run is given plus a margin of
1.5 GiB, which covers Python, Ray, TensorFlow (the predictor) and the decoding of the good series
(a worker of such a run peaks near 0.6 GiB, the predictor near 1 GiB). It holds at a small budget
(256 MiB) and at the default one (2 GiB), where each bomb still goes beyond it. Before the budgets
held while decoding, the deflate bomb alone took one worker to 12.5 GiB; before deflated data was
inflated as it is read, one process reached 4.3 GiB at the default budget.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path

import psutil
import pytest

from support import bombs
from support.bundles import tiny_bundle
from support.dicom_factory import write_series
from support.jobrun import finish, start_unet
from unet_core.config import Limits
from unet_core.segmentation.tables import read_volume_table
from unet_core.synthetic import SeriesSpec

pytestmark = pytest.mark.slow

GIB = 2**30
DEFAULT_BUDGET = Limits().max_decompressed_bytes  # 2 GiB
MARGIN = int(1.5 * GIB)
EXPANDS_TO = 3 * GIB  # what each bomb would take if it were expanded whole: beyond either budget


class SessionRSS:
    """Peak RSS of each process in the session `sid` (a job started with start_new_session),
    sampled every 50 ms; processes are keyed by pid and their command line."""

    def __init__(self, sid: int):
        self.sid, self.peaks, self._stop = sid, {}, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for p in psutil.process_iter(["pid", "cmdline"]):
                try:
                    if os.getsid(p.pid) == self.sid:
                        key = (p.pid, " ".join(p.info["cmdline"] or [])[:120])
                        self.peaks[key] = max(self.peaks.get(key, 0), p.memory_info().rss)
                except (psutil.NoSuchProcess, psutil.AccessDenied, ProcessLookupError):
                    continue
            self._stop.wait(0.05)

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        return self.peaks


@pytest.mark.parametrize("budget", [256 * 2**20, None], ids=["256MiB", "default"])
def test_no_process_of_a_job_goes_over_the_budget_while_it_meets_each_bomb(tmp_path, budget):
    root = tmp_path / "archive"
    write_series(root / "good", SeriesSpec(rows=64, columns=64, n_slices=12))
    bad = {
        "deflate/IM0001.dcm": bombs.deflate_bomb_dicom(EXPANDS_TO),
        "j2k/IM0001.dcm": bombs.j2k_declared_size_dicom(),
        "zipped/export.zip": bombs.zip_bomb(EXPANDS_TO),
        "nifti/bomb.nii.gz": bombs.gzip_bomb_nifti(EXPANDS_TO),
    }
    for name, data in bad.items():
        assert len(data) < 8 * 2**20, (name, len(data))
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    bundle = tiny_bundle(str(tmp_path / "bundle"), size=64, base_filters=8, depth=3, name="bombs")
    out = tmp_path / "out"
    limit = ["--max-decompressed-bytes", str(budget)] if budget else []  # None: the default, not passed
    proc = start_unet("segment", "--input", str(root), "--model", bundle, "--output", str(out), *limit,
                      "--batch-size", "4")
    sampler = SessionRSS(proc.pid)
    rc, log = finish(proc)
    peaks = sampler.stop()
    assert rc == 3, log[-3000:]  # the bombs are error rows; the job completes
    assert any("raylet" in cmd for _, cmd in peaks) and any("PredictorServer" in cmd for _, cmd in peaks), peaks
    worst = max(peaks.items(), key=lambda kv: kv[1])
    assert worst[1] < (budget or DEFAULT_BUDGET) + MARGIN, f"{worst[0]} peaked at {worst[1] / GIB:.2f} GiB"
    print(f"budget {(budget or DEFAULT_BUDGET) / GIB:.2f} GiB: the highest process peaked at {worst[1] / GIB:.2f} GiB: "
          f"{worst[0]}")

    by_folder = {Path(r["source"]).relative_to(root).parts[0]: r for r in read_volume_table(str(out))}
    assert {k: (r["status"], r["error_type"]) for k, r in by_folder.items()} == {
        "good": ("ok", ""),
        "deflate": ("error", "resource_limit"),  # inflated by the bounded stream up to the budget
        "j2k": ("error", "invalid_pixel_data"),  # refused from its codestream header, never decoded
        "zipped": ("error", "resource_limit"),  # the member's declared size is over the budget
        "nifti": ("error", "resource_limit"),  # the gzip stream is read up to the budget
    }
