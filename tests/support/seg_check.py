"""Checks of DICOM SEG objects for the tests: the SEG IOD's required attributes, and a SEG's labels
put back on a volume grid through patient coordinates (independently of how it was written)."""
from __future__ import annotations

import io

import numpy as np
import pydicom

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
# Conditional modules that this tool's SEGs must have: the sources have a frame of reference, and
# every frame references a source image of the same study.
REQUIRED_CONDITIONAL = ("frame-of-reference", "common-instance-reference")
# Functional group macros of the SEG IOD (part 3, table A.51-2) that apply to a SEG of patient
# images derived from them; each sits in the shared item or in every per-frame item. (Plane
# Position (Slide) is for slide microscopy only.)
FUNCTIONAL_GROUPS = ("PixelMeasuresSequence", "PlanePositionSequence", "PlaneOrientationSequence",
                     "DerivationImageSequence", "FrameContentSequence", "SegmentIdentificationSequence")
# Type 1C attributes whose condition holds for a SEG of patient images (it has a frame of reference
# and plane geometry): checked as type 1.
CONDITIONS_MET = {"PixelSpacing", "SliceThickness", "ImagePositionPatient", "ImageOrientationPatient",
                  "FrameOfReferenceUID", "ReferencedSOPClassUID", "ReferencedSOPInstanceUID"}
_FG_CONTAINERS = ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence")


def _module_trees() -> tuple[list[str], dict]:
    import json
    import os

    import highdicom

    root = os.path.join(os.path.dirname(highdicom.__file__), "_standard")
    with open(os.path.join(root, "iod_module_map.json")) as f:
        iod = json.load(f)["segmentation"]
    with open(os.path.join(root, "module_attribute_map.json")) as f:
        attrs = json.load(f)
    modules = [m["key"] for m in iod if m["usage"] == "M" or m["key"] in REQUIRED_CONDITIONAL]
    return modules, attrs


def iod_problems(ds: pydicom.Dataset) -> list[str]:
    """Every mandatory (and required conditional) module of the Segmentation IOD, from DICOM
    part 3 as tabulated in highdicom's standard data: a type 1 attribute missing or empty, or a
    type 2 attribute missing, at any depth of the sequences present."""
    modules, attrs = _module_trees()
    problems = []
    for module in modules:
        tree: dict = {}
        for item in attrs[module]:
            node = tree
            for p in item["path"]:
                node = node.setdefault(p, {"type": None, "children": {}})["children"]
            node.setdefault(item["keyword"], {"type": item["type"], "children": {}})["type"] = item["type"]

        def check(d: pydicom.Dataset, node: dict, path: str, module: str = module) -> None:
            for kw, spec in node.items():
                if kw in _FG_CONTAINERS and not path:
                    if kw not in d or len(d[kw].value) == 0:
                        problems.append(f"{module}: {kw} is missing or empty")
                    continue
                t = "1" if spec["type"] == "1C" and kw in CONDITIONS_MET else spec["type"]
                present = kw in d
                if t in ("1", "2") and not present:
                    problems.append(f"{module}: {path}{kw} (type {t}) is missing")
                    continue
                if t == "1" and present and (d[kw].value is None or d[kw].value == "" or (
                        d[kw].VR == "SQ" and len(d[kw].value) == 0)):
                    problems.append(f"{module}: {path}{kw} (type 1) is empty")
                if present and spec["children"] and d[kw].VR == "SQ":
                    for n, child in enumerate(d[kw].value):
                        check(child, spec["children"], f"{path}{kw}[{n}].")

        check(ds, tree, "")
        if module == "segmentation-multi-frame-functional-groups" and all(
                k in ds and len(ds[k].value) for k in _FG_CONTAINERS):
            shared, frames = ds.SharedFunctionalGroupsSequence[0], ds.PerFrameFunctionalGroupsSequence
            macros = tree["SharedFunctionalGroupsSequence"]["children"]
            for macro in FUNCTIONAL_GROUPS:
                if macro in shared:
                    items = [("SharedFunctionalGroupsSequence[0].", shared)]
                elif all(macro in f for f in frames):
                    items = [(f"PerFrameFunctionalGroupsSequence[{n}].", f) for n, f in enumerate(frames)]
                else:
                    problems.append(f"{module}: {macro} is neither shared nor in every frame")
                    continue
                for where, item in items:
                    check(item, {macro: macros[macro]}, where)
    return problems


def profile_problems(seg: pydicom.Dataset, sources: list[pydicom.Dataset]) -> list[str]:
    """What this tool promises beyond the IOD: BINARY, explicit VR little endian, the source study,
    a new series, and a source-image reference on every frame."""
    out = []
    if seg.SegmentationType != "BINARY":
        out.append(f"SegmentationType {seg.SegmentationType}")
    if seg.file_meta.TransferSyntaxUID != pydicom.uid.ExplicitVRLittleEndian:
        out.append(f"transfer syntax {seg.file_meta.TransferSyntaxUID}")
    if seg.StudyInstanceUID != sources[0].StudyInstanceUID:
        out.append("not in the source study")
    if seg.SeriesInstanceUID == sources[0].SeriesInstanceUID:
        out.append("in the source series")
    if not str(seg.SeriesDescription).startswith("unet-ray SEG"):
        out.append(f"SeriesDescription {seg.SeriesDescription!r}")
    known = {str(s.SOPInstanceUID) for s in sources}
    for n, frame in enumerate(seg.PerFrameFunctionalGroupsSequence):
        refs = [r.ReferencedSOPInstanceUID for d in frame.get("DerivationImageSequence", [])
                for r in d.get("SourceImageSequence", [])]
        if not refs or any(r not in known for r in refs):
            out.append(f"frame {n + 1}: source references {refs}")
    return out


def read_seg(data: bytes):
    import highdicom as hd

    return hd.seg.segread(io.BytesIO(data))


def labels_on_grid(seg, affine_ras: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """The SEG's label values (segment numbers) on a RAS grid: each SEG voxel is mapped through
    its own geometry to patient coordinates, then into the grid; a voxel that does not land on a
    grid point (within 1e-3 of a voxel) fails the test."""
    vol = seg.get_volume(combine_segments=True)
    arr = np.asarray(vol.array)
    out = np.zeros(shape, np.uint8)
    idx = np.argwhere(arr > 0)
    if len(idx) == 0:
        return out
    world_lps = vol.affine @ np.c_[idx, np.ones(len(idx))].T
    grid = np.linalg.inv(affine_ras) @ (LPS_TO_RAS @ world_lps)
    ijk = grid[:3].T
    rounded = np.round(ijk)
    assert np.abs(ijk - rounded).max() < 1e-3, "SEG voxels fall between grid points"
    rounded = rounded.astype(int)
    assert (rounded >= 0).all() and (rounded < np.array(shape)).all(), "SEG voxels outside the grid"
    out[tuple(rounded.T)] = arr[tuple(idx.T)]
    return out
