"""The layers hold: `unet_core` never imports Ray, the scan-plan-decode path of a segment run never
imports TensorFlow or Keras (a CPU decode worker stays small and starts fast), and no module of
`unet_core/` or `jobs/` grows past 500 lines."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 500


def _sources(*packages: str) -> list[Path]:
    return sorted(p for pkg in packages for p in (ROOT / pkg).rglob("*.py"))


def test_unet_core_never_imports_ray():
    for path in _sources("unet_core"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n == "ray" or n.startswith("ray.") for n in names), f"{path}: imports {names}"


def test_no_module_is_over_500_lines():
    long = {str(p.relative_to(ROOT)): n for p in _sources("unet_core", "jobs")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, long


DECODE_PATH = r"""
import sys, pathlib
from unet_core.bundle import BundleInfo
from unet_core.config import PreprocessConfig
from unet_core.segmentation import planning
from unet_core.segmentation.settings import SegmentSettings
from unet_core.segmentation.stages import decode_volume
from unet_core.synthetic import Phantom, SeriesSpec, dicom_series

root = pathlib.Path(sys.argv[1])
for name, data in dicom_series(Phantom.random(1), SeriesSpec(rows=16, columns=16, n_slices=4), seed=1)[0]:
    (root / "in").mkdir(parents=True, exist_ok=True)
    (root / "in" / name).write_bytes(data)
s = SegmentSettings(output=str(root / "out"), bundle_info=BundleInfo(PreprocessConfig(input_size=16)),
                    model_name="m", model_identity="id", threshold=0.5, buckets=1, resume=False)
rows, _, _ = planning.scan_partition([planning.Unit(str(root / "in"), True)], [], s.limits, False, ())
(p,) = planning.merge_bucket(planning.fragments_of(rows, 1), {}, s)
d = decode_volume(p, s)
assert d.error is None and d.x.shape[0] == 4, d.error
print(sorted(m for m in ("tensorflow", "keras", "ray", "matplotlib") if m in sys.modules))
"""


def test_the_decode_path_imports_no_tensorflow_keras_or_ray(tmp_path):
    out = subprocess.run([sys.executable, "-c", DECODE_PATH, str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout
