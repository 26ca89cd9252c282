"""plastimatch (Debian package `plastimatch`) as the independent reader of RT Structure Sets in
the tests: it rasterises each ROI of an RTSTRUCT onto the referenced CT's grid, and the NRRD
images it writes are read here and put back on a volume's grid through patient coordinates."""
from __future__ import annotations

import gzip
import os
import re
import shutil
import subprocess

import numpy as np

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_TYPES = {"unsigned char": np.uint8, "uchar": np.uint8, "short": np.int16, "unsigned short": np.uint16,
          "int": np.int32, "unsigned int": np.uint32, "float": np.float32}


def available() -> bool:
    return shutil.which("plastimatch") is not None


def rasterise(rtstruct_path: str, image_dir: str, out_dir: str, xor: bool) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """ROI name -> (uint8 array with axes (x, y, z) of the NRRD, 4x4 LPS affine), by
    `plastimatch convert --input RTSTRUCT --referenced-ct DIR --output-prefix OUT`. `xor`: read
    a slice's contours by XOR (`--xor-contours`) instead of plastimatch's default union."""
    cmd = ["plastimatch", "convert", "--input", rtstruct_path, "--referenced-ct", image_dir,
           "--output-prefix", out_dir, "--prefix-format", "nrrd"]
    if xor:
        cmd.append("--xor-contours")
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"plastimatch failed ({done.returncode}): {done.stdout[-2000:]} {done.stderr[-2000:]}")
    return {name[:-5]: read_nrrd(os.path.join(out_dir, name)) for name in sorted(os.listdir(out_dir))
            if name.endswith(".nrrd")}


def read_nrrd(path: str) -> tuple[np.ndarray, np.ndarray]:
    """(array with axes in NRRD order (fastest first), 4x4 LPS affine) of a 3D NRRD as
    plastimatch writes it (raw or gzip, little endian, LPS space)."""
    with open(path, "rb") as f:
        data = f.read()
    head, _, body = data.partition(b"\n\n")
    fields = {}
    for line in head.decode("ascii").splitlines()[1:]:
        if line.startswith("#") or ":" not in line:
            continue
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip().lstrip("=")
    if fields.get("space") not in ("left-posterior-superior", "LPS"):
        raise ValueError(f"{path}: space {fields.get('space')!r}")
    sizes = [int(s) for s in fields["sizes"].split()]
    dtype = np.dtype(_TYPES[fields["type"]]).newbyteorder("<")
    raw = gzip.decompress(body) if fields["encoding"] == "gzip" else body
    array = np.frombuffer(raw, dtype)[:int(np.prod(sizes))].reshape(sizes[::-1]).transpose(2, 1, 0)
    directions = [[float(v) for v in vec.split(",")] for vec in re.findall(r"\(([^)]*)\)", fields["space directions"])]
    origin = [float(v) for v in re.findall(r"\(([^)]*)\)", fields["space origin"])[0].split(",")]
    affine = np.eye(4)
    affine[:3, :3] = np.array(directions).T
    affine[:3, 3] = origin
    return array, affine


def on_grid(array: np.ndarray, affine_lps: np.ndarray, affine_ras: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """The nonzero voxels of a plastimatch image put on a volume grid (RAS affine): every one
    must land on a grid point (within 1e-3 voxel) inside the grid."""
    out = np.zeros(shape, bool)
    idx = np.argwhere(array > 0)
    if len(idx) == 0:
        return out
    grid = np.linalg.inv(affine_ras) @ LPS_TO_RAS @ affine_lps @ np.c_[idx, np.ones(len(idx))].T
    ijk = grid[:3].T
    rounded = np.round(ijk)
    if np.abs(ijk - rounded).max() > 1e-3:
        raise AssertionError("plastimatch's voxels fall between the grid points of the volume")
    rounded = rounded.astype(int)
    if not ((rounded >= 0).all() and (rounded < np.array(shape)).all()):
        raise AssertionError("plastimatch's voxels fall outside the volume grid")
    out[tuple(rounded.T)] = True
    return out
