"""What the benchmarks share: synthetic archives, an untrained bundle, a memory sampler, and the
targets `--check` holds each measured ratio to."""
from __future__ import annotations

import os
from dataclasses import dataclass

import psutil

from jobs.progress import Ticker
from jobs.quieting import import_tensorflow
from unet_core.bundle import BundleInfo, save_bundle
from unet_core.config import ModelConfig, PreprocessConfig
from unet_core.synthetic import Phantom, SeriesSpec, dicom_series


def rate(n: int, seconds: float) -> float:
    return n / max(seconds, 1e-9)


def write_ct_archive(root: str, n_series: int, rows: int, slices: int) -> None:
    spec = SeriesSpec(rows=rows, columns=rows, n_slices=slices, pixel_spacing=(384 / rows, 384 / rows), slice_step=5.0,
                      center=(0.0, 0.0, -30.0))
    for s in range(n_series):
        for name, data in dicom_series(Phantom.random(s), spec, seed=s)[0]:
            path = os.path.join(root, f"series_{s:03d}", name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(data)


def make_bundle(path: str, size: int, filters: int) -> None:
    import_tensorflow(verbose=False)  # quietly: TensorFlow's C++ start-up notices are not for the reader
    import keras

    from unet_core.model import build_unet

    keras.utils.set_random_seed(0)
    cfg = ModelConfig(input_size=size, base_filters=filters)
    save_bundle(path, build_unet(cfg), BundleInfo(preprocess=PreprocessConfig(input_size=size), model=cfg,
                                                  label_names=["background", "target"], name="bench"))


class RayMemorySampler(Ticker):
    """Peak of the summed resident memory of the driver and every Ray process, sampled."""

    def __init__(self, interval: float = 0.1):
        super().__init__()
        self.every, self.peak, self.parts = interval, 0, {}

    def tick(self) -> None:
        me = os.getpid()
        parts: dict[str, int] = {}
        for p in psutil.process_iter(["pid", "cmdline", "memory_info"]):
            try:
                cmd = " ".join(p.info["cmdline"] or [])
                if p.info["pid"] == me or "ray::" in cmd or "/ray/" in cmd or "raylet" in cmd:
                    kind = ("driver" if p.info["pid"] == me else "predictors" if "PredictorServer" in cmd
                            else "task workers, Ray's actors" if cmd.startswith("ray::") else "Ray's services")
                    parts[kind] = parts.get(kind, 0) + p.info["memory_info"].rss
            except Exception:  # noqa: BLE001 - processes come and go
                continue
        if sum(parts.values()) > self.peak:
            self.peak, self.parts = sum(parts.values()), parts


# ---- targets ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    """What a measured ratio must reach: at least `at_least`, or at most `at_most`."""

    what: str
    at_least: float | None = None
    at_most: float | None = None

    def met(self, measured: float) -> bool:
        if measured != measured:  # NaN: nothing was measured
            return False
        return (self.at_least is None or measured >= self.at_least) and (self.at_most is None or measured <= self.at_most)

    def __str__(self) -> str:
        return f">= {self.at_least:g}" if self.at_least is not None else f"<= {self.at_most:g}"


# Every target of `unet bench ... --check`, in one place (docs/benchmarks.md gives the figures).
TARGETS: dict[str, Target] = {
    "io.header_scan": Target("header scan, against pydicom's dcmread(stop_before_pixels, specific_tags)", at_least=2.5),
    "io.uncompressed": Target("full decode, uncompressed, against dcmread + pixel_array + rescale", at_least=1.0),
    "io.rle": Target("full decode, RLE, against dcmread + pixel_array + rescale", at_least=1.0),
    "io.j2k": Target("full decode, JPEG 2000, against the codec alone", at_least=0.8),
    "zip.s3_bytes": Target("bytes S3 returned for the zip's members, against the members' stored bytes", at_most=1.2),
    "zip.local_time": Target("the zip's run time against the folder's, locally", at_most=1.2),
    "zip.s3_time": Target("the zip's run time against the folder's, on S3", at_most=1.2),
    "select.planning": Target("planning with the chest CT rules against without", at_most=1.1),
}


@dataclass(frozen=True)
class Check:
    key: str  # of TARGETS
    measured: float

    @property
    def target(self) -> Target:
        return TARGETS[self.key]

    @property
    def ok(self) -> bool:
        return self.target.met(self.measured)

    def line(self) -> str:
        return (f"  {'ok    ' if self.ok else 'FAILED'} {self.key:<18}{self.measured:>8.2f}x   target {self.target!s:<8}"
                f"{self.target.what}")


def report_checks(checks: list[Check]) -> bool:
    """Print each measured ratio against its target; True when all are met."""
    print("check: measured against the targets (jobs/bench/common.py: TARGETS)")
    for c in checks:
        print(c.line())
    return all(c.ok for c in checks)
