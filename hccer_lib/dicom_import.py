"""Import one DICOM CT series as a phase volume of a cohort folder.

``import_dicom_series(series_dir, cohort_dir, patient_id, phase)`` reads every file of one
series folder, checks that they form one axial-stack CT series, converts the stored values
to Hounsfield units (``HU = stored * RescaleSlope + RescaleIntercept``, per file) and
writes ``<cohort>/images/<patient_id>/<phase>.nii.gz`` atomically (int16 HU when every
value is a whole number in the int16 range, float32 otherwise), with the
series' geometry: spacing (column, row, slice) in mm, origin = ImagePositionPatient of the
first slice along the slice normal, direction = (row direction, column direction, normal).

Refused, with a :class:`~hccer_lib.cohort.CohortError` naming the file: an empty folder,
a file that is not DICOM or has no pixel data, a modality other than CT, several series
(SeriesInstanceUID), slices with different orientation, size or pixel spacing, two slices
at the same position, and uneven slice spacing (a missing file leaves a gap). A series of
one slice is imported as a volume of one slice whose z spacing is SliceThickness (refused
when that is missing). The target file is never overwritten unless ``overwrite=True``.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.errors import InvalidDicomError

from hccer_lib.cohort import PHASES, SAFE_ID, CohortError
from hccer_lib.outputs import atomic_path

logger = logging.getLogger("hccer")

SPACING_TOLERANCE = 0.01  # relative: slice gaps may differ by 1% of the median gap
ORIENTATION_TOLERANCE = 1e-4
SKIPPED_NAMES = {"DICOMDIR"}


def import_dicom_series(
    series_dir: str | os.PathLike,
    cohort_dir: str | os.PathLike,
    patient_id: str,
    phase: str,
    overwrite: bool = False,
) -> Path:
    """Convert one DICOM CT series to ``images/<patient_id>/<phase>.nii.gz`` in HU.

    Args:
        series_dir: folder holding the files of one series (hidden files and DICOMDIR
            are skipped; sub-folders are not read).
        cohort_dir: the cohort folder to write into (created if needed).
        patient_id: the folder name under ``images/`` (letters, digits, ``.``, ``_``, ``-``).
        phase: ``"NC"``, ``"ART"`` or ``"PV"``.
        overwrite: replace an existing phase file.

    Returns:
        The path written.

    Raises:
        CohortError: bad input (module docstring), naming the patient and the file.
    """
    series_dir, cohort_dir = Path(series_dir), Path(cohort_dir)
    if phase not in PHASES:
        raise CohortError(f"unknown phase {phase!r}, expected one of {', '.join(PHASES)}", patient_id)
    if not SAFE_ID.match(str(patient_id)):
        raise CohortError(f"patient_id {patient_id!r} is not a safe folder name (letters, digits, '.', '_', '-')", patient_id)
    target = cohort_dir / "images" / patient_id / f"{phase}.nii.gz"
    if target.exists() and not overwrite:
        raise CohortError("already exists; pass overwrite=True to replace it", patient_id, target.relative_to(cohort_dir).as_posix())
    image = read_dicom_series(series_dir, patient_id=patient_id)
    logger.info("writing %s (%s voxels, spacing %s mm)", target, image.GetSize(), image.GetSpacing())
    with tempfile.TemporaryDirectory() as scratch, atomic_path(target) as tmp:
        scratch_file = Path(scratch) / target.name  # SimpleITK picks the writer from ".nii.gz"
        sitk.WriteImage(image, str(scratch_file), useCompression=True)
        shutil.copyfile(scratch_file, tmp)
    return target


def read_dicom_series(series_dir: str | os.PathLike, patient_id: str | None = None) -> sitk.Image:
    """Read one DICOM CT series as an HU volume (int16 or float32), array view ``[z, y, x]``.

    Slices are sorted by ImagePositionPatient projected on the slice normal (row direction
    x column direction), never by file name or InstanceNumber.

    Raises:
        CohortError: see the module docstring.
    """
    series_dir = Path(series_dir)
    if not series_dir.is_dir():
        raise CohortError(f"DICOM series folder {series_dir} does not exist", patient_id)
    files = sorted(
        p for p in series_dir.iterdir() if p.is_file() and not p.name.startswith(".") and p.name not in SKIPPED_NAMES
    )
    if not files:
        raise CohortError(f"no files in the DICOM series folder {series_dir}", patient_id)
    datasets = [_read_slice(path, patient_id) for path in files]

    first_path, first = files[0], datasets[0]
    orientation = np.asarray(first.ImageOrientationPatient, dtype=float)
    row_dir, col_dir = orientation[:3], orientation[3:]
    normal = np.cross(row_dir, col_dir)
    shape = (int(first.Rows), int(first.Columns))
    pixel_spacing = np.asarray(first.PixelSpacing, dtype=float)  # (between rows, between columns)
    for path, ds in zip(files[1:], datasets[1:], strict=True):
        _same(path, patient_id, "SeriesInstanceUID", ds.SeriesInstanceUID, first.SeriesInstanceUID, first_path,
              "several series in one folder (mixed SeriesInstanceUID); import each series separately")  # fmt: skip
        _same(path, patient_id, "ImageOrientationPatient", np.asarray(ds.ImageOrientationPatient, float), orientation, first_path)
        _same(path, patient_id, "Rows x Columns", (int(ds.Rows), int(ds.Columns)), shape, first_path)
        _same(path, patient_id, "PixelSpacing", np.asarray(ds.PixelSpacing, float), pixel_spacing, first_path)

    positions = np.array([np.asarray(ds.ImagePositionPatient, dtype=float) for ds in datasets])
    along_normal = positions @ normal
    order = np.argsort(along_normal, kind="stable")
    files = [files[i] for i in order]
    datasets = [datasets[i] for i in order]
    along_normal = along_normal[order]

    if len(datasets) == 1:
        thickness = first.get("SliceThickness")
        if thickness is None or float(thickness) <= 0:
            raise CohortError("a single-slice series without SliceThickness: the slice spacing is unknown", patient_id, str(first_path))
        slice_spacing = float(thickness)
    else:
        gaps = np.diff(along_normal)
        if np.any(gaps < 1e-3):
            k = int(np.flatnonzero(gaps < 1e-3)[0])
            raise CohortError(f"two slices at the same position ({files[k].name} and {files[k + 1].name})", patient_id, str(files[k + 1]))
        slice_spacing = float(np.median(gaps))
        uneven = np.abs(gaps - slice_spacing) > SPACING_TOLERANCE * slice_spacing
        if np.any(uneven):
            k = int(np.flatnonzero(uneven)[0])
            raise CohortError(
                f"uneven slice spacing: {gaps[k]:.3g} mm between {files[k].name} and {files[k + 1].name}, "
                f"{slice_spacing:.3g} mm elsewhere (a missing slice?)",
                patient_id, str(files[k + 1]),
            )  # fmt: skip

    volume = np.stack([_hounsfield(path, ds, patient_id) for path, ds in zip(files, datasets, strict=True)])
    if np.all(volume == np.round(volume)) and volume.min() >= -32768 and volume.max() <= 32767:
        volume = volume.astype(np.int16)  # whole HU values (the usual case): half the file size
    image = sitk.GetImageFromArray(volume)  # [z, y, x] -> x = column, y = row, z = slice
    image.SetSpacing((float(pixel_spacing[1]), float(pixel_spacing[0]), slice_spacing))
    image.SetOrigin(tuple(float(v) for v in positions[order[0]]))
    image.SetDirection(tuple(np.column_stack([row_dir, col_dir, normal]).ravel().tolist()))
    return image


def _read_slice(path: Path, patient_id: str | None) -> pydicom.Dataset:
    """Read one file's header; check that it is a CT slice with the tags the volume needs."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=False)
    except (InvalidDicomError, OSError, EOFError, ValueError) as err:
        raise CohortError(f"not a readable DICOM file ({str(err).splitlines()[0] if str(err) else type(err).__name__})", patient_id, str(path)) from err
    modality = ds.get("Modality")
    if modality != "CT":
        raise CohortError(f"modality {modality!r}, expected 'CT'", patient_id, str(path))
    needed = ("SeriesInstanceUID", "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns", "PixelData")
    missing = [tag for tag in needed if tag not in ds]
    if missing:
        raise CohortError(f"missing DICOM attribute(s) {', '.join(missing)}", patient_id, str(path))
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise CohortError(f"{ds.SamplesPerPixel} samples per pixel, expected 1 (greyscale CT)", patient_id, str(path))
    if float(np.min(np.asarray(ds.PixelSpacing, float))) <= 0:
        raise CohortError(f"PixelSpacing {list(ds.PixelSpacing)} must be > 0", patient_id, str(path))
    return ds


def _hounsfield(path: Path, ds: pydicom.Dataset, patient_id: str | None) -> np.ndarray:
    """Stored values → HU with this file's RescaleSlope/Intercept; float32 ``[rows, columns]``."""
    try:
        stored = ds.pixel_array
    except Exception as err:  # pydicom raises several types for undecodable pixel data
        raise CohortError(f"cannot decode the pixel data ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})", patient_id, str(path)) from err
    if stored.ndim != 2:
        raise CohortError(f"pixel data of shape {stored.shape}, expected one 2-D slice per file", patient_id, str(path))
    slope = float(ds.get("RescaleSlope", 1.0))
    intercept = float(ds.get("RescaleIntercept", 0.0))
    return (stored.astype(np.float64) * slope + intercept).astype(np.float32)


def _same(path, patient_id, name, value, expected, first_path, problem: str | None = None) -> None:
    if isinstance(expected, np.ndarray):
        equal = value.shape == expected.shape and np.allclose(value, expected, atol=ORIENTATION_TOLERANCE)
    else:
        equal = value == expected
    if not equal:
        text = problem or f"{name} {_show(value)} differs from {_show(expected)} in {Path(first_path).name}"
        raise CohortError(text, patient_id, str(path))


def _show(value) -> str:
    if isinstance(value, np.ndarray):
        return "[" + ", ".join(f"{v:.4g}" for v in value) + "]"
    return str(value)
