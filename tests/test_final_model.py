"""The final model folder: forests as arrays, save and reload, refusals, new patients.

Fast tests build a final model from parts (forests fitted on random numbers, untrained
tiny networks) and predict the tiny patients of ``test_cohort.write_cohort``; the slow
test refits every kind of model on a generated synthetic cohort and runs the command line.
"""

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from sklearn.ensemble import RandomForestClassifier
from test_cohort import CLINICAL_ROW, patch_nifti, write_cohort
from test_training import tiny_clinical

from hccer_lib import (
    explanations,
    model_arrays,
    model_folder,
    models,
    networks,
    new_patients,
    prediction,
)
from hccer_lib import final_model as fm
from hccer_lib import radiomics_baseline as rb
from hccer_lib.clinical import make_clinical_rf
from hccer_lib.cohort import CohortError
from hccer_lib.profiles import get_profile

TINY_PROFILE = replace(get_profile("smoke"), image_size=32, epochs=1, batch_size=8, resnet_blocks=(1, 1, 1, 1), resnet_width=4)
VARIABLES = ["age", "tumor_size_mm", "bclc"]  # 5 bits: age >=60, size >=50, BCLC C, B, A
TINY_NETWORK = networks.NetworkConfig(image_size=32, n_clinical=5, resnet_blocks=(1, 1, 1, 1), resnet_width=4, imagenet="none")
EXTRACTION = {"params": rb.load_params("2d", ("firstorder",)), "mode": "2d", "reference_phase": "PV",
              "tolerance_mm": None, "min_texture_voxels": 16}  # fmt: skip


# %% Forests as arrays ---------------------------------------------------------------------------


def noisy_data(n: int, n_features: int, seed: int, missing: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, n_features))
    y = (X[:, 0] + 0.5 * X[:, 1] + rng.normal(scale=0.8, size=n) > 0).astype(int)
    X[rng.random(X.shape) < missing] = np.nan
    return X, y


@pytest.mark.parametrize("missing", [0.0, 0.15], ids=["complete", "with_missing_values"])
def test_forest_walker_equals_sklearn(missing):
    X, y = noisy_data(300, 6, seed=1, missing=missing)
    forest = RandomForestClassifier(n_estimators=40, min_samples_leaf=2, random_state=0).fit(X, y)
    X_new, _ = noisy_data(200, 6, seed=2, missing=missing)
    arrays = model_arrays.forest_arrays(forest)
    model_arrays.check_forest_arrays(arrays, 6)
    got, expected = model_arrays.forest_predict_proba(arrays, X_new), forest.predict_proba(X_new)
    assert got.shape == expected.shape == (200, 2), (got.shape, expected.shape)
    assert np.max(np.abs(got - expected)) <= 1e-12, np.max(np.abs(got - expected))
    assert len(np.unique(got[:, 1])) > 20, "the test data should reach many different leaves"


def test_forest_walker_equals_sklearn_on_clinical_bits():
    rng = np.random.default_rng(3)
    bits = rng.integers(0, 2, (150, 9)).astype(np.float32)
    y = (bits[:, 0] + bits[:, 3] + rng.random(150) > 1.5).astype(int)
    forest = make_clinical_rf(seed=5, n_estimators=60).fit(bits, y)
    got = model_arrays.forest_predict_proba(model_arrays.forest_arrays(forest), bits)
    assert np.max(np.abs(got - forest.predict_proba(bits))) <= 1e-12


def test_damaged_forest_arrays_are_refused():
    X, y = noisy_data(80, 3, seed=4, missing=0.0)
    arrays = model_arrays.forest_arrays(RandomForestClassifier(n_estimators=3, random_state=0).fit(X, y))
    with pytest.raises(ValueError, match="reads 3 features"):
        model_arrays.check_forest_arrays(arrays, 4)
    broken = {**arrays, "children_left": arrays["children_left"].copy()}
    broken["children_left"][0] = 10_000
    with pytest.raises(ValueError, match="children"):
        model_arrays.check_forest_arrays(broken)
    with pytest.raises(ValueError, match=r"\[n, 3\]"):
        model_arrays.forest_predict_proba(arrays, X[:, :2])


def test_radiomics_transform_equals_the_pipeline():
    """Imputation (an empty column too), scaling, LASSO selection and forest, as numbers."""
    X, y = noisy_data(120, 8, seed=6)
    X[:, 5] = np.nan  # a feature that was never measured: imputed with 0
    columns = [f"PV_original_firstorder_F{i}" for i in range(8)]
    pipeline = rb.make_pipeline(seed=0, inner_cv=3, n_estimators=30).fit(X, y)
    spec = model_arrays.radiomics_spec(pipeline, columns)
    assert spec["selected"] == [c for c, keep in zip(columns, pipeline.named_steps["lasso"].support_, strict=True) if keep]
    X_new, _ = noisy_data(50, 8, seed=7)
    spec = json.loads(json.dumps(spec))  # as stored
    got = model_arrays.forest_predict_proba(model_arrays.forest_arrays(pipeline.named_steps["forest"]), model_arrays.radiomics_transform(spec, X_new))
    expected = pipeline.predict_proba(X_new)
    assert np.max(np.abs(got - expected)) <= 1e-12, np.max(np.abs(got - expected))


# %% A final model from parts ---------------------------------------------------------------------


def patient_folder(cohort: Path, patient_id: str, target: Path, label: str | None = None) -> Path:
    """The one-patient folder layout: clinical.csv (one row) and the patient's images side by side."""
    target.mkdir(parents=True)
    for path in (cohort / "images" / patient_id).iterdir():
        shutil.copyfile(path, target / path.name)
    clinical = pd.read_csv(cohort / "clinical.csv", dtype=str)
    row = clinical[clinical["patient_id"] == patient_id].copy()
    if label is not None:
        row["early_recurrence"] = label
    row.to_csv(target / "clinical.csv", index=False)
    boxes = cohort / "roi_boxes.csv"
    if boxes.is_file():
        table = pd.read_csv(boxes, dtype=str)
        table = table[table["patient_id"] == patient_id].drop(columns="patient_id")
        if len(table):
            table.to_csv(target / "roi_boxes.csv", index=False)
    return target


def build_final_model(cohort: Path) -> model_folder.FinalModel:
    """Every kind of model, fitted on random numbers or not at all, with the real feature names."""
    final = fm.new_final_model("tiny", tiny_clinical(), TINY_PROFILE, VARIABLES, seed=1, synthetic=True)
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 2, (60, len(final.bit_names))).astype(np.float32)
    y = (bits[:, 0] + rng.random(60) > 0.8).astype(int)
    fm.add_clinical_rf(final, make_clinical_rf(seed=1, n_estimators=25).fit(bits, y))

    patient = new_patients.read_patient_folder(patient_folder(cohort, "P002", cohort.parent / "p002_for_names"))
    rows, _ = rb.extract_patient(patient.images, patient.boxes, EXTRACTION["params"], "2d")
    columns = [c for c in rows[0] if c.split("_")[0] in ("NC", "ART", "PV")]
    X = rng.normal(size=(80, len(columns))) + np.array([rows[0][c] for c in columns])
    y = (X[:, 0] - np.mean(X[:, 0]) + rng.normal(scale=0.5, size=80) > 0).astype(int)
    fm.add_radiomics_rf(final, rb.make_pipeline(seed=1, inner_cv=3, n_estimators=25).fit(X, y), columns, EXTRACTION)

    for name in ("deep_resnet50", "fusion_d_joint"):
        fm.add_network(final, name, networks.build_model(name, TINY_NETWORK), TINY_NETWORK)
    return final


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A tiny cohort, a final model from parts and its saved folder (shared, never changed)."""
    root = tmp_path_factory.mktemp("final")
    cohort = write_cohort(root / "cohort")
    final = build_final_model(cohort)
    folder = final.save(root / "final_model")
    return {"root": root, "cohort": cohort, "final": final, "folder": folder}


def copy_folder(study, tmp_path) -> Path:
    return Path(shutil.copytree(study["folder"], tmp_path / "model"))


def test_saved_folder_holds_no_pickles(study):
    folder = study["folder"]
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    model_files = [f for f in files if not f.startswith(model_folder.SELF_CHECK_COHORT + "/")]
    assert {Path(f).suffix for f in model_files} == {".json", ".npz", ".keras"}, files
    check_cohort = sorted(set(files) - set(model_files))  # the generated self-check patients: CSV tables and NIfTI images
    assert {"".join(Path(f).suffixes) for f in check_cohort} == {".csv", ".nii.gz"}, check_cohort
    assert len([f for f in check_cohort if f.endswith(".nii.gz")]) == 3 * model_folder.N_SELF_CHECK_PATIENTS, check_cohort
    for path in folder.rglob("*.npz"):
        with np.load(path, allow_pickle=False) as arrays:
            assert all(arrays[name].dtype != object for name in arrays.files), path
    manifest = json.loads((folder / "manifest.json").read_text())
    assert sorted(manifest["files"]) == [f for f in files if f != "manifest.json"], manifest["files"]
    assert sorted(manifest["models"]) == ["clinical_rf", "deep_resnet50", "fusion_d_joint", "radiomics_rf"], list(manifest["models"])
    assert manifest["primary_model"] == "fusion_d_joint"
    assert manifest["clinical"]["bit_names"] == ["age >=60", "tumor_size_mm >=50", "bclc C", "bclc B", "bclc A"]
    assert manifest["preprocessing"]["settings"]["image_size"] == 32
    assert manifest["cohort"]["synthetic"] is True and "SYNTHETIC" in manifest["note"], manifest["note"]
    for key in ("hccer_version", "format_version", "versions", "profile", "seed", "radiomics"):
        assert key in manifest, key


def test_reloaded_model_predicts_the_same(study, tmp_path):
    """A new patient's probabilities from the model in memory and from its reloaded folder."""
    final = study["final"]
    loaded = model_folder.load_final_model(study["folder"])
    patient = new_patients.read_patient_folder(patient_folder(study["cohort"], "P001", tmp_path / "P001"))
    before, after = final.predict_patient(patient), loaded.predict_patient(patient)
    assert list(after.probabilities) == final.output_names == [
        "clinical_rf", "radiomics_rf", "deep_resnet50",
        "fusion_d_joint", "fusion_d_joint_image_head", "fusion_d_joint_clinical_head",
    ], list(after.probabilities)  # fmt: skip
    for name, value in before.probabilities.items():
        tolerance = 0.0 if name in models.FOREST_MODELS else 1e-6
        assert abs(after.probabilities[name] - value) <= tolerance, (name, value, after.probabilities[name])
        assert 0 <= value <= 1, (name, value)
    assert after.slices["slice"].tolist() == [2, 3], after.slices
    assert np.array_equal(after.clinical_bits, [[0, 0, 0, 0, 1]]), after.clinical_bits  # age 55, 42 mm, BCLC A
    assert after.images.shape == (2, 32, 32, 3), after.images.shape
    assert after.y_true == 1, after.y_true
    weights = after.slices["roi_area_mm2"] / after.slices["roi_area_mm2"].sum()  # slices weighted by the tumour's area
    assert after.probabilities["fusion_d_joint"] == pytest.approx((weights * after.slices["fusion_d_joint"]).sum())
    assert after.probabilities["radiomics_rf"] == pytest.approx((weights * after.slices["radiomics_rf"]).sum())


def test_spread_slices_takes_the_middle_one_or_spreads_them():
    assert explanations.spread_slices(5, 1).tolist() == [2], explanations.spread_slices(5, 1)
    assert explanations.spread_slices(5, 3).tolist() == [0, 2, 4], explanations.spread_slices(5, 3)
    assert explanations.spread_slices(1, 6).tolist() == [0] and explanations.spread_slices(0, 3).tolist() == []


def test_final_model_gradcam_explains_the_primary_network(study):
    """The Grad-CAM figure of the predict command and notebook 07: the primary network's fused head,
    the chosen slices of each patient, a feature map at least GRADCAM_MIN_SIDE cells a side."""
    import matplotlib.pyplot as plt

    final = study["final"]
    predictions = [final.predict_patient(p) for p in new_patients.iter_cohort_patients(study["cohort"], ["P001", "P002"])]
    middle = explanations.final_model_gradcam(final, predictions, slices_per_patient=1)
    assert middle.model_name == explanations.primary_network(final) == "fusion_d_joint", middle.model_name
    assert middle.heatmaps.shape == (2, 32, 32), middle.heatmaps.shape  # one slice of each patient
    assert min(middle.map_shape) >= explanations.GRADCAM_MIN_SIDE, (middle.layer, middle.map_shape)
    assert "SYNTHETIC" in middle.figure._suptitle.get_text() and middle.layer in middle.figure._suptitle.get_text()
    spread = explanations.final_model_gradcam(final, predictions[:1])
    assert spread.heatmaps.shape == (2, 32, 32), spread.heatmaps.shape  # both slices of P001
    forests_only = model_folder.FinalModel(manifest=final.manifest, forests=final.forests, radiomics=final.radiomics)
    assert explanations.final_model_gradcam(forests_only, predictions) is None
    plt.close("all")


def test_predict_cohort_equals_patient_folders(study, tmp_path):
    loaded = model_folder.load_final_model(study["folder"], self_check=False)
    patients, slices = prediction.predict_cohort(loaded, study["cohort"], progress=False)
    assert patients["patient_id"].tolist() == ["P001", "P002", "P003"], patients
    assert patients["y_true"].tolist() == [1, 0, 0] and patients["n_slices"].tolist() == [2, 2, 2], patients
    assert len(slices) == 6 and set(slices.columns) >= {"patient_id", "slice", "fusion_d_joint", "radiomics_rf"}, slices.columns
    # P003 has no label image, only rows in roi_boxes.csv: in its own folder, without patient_id
    one = loaded.predict_patient(new_patients.read_patient_folder(patient_folder(study["cohort"], "P003", tmp_path / "P003")))
    row = patients.set_index("patient_id").loc["P003"]
    for name, value in one.probabilities.items():
        assert row[name] == pytest.approx(value, abs=1e-6), (name, row[name], value)


def test_predict_cohort_gives_a_failed_row_and_predicts_the_others(study, tmp_path):
    """Issue 14: one patient's missing phase or bad clinical value stops no other patient."""
    loaded = model_folder.load_final_model(study["folder"], self_check=False)
    intact, _ = prediction.predict_cohort(loaded, study["cohort"], progress=False)
    cohort = tmp_path / "cohort"
    shutil.copytree(study["cohort"], cohort)
    (cohort / "images" / "P002" / "PV_roi.nii.gz").unlink()
    (cohort / "images" / "P002" / "PV.nii.gz").unlink()
    clinical = pd.read_csv(cohort / "clinical.csv", dtype=str)
    clinical.loc[clinical["patient_id"] == "P003", "age"] = "150"
    clinical.to_csv(cohort / "clinical.csv", index=False)
    patients, slices = prediction.predict_cohort(loaded, cohort, progress=False)
    assert patients["patient_id"].tolist() == ["P001", "P002", "P003"], patients
    assert patients["status"].tolist() == [prediction.STATUS_OK, prediction.STATUS_FAILED, prediction.STATUS_FAILED], patients
    reasons = patients.set_index("patient_id")["reason"]
    assert reasons["P002"] == "patient P002, file images/P002/PV.nii.gz: missing phase PV", reasons["P002"]
    assert "column 'age' has implausible value 150" in reasons["P003"], reasons["P003"]
    assert patients.loc[1:, "fusion_d_joint"].isna().all(), patients
    assert patients.loc[0, "fusion_d_joint"] == pytest.approx(intact.loc[0, "fusion_d_joint"], abs=1e-6)
    assert set(slices["patient_id"]) == {"P001"}, slices["patient_id"].unique()


def test_radiomics_features_missing_for_a_small_roi_are_imputed_not_refused(study, monkeypatch):
    """Issue 14: an ROI PyRadiomics cannot measure gives NaN features, filled by the fitted imputer."""
    loaded = model_folder.load_final_model(study["folder"], self_check=False)
    patient = next(new_patients.iter_cohort_patients(study["cohort"], ["P001"]))
    full = loaded.radiomics_rows(patient)
    dropped = loaded.radiomics["feature_columns"][:3]
    rows = full.drop(columns=dropped).to_dict("records")
    monkeypatch.setattr(rb, "extract_patient", lambda *args, **kwargs: (rows, {}))
    partial = loaded.radiomics_rows(patient)
    assert partial[dropped].isna().all().all(), partial[dropped]
    predicted = loaded.predict_patient(patient)
    assert 0 <= predicted.probabilities["radiomics_rf"] <= 1, predicted.probabilities


# %% Refusals ---------------------------------------------------------------------------------------


def edit_manifest(folder: Path, change, sign: bool = True) -> None:
    """Change the manifest; with ``sign``, record its new digest too (a consistent but different
    folder, reaching the checks behind the digest), else leave the saved digest (a plain edit)."""
    manifest = json.loads((folder / "manifest.json").read_text())
    change(manifest)
    if sign:
        manifest[model_folder.DIGEST_KEY] = model_folder.manifest_digest(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest))


def replace_file(folder: Path, rel: str, write) -> None:
    """Write a file anew and record its sha256 in the manifest (a consistent but different folder)."""
    write(folder / rel)
    edit_manifest(folder, lambda m: m["files"].__setitem__(rel, model_folder._sha256(folder / rel)))


def set_in(path: list, value):
    def change(manifest):
        target = manifest
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return change


def tamper_self_check(path: Path) -> None:
    arrays = model_arrays.load_arrays(path)
    arrays["expected:fusion_d_joint"] = arrays["expected:fusion_d_joint"] + 0.01
    path.unlink()
    model_arrays.save_arrays(path, arrays)


def swap_age_and_size(manifest: dict) -> None:
    """The clinical variables and their bits in another order, consistently (the forests read columns by position)."""
    manifest["clinical"]["variables"] = ["tumor_size_mm", "age", "bclc"]
    bits = manifest["clinical"]["bit_names"]
    manifest["clinical"]["bit_names"] = [bits[1], bits[0], *bits[2:]]


def shift_boxes(path: Path) -> None:
    table = pd.read_csv(path)
    table[["x_min", "x_max"]] += 3
    table.to_csv(path, index=False)


def pickled_arrays(path: Path) -> None:
    path.unlink()
    np.savez(path, children_left=np.array([{"a": 1}], dtype=object))


REFUSALS = {
    "format_version": (lambda f: edit_manifest(f, set_in(["format_version"], 99)), "manifest.json", "format 99"),
    "hccer_version": (lambda f: edit_manifest(f, set_in(["hccer_version"], "0.0.1")), "manifest.json", "hccer 0.0.1"),
    "keras_major": (lambda f: edit_manifest(f, set_in(["versions", "keras"], "2.15.0")), "manifest.json", "Keras 2.15.0"),
    "pyradiomics": (lambda f: edit_manifest(f, set_in(["versions", "pyradiomics"], "2.0.0")), "manifest.json", "PyRadiomics 2.0.0"),
    "missing_file": (lambda f: (f / "fusion_d_joint" / "model.keras").unlink(), "fusion_d_joint/model.keras", "missing"),
    "changed_file": (lambda f: (f / "clinical_rf" / "forest.npz").write_bytes(b"x"), "clinical_rf/forest.npz", "changed since"),
    "image_size": (lambda f: edit_manifest(f, set_in(["preprocessing", "settings", "image_size"], 48)),
                   "deep_resnet50/model.keras", "do not match the manifest's settings"),
    "network_width": (lambda f: edit_manifest(f, set_in(["models", "fusion_d_joint", "details", "network", "resnet_width"], 8)),
                      "fusion_d_joint/model.keras", "is not the fusion_d_joint"),
    "self_check": (lambda f: replace_file(f, "self_check.npz", tamper_self_check), "self_check.npz", "does not reproduce"),
    "pickle": (lambda f: replace_file(f, "clinical_rf/forest.npz", pickled_arrays), "clinical_rf/forest.npz", "allow_pickle"),
    "clinical_bits": (lambda f: edit_manifest(f, set_in(["clinical", "variables"], ["age", "bclc"])), "manifest.json", "encode to bits"),
    "not_a_model": (lambda f: (f / "manifest.json").unlink(), "manifest.json", "not an hccer model folder"),
    # issue 15: every setting a prediction depends on, and the synthetic label, are covered by manifest_sha256
    "edited_window": (lambda f: edit_manifest(f, set_in(["preprocessing", "settings", "window_level"], 40.0), sign=False),
                      "manifest.json", "changed since the model was saved"),
    "edited_margin": (lambda f: edit_manifest(f, set_in(["preprocessing", "settings", "margin"], 0.3), sign=False),
                      "manifest.json", "changed since the model was saved"),
    "edited_bin_width": (lambda f: edit_manifest(f, set_in(["radiomics", "params", "setting", "binWidth"], 5), sign=False),
                         "manifest.json", "changed since the model was saved"),
    "edited_variable_order": (lambda f: edit_manifest(f, swap_age_and_size, sign=False), "manifest.json", "changed since the model was saved"),
    "edited_synthetic_flag": (lambda f: edit_manifest(f, set_in(["cohort", "synthetic"], False), sign=False),
                              "manifest.json", "changed since the model was saved"),
    "edited_note": (lambda f: edit_manifest(f, set_in(["note"], "Validated for clinical use."), sign=False),
                    "manifest.json", "changed since the model was saved"),
    "no_digest": (lambda f: edit_manifest(f, lambda m: m.pop(model_folder.DIGEST_KEY), sign=False), "manifest.json", "no manifest_sha256"),
    # ... and when the digest is recomputed, the stored self-check patients, predicted end to end, notice
    "window_resigned": (lambda f: edit_manifest(f, set_in(["preprocessing", "settings", "window_level"], 40.0)),
                        "manifest.json", "other probabilities than when saved"),
    "margin_resigned": (lambda f: edit_manifest(f, set_in(["preprocessing", "settings", "margin"], 0.3)),
                        "manifest.json", "other probabilities than when saved"),
    "variable_order_resigned": (lambda f: edit_manifest(f, swap_age_and_size), "manifest.json", "other probabilities than when saved"),
    "self_check_patient_changed": (lambda f: replace_file(f, f"{model_folder.SELF_CHECK_COHORT}/roi_boxes.csv", shift_boxes),
                                   "manifest.json", "other probabilities than when saved"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(REFUSALS))
def test_model_folder_refused(study, tmp_path, case):
    change, file, words = REFUSALS[case]
    folder = copy_folder(study, tmp_path)
    change(folder)
    with pytest.raises(model_folder.ModelFolderError) as caught:
        model_folder.load_final_model(folder)
    message = str(caught.value)
    assert message.startswith(f"model folder {folder}, file {file}: "), message
    assert words in message, message
    assert "\n" not in message, message


def test_self_check_cohort_is_generated_the_same_and_valid(tmp_path):
    """The generated self-check patients: both classes, every phase with its ROI, the same for the same seed."""
    from hccer_lib.cohort import validate_cohort

    first = model_folder.write_self_check_cohort(tmp_path / "a")
    second = model_folder.write_self_check_cohort(tmp_path / "b")
    report = validate_cohort(first)
    assert (report.n_patients, report.n_er, report.n_ner) == (model_folder.N_SELF_CHECK_PATIENTS, 2, 2), report.summary()
    assert report.slices_per_phase == {"NC": 8, "ART": 8, "PV": 8}, report.slices_per_phase
    for path in sorted(first.rglob("*.csv")):
        assert path.read_bytes() == (second / path.relative_to(first)).read_bytes(), path
    for path in sorted(first.rglob("*.nii.gz")):
        arrays = [sitk.GetArrayFromImage(sitk.ReadImage(str(root / path.relative_to(first)))) for root in (first, second)]
        assert arrays[0].dtype == np.int16 and np.array_equal(*arrays), path


def test_self_check_patients_reach_every_output(study):
    """The saved folder holds the end-to-end probabilities of every output for each self-check patient."""
    arrays = model_arrays.load_arrays(study["folder"] / model_folder.SELF_CHECK_FILE)
    stored = sorted(k for k in arrays if k.startswith("patients:"))
    assert stored == sorted(f"patients:{name}" for name in study["final"].output_names), stored
    assert all(arrays[k].shape == (model_folder.N_SELF_CHECK_PATIENTS,) and np.all((arrays[k] >= 0) & (arrays[k] <= 1)) for k in stored)
    assert len(np.unique(arrays["patients:clinical_rf"])) > 1, arrays["patients:clinical_rf"]


def test_save_cleans_what_interrupted_saves_left(study, tmp_path):
    """A killed save leaves .<folder>.tmp-* (half-written) folders; the next save removes those whose process is gone."""
    folder = tmp_path / "final_model"
    stale_new = tmp_path / ".final_model.tmp-999999999-0badc0de"  # a pid that is not running
    stale_old_style = tmp_path / ".final_model.tmp-1a2b3c4d"  # written before pids were recorded
    live = tmp_path / f".final_model.tmp-{os.getpid()}-feedbeef"  # a save still running
    other = tmp_path / ".other_model.tmp-999999999-0badc0de"  # another folder's: not ours to clean
    for path in (stale_new, stale_old_style, live, other):
        (path / "fusion_d_joint").mkdir(parents=True)
        (path / "fusion_d_joint" / "model.keras").write_bytes(b"half written")
    study["final"].save(folder)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted([folder.name, live.name, other.name]), left
    assert model_folder.load_final_model(folder, self_check=False).model_names == study["final"].model_names


def test_interrupted_swap_restores_the_previous_folder(study, tmp_path):
    """Killed between moving the old folder aside and moving the new one in: the old one comes back, not lost."""
    folder = tmp_path / "final_model"
    previous = tmp_path / ".final_model.old-999999999-0badc0de"
    shutil.copytree(study["folder"], previous)
    assert model_folder.clean_stale_saves(folder) == [] and folder.is_dir() and not previous.exists()
    assert model_folder.load_final_model(folder, self_check=False).model_names == study["final"].model_names


# %% Reading a new patient --------------------------------------------------------------------------


def test_patient_with_unknown_label(study, tmp_path):
    patient = new_patients.read_patient_folder(patient_folder(study["cohort"], "P002", tmp_path / "P002", label=""))
    assert (patient.patient_id, patient.y_true) == ("P002", None), (patient.patient_id, patient.y_true)
    assert sorted(patient.images) == ["ART", "NC", "PV"] and [b.slice for b in patient.boxes["PV"]] == [2, 3]
    frame = pd.read_csv(tmp_path / "P002" / "clinical.csv", dtype=str).drop(columns="early_recurrence")
    frame.to_csv(tmp_path / "P002" / "clinical.csv", index=False)
    assert new_patients.read_patient_folder(tmp_path / "P002").y_true is None


def bad_row(folder: Path) -> None:
    frame = pd.read_csv(folder / "clinical.csv", dtype=str)
    frame.loc[0, "age"] = "-4"
    frame.to_csv(folder / "clinical.csv", index=False)


def empty_label(folder: Path) -> None:
    label = sitk.ReadImage(str(folder / "PV_roi.nii.gz"))
    sitk.WriteImage(label * 0, str(folder / "PV_roi.nii.gz"))


def two_rows(folder: Path) -> None:
    frame = pd.read_csv(folder / "clinical.csv", dtype=str)
    pd.concat([frame, frame.assign(patient_id="P009")]).to_csv(folder / "clinical.csv", index=False)


BAD_PATIENTS = {
    "missing_phase": (lambda f: (f / "ART.nii.gz").unlink(), "patient P001, file ART.nii.gz: missing phase ART"),
    "empty_label": (empty_label, "patient P001, file PV_roi.nii.gz: empty ROI"),
    "bad_value": (bad_row, "patient P001, file clinical.csv: column 'age' has implausible value -4"),
    "two_rows": (two_rows, "file clinical.csv: a patient folder's clinical.csv holds one row, got 2"),
    "no_clinical": (lambda f: (f / "clinical.csv").unlink(), "file clinical.csv: missing"),
    "other_patient_boxes": (lambda f: pd.DataFrame({"patient_id": ["P002"], "phase": ["PV"], "slice": [2], "x_min": [5], "x_max": [9],
                                                    "y_min": [6], "y_max": [11]}).to_csv(f / "roi_boxes.csv", index=False),
                            "patient P001, file roi_boxes.csv: rows of patient 'P002'"),
    "semicolons": (lambda f: pd.read_csv(f / "clinical.csv", dtype=str).to_csv(f / "clinical.csv", index=False, sep=";"),
                   "file clinical.csv: the delimiter looks wrong: the header holds ';'"),
    "vox_offset_inf": (lambda f: patch_nifti(f / "NC.nii.gz", 108, "f", float("inf")), "patient P001, file NC.nii.gz: unreadable image (NIfTI vox_offset inf"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_PATIENTS))
def test_bad_patient_folder_named_in_one_line(study, tmp_path, case):
    corrupt, expected = BAD_PATIENTS[case]
    folder = patient_folder(study["cohort"], "P001", tmp_path / "P001")
    corrupt(folder)
    with pytest.raises(CohortError) as caught:
        new_patients.read_patient_folder(folder)
    assert str(caught.value).startswith(expected), str(caught.value)
    assert "images/" not in str(caught.value) and "hccer-patient-" not in str(caught.value), str(caught.value)


def test_unreadable_patient_clinical_csv_is_one_named_error(study, tmp_path, monkeypatch):
    """An OSError reading the patient's clinical.csv (simulated: the tests may run as root) is a CohortError."""
    folder = patient_folder(study["cohort"], "P001", tmp_path / "P001")

    def refuse(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(pd, "read_csv", refuse)
    with pytest.raises(CohortError) as caught:
        new_patients.read_patient_folder(folder)
    assert str(caught.value).startswith("file clinical.csv: unreadable CSV ([Errno 13] Permission denied"), str(caught.value)


def test_cohort_with_unknown_labels(study, tmp_path):
    cohort = Path(shutil.copytree(study["cohort"], tmp_path / "cohort"))
    frame = pd.read_csv(cohort / "clinical.csv", dtype=str)
    frame.loc[1, "early_recurrence"] = ""
    frame.to_csv(cohort / "clinical.csv", index=False)
    labels = [(p.patient_id, p.y_true) for p in new_patients.iter_cohort_patients(cohort)]
    assert labels == [("P001", 1), ("P002", None), ("P003", 0)], labels


def test_clinical_row_encoded_as_at_fitting_time(study):
    row = pd.DataFrame([dict(patient_id="X", **{**CLINICAL_ROW, "age": 60, "tumor_size_mm": 49.9, "bclc": "C"})])
    bits = study["final"].clinical_bits(row)
    assert bits.tolist() == [[1, 0, 1, 0, 0]], bits  # age >= 60 is the high level; 49.9 mm is below 50


# %% End to end -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_refit_save_reload_predict_end_to_end(tmp_path):
    """A generated synthetic cohort: refit, save, reload, same probabilities; the command line agrees."""
    from test_cli import run_cli

    from hccer_lib import evaluation, synth

    cohort = synth.generate_cohort(tmp_path / "data" / "synthetic", synth.SynthConfig(n_patients=14), progress=False, n_jobs=1)
    clinical = pd.read_csv(cohort / "clinical.csv", dtype=str)
    er = clinical["early_recurrence"] == "1"
    clinical["age"] = np.where(er, "50", "70")  # a clinical signal 14 patients can select
    clinical["tumor_size_mm"] = np.where(er, "60", "30")
    clinical.to_csv(cohort / "clinical.csv", index=False)
    profile = replace(TINY_PROFILE, n_folds=2, batch_size=8)
    work_dir = cohort
    final = fm.refit_final_model(cohort, work_dir, profile, models=["clinical_rf", "radiomics_rf", "fusion_d_joint"],
                                 seed=3, imagenet="none", synthetic=True, clinical_estimators=30,
                                 radiomics_estimators=30, inner_folds=2)  # fmt: skip
    assert final.model_names == ["clinical_rf", "radiomics_rf", "fusion_d_joint"], final.model_names
    assert {"age >=60", "tumor_size_mm >=50"} <= set(final.bit_names), final.bit_names
    assert evaluation.predictions_path(work_dir, "fusion_d_joint").exists() is False  # refitting writes no predictions
    before, _ = prediction.predict_cohort(final, cohort, progress=False)
    folder = final.save(work_dir / "final_model")
    after, _ = prediction.predict_cohort(model_folder.load_final_model(folder), cohort, progress=False)
    for name in final.output_names:
        error = np.max(np.abs(after[name].to_numpy() - before[name].to_numpy()))
        assert error <= (0.0 if name in models.FOREST_MODELS else 1e-6), (name, error)
    assert after["y_true"].tolist() == clinical["early_recurrence"].astype(int).tolist()

    patient_id = clinical["patient_id"].iloc[0]
    patient = patient_folder(cohort, patient_id, tmp_path / "new_patient", label="")
    result = run_cli("predict", "--model", str(folder), "--patient", str(patient), "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "unknown" in result.stdout and "(the prediction: fused head)" in result.stdout, result.stdout
    written = pd.read_csv(tmp_path / "out" / "prediction.csv")
    expected = before.set_index("patient_id").loc[patient_id]
    for name in final.output_names:
        assert written[name].iloc[0] == pytest.approx(expected[name], abs=1e-6), (name, written[name].iloc[0], expected[name])
    assert (tmp_path / "out" / "gradcam.png").stat().st_size > 0
