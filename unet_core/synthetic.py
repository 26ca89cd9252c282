"""Synthetic CT phantoms with known ground truth, written as real DICOM series or NIfTI.

A phantom is analytic in RAS world millimetres: an elliptic body with a fat layer, two lungs,
a spine and a target organ (liver-like, contrast-enhanced) at realistic Hounsfield units, its
anatomy varied by a seed. Because it is defined in the world, any grid samples the same anatomy:
an axial, coronal, sagittal or oblique DICOM series, or a NIfTI volume, each with exact labels.

Labels: 0 background, 1 target organ, 2 lungs, 3 bone.
"""
from __future__ import annotations

import gzip
import gzip as _gzip
import io
import zipfile
from dataclasses import dataclass

import nibabel as nib
import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from unet_core.errors import ConfigError
from unet_core.io import storage
from unet_core.io.dicom.geometry import cosines
from unet_core.io.dicom.grouping import group_series
from unet_core.io.dicom.header import scan_header
from unet_core.io.orientation import LPS_TO_RAS, dicom_affine

HU_AIR, HU_FAT, HU_TISSUE, HU_LUNG, HU_BONE, HU_ORGAN = -1000.0, -100.0, 40.0, -850.0, 700.0, 110.0
TARGET, LUNG, BONE = 1, 2, 3
UID_ROOT = "1.2.826.0.1.3680043.10.1082."  # synthetic data only

# Direction cosines (DICOM LPS) of the row and column of each orientation.
ORIENTATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "axial": ((1, 0, 0), (0, 1, 0)),
    "coronal": ((1, 0, 0), (0, 0, -1)),
    "sagittal": ((0, 1, 0), (0, 0, -1)),
}


def _oblique() -> tuple[np.ndarray, np.ndarray]:
    a, b = np.radians(20.0), np.radians(12.0)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    rz = np.array([[np.cos(b), -np.sin(b), 0], [np.sin(b), np.cos(b), 0], [0, 0, 1]])
    r = rz @ rx
    return r @ np.array([1.0, 0, 0]), r @ np.array([0, 1.0, 0])


@dataclass(frozen=True)
class Phantom:
    """Anatomy parameters in mm (RAS). Build with `Phantom.random(seed)`."""

    body_a: float = 160.0  # half width (x)
    body_b: float = 110.0  # half depth (y)
    fat: float = 12.0
    lung_offset: float = 75.0
    lung_radii: tuple[float, float, float] = (45.0, 60.0, 80.0)
    lung_z: float = 60.0
    organ_center: tuple[float, float, float] = (60.0, 10.0, -40.0)
    organ_radii: tuple[float, float, float] = (70.0, 55.0, 60.0)
    spine_radius: float = 16.0
    noise_hu: float = 12.0

    @classmethod
    def random(cls, seed: int) -> "Phantom":
        rng = np.random.default_rng(seed)
        s = rng.uniform(0.85, 1.15)
        return cls(
            body_a=160.0 * s, body_b=110.0 * s * rng.uniform(0.9, 1.1), fat=rng.uniform(8, 16),
            lung_offset=75.0 * s, lung_radii=tuple(np.array([45.0, 60.0, 80.0]) * s * rng.uniform(0.85, 1.15, 3)),
            lung_z=60.0 + rng.uniform(-10, 10),
            organ_center=(60.0 * s + rng.uniform(-10, 10), rng.uniform(-5, 20), -40.0 + rng.uniform(-15, 15)),
            organ_radii=tuple(np.array([70.0, 55.0, 60.0]) * s * rng.uniform(0.8, 1.2, 3)),
            spine_radius=16.0 * s,
        )

    def sample(self, xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(HU float32, labels uint8) at world points xyz (..., 3) in RAS mm, without noise."""
        x, y, z = xyz[..., 0], xyz[..., 1], xyz[..., 2]
        hu = np.full(x.shape, HU_AIR, np.float32)
        labels = np.zeros(x.shape, np.uint8)
        outer = (x / self.body_a) ** 2 + (y / self.body_b) ** 2 <= 1.0
        inner = (x / (self.body_a - self.fat)) ** 2 + (y / (self.body_b - self.fat)) ** 2 <= 1.0
        hu[outer] = HU_FAT
        hu[inner] = HU_TISSUE
        rx, ry, rz = self.lung_radii
        for side in (-1.0, 1.0):
            lung = (((x - side * self.lung_offset) / rx) ** 2 + ((y + 5.0) / ry) ** 2 + ((z - self.lung_z) / rz) ** 2) <= 1.0
            lung &= inner
            hu[lung], labels[lung] = HU_LUNG, LUNG
        spine = ((x / self.spine_radius) ** 2 + ((y + self.body_b * 0.6) / self.spine_radius) ** 2 <= 1.0) & inner
        hu[spine], labels[spine] = HU_BONE, BONE
        cx, cy, cz = self.organ_center
        ax, ay, az = self.organ_radii
        organ = (((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2 + ((z - cz) / az) ** 2 <= 1.0) & inner & (labels == 0)
        hu[organ], labels[organ] = HU_ORGAN, TARGET
        return hu, labels


def grid_world(affine: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """RAS mm of every voxel centre of a grid, shape (*shape, 3)."""
    idx = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij"), axis=-1)
    return idx @ affine[:3, :3].T + affine[:3, 3]


def phantom_volume(phantom: Phantom, affine: np.ndarray, shape: tuple[int, int, int], seed: int = 0,
                   noise: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(HU, labels) of a phantom on a grid. HU are rounded to integers (as stored in DICOM)."""
    hu, labels = phantom.sample(grid_world(affine, shape))
    if noise and phantom.noise_hu > 0:
        hu = hu + np.random.default_rng(seed).normal(0.0, phantom.noise_hu, hu.shape).astype(np.float32)
    return np.round(hu).astype(np.float32), labels


@dataclass(frozen=True)
class SeriesSpec:
    """How a DICOM series samples the world."""

    orientation: str = "axial"  # a name in ORIENTATIONS, or "oblique"
    rows: int = 64
    columns: int = 64
    n_slices: int = 24
    pixel_spacing: tuple[float, float] = (6.0, 6.0)  # (between rows, between columns) mm
    slice_step: float = 8.0
    descending: bool = False  # InstanceNumber 1 at the far end of the normal
    flip_rows: bool = False  # column cosine reversed: the image is stored upside down
    center: tuple[float, float, float] = (0.0, 0.0, 0.0)  # RAS mm of the volume centre


def series_geometry_of(spec: SeriesSpec) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """(row cosine, column cosine, [ImagePositionPatient per instance]) in LPS."""
    if spec.orientation == "oblique":
        row, col = _oblique()
    elif spec.orientation in ORIENTATIONS:
        row, col = (np.array(v, float) for v in ORIENTATIONS[spec.orientation])
    else:
        raise ConfigError(f"unknown orientation {spec.orientation!r}; known: {sorted(ORIENTATIONS) + ['oblique']}")
    if spec.flip_rows:
        col = -col
    _, _, normal = cosines(np.concatenate([row, col]))
    dr, dc = spec.pixel_spacing
    center_lps = (LPS_TO_RAS[:3, :3] @ np.asarray(spec.center, float))
    first = (center_lps - row * dc * (spec.columns - 1) / 2 - col * dr * (spec.rows - 1) / 2
             - normal * spec.slice_step * (spec.n_slices - 1) / 2)
    positions = [first + normal * spec.slice_step * k for k in range(spec.n_slices)]
    if spec.descending:
        positions = positions[::-1]
    return row, col, positions


def series_grid(spec: SeriesSpec) -> tuple[np.ndarray, tuple[int, int, int]]:
    """The RAS affine and shape of the (column, row, slice) grid of a series, slices ascending
    along the normal: the grid `unet_core.io.read_volume` returns for it."""
    row, col, positions = series_geometry_of(spec)
    _, _, normal = cosines(np.concatenate([row, col]))
    ordered = sorted(positions, key=lambda p: float(p @ normal))
    step = normal * spec.slice_step
    return dicom_affine(row, col, spec.pixel_spacing, ordered[0], step), (spec.columns, spec.rows, spec.n_slices)


def dicom_series(
    phantom: Phantom,
    spec: SeriesSpec,
    seed: int = 0,
    noise: bool = True,
    patient_name: str = "PHANTOM^SYNTHETIC",
    patient_id: str = "SYN0000",
    series_description: str = "synthetic CT",
    study_uid: str | None = None,
    series_uid: str | None = None,
    attributes: dict | None = None,
) -> tuple[list[tuple[str, bytes]], np.ndarray, np.ndarray]:
    """Write a phantom as a CT series. Returns ([(file name, bytes)] in instance order, HU and
    labels on the series grid of `series_grid(spec)`). `attributes`: keyword -> value set on every
    instance last (ImageType, ConvolutionKernel, FrameOfReferenceUID, ...)."""
    affine, shape = series_grid(spec)
    hu, labels = phantom_volume(phantom, affine, shape, seed, noise)
    row, col, positions = series_geometry_of(spec)
    _, _, normal = cosines(np.concatenate([row, col]))
    along = [float(p @ normal) for p in positions]
    rank = np.argsort(np.argsort(along))  # grid slice k of each instance
    study_uid = study_uid or generate_uid(UID_ROOT)
    series_uid = series_uid or generate_uid(UID_ROOT)
    files = []
    for instance, (pos, k) in enumerate(zip(positions, rank, strict=True), start=1):
        stored = np.clip(hu[:, :, k].T + 1024.0, 0, 4095).astype(np.uint16)  # (rows, cols)
        ds = _ct_dataset(study_uid, series_uid, instance, pos, row, col, spec, patient_name,
                         patient_id, series_description)
        for keyword, value in (attributes or {}).items():
            setattr(ds, keyword, value)
        ds.PixelData = stored.tobytes()
        files.append((f"IM{instance:05d}.dcm", to_bytes(ds)))
    return files, hu, labels


def new_dataset(sop_class: str, study_uid: str, series_uid: str) -> FileDataset:
    """An empty instance of `sop_class` in explicit VR little endian, with its file meta, a new
    SOP Instance UID and the given study and series."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid(UID_ROOT)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    return ds


def _ct_dataset(study_uid, series_uid, instance, position, row, col, spec, patient_name, patient_id,
                series_description) -> FileDataset:
    ds = new_dataset(CTImageStorage, study_uid, series_uid)
    ds.FrameOfReferenceUID = generate_uid(UID_ROOT, entropy_srcs=[study_uid, "frame-of-reference"])
    ds.Modality, ds.Manufacturer, ds.BodyPartExamined = "CT", "unet-ray synthetic", "ABDOMEN"
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = patient_name, patient_id, "19700101", "O"
    ds.StudyDate = ds.SeriesDate = "20260101"
    ds.SeriesDescription, ds.SeriesNumber, ds.InstanceNumber = series_description, 1, instance
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
    ds.ImageOrientationPatient = [f"{v:.8f}" for v in (*row, *col)]
    ds.PixelSpacing = [f"{v:.6f}" for v in spec.pixel_spacing]
    ds.SliceThickness = f"{spec.slice_step:.6f}"
    ds.KVP, ds.ConvolutionKernel = "120", "STANDARD"
    ds.Rows, ds.Columns = spec.rows, spec.columns
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "-1024", "1", "HU"
    ds.WindowCenter, ds.WindowWidth = "40", "400"
    return ds


def to_bytes(ds: pydicom.Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def nifti_case(phantom: Phantom, affine: np.ndarray, shape: tuple[int, int, int], seed: int = 0) -> tuple[bytes, bytes]:
    """(image .nii.gz bytes in HU as int16, label .nii.gz bytes) of a phantom on a grid."""


    hu, labels = phantom_volume(phantom, affine, shape, seed)
    img = nib.Nifti1Image(hu.astype(np.int16), affine)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    lab = nib.Nifti1Image(labels, affine)
    lab.set_sform(affine, code=1)
    lab.set_qform(affine, code=1)
    return gzip.compress(img.to_bytes(), mtime=0), gzip.compress(lab.to_bytes(), mtime=0)


def write_training_set(uri: str, n_cases: int, size: int = 64, n_slices: int = 16, seed: int = 0,
                       spacing: tuple[float, float, float] = (6.0, 6.0, 10.0)) -> list[str]:
    """Write `n_cases` labelled NIfTI cases as images/<case>.nii.gz and masks/<case>.nii.gz
    (labels 0..3, see the module docstring). Returns the case ids."""

    ids = []
    for n in range(n_cases):
        case = f"case_{n:03d}"
        affine = np.diag([*spacing, 1.0])
        affine[:3, 3] = -np.array(spacing) * (np.array([size, size, n_slices]) - 1) / 2
        affine[2, 3] -= 30.0  # centre the stack on the target organ
        img, lab = nifti_case(Phantom.random(seed * 1000 + n), affine, (size, size, n_slices), seed=seed * 1000 + n)
        storage.write_bytes(storage.join(uri, "images", f"{case}.nii.gz"), img)
        storage.write_bytes(storage.join(uri, "masks", f"{case}.nii.gz"), lab)
        ids.append(case)
    return ids


# Geometry of `write_training_set` phantoms: axial 64 x 64 at 6 mm, 10 mm apart, centred at z = -30.
DEMO_CENTER = (0.0, 0.0, -30.0)
DEMO_SERIES = {
    "axial": SeriesSpec(orientation="axial", rows=64, columns=64, n_slices=16, slice_step=10.0, center=DEMO_CENTER),
    "axial_desc_flipped": SeriesSpec(orientation="axial", rows=64, columns=64, n_slices=16, slice_step=10.0,
                                     descending=True, flip_rows=True, center=DEMO_CENTER),
    "coronal": SeriesSpec(orientation="coronal", rows=16, columns=64, n_slices=64, pixel_spacing=(10.0, 6.0),
                          slice_step=6.0, center=DEMO_CENTER),
    "sagittal": SeriesSpec(orientation="sagittal", rows=16, columns=64, n_slices=64, pixel_spacing=(10.0, 6.0),
                           slice_step=6.0, center=DEMO_CENTER),
}


@dataclass
class DemoArchive:
    root: str
    truth: str
    good_volumes: int
    bad_objects: list[str]


def write_demo_archive(root: str, truth: str, seed: int = 100, n_nifti: int = 2,
                       patient_name: str = "DOE^JANE", patient_id: str = "MRN12345") -> DemoArchive:
    """A small hospital-like archive under `root` with ground truth under `truth`:
    DICOM series in four orientations and slice orders (study folders), a zip export of another
    series (with a member whose path escapes the archive), NIfTI volumes, a structured report,
    and junk (random bytes named .dcm, an empty file, a text file, a truncated DICOM, a truncated
    re-sent copy of an instance that is also in the zip, a truncated .nii.gz). Truth masks (target organ = 1) are named `<volume_id>.nii.gz` for DICOM series and
    `<case>.nii.gz` for NIfTI volumes."""



    def truth_bytes(labels: np.ndarray, affine: np.ndarray) -> bytes:
        img = nib.Nifti1Image((labels == TARGET).astype(np.uint8), affine)
        img.set_sform(affine, code=1)
        img.set_qform(affine, code=1)
        return _gzip.compress(img.to_bytes(), mtime=0)

    def volume_id(files: list[tuple[str, bytes]]) -> str:
        groups, _ = group_series([scan_header(d, f) for f, d in files])
        return groups[0].volume_id

    for n, (name, spec) in enumerate(DEMO_SERIES.items()):
        files, _, labels = dicom_series(Phantom.random(seed + n), spec, seed=seed + n, patient_name=patient_name,
                                        patient_id=patient_id, series_description=f"{name} series")
        for fname, data in files:
            storage.write_bytes(storage.join(root, "dicom", f"study_{n % 2}", name, fname), data)
        storage.write_bytes(storage.join(truth, f"{volume_id(files)}.nii.gz"), truth_bytes(labels, series_grid(spec)[0]))
    files, _, labels = dicom_series(Phantom.random(seed + 10), DEMO_SERIES["axial"], seed=seed + 10,
                                    patient_name=patient_name, patient_id=patient_id)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for fname, data in files:
            zf.writestr(f"EXPORT/DICOM/{fname}", data)
        zf.writestr("../outside.dcm", files[0][1])
    storage.write_bytes(storage.join(root, "exports", "export.zip"), buf.getvalue())
    storage.write_bytes(storage.join(truth, f"{volume_id(files)}.nii.gz"), truth_bytes(labels, series_grid(DEMO_SERIES["axial"])[0]))
    image = b""
    for n in range(n_nifti):
        affine = np.diag([6.0, 6.0, 10.0, 1.0])
        affine[:3, 3] = [-189.0, -189.0, -105.0]
        image, label = nifti_case(Phantom.random(seed + 20 + n), affine, (64, 64, 16), seed=seed + 20 + n)
        storage.write_bytes(storage.join(root, "nifti", f"patient_{n}.nii.gz"), image)
        lab = nib.Nifti1Image.from_bytes(_gzip.decompress(label))
        storage.write_bytes(storage.join(truth, f"patient_{n}.nii.gz"), truth_bytes(np.asarray(lab.dataobj), affine))
    lone, _, _ = dicom_series(Phantom.random(seed + 30), SeriesSpec(rows=32, columns=32, n_slices=1), seed=seed + 30)
    bad = {
        "junk/random.dcm": np.random.default_rng(seed).bytes(5000),
        "junk/empty.dcm": b"",
        "junk/notes.txt": b"not an image",
        "junk/truncated.dcm": lone[0][1][:-900],
        "junk/resent_copy_truncated.dcm": files[0][1][:-900],  # a cut re-send of a zipped instance
        "junk/broken.nii.gz": image[: len(image) // 3],
    }
    for path, data in bad.items():
        storage.write_bytes(storage.join(root, path), data)

    with open(get_testdata_file("reportsi.dcm"), "rb") as f:
        storage.write_bytes(storage.join(root, "dicom", "study_0", "report.dcm"), f.read())
    return DemoArchive(root, truth, len(DEMO_SERIES) + 1 + n_nifti, sorted(bad))
