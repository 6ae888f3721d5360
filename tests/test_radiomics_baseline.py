"""Radiomics baseline: parameter file, the small-ROI rule, extraction rows, the fold-wise pipeline."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import volumes
from volumes import Box, two_patient_cohort

from hccer_lib import radiomics_baseline as rb

# PyRadiomics imports its feature classes with the deprecated load_module()
pytestmark = pytest.mark.filterwarnings("ignore:the load_module:DeprecationWarning")


def make_image(array_zyx, spacing=(0.8, 0.8, 5.0), origin=(0.0, 0.0, 0.0)) -> sitk.Image:
    return volumes.make_image(array_zyx, spacing, origin)


def mask_like(image: sitk.Image, box: Box) -> sitk.Image:
    array = np.zeros(sitk.GetArrayViewFromImage(image).shape, dtype=np.uint8)
    array[box.slice, box.y_min : box.y_max + 1, box.x_min : box.x_max + 1] = 1
    mask = sitk.GetImageFromArray(array)
    mask.CopyInformation(image)
    return mask


@pytest.fixture(scope="module")
def params_2d():
    return rb.load_params("2d", ("firstorder", "shape2D", "glcm", "glszm"))


def test_parameter_file_follows_the_mode_and_the_profile_classes():
    params_2d = rb.load_params("2d", ("firstorder", "shape", "glcm"))
    params_3d = rb.load_params("3d", ("firstorder", "shape2D", "glcm"))
    assert params_2d["setting"]["force2D"] is True and params_3d["setting"]["force2D"] is False
    assert list(params_2d["featureClass"]) == ["firstorder", "shape2D", "glcm"], params_2d["featureClass"]
    assert list(params_3d["featureClass"]) == ["firstorder", "shape", "glcm"], params_3d["featureClass"]
    assert params_2d["setting"]["binWidth"] == 25 and params_2d["imageType"] == {"Original": {}}
    with pytest.raises(ValueError, match="mode"):
        rb.load_params("2.5d")


def test_a_2x2_roi_keeps_first_order_and_sets_texture_to_nan(params_2d):
    rng = np.random.default_rng(0)
    image = make_image(rng.normal(60, 40, size=(1, 20, 20)))
    features, status = rb.extract_roi(image, mask_like(image, Box(0, 5, 6, 5, 6)), params_2d, min_texture_voxels=16)
    assert status == "small", f"status {status!r}"
    texture = {k: v for k, v in features.items() if "_glcm_" in k or "_glszm_" in k}
    first_order = {k: v for k, v in features.items() if "_firstorder_" in k}
    assert texture and all(np.isnan(v) for v in texture.values()), f"texture of a 2x2 ROI: {texture}"
    expected_mean = float(sitk.GetArrayViewFromImage(image)[0, 5:7, 5:7].mean())
    got_mean = first_order["original_firstorder_Mean"]
    assert got_mean == pytest.approx(expected_mean, rel=1e-5), f"mean {got_mean}, expected {expected_mean}"


def test_a_constant_roi_sets_texture_to_nan_but_not_first_order(params_2d):
    image = make_image(np.full((1, 20, 20), 55.0))
    features, status = rb.extract_roi(image, mask_like(image, Box(0, 2, 15, 2, 15)), params_2d)
    assert status == "constant", f"status {status!r}"
    texture = [v for k, v in features.items() if "_glcm_" in k]
    assert texture and np.isnan(texture).all(), f"glcm values {texture}"
    assert features["original_firstorder_Mean"] == pytest.approx(55.0), features["original_firstorder_Mean"]
    assert features["original_shape2D_PixelSurface"] == pytest.approx(14 * 14 * 0.64), features["original_shape2D_PixelSurface"]


def test_a_one_voxel_roi_gives_all_nan_and_a_failed_status(params_2d):
    image = make_image(np.full((1, 10, 10), 55.0))
    names = ["original_firstorder_Mean", "original_glcm_Contrast"]
    features, status = rb.extract_roi(image, mask_like(image, Box(0, 3, 3, 3, 3)), params_2d, feature_names=names)
    assert status.startswith("failed"), f"status {status!r}"
    assert set(features) == set(names) and all(np.isnan(v) for v in features.values()), features


def test_extract_patient_2d_gives_one_row_per_matched_slice_and_reports_small_rois(params_2d):
    rng = np.random.default_rng(1)
    images = {p: make_image(rng.normal(80, 40, size=(6, 24, 24))) for p in ("NC", "ART", "PV")}
    boxes = {p: [Box(k, 4, 15, 4, 15) for k in (2, 3)] for p in ("NC", "ART", "PV")}
    boxes["ART"] = [Box(2, 4, 5, 4, 5), Box(3, 4, 15, 4, 15)]  # slice 2 of ART is a 2x2 box
    rows, notes = rb.extract_patient(images, boxes, params_2d, mode="2d")
    assert [r["slice"] for r in rows] == [2, 3], f"slices {[r['slice'] for r in rows]}"
    assert notes["small"] == ["ART slice 2"], f"notes {notes}"
    assert np.isnan(rows[0]["ART_original_glcm_Contrast"]) and np.isfinite(rows[1]["ART_original_glcm_Contrast"])
    assert np.isfinite(rows[0]["PV_original_glcm_Contrast"]), "PV texture of a 12x12 box should be finite"
    areas = [r["roi_area_mm2"] for r in rows]  # the reference phase's (PV) box: 12 x 12 voxels of 0.8 mm
    assert areas == pytest.approx([12 * 12 * 0.8 * 0.8] * 2), areas


def test_extract_patient_3d_gives_one_row():
    rng = np.random.default_rng(2)
    params = rb.load_params("3d", ("firstorder", "shape"))
    images = {p: make_image(rng.normal(80, 40, size=(6, 24, 24))) for p in ("NC", "ART", "PV")}
    boxes = {p: [Box(k, 4, 15, 4, 15) for k in (1, 2, 3)] for p in ("NC", "ART", "PV")}
    rows, notes = rb.extract_patient(images, boxes, params, mode="3d")
    assert len(rows) == 1 and rows[0]["slice"] is None and np.isnan(rows[0]["roi_area_mm2"]), rows[0]["slice"]
    volume = rows[0]["PV_original_shape_VoxelVolume"]
    assert volume == pytest.approx(3 * 12 * 12 * 0.8 * 0.8 * 5.0), f"box volume {volume} mm3"


def _toy_features(n_patients=40, slices=3, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_patients):
        y = i % 2
        for k in range(slices):
            informative = rng.normal(1.5 * y, 1.0)
            rows.append({"patient_id": f"P{i:02d}", "slice": k, "z_mm": 5.0 * k, "y_true": y,
                         "PV_original_firstorder_Mean": informative,
                         **{f"NC_original_glcm_Noise{j}": rng.normal() for j in range(8)},
                         "ART_original_glcm_Contrast": np.nan if k == 0 else rng.normal()})
    features = pd.DataFrame(rows)
    folds = pd.DataFrame({"patient_id": [f"P{i:02d}" for i in range(n_patients)],
                          "y_true": [i % 2 for i in range(n_patients)],
                          "fold": [(i // 2) % 4 for i in range(n_patients)]})
    return features, folds


def test_cross_validation_predicts_every_row_out_of_fold_and_finds_the_signal():
    features, folds = _toy_features()
    predictions, selection = rb.cross_validate(features, folds, seed=0, inner_folds=3, n_estimators=50, progress=False)
    assert len(predictions) == len(features) and predictions["y_prob"].between(0, 1).all(), predictions.describe()
    assert list(predictions.columns) == ["patient_id", "slice", "fold", "y_true", "y_prob"]
    with_areas, _ = rb.cross_validate(features.assign(roi_area_mm2=25.0 + features["slice"]), folds, seed=0, inner_folds=3,
                                      n_estimators=50, progress=False)
    assert with_areas["roi_area_mm2"].tolist() == (25.0 + features["slice"]).tolist(), "slice rows keep their tumour area"
    assert with_areas["y_prob"].tolist() == predictions["y_prob"].tolist(), "the area is not a feature"
    assert len(selection) == 4, f"{len(selection)} folds"
    frequency = rb.selection_frequency(selection)
    kept = frequency.set_index("feature")["n_folds_selected"]
    assert kept.get("PV_original_firstorder_Mean", 0) == 4, f"selection counts:\n{kept}"
    from sklearn.metrics import roc_auc_score

    auc = roc_auc_score(predictions["y_true"], predictions["y_prob"])
    assert auc > 0.75, f"out-of-fold AUC {auc:.3f} on a feature shifted by 1.5 SD"


def test_lasso_selector_keeps_one_feature_when_the_penalty_removes_all():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(60, 5))
    y = np.tile([0, 1], 30)
    selector = rb.LassoSelector(Cs=[1e-4], cv=3, random_state=0).fit(X, y)
    assert selector.fallback_ and selector.get_support().sum() == 1, selector.get_support()


def test_extract_cohort_caches_features_with_version_settings_and_report(tmp_path, monkeypatch):
    calls = []

    def fake_inputs(folder, patient_id):
        calls.append(patient_id)
        rng = np.random.default_rng(len(calls))
        images = {p: make_image(rng.normal(80, 40, size=(4, 20, 20))) for p in ("NC", "ART", "PV")}
        boxes = {p: [Box(k, 3, 12, 3, 12) for k in (1, 2)] for p in ("NC", "ART", "PV")}
        if patient_id == "P2":
            boxes["NC"] = [Box(1, 3, 4, 3, 4), Box(2, 3, 12, 3, 12)]  # one 2x2 box
        return images, boxes

    cohort_dir = two_patient_cohort(tmp_path, monkeypatch, fake_inputs)
    classes = ("firstorder", "glcm")
    features, meta = rb.extract_cohort(cohort_dir, tmp_path / "work", "2d", classes, n_jobs=1, progress=False)
    assert features[["patient_id", "slice"]].values.tolist() == [["P1", 1], ["P1", 2], ["P2", 1], ["P2", 2]], features.iloc[:, :4]
    assert features["y_true"].tolist() == [0, 0, 1, 1], features["y_true"].tolist()
    assert meta["report"]["small_rois"] == ["P2 NC slice 1"], meta["report"]
    assert meta["pyradiomics_version"] and meta["params"]["setting"]["binWidth"] == 25, meta
    csv_path = tmp_path / "work" / "processed" / f"radiomics_{meta['key']}.csv"
    assert csv_path.exists() and csv_path.with_suffix(".json").exists(), list((tmp_path / "work" / "processed").iterdir())
    again, meta_again = rb.extract_cohort(cohort_dir, tmp_path / "work", "2d", classes, n_jobs=1, progress=False)
    assert calls == ["P1", "P2"] and meta_again["key"] == meta["key"], f"second run re-extracted: {calls}"
    pd.testing.assert_frame_equal(again, features, check_dtype=False)
