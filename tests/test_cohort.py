"""Tests of hccer_lib.cohort on tiny cohorts built here (3 patients, 20 x 20 x 6 voxels).

Each bad-input test corrupts one thing of a valid cohort and checks that the error names
the patient, the file and the problem.
"""

import gzip
import hashlib
import pickle
import shutil
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from hccer_lib.cohort import (
    PHASES,
    CohortError,
    SliceBox,
    list_patients,
    load_clinical,
    load_patient,
    phase_path,
    read_phase,
    roi_boxes,
    roi_path,
    validate_cohort,
)

SIZE = (20, 20, 6)  # x, y, z voxels
SPACING = (0.8, 0.8, 2.5)  # mm
BOX = dict(x_min=5, x_max=9, y_min=6, y_max=11)  # tumour box, voxel indices inclusive
ROI_SLICES = (2, 3)
PATIENTS = ("P001", "P002", "P003")

CLINICAL_ROW = dict(
    early_recurrence=0, sex="M", age=55, tumor_size_mm=42.0, tumor_number=1,
    portal_vein_invasion=0, cirrhosis=1, hbv=1, nlr=2.1, alt=35, ast=40, akp=100,
    ggt=50, alb=42, tb=15.0, afp=20.0, child_pugh="A", bclc="A",
)  # fmt: skip


def origin_of(phase: str) -> tuple[float, float, float]:
    """Each phase has its own geometry (the phases are not registered)."""
    shift = PHASES.index(phase)
    return (-100.0 + shift, -120.0 - shift, 30.0 + 2.0 * shift)


def ct_volume(phase: str) -> sitk.Image:
    """Air (-1000 HU) around a body (40 HU) holding a tumour (90 HU); array [z, y, x]."""
    array = np.full(SIZE[::-1], -1000.0, dtype=np.float32)
    array[:, 2:18, 2:18] = 40.0
    for k in ROI_SLICES:
        array[k, BOX["y_min"] : BOX["y_max"] + 1, BOX["x_min"] : BOX["x_max"] + 1] = 90.0
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(SPACING)
    image.SetOrigin(origin_of(phase))
    return image


def label_like(image: sitk.Image, slices=ROI_SLICES, box=BOX) -> sitk.Image:
    array = np.zeros(sitk.GetArrayViewFromImage(image).shape, dtype=np.uint8)
    for k in slices:
        array[k, box["y_min"] : box["y_max"] + 1, box["x_min"] : box["x_max"] + 1] = 1
    label = sitk.GetImageFromArray(array)
    label.CopyInformation(image)
    return label


def write_cohort(root: Path) -> Path:
    """P001 (ER) and P002 have label images; P003 has only rows in roi_boxes.csv."""
    rows = [dict(patient_id=pid, **CLINICAL_ROW) for pid in PATIENTS]
    rows[0]["early_recurrence"] = 1
    frame = pd.DataFrame(rows)
    frame["extra_note"] = "kept"
    root.mkdir(parents=True, exist_ok=True)
    frame.to_csv(root / "clinical.csv", index=False)
    boxes = []
    for pid in PATIENTS:
        folder = root / "images" / pid
        folder.mkdir(parents=True)
        for phase in PHASES:
            image = ct_volume(phase)
            sitk.WriteImage(image, str(folder / f"{phase}.nii.gz"))
            if pid == "P003":
                boxes += [dict(patient_id=pid, phase=phase, slice=k, **BOX) for k in ROI_SLICES]
            else:
                sitk.WriteImage(label_like(image), str(folder / f"{phase}_roi.nii.gz"))
    pd.DataFrame(boxes).to_csv(root / "roi_boxes.csv", index=False)
    return root


@pytest.fixture
def cohort(tmp_path) -> Path:
    return write_cohort(tmp_path / "cohort")


def folder_hashes(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# %% A valid cohort ------------------------------------------------------------------------


def test_valid_cohort_report(cohort):
    before = folder_hashes(cohort)
    report = validate_cohort(cohort)
    assert folder_hashes(cohort) == before, "validate_cohort changed the cohort folder"
    assert report.n_patients == 3, report.summary()
    assert (report.n_er, report.n_ner) == (1, 2), report.summary()
    assert report.slices_per_phase == {"NC": 6, "ART": 6, "PV": 6}, report.slices_per_phase
    assert report.n_slices == 6, report.n_slices
    assert np.allclose(report.spacing_range["ART"], ((0.8, 0.8), (0.8, 0.8), (2.5, 2.5))), report.spacing_range
    summary = report.summary()
    assert "3 patients (ER 1, NER 2)" in summary, summary
    assert "ROI slices: NC 6, ART 6, PV 6" in summary, summary
    assert report.warnings == [], report.warnings


def test_clinical_types_and_leading_zeros(cohort):
    frame = pd.read_csv(cohort / "clinical.csv", dtype=str)
    frame.loc[0, "patient_id"] = "007"
    frame.loc[1, "bclc"] = "0"
    frame.to_csv(cohort / "clinical.csv", index=False)
    clinical = load_clinical(cohort)
    assert clinical["patient_id"].tolist() == ["007", "P002", "P003"], clinical["patient_id"].tolist()
    assert clinical["bclc"].tolist() == ["A", "0", "A"], clinical["bclc"].tolist()
    assert clinical["early_recurrence"].tolist() == [1, 0, 0]
    assert "extra_note" in clinical.columns, list(clinical.columns)
    assert list_patients(cohort) == ["007", "P002", "P003"]


def test_roi_boxes_from_label_geometry(cohort):
    boxes = roi_boxes(cohort, "P001", "ART")
    ox, oy, oz = origin_of("ART")
    assert [b.slice for b in boxes] == [2, 3], boxes
    first = boxes[0]
    assert (first.x_min, first.x_max, first.y_min, first.y_max) == (5, 9, 6, 11), first
    assert first.phase == "ART"
    assert first.z_mm == pytest.approx(oz + 2 * 2.5), first.z_mm
    expected_centre = (ox + 0.8 * (5 + 9) / 2, oy + 0.8 * (6 + 11) / 2)
    assert first.centre_mm == pytest.approx(expected_centre), first.centre_mm


def test_roi_boxes_sorted_by_physical_z_with_flipped_axis(cohort):
    folder = cohort / "images" / "P002"
    image = ct_volume("PV")
    image.SetDirection((1, 0, 0, 0, 1, 0, 0, 0, -1))  # slice index grows towards -z
    sitk.WriteImage(image, str(folder / "PV.nii.gz"))
    sitk.WriteImage(label_like(image, slices=(1, 4)), str(folder / "PV_roi.nii.gz"))
    boxes = roi_boxes(cohort, "P002", "PV")
    z0 = origin_of("PV")[2]
    assert [b.slice for b in boxes] == [4, 1], [(b.slice, b.z_mm) for b in boxes]
    assert [b.z_mm for b in boxes] == pytest.approx([z0 - 4 * 2.5, z0 - 1 * 2.5])


def test_roi_from_table_only(cohort):
    boxes = roi_boxes(cohort, "P003", "NC")
    assert [(b.slice, b.x_min, b.x_max, b.y_min, b.y_max) for b in boxes] == [(2, 5, 9, 6, 11), (3, 5, 9, 6, 11)]
    assert roi_path(cohort, "P003", "NC") is None


def test_table_overrides_agreeing_label(cohort):
    """Label and table for the same phase: the table's bounds are used."""
    table = pd.read_csv(cohort / "roi_boxes.csv")
    extra = [dict(patient_id="P001", phase="NC", slice=k, x_min=4, x_max=10, y_min=6, y_max=12) for k in ROI_SLICES]
    pd.concat([table, pd.DataFrame(extra)]).to_csv(cohort / "roi_boxes.csv", index=False)
    boxes = roi_boxes(cohort, "P001", "NC")
    assert [(b.x_min, b.x_max, b.y_max) for b in boxes] == [(4, 10, 12), (4, 10, 12)], boxes
    assert validate_cohort(cohort).n_patients == 3


def test_other_formats_accepted(cohort):
    folder = cohort / "images" / "P002"
    image = sitk.ReadImage(str(folder / "NC.nii.gz"))
    (folder / "NC.nii.gz").unlink()
    sitk.WriteImage(image, str(folder / "NC.nrrd"))
    label = sitk.ReadImage(str(folder / "NC_roi.nii.gz"))
    (folder / "NC_roi.nii.gz").unlink()
    sitk.WriteImage(label, str(folder / "NC_roi.nii"))
    assert phase_path(cohort, "P002", "NC").name == "NC.nrrd"
    loaded = read_phase(cohort, "P002", "NC")
    assert loaded.GetPixelID() == sitk.sitkFloat32
    assert len(roi_boxes(cohort, "P002", "NC", image=loaded)) == 2
    assert validate_cohort(cohort).n_patients == 3


def test_load_patient(cohort):
    phases = load_patient(cohort, "P001")
    assert list(phases) == list(PHASES)
    image, boxes = phases["PV"]
    assert image.GetSize() == SIZE and all(isinstance(b, SliceBox) for b in boxes), (image.GetSize(), boxes)


def test_extra_folder_is_a_warning(cohort):
    shutil.copytree(cohort / "images" / "P001", cohort / "images" / "P999")
    report = validate_cohort(cohort)
    assert len(report.warnings) == 1 and "images/P999" in report.warnings[0], report.warnings
    assert "warning: folder images/P999" in report.summary()


def test_error_format_and_pickle():
    err = CohortError("missing phase ART", patient="HCC007", file="images/HCC007/ART.nii.gz")
    assert str(err) == "patient HCC007, file images/HCC007/ART.nii.gz: missing phase ART", str(err)
    assert str(CohortError("bad", file="clinical.csv")) == "file clinical.csv: bad"
    assert isinstance(err, ValueError)
    again = pickle.loads(pickle.dumps(err))
    assert (again.problem, again.patient, again.file) == (err.problem, err.patient, err.file)


def test_further_problems_are_counted(cohort):
    (cohort / "images" / "P002" / "ART.nii.gz").unlink()
    (cohort / "images" / "P003" / "PV.nii.gz").unlink()
    with pytest.raises(CohortError) as info:
        validate_cohort(cohort)
    message = str(info.value)
    assert message.startswith("patient P002, file images/P002/ART.nii.gz: missing phase ART"), message
    assert "(and 1 further problem)" in message, message


# %% Bad input: one corruption per case ------------------------------------------------------


def edit_clinical(cohort: Path, row: int, column: str, value) -> None:
    frame = pd.read_csv(cohort / "clinical.csv", dtype=str)
    frame.loc[row, column] = value
    frame.to_csv(cohort / "clinical.csv", index=False)


def edit_boxes(cohort: Path, **values) -> None:
    """Change the first row of roi_boxes.csv (P003, NC, slice 2)."""
    table = pd.read_csv(cohort / "roi_boxes.csv")
    for column, value in values.items():
        table.loc[0, column] = value
    table.to_csv(cohort / "roi_boxes.csv", index=False)


def write_array(path: Path, array: np.ndarray, spacing=SPACING, origin=None) -> None:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing[: image.GetDimension()])
    if origin is not None:
        image.SetOrigin(origin)
    sitk.WriteImage(image, str(path))


def image_path(cohort: Path, pid: str, name: str) -> Path:
    return cohort / "images" / pid / name


def corrupt_missing_phase(c):
    image_path(c, "P002", "ART.nii.gz").unlink()


def corrupt_patient_folder_missing(c):
    shutil.rmtree(c / "images" / "P003")


def corrupt_unreadable(c):
    image_path(c, "P001", "NC.nii.gz").write_bytes(b"this is not an image")


def corrupt_truncated(c):
    path = image_path(c, "P001", "PV.nii.gz")
    path.write_bytes(path.read_bytes()[:200])


def corrupt_2d(c):
    write_array(image_path(c, "P002", "NC.nii.gz"), np.full((20, 20), -500.0, np.float32) + np.eye(20, dtype=np.float32) * 900)


def corrupt_4d(c):
    array = np.full((2, 6, 20, 20), -1000.0, np.float32)
    array[..., 5:10] = 100
    image = sitk.JoinSeries([ct_volume("ART"), ct_volume("ART")])
    assert image.GetDimension() == 4
    sitk.WriteImage(image, str(image_path(c, "P002", "ART.nii.gz")))


def corrupt_non_ct_0_255(c):
    array = np.zeros(SIZE[::-1], np.uint8)
    array[:, 2:18, 2:18] = 255
    write_array(image_path(c, "P001", "ART.nii.gz"), array, origin=origin_of("ART"))


def corrupt_non_ct_normalised(c):
    array = np.random.default_rng(0).normal(0, 1, SIZE[::-1]).astype(np.float32)
    write_array(image_path(c, "P001", "ART.nii.gz"), array, origin=origin_of("ART"))


def corrupt_non_ct_below_range(c):
    image = ct_volume("NC")
    array = sitk.GetArrayFromImage(image)
    array[0, 0, 0] = -32768
    write_array(image_path(c, "P003", "NC.nii.gz"), array, origin=origin_of("NC"))


def corrupt_nan_voxels(c):
    """NRRD keeps NaN (ITK's NIfTI reader turns NaN into 0)."""
    array = sitk.GetArrayFromImage(ct_volume("PV"))
    array[1, 1, 1] = np.nan
    image_path(c, "P002", "PV.nii.gz").unlink()
    write_array(image_path(c, "P002", "PV.nrrd"), array, origin=origin_of("PV"))


def corrupt_rgb(c):
    array = np.zeros((*SIZE[::-1], 3), np.uint8)
    image = sitk.GetImageFromArray(array, isVector=True)
    sitk.WriteImage(image, str(image_path(c, "P002", "PV.nii.gz")))


def corrupt_zero_spacing(c):
    """Spacing 0 along z in the NIfTI header (SimpleITK would read it as 1 mm)."""
    path = image_path(c, "P001", "NC.nii.gz")
    data = bytearray(gzip.decompress(path.read_bytes()))
    data[76 + 3 * 4 : 76 + 4 * 4] = struct.pack("<f", 0.0)
    path.write_bytes(gzip.compress(bytes(data)))


def corrupt_huge_spacing(c):
    array = sitk.GetArrayFromImage(ct_volume("PV"))
    write_array(image_path(c, "P003", "PV.nii.gz"), array, spacing=(0.8, 0.8, 50.0))


def corrupt_two_candidates(c):
    shutil.copy(image_path(c, "P001", "PV.nii.gz"), image_path(c, "P001", "PV.nii"))
    sitk.WriteImage(sitk.ReadImage(str(image_path(c, "P001", "PV.nii.gz"))), str(image_path(c, "P001", "PV.nii")))


def corrupt_empty_roi(c):
    image = ct_volume("PV")
    sitk.WriteImage(label_like(image, slices=()), str(image_path(c, "P002", "PV_roi.nii.gz")))


def corrupt_no_roi(c):
    image_path(c, "P001", "ART_roi.nii.gz").unlink()


def corrupt_roi_origin(c):
    label = label_like(ct_volume("ART"))
    label.SetOrigin(origin_of("NC"))  # the NC geometry saved as the ART label
    sitk.WriteImage(label, str(image_path(c, "P002", "ART_roi.nii.gz")))


def corrupt_roi_size(c):
    label = sitk.GetImageFromArray(np.ones((6, 20, 24), np.uint8))
    label.SetSpacing(SPACING)
    label.SetOrigin(origin_of("NC"))
    sitk.WriteImage(label, str(image_path(c, "P001", "NC_roi.nii.gz")))


def corrupt_roi_not_integer(c):
    image = ct_volume("NC")
    label = sitk.Cast(label_like(image), sitk.sitkFloat32) * 0.5
    sitk.WriteImage(label, str(image_path(c, "P001", "NC_roi.nii.gz")))


def corrupt_box_outside(c):
    edit_boxes(c, x_max=25)


def corrupt_box_min_gt_max(c):
    edit_boxes(c, y_min=12, y_max=6)


def corrupt_box_slice_missing(c):
    edit_boxes(c, slice=9)


def corrupt_box_unknown_patient(c):
    edit_boxes(c, patient_id="P404")


def corrupt_box_negative(c):
    edit_boxes(c, x_min=-3)


def corrupt_table_label_disagree(c):
    table = pd.read_csv(c / "roi_boxes.csv")
    extra = [dict(patient_id="P002", phase="ART", slice=k, **BOX) for k in (3, 4)]  # label: 2, 3
    pd.concat([table, pd.DataFrame(extra)]).to_csv(c / "roi_boxes.csv", index=False)


def corrupt_box_duplicate(c):
    table = pd.read_csv(c / "roi_boxes.csv")
    pd.concat([table, table.iloc[[1]]]).to_csv(c / "roi_boxes.csv", index=False)


def corrupt_unknown_category(c):
    edit_clinical(c, 1, "sex", "X")


def corrupt_unknown_bclc(c):
    edit_clinical(c, 2, "bclc", "D")


def corrupt_missing_value(c):
    edit_clinical(c, 1, "age", "")


def corrupt_non_numeric(c):
    edit_clinical(c, 2, "afp", "high")


def corrupt_implausible_age(c):
    edit_clinical(c, 0, "age", "150")


def corrupt_fractional_count(c):
    edit_clinical(c, 1, "tumor_number", "1.5")


def corrupt_zero_size(c):
    edit_clinical(c, 2, "tumor_size_mm", "0")


def corrupt_negative_lab(c):
    edit_clinical(c, 0, "tb", "-3")


def corrupt_duplicate_id(c):
    edit_clinical(c, 2, "patient_id", "P002")


def corrupt_label_not_binary(c):
    edit_clinical(c, 1, "early_recurrence", "2")


def corrupt_unsafe_id(c):
    edit_clinical(c, 1, "patient_id", "../P002")


def corrupt_empty_id(c):
    edit_clinical(c, 1, "patient_id", "")


def corrupt_box_unknown_phase(c):
    edit_boxes(c, phase="DELAYED")


def corrupt_missing_column(c):
    frame = pd.read_csv(c / "clinical.csv", dtype=str).drop(columns=["afp"])
    frame.to_csv(c / "clinical.csv", index=False)


def corrupt_no_clinical(c):
    (c / "clinical.csv").unlink()


def patch_nifti(path: Path, offset: int, fmt: str, value, keep_bytes: int | None = None) -> None:
    """Overwrite one field of a .nii.gz header (little-endian ``fmt`` at byte ``offset``);
    ``keep_bytes`` truncates the uncompressed file."""
    data = bytearray(gzip.decompress(path.read_bytes()))
    struct.pack_into("<" + fmt, data, offset, value)
    path.write_bytes(gzip.compress(bytes(data[:keep_bytes])))


def corrupt_nan_nifti(c):
    """A NaN in the arterial tumour of a float32 NIfTI phase: ITK's NIfTI reader would read it as 0 HU."""
    array = sitk.GetArrayFromImage(ct_volume("ART"))
    array[ROI_SLICES[0], BOX["y_min"] + 2, BOX["x_min"] + 2] = np.nan
    write_array(image_path(c, "P001", "ART.nii.gz"), array, origin=origin_of("ART"))


def corrupt_inf_nifti_roi(c):
    """An infinite voxel in a float32 NIfTI label image (read as 0 too)."""
    image = ct_volume("NC")
    label = sitk.GetArrayFromImage(sitk.Cast(label_like(image), sitk.sitkFloat32))
    label[0, 0, 0] = np.inf
    write_array(image_path(c, "P002", "NC_roi.nii.gz"), label, origin=origin_of("NC"))


def corrupt_vox_offset_nan(c):
    patch_nifti(image_path(c, "P001", "PV.nii.gz"), 108, "f", float("nan"))


def corrupt_vox_offset_inf(c):
    patch_nifti(image_path(c, "P002", "ART.nii.gz"), 108, "f", float("inf"))


def corrupt_bitpix_zero_half_missing(c):
    """bitpix 0 and half the float32 voxels missing: the datatype (float32) says how large the file must be."""
    n_bytes = 352 + int(np.prod(SIZE)) * 4 // 2
    patch_nifti(image_path(c, "P001", "PV.nii.gz"), 72, "h", 0, keep_bytes=n_bytes)


def corrupt_huge_declared_size(c):
    """A small file whose header declares 2048 x 2048 x 512 voxels (2**31 > MAX_IMAGE_VOXELS)."""
    path = image_path(c, "P003", "PV.nii.gz")
    for axis, size in enumerate((2048, 2048, 512)):
        patch_nifti(path, 42 + 2 * axis, "h", size)


def corrupt_huge_declared_size_mha(c):
    """The same in a MetaImage header (any format is checked before its voxels are read)."""
    image_path(c, "P003", "NC.nii.gz").unlink()
    path = image_path(c, "P003", "NC.mha")
    sitk.WriteImage(ct_volume("NC"), str(path))
    data = path.read_bytes()
    path.write_bytes(data.replace(b"DimSize = 20 20 6", b"DimSize = 4096 4096 4096", 1))


def corrupt_negative_dim(c):
    """A negative slice count in a phase's header: the phase file is named, not its ROI."""
    patch_nifti(image_path(c, "P002", "NC.nii.gz"), 46, "h", -6)


def corrupt_single_class(c):
    frame = pd.read_csv(c / "clinical.csv", dtype=str)
    frame["early_recurrence"] = "0"
    frame.to_csv(c / "clinical.csv", index=False)


def corrupt_one_patient(c):
    frame = pd.read_csv(c / "clinical.csv", dtype=str)
    frame.iloc[[0]].to_csv(c / "clinical.csv", index=False)
    (c / "roi_boxes.csv").unlink()  # its rows are P003's (P001 has label images)


def corrupt_duplicated_column(c):
    frame = pd.read_csv(c / "clinical.csv", dtype=str)
    frame["age "] = "70"  # a second 'age' column (names are stripped)
    frame.to_csv(c / "clinical.csv", index=False)


def corrupt_infinite_lab(c):
    edit_clinical(c, 1, "afp", "inf")


def corrupt_semicolons(c):
    frame = pd.read_csv(c / "clinical.csv", dtype=str)
    frame.to_csv(c / "clinical.csv", index=False, sep=";")


# (corruption, patient named, file named, words of the problem)
BAD_INPUTS = [
    (corrupt_missing_phase, "P002", "images/P002/ART.nii.gz", "missing phase ART"),
    (corrupt_patient_folder_missing, "P003", "images/P003/NC.nii.gz", "missing patient folder images/P003"),
    (corrupt_unreadable, "P001", "images/P001/NC.nii.gz", "unreadable image"),
    (corrupt_truncated, "P001", "images/P001/PV.nii.gz", "unreadable image"),
    (corrupt_2d, "P002", "images/P002/NC.nii.gz", "not a 3-D image (2-D"),
    (corrupt_4d, "P002", "images/P002/ART.nii.gz", "not a 3-D image (4-D"),
    (corrupt_non_ct_0_255, "P001", "images/P001/ART.nii.gz", "no voxel below 0 HU"),
    (corrupt_non_ct_normalised, "P001", "images/P001/ART.nii.gz", "span less than 100 HU"),
    (corrupt_non_ct_below_range, "P003", "images/P003/NC.nii.gz", "outside -3100..32767 HU"),
    (corrupt_nan_voxels, "P002", "images/P002/PV.nrrd", "NaN or infinite"),
    (corrupt_rgb, "P002", "images/P002/PV.nii.gz", "not a scalar image"),
    (corrupt_zero_spacing, "P001", "images/P001/NC.nii.gz", "missing or zero voxel spacing"),
    (corrupt_huge_spacing, "P003", "images/P003/PV.nii.gz", "implausible voxel spacing"),
    (corrupt_two_candidates, "P001", "images/P001/PV.nii.gz", "several files for PV"),
    (corrupt_empty_roi, "P002", "images/P002/PV_roi.nii.gz", "empty ROI"),
    (corrupt_no_roi, "P001", "images/P001/ART_roi.nii.gz", "no ROI for phase ART"),
    (corrupt_roi_origin, "P002", "images/P002/ART_roi.nii.gz", "ROI geometry differs from its phase image: origin"),
    (corrupt_roi_size, "P001", "images/P001/NC_roi.nii.gz", "ROI geometry differs from its phase image: size"),
    (corrupt_roi_not_integer, "P001", "images/P001/NC_roi.nii.gz", "non-integer values"),
    (corrupt_box_outside, "P003", "roi_boxes.csv", "ROI outside the image"),
    (corrupt_box_min_gt_max, "P003", "roi_boxes.csv", "min > max"),
    (corrupt_box_slice_missing, "P003", "roi_boxes.csv", "slice outside the image"),
    (corrupt_box_unknown_patient, "P404", "roi_boxes.csv", "patient not in clinical.csv"),
    (corrupt_box_negative, "P003", "roi_boxes.csv", "whole numbers >= 0"),
    (corrupt_table_label_disagree, "P002", "roi_boxes.csv", "disagree on the ROI slices"),
    (corrupt_box_duplicate, "P003", "roi_boxes.csv", "second box for NC slice 3"),
    (corrupt_unknown_category, "P002", "clinical.csv", "unknown category 'X'"),
    (corrupt_unknown_bclc, "P003", "clinical.csv", "column 'bclc' has unknown category 'D'"),
    (corrupt_missing_value, "P002", "clinical.csv", "missing value in column 'age'"),
    (corrupt_non_numeric, "P003", "clinical.csv", "non-numeric value 'high'"),
    (corrupt_implausible_age, "P001", "clinical.csv", "column 'age' has implausible value 150"),
    (corrupt_fractional_count, "P002", "clinical.csv", "tumor_number"),
    (corrupt_zero_size, "P003", "clinical.csv", "tumor_size_mm"),
    (corrupt_negative_lab, "P001", "clinical.csv", "column 'tb' has implausible value -3"),
    (corrupt_duplicate_id, "P002", "clinical.csv", "duplicate patient_id 'P002'"),
    (corrupt_label_not_binary, "P002", "clinical.csv", "'early_recurrence' has value 2"),
    (corrupt_unsafe_id, "../P002", "clinical.csv", "not a safe folder name"),
    (corrupt_box_unknown_phase, "P003", "roi_boxes.csv", "unknown phase 'DELAYED'"),
    (corrupt_empty_id, None, "clinical.csv", "line 3: empty patient_id"),
    (corrupt_missing_column, None, "clinical.csv", "missing column(s) afp"),
    (corrupt_no_clinical, None, "clinical.csv", "has no clinical.csv"),
    # issue 15: hostile and broken inputs
    (corrupt_nan_nifti, "P001", "images/P001/ART.nii.gz", "voxels that are NaN or infinite"),
    (corrupt_inf_nifti_roi, "P002", "images/P002/NC_roi.nii.gz", "voxels that are NaN or infinite"),
    (corrupt_vox_offset_nan, "P001", "images/P001/PV.nii.gz", "NIfTI vox_offset nan"),
    (corrupt_vox_offset_inf, "P002", "images/P002/ART.nii.gz", "NIfTI vox_offset inf"),
    (corrupt_bitpix_zero_half_missing, "P001", "images/P001/PV.nii.gz", f"truncated: {352 + 4800} bytes, expected {352 + 9600}"),
    (corrupt_huge_declared_size, "P003", "images/P003/PV.nii.gz", "implausible image size (2048, 2048, 512)"),
    (corrupt_huge_declared_size_mha, "P003", "images/P003/NC.mha", "implausible image size (4096, 4096, 4096)"),
    (corrupt_negative_dim, "P002", "images/P002/NC.nii.gz", "NIfTI image size (20, 20, -6) has a size < 1"),
    (corrupt_single_class, None, "clinical.csv", "3 patients, 0 ER (column early_recurrence): the study needs patients of both classes"),
    (corrupt_one_patient, None, "clinical.csv", "1 patient, 0 NER"),
    (corrupt_duplicated_column, None, "clinical.csv", "column 'age' appears twice (columns 4 and 21)"),
    (corrupt_infinite_lab, "P002", "clinical.csv", "column 'afp' has non-finite value inf"),
    (corrupt_semicolons, None, "clinical.csv", "the delimiter looks wrong: the header holds ';'"),
]


@pytest.mark.parametrize(
    ("corrupt", "patient", "file", "problem"), BAD_INPUTS, ids=[c[0].__name__[8:] for c in BAD_INPUTS]
)
def test_bad_input_names_patient_file_and_problem(cohort, corrupt, patient, file, problem):
    corrupt(cohort)
    before = folder_hashes(cohort)
    with pytest.raises(CohortError) as info:
        validate_cohort(cohort)
    err = info.value
    message = str(err)
    assert folder_hashes(cohort) == before, "validate_cohort changed the cohort folder"
    assert (err.patient, err.file) == (patient, file), message
    assert problem in message, message
    prefix = ", ".join(([f"patient {patient}"] if patient else []) + [f"file {file}"]) + ": "
    assert message.startswith(prefix), message
    assert "\n" not in message, message
    assert "(and" not in message, f"one corruption should give one problem: {message}"


def test_read_phase_and_roi_boxes_raise_too(cohort):
    corrupt_empty_roi(cohort)
    with pytest.raises(CohortError, match=r"patient P002, file images/P002/PV_roi.nii.gz: empty ROI"):
        roi_boxes(cohort, "P002", "PV")
    corrupt_missing_phase(cohort)
    with pytest.raises(CohortError, match=r"patient P002, file images/P002/ART.nii.gz: missing phase ART"):
        read_phase(cohort, "P002", "ART")
    with pytest.raises(CohortError, match="unknown phase 'DELAYED'"):
        read_phase(cohort, "P002", "DELAYED")


# %% Issue 15: inputs that were accepted or gave a traceback ------------------------------------


def test_ids_na_and_none_are_ids_not_missing(cohort):
    """'NA' and 'None' are patient ids as written (pandas would read them as missing)."""
    frame = pd.read_csv(cohort / "clinical.csv", dtype=str)
    frame.loc[0, "patient_id"], frame.loc[1, "patient_id"] = "NA", "None"
    frame.to_csv(cohort / "clinical.csv", index=False)
    (cohort / "images" / "P001").rename(cohort / "images" / "NA")
    (cohort / "images" / "P002").rename(cohort / "images" / "None")
    report = validate_cohort(cohort)
    assert report.patients == ["NA", "None", "P003"], report.patients
    assert list_patients(cohort) == ["NA", "None", "P003"]
    frame.loc[2, "patient_id"] = ""  # an empty cell is still a missing id
    frame.to_csv(cohort / "clinical.csv", index=False)
    with pytest.raises(CohortError, match="line 4: empty patient_id"):
        load_clinical(cohort)


def test_class_counts_checked_against_the_folds(cohort):
    """1 ER and 2 NER: valid on its own, refused for a 2-fold run (a test fold would lack ER)."""
    assert validate_cohort(cohort).n_er == 1
    with pytest.raises(CohortError) as info:
        validate_cohort(cohort, n_folds=2)
    message = str(info.value)
    assert message.startswith("file clinical.csv: 3 patients, 1 ER (column early_recurrence): "
                              "a 2-fold cross-validation needs at least 2 patients of each class"), message
    assert validate_cohort(cohort, n_folds=1).n_ner == 2


def test_unreadable_clinical_csv_is_one_named_error(cohort, monkeypatch):
    """An OSError while reading clinical.csv (no permission, I/O error) is a CohortError naming the file."""
    def refuse(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(pd, "read_csv", refuse)
    with pytest.raises(CohortError) as info:
        validate_cohort(cohort)
    message = str(info.value)
    assert message.startswith("file clinical.csv: unreadable CSV ([Errno 13] Permission denied"), message
    assert "\n" not in message, message


def test_nifti_voxels_checked_in_bounded_chunks(cohort, monkeypatch):
    """A NaN in the last chunk of a file streamed in small chunks is still found."""
    from hccer_lib import cohort as cohort_module

    monkeypatch.setattr(cohort_module, "NIFTI_CHUNK_BYTES", 999)  # 9600 voxel bytes: ten chunks, values split between chunks
    array = sitk.GetArrayFromImage(ct_volume("PV"))
    array[-1, -1, -1] = -np.inf
    write_array(image_path(cohort, "P002", "PV.nii.gz"), array, origin=origin_of("PV"))
    with pytest.raises(CohortError, match=r"patient P002, file images/P002/PV.nii.gz: voxels that are NaN or infinite"):
        read_phase(cohort, "P002", "PV")
    assert read_phase(cohort, "P001", "PV").GetSize() == SIZE  # finite voxels, ten chunks: accepted
