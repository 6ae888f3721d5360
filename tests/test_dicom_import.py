"""Tests of hccer_lib.dicom_import on series written here with pydicom, and on CT_small.dcm."""

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.data import get_testdata_file
from pydicom.dataset import FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from hccer_lib.cohort import CohortError, read_phase
from hccer_lib.dicom_import import import_dicom_series, read_dicom_series

ROWS, COLUMNS = 4, 5
PIXEL_SPACING = (0.7, 0.6)  # mm between rows, between columns
SLICE_GAP = 2.5  # mm
ORIGIN = (-120.0, -80.0, 40.0)


def stored_values(k: int) -> np.ndarray:
    """Known stored values of slice k: 1000 + 100 k + 10 row + column."""
    rows, columns = np.mgrid[0:ROWS, 0:COLUMNS]
    return (1000 + 100 * k + 10 * rows + columns).astype(np.uint16)


def make_slice(k: int, series_uid: str, slope=1.0, intercept=-1024.0, position=None, orientation=None, modality="CT"):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    ds.PatientID = "TEST"
    ds.SeriesInstanceUID = series_uid
    ds.InstanceNumber = k + 1
    ds.ImageOrientationPatient = list(orientation or (1, 0, 0, 0, 1, 0))
    ds.ImagePositionPatient = list(position or (ORIGIN[0], ORIGIN[1], ORIGIN[2] + SLICE_GAP * k))
    ds.PixelSpacing = list(PIXEL_SPACING)
    ds.SliceThickness = SLICE_GAP
    ds.Rows, ds.Columns = ROWS, COLUMNS
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.RescaleSlope = slope
    ds.RescaleIntercept = intercept
    ds.PixelData = stored_values(k).tobytes()
    return ds


def write_series(folder: Path, n_slices=5, rescale=None, **kwargs) -> Path:
    """Files named in a shuffled order (f0 is not slice 0) so sorting must use positions."""
    folder.mkdir(parents=True, exist_ok=True)
    uid = generate_uid()
    names = np.random.default_rng(1).permutation(n_slices)
    for k in range(n_slices):
        slope, intercept = (rescale or {}).get(k, (1.0, -1024.0))
        ds = make_slice(k, uid, slope=slope, intercept=intercept, **kwargs)
        ds.save_as(folder / f"f{names[k]:03d}.dcm", enforce_file_format=True)
    return folder


def expected_hu(k: int, slope=1.0, intercept=-1024.0) -> np.ndarray:
    return stored_values(k).astype(np.float64) * slope + intercept


def test_import_sorted_hu_and_geometry(tmp_path):
    """Mixed rescale per slice (1/-1024 and 2/-2048), shuffled files → known HU and geometry."""
    rescale = {1: (2.0, -2048.0), 3: (2.0, -2048.0)}
    series = write_series(tmp_path / "series", rescale=rescale)
    cohort = tmp_path / "cohort"
    path = import_dicom_series(series, cohort, "HCC001", "ART")
    assert path == cohort / "images" / "HCC001" / "ART.nii.gz", path
    image = sitk.ReadImage(str(path))
    array = sitk.GetArrayFromImage(image)
    assert array.shape == (5, ROWS, COLUMNS), array.shape
    for k in range(5):
        want = expected_hu(k, *rescale.get(k, (1.0, -1024.0)))
        np.testing.assert_array_equal(array[k], want, err_msg=f"slice {k}")
    assert image.GetSpacing() == pytest.approx((0.6, 0.7, SLICE_GAP)), image.GetSpacing()
    assert image.GetOrigin() == pytest.approx(ORIGIN), image.GetOrigin()
    assert image.GetDirection() == pytest.approx((1, 0, 0, 0, 1, 0, 0, 0, 1)), image.GetDirection()
    # the voxel at row 2, column 3 of slice 4 lies at origin + (3 * 0.6, 2 * 0.7, 4 * 2.5)
    point = image.TransformIndexToPhysicalPoint((3, 2, 4))
    assert point == pytest.approx((ORIGIN[0] + 1.8, ORIGIN[1] + 1.4, ORIGIN[2] + 10.0)), point
    assert not list(path.parent.glob(".*")), "a temporary file was left behind"


def test_import_sorts_along_normal_not_z(tmp_path):
    """A series whose slice normal is -z (feet first): slices sorted along the normal."""
    orientation = (1, 0, 0, 0, -1, 0)  # normal = row x column = (0, 0, -1)
    uid = generate_uid()
    folder = tmp_path / "series"
    folder.mkdir()
    for k in range(3):
        position = (0.0, 0.0, -SLICE_GAP * k)  # slice k lies further along the normal
        ds = make_slice(k, uid, position=position, orientation=orientation)
        ds.save_as(folder / f"{2 - k}.dcm", enforce_file_format=True)
    image = read_dicom_series(folder)
    array = sitk.GetArrayFromImage(image)
    assert [int(array[k, 0, 0]) for k in range(3)] == [1000 - 1024 + 100 * k for k in range(3)], array[:, 0, 0]
    assert image.GetDirection() == pytest.approx((1, 0, 0, 0, -1, 0, 0, 0, -1)), image.GetDirection()
    assert image.TransformIndexToPhysicalPoint((0, 0, 2))[2] == pytest.approx(-5.0)


def test_ct_small_single_slice(tmp_path):
    """pydicom's CT_small.dcm: one slice → a volume of one slice, z spacing = SliceThickness."""
    series = tmp_path / "series"
    series.mkdir()
    shutil.copy(get_testdata_file("CT_small.dcm"), series / "CT_small.dcm")
    ds = pydicom.dcmread(series / "CT_small.dcm")
    path = import_dicom_series(series, tmp_path / "cohort", "007", "NC")
    image = sitk.ReadImage(str(path))
    assert image.GetSize() == (128, 128, 1), image.GetSize()
    assert image.GetSpacing() == pytest.approx((0.661468, 0.661468, 5.0), rel=1e-5), image.GetSpacing()
    assert image.GetOrigin() == pytest.approx((-158.135803, -179.035797, -75.699997), rel=1e-6), image.GetOrigin()
    hu = sitk.GetArrayFromImage(image)[0]
    want = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_array_equal(hu, want)
    assert hu.min() == -896 and hu.max() == 1167, (hu.min(), hu.max())
    # the imported phase passes the cohort's CT check
    assert read_phase(tmp_path / "cohort", "007", "NC").GetSize() == (128, 128, 1)


def test_existing_phase_not_overwritten(tmp_path):
    series = write_series(tmp_path / "series")
    cohort = tmp_path / "cohort"
    path = import_dicom_series(series, cohort, "P1", "PV")
    before = path.read_bytes()
    with pytest.raises(CohortError, match=r"patient P1, file images/P1/PV.nii.gz: already exists"):
        import_dicom_series(series, cohort, "P1", "PV")
    assert path.read_bytes() == before
    import_dicom_series(series, cohort, "P1", "PV", overwrite=True)


def bad_modality(folder):
    write_series(folder, modality="MR")


def bad_mixed_series(folder):
    write_series(folder)
    other = make_slice(7, generate_uid(), position=(ORIGIN[0], ORIGIN[1], ORIGIN[2] + 7 * SLICE_GAP))
    other.save_as(folder / "zzz.dcm", enforce_file_format=True)


def bad_missing_slice(folder):
    write_series(folder, n_slices=6)
    files = sorted(folder.iterdir(), key=lambda p: float(pydicom.dcmread(p).ImagePositionPatient[2]))
    files[3].unlink()


def bad_duplicate_position(folder):
    write_series(folder)
    ds = make_slice(2, pydicom.dcmread(next(folder.iterdir())).SeriesInstanceUID)
    ds.save_as(folder / "copy.dcm", enforce_file_format=True)


def bad_not_dicom(folder):
    write_series(folder)
    (folder / "notes.txt").write_text("not a DICOM file")


def bad_empty(folder):
    folder.mkdir()


def bad_orientation(folder):
    write_series(folder)
    path = sorted(folder.iterdir())[2]
    ds = pydicom.dcmread(path)
    ds.ImageOrientationPatient = [0, 1, 0, 1, 0, 0]
    ds.save_as(path, enforce_file_format=True)


def bad_no_position(folder):
    write_series(folder)
    path = sorted(folder.iterdir())[1]
    ds = pydicom.dcmread(path)
    del ds.ImagePositionPatient
    ds.save_as(path, enforce_file_format=True)


def bad_single_slice_no_thickness(folder):
    write_series(folder, n_slices=1)
    path = next(folder.iterdir())
    ds = pydicom.dcmread(path)
    del ds.SliceThickness
    ds.save_as(path, enforce_file_format=True)


BAD_SERIES = [
    (bad_modality, "modality 'MR', expected 'CT'"),
    (bad_mixed_series, "several series in one folder"),
    (bad_missing_slice, "uneven slice spacing: 5 mm"),
    (bad_duplicate_position, "two slices at the same position"),
    (bad_not_dicom, "not a readable DICOM file"),
    (bad_empty, "no files in the DICOM series folder"),
    (bad_orientation, "ImageOrientationPatient"),
    (bad_no_position, "missing DICOM attribute(s) ImagePositionPatient"),
    (bad_single_slice_no_thickness, "single-slice series without SliceThickness"),
]


@pytest.mark.parametrize(("corrupt", "problem"), BAD_SERIES, ids=[c[0].__name__[4:] for c in BAD_SERIES])
def test_bad_series_refused(tmp_path, corrupt, problem):
    series = tmp_path / "series"
    corrupt(series)
    cohort = tmp_path / "cohort"
    with pytest.raises(CohortError) as info:
        import_dicom_series(series, cohort, "P9", "NC")
    message = str(info.value)
    assert info.value.patient == "P9" and message.startswith("patient P9"), message
    assert problem in message, message
    assert not (cohort / "images" / "P9" / "NC.nii.gz").exists(), "a refused series was written"


def test_bad_arguments(tmp_path):
    series = write_series(tmp_path / "series", n_slices=2)
    with pytest.raises(CohortError, match="unknown phase 'DELAY'"):
        import_dicom_series(series, tmp_path / "cohort", "P1", "DELAY")
    with pytest.raises(CohortError, match="not a safe folder name"):
        import_dicom_series(series, tmp_path / "cohort", "../P1", "NC")


def test_fractional_hu_kept_as_float(tmp_path):
    """Slope 0.5 gives half HU values: the volume stays float32 instead of being rounded."""
    series = write_series(tmp_path / "series", n_slices=3, rescale={1: (0.5, -1024.0)})
    image = read_dicom_series(series)
    assert image.GetPixelID() == sitk.sitkFloat32, image.GetPixelIDTypeAsString()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image)[1], expected_hu(1, 0.5, -1024.0))
