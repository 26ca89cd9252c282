"""Synthetic CT studies as a hospital archive holds them, for the selection rules' tests, the
demo and the benchmarks: every series a CT study typically has, several studies and patients,
some series spread over folders.

    write_studies(root, n_patients, studies_per_patient, size, seed) -> [StudySeries]

Per study (one frame of reference, except the scout):
    scout       coronal localizer, 1 slice, ORIGINAL/PRIMARY/LOCALIZER
    thin        axial 1.25 mm, soft kernel (B30f), ORIGINAL/PRIMARY/AXIAL; half its files in a
                second folder (an export split by a PACS)
    thick       axial 5 mm of the same acquisition, soft kernel
    lung        axial 1.25 mm, sharp kernel (B70f)
    contrast    axial 1.25 mm, soft kernel, ContrastBolusAgent set (a portal venous phase)
    coronal     coronal 3 mm reformat, DERIVED/SECONDARY/REFORMATTED
    sagittal    sagittal 3 mm reformat, DERIVED/SECONDARY/REFORMATTED
    mip         axial 10 mm MIP, DERIVED/SECONDARY/MIP
    dose        a dose report (Enhanced SR object, no pixels)
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from pydicom.uid import generate_uid

from unet_core.synthetic import UID_ROOT, Phantom, SeriesSpec, dicom_series, new_dataset, to_bytes

ENHANCED_SR = "1.2.840.10008.5.1.4.1.1.88.22"


@dataclass(frozen=True)
class StudySeries:
    patient: str
    study_uid: str
    role: str  # scout, thin, thick, lung, contrast, coronal, sagittal, mip, dose
    series_uid: str
    folders: tuple[str, ...]  # where its files are, relative to the root
    n_slices: int


# role -> (orientation, slices for a study of `size` mm extent / step, step mm, image type, kernel, description,
#          extra attributes)
ROLES = {
    "scout": ("coronal", 1, 1.0, ["ORIGINAL", "PRIMARY", "LOCALIZER"], "B30f", "Topogram 0.6 T20f", {}),
    "thin": ("axial", 0, 1.25, ["ORIGINAL", "PRIMARY", "AXIAL"], "B30f", "Abdomen 1.25mm soft", {}),
    "thick": ("axial", 0, 5.0, ["ORIGINAL", "PRIMARY", "AXIAL"], "B30f", "Abdomen 5mm soft", {}),
    "lung": ("axial", 0, 1.25, ["ORIGINAL", "PRIMARY", "AXIAL"], "B70f", "Lung 1.25mm sharp", {}),
    "contrast": ("axial", 0, 1.25, ["ORIGINAL", "PRIMARY", "AXIAL"], "B30f", "Abdomen PV 1.25mm",
                 {"ContrastBolusAgent": "IOHEXOL 350", "ContrastBolusRoute": "IV"}),
    "coronal": ("coronal", 0, 3.0, ["DERIVED", "SECONDARY", "REFORMATTED"], "B30f", "Cor 3mm MPR", {}),
    "sagittal": ("sagittal", 0, 3.0, ["DERIVED", "SECONDARY", "REFORMATTED"], "B30f", "Sag 3mm MPR", {}),
    "mip": ("axial", 0, 10.0, ["DERIVED", "SECONDARY", "MIP"], "B30f", "MIP 10mm", {}),
}
EXTENT_MM = 40.0  # along the slice normal: 32 thin slices, 8 thick, 13 reformatted, 4 MIP


def _dose_report(study_uid: str, patient: str) -> bytes:
    ds = new_dataset(ENHANCED_SR, study_uid, generate_uid(UID_ROOT))
    ds.Modality, ds.SeriesDescription = "SR", "Dose Report"
    ds.PatientName, ds.PatientID = f"SYNTHETIC^{patient}", patient
    return to_bytes(ds)


def write_studies(root: str, n_patients: int = 2, studies_per_patient: int = 1, size: int = 32,
                  seed: int = 0, roles: tuple[str, ...] = (*ROLES, "dose")) -> list[StudySeries]:
    """Write the studies below `root` (patient/study/series folders) and say what is where."""
    out = []
    for p in range(n_patients):
        patient = f"SYN{seed:03d}{p:03d}"
        for s in range(studies_per_patient):
            study_uid = generate_uid(UID_ROOT, entropy_srcs=[str(seed), patient, str(s)])
            frame = generate_uid(UID_ROOT, entropy_srcs=[study_uid, "frame"])
            phantom = Phantom.random(seed * 1000 + p * 10 + s)
            base = os.path.join(f"patient{p:02d}", f"study{s}")
            for k, role in enumerate(roles):
                if role == "dose":
                    folder = os.path.join(base, "dose")
                    _write(root, folder, [("SR00001.dcm", _dose_report(study_uid, patient))])
                    out.append(StudySeries(patient, study_uid, role, "", (folder,), 0))
                    continue
                orientation, slices, step, image_type, kernel, description, extra = ROLES[role]
                n = slices or max(1, round(EXTENT_MM / step))
                spec = SeriesSpec(orientation=orientation, rows=size, columns=size, n_slices=n,
                                  pixel_spacing=(320 / size, 320 / size), slice_step=step)
                series_uid = generate_uid(UID_ROOT, entropy_srcs=[study_uid, role])
                attributes = {"ImageType": image_type, "ConvolutionKernel": kernel, "BodyPartExamined": "ABDOMEN",
                              "FrameOfReferenceUID": frame if role != "scout" else generate_uid(UID_ROOT),
                              "SeriesNumber": k + 1, **extra}
                files, _, _ = dicom_series(phantom, spec, seed=seed + k, noise=False, patient_name=f"SYNTHETIC^{patient}",
                                           patient_id=patient, series_description=description, study_uid=study_uid,
                                           series_uid=series_uid, attributes=attributes)
                folder = os.path.join(base, f"{k + 1:02d}_{role}")
                if role == "thin":  # split over two folders, as some exports are
                    half = len(files) // 2
                    other = os.path.join(f"patient{p:02d}", "export2", f"study{s}_{role}")
                    _write(root, folder, files[:half])
                    _write(root, other, files[half:])
                    out.append(StudySeries(patient, study_uid, role, series_uid, (folder, other), n))
                else:
                    _write(root, folder, files)
                    out.append(StudySeries(patient, study_uid, role, series_uid, (folder,), n))
    return out


def _write(root: str, folder: str, files: list[tuple[str, bytes]]) -> None:
    path = os.path.join(root, folder)
    os.makedirs(path, exist_ok=True)
    for name, data in files:
        with open(os.path.join(path, name), "wb") as f:
            f.write(data)
