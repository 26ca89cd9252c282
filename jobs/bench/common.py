"""What the benchmarks share: synthetic archives, an untrained bundle, a memory sampler."""
from __future__ import annotations

import os

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
