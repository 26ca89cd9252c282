"""`unet train` with a seed repeats bit for bit, on a quiet machine and on a busy one (issue #30):
the same command twice, one run while CPU-burning processes compete with it, gives identical
arrays in model.keras; another seed gives other weights."""
from __future__ import annotations

import io
import os
import subprocess
import sys
import zipfile

import h5py
import numpy as np
import pytest

from jobs import train

# A tiny model: the point is the weights' bits, not their quality.
TINY = ["--base-filters", "4", "--depth", "2", "--batch-size", "4", "--loss", "bce_dice", "--batch-norm",
        "--dropout", "0.1", "--epochs", "2", "--workers", "2"]
BURN_SECONDS = 900  # the burners' own bound, should the test die before it kills them


def _arrays(bundle: str) -> dict[str, np.ndarray]:
    """Every array of the bundle's model.keras, by its path in the weights file."""
    with zipfile.ZipFile(os.path.join(bundle, "model.keras")) as z:
        data = z.read("model.weights.h5")
    out: dict[str, np.ndarray] = {}
    with h5py.File(io.BytesIO(data), "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return out


def _train(prepared: str, output: str, seed: int) -> dict[str, np.ndarray]:
    assert train.main(["--data", prepared, "--output", output, "--seed", str(seed), *TINY]) == 0
    return _arrays(output)


def _burners(n: int) -> list[subprocess.Popen]:
    # At the niceness Ray gives its workers (15), so that they compete with the training workers
    # for CPU: at 0 they would starve them, and the run would take hours, not differ.
    code = f"import os, time\nos.nice(15)\nend = time.time() + {BURN_SECONDS}\nwhile time.time() < end: pass\n"
    return [subprocess.Popen([sys.executable, "-c", code]) for _ in range(n)]


@pytest.mark.e2e
def test_a_seeded_training_repeats_on_a_quiet_and_a_busy_machine(prepared, tmp_path):
    quiet = _train(prepared, str(tmp_path / "quiet"), seed=11)
    burners = _burners(2 * (os.cpu_count() or 1))
    try:
        busy = _train(prepared, str(tmp_path / "busy"), seed=11)
    finally:
        for p in burners:
            p.kill()
            p.wait()
    assert len(quiet) > 10 and quiet.keys() == busy.keys()
    different = [k for k in quiet if not np.array_equal(quiet[k], busy[k])]
    assert different == [], f"{len(different)} of {len(quiet)} arrays differ, e.g. {different[:3]}"
    other = _train(prepared, str(tmp_path / "other"), seed=12)
    assert any(not np.array_equal(quiet[k], other[k]) for k in quiet)
