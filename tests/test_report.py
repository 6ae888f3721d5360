"""The reporting checklist (TRIPOD+AI, CLAIM 2024) filled from a run, and its per-fold tables."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from hccer_lib import clinical, evaluation, outputs, preprocessing, report
from hccer_lib.profiles import get_profile

# --- per-fold tables ---------------------------------------------------------------------


def test_data_flow_counts_patients_events_and_slices_by_hand():
    folds = pd.DataFrame({"patient_id": ["A", "B", "C", "D", "E"], "y_true": [1, 0, 1, 0, 0], "fold": [0, 0, 1, 1, 1]})
    slices = ["A", "A", "A", "B", "C", "C", "D", "E", "E", "E", "E"]  # A 3, B 1, C 2, D 1, E 4
    flow = report.data_flow(folds, slices)
    expected = pd.DataFrame({"fold": [0, 1], "train_patients": [3, 2], "train_er": [1, 1], "train_slices": [7, 4],
                             "test_patients": [2, 3], "test_er": [1, 1], "test_slices": [4, 7]})
    pd.testing.assert_frame_equal(flow, expected, check_dtype=False)
    assert report.data_flow(folds)["test_slices"].isna().all(), "without slices the slice columns are empty"
    with pytest.raises(ValueError, match="patient Z has slice images but no fold"):
        report.data_flow(folds, ["A", "Z"])


def test_paper_table2_adds_up_to_the_papers_cohort():
    table = report.PAPER_TABLE2
    assert ((table["train_slices"] + table["test_slices"]) == 765).all(), table
    assert ((table["train_patients"] + table["test_patients"]) == 167).all(), table
    assert table["test_patients"].sum() == 167


def test_fold_characteristics_by_hand():
    frame = pd.DataFrame({"patient_id": ["A", "B", "C", "D"], "early_recurrence": [1, 0, 1, 0],
                          "sex": ["M", "F", "M", "M"], "age": [50, 70, 65, 40], "tumor_size_mm": [60, 20, 30, 55]})
    folds = pd.DataFrame({"patient_id": ["A", "B", "C", "D"], "y_true": [1, 0, 1, 0], "fold": [0, 0, 1, 1]})
    table = report.fold_characteristics(frame, folds).set_index("partition")
    assert table.loc["fold 0", "patients"] == 2 and table.loc["fold 0", "er"] == 1
    assert table.loc["fold 0", "male_percent"] == 50 and table.loc["fold 1", "male_percent"] == 100
    assert table.loc["fold 1", "age_median"] == 52.5 and table.loc["all", "age_60_or_more_percent"] == 50
    assert table.loc["all", "tumour_50mm_or_more_percent"] == 50 and table.loc["all", "er_percent"] == 50


def _patient_frame(prob, y) -> pd.DataFrame:
    n = len(y)
    return pd.DataFrame({"patient_id": [f"P{i:04d}" for i in range(n)], "slice": pd.array([pd.NA] * n, dtype="Int64"),
                         "fold": np.arange(n) % 2, "y_true": y, "y_prob": prob})


def _bernoulli_fit(y, logit_p, free_slope: bool) -> np.ndarray:
    """An independent maximum-likelihood fit: Nelder-Mead on the Bernoulli log-likelihood of
    ``logit P = a + b * logit(p)``, ``b`` fixed at 1 (offset) unless ``free_slope``."""
    from scipy.optimize import minimize

    y = np.asarray(y, dtype=float)

    def negative_log_likelihood(theta):
        eta = theta[0] + (theta[1] if free_slope else 1.0) * logit_p
        return float(np.sum(np.logaddexp(0.0, eta) - y * eta))

    start = np.array([0.0, 1.0]) if free_slope else np.array([0.0])
    return minimize(negative_log_likelihood, start, method="Nelder-Mead",
                    options={"xatol": 1e-9, "fatol": 1e-12, "maxiter": 20_000}).x


def test_calibration_intercept_is_the_offset_fit_not_the_free_fits_intercept_by_hand():
    # Ten patients predicted 0.25 of whom 1 recurs (observed 0.1), ten predicted 0.5 of whom 5 recur. The free fit
    # is saturated: logit(0.5) = 0 = a' + b * 0 and logit(0.1) = -ln 9 = a' - b ln 3, so a' = 0 and b = 2. The
    # calibration-in-the-large solves 6 = 10 expit(a - ln 3) + 10 expit(a): the predictions (mean 0.375) are too
    # high for the observed 0.30, so a < 0, and a' = 0 would wrongly call them calibrated in the large.
    y = np.array([1] + [0] * 9 + [1] * 5 + [0] * 5)
    p = np.array([0.25] * 10 + [0.5] * 10)
    table = report.calibration_table({"m": _patient_frame(p, y)}).set_index("model")
    intercept, slope = table.loc["m", "calibration_intercept"], table.loc["m", "calibration_slope"]
    assert slope == pytest.approx(2.0, abs=1e-4), table
    expected = _bernoulli_fit(y, np.log(p / (1 - p)), free_slope=False)[0]
    assert intercept == pytest.approx(expected, abs=1e-6), (intercept, expected)
    assert intercept < -0.3, f"the predictions are too high on average, the intercept must be clearly negative: {intercept}"
    # the score equation of the offset fit: mean predicted risk after the shift equals the observed rate
    shifted = 1 / (1 + np.exp(-(np.log(p / (1 - p)) + intercept)))
    assert shifted.mean() == pytest.approx(y.mean(), abs=1e-9)


def test_calibration_intercept_and_slope_recover_a_known_miscalibration():
    # Outcomes drawn from logit P(ER) = 0.4 + logit(p) (slope 1): the intercept is 0.4 by construction; and from
    # logit P(ER) = 0.5 + 0.6 logit(p): the slope is 0.6, and the offset intercept is the independent fit's.
    rng = np.random.default_rng(13)
    n = 200_000
    logit_p = rng.normal(-0.3, 1.2, n)
    p = 1 / (1 + np.exp(-logit_p))
    shifted = (rng.random(n) < 1 / (1 + np.exp(-(0.4 + logit_p)))).astype(int)
    steep = (rng.random(n) < 1 / (1 + np.exp(-(0.5 + 0.6 * logit_p)))).astype(int)
    table = report.calibration_table({"shifted": _patient_frame(p, shifted),
                                      "steep": _patient_frame(p, steep)}).set_index("model")
    assert table.loc["shifted", "calibration_intercept"] == pytest.approx(0.4, abs=0.02), table
    assert table.loc["shifted", "calibration_slope"] == pytest.approx(1.0, abs=0.02), table
    assert table.loc["steep", "calibration_slope"] == pytest.approx(0.6, abs=0.02), table
    sub = slice(0, 20_000)  # the independent fits on a subset (Nelder-Mead is slow on 200 000 rows)
    small = report.calibration_table({"steep": _patient_frame(p[sub], steep[sub])}).set_index("model").loc["steep"]
    intercept = _bernoulli_fit(steep[sub], logit_p[sub], free_slope=False)[0]
    free_intercept, free_slope = _bernoulli_fit(steep[sub], logit_p[sub], free_slope=True)
    assert small["calibration_intercept"] == pytest.approx(intercept, abs=1e-5), (small, intercept)
    assert small["calibration_slope"] == pytest.approx(free_slope, abs=1e-4), (small, free_slope)
    assert abs(small["calibration_intercept"] - free_intercept) > 0.1, "the offset fit is not the free fit's intercept"


def test_calibration_slope_is_one_when_calibrated_and_a_third_when_three_times_overconfident():
    rng = np.random.default_rng(0)
    logit = rng.normal(0, 1.2, 6000)
    y = (rng.random(6000) < 1 / (1 + np.exp(-logit))).astype(int)
    overconfident = 1 / (1 + np.exp(-3 * logit))
    table = report.calibration_table({"calibrated": _patient_frame(1 / (1 + np.exp(-logit)), y),
                                      "overconfident": _patient_frame(overconfident, y)}).set_index("model")
    assert table.loc["calibrated", "calibration_slope"] == pytest.approx(1.0, abs=0.08), table
    assert table.loc["calibrated", "calibration_intercept"] == pytest.approx(0.0, abs=0.08), table
    assert table.loc["overconfident", "calibration_slope"] == pytest.approx(1 / 3, abs=0.04), table
    assert table.loc["overconfident", "brier"] == pytest.approx(evaluation.brier_score(y, overconfident))
    assert table.loc["calibrated", "n_patients"] == 6000


# --- the checklist -----------------------------------------------------------------------

TRIPOD_ITEMS = ["1", "2", "3a", "3b", "3c", "4", "5a", "5b", "6a", "6b", "6c", "7", "8a", "8b", "8c", "9a", "9b", "9c",
                "10", "11", *[f"12{c}" for c in "abcdefg"], "13", "14", "15", "16", "17", *[f"18{c}" for c in "abcdef"],
                "19", "20a", "20b", "20c", "21", "22", "23a", "23b", "24", "25", "26", "27a", "27b", "27c"]


@pytest.fixture
def run_folder(tmp_path):
    """A cohort with the paper's Table 1 (no images but one patient's), and the files a quick run leaves."""
    cohort_dir = tmp_path / "hospital_a"
    cohort_dir.mkdir()
    patients = clinical.paper_clinical_frame(seed=1)
    patients.to_csv(cohort_dir / "clinical.csv", index=False)
    for phase in ("NC", "ART", "PV"):
        image = sitk.GetImageFromArray(np.zeros((3, 4, 4), np.float32))
        image.SetSpacing((0.7, 0.7, 5.0))
        (cohort_dir / "images" / "P001").mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(image, str(cohort_dir / "images" / "P001" / f"{phase}.nii.gz"))

    work_dir = tmp_path / "work"
    folds = evaluation.load_or_make_folds(work_dir, patients, 10, 2020)
    ids = patients["patient_id"].astype(str).to_numpy()
    per_patient = 1 + np.arange(len(ids)) % 4
    slice_ids = np.repeat(ids, per_patient)
    n = len(slice_ids)
    used = preprocessing.study_settings(work_dir, get_profile("quick"))  # the preprocessing the models of a quick run used
    key = preprocessing.dataset_key(used, preprocessing.cohort_fingerprint(cohort_dir))
    dataset = preprocessing.ProcessedDataset(
        images=np.zeros((n, 2, 2, 3), np.float32), patient_id=slice_ids, z_mm=np.zeros(n), slice=np.zeros(n, int),
        y_true=np.zeros(n, int), phase_slices=np.zeros((n, 3), int), roi_area_mm2=np.ones(n), key=key,
        settings={"image_size": 48, "window_level": 75.0, "window_width": 350.0, "reference_phase": "PV",
                  "margin": 0.25, "tolerance_mm": None},
        dropped=[{"patient_id": "P002", "slice": 3}])
    preprocessing.save_dataset(work_dir, dataset)
    # a newer cache of other settings (another window tried in notebook 02) is not the models' dataset
    other = preprocessing.ProcessedDataset(
        images=np.zeros((2, 2, 2, 3), np.float32), patient_id=np.array(["P001", "P001"]), z_mm=np.zeros(2),
        slice=np.zeros(2, int), y_true=np.zeros(2, int), phase_slices=np.zeros((2, 3), int), roi_area_mm2=np.ones(2), key="0ther0ther00",
        settings={"image_size": 48, "window_level": 40.0, "window_width": 400.0, "reference_phase": "PV",
                  "margin": 0.0, "tolerance_mm": None}, dropped=[])
    time.sleep(0.01)
    preprocessing.save_dataset(work_dir, other)
    outputs.write_json(work_dir / "processed" / "radiomics_def456.json", {
        "key": "def456", "mode": "2d", "pyradiomics_version": "v3.1.4", "params_file": "radiomics_params.yaml",
        "params": {"featureClass": {"firstorder": [], "glcm": []}, "setting": {"binWidth": 25, "normalize": False,
                                                                               "force2D": True, "label": 1}},
        "n_features": 126, "report_summary": "762 rows, 2286 ROIs: 7 too small for texture"})
    outputs.write_json(work_dir / "runs" / "fusion_d" / "k1" / "settings.json", {
        "profile": "quick", "imagenet_file_found": False, "keras_backend": "tensorflow",
        "network": {"image_units": 64, "clinical_filters": 8, "clinical_kernel": 3, "clinical_units": 16}})
    prob = np.random.default_rng(0).random(len(ids))
    evaluation.write_predictions(work_dir, "clinical_rf", pd.DataFrame({
        "patient_id": ids, "slice": pd.NA, "fold": evaluation.fold_of(folds, ids),
        "y_true": patients["early_recurrence"], "y_prob": prob}))
    return cohort_dir, work_dir, folds, slice_ids


def test_checklist_fills_what_the_run_knows_and_leaves_the_rest_open(run_folder, tmp_path):
    cohort_dir, work_dir, folds, slice_ids = run_folder
    table = report.checklist(work_dir, cohort_dir, "quick", figures_dir=tmp_path / "figures", seed=2020)
    assert list(table.columns) == report.CHECKLIST_COLUMNS
    assert set(table["status"]) <= set(report.STATUSES), set(table["status"])
    tripod = table[table["framework"] == report.TRIPOD].set_index("item")
    claim = table[table["framework"] == report.CLAIM].set_index("item")
    assert tripod.index.tolist() == TRIPOD_ITEMS, tripod.index.tolist()
    assert claim.index.tolist() == [str(i) for i in range(1, 45)], claim.index.tolist()

    # data flow per fold, computed here by hand from the folds and the slices per patient
    slices = pd.Series(slice_ids).value_counts()
    test0 = folds.loc[folds["fold"] == 0, "patient_id"]
    expected = (f"fold 0: train {167 - len(test0)} patients ({65 - int(folds.loc[test0.index, 'y_true'].sum())} ER, "
                f"{len(slice_ids) - int(slices[test0].sum())} slices), test {len(test0)} "
                f"({int(folds.loc[test0.index, 'y_true'].sum())} ER, {int(slices[test0].sum())} slices)")
    assert tripod.loc["21", "status"] == "filled" and expected in tripod.loc["21", "value"], tripod.loc["21", "value"]
    assert "10-fold cross-validation split by patient" in claim.loc["19", "value"]
    assert "167 patients, 65 ER (38.9%), 102 NER" in tripod.loc["8a", "value"], tripod.loc["8a", "value"]
    assert f"{len(slice_ids)} ROI slice images" in tripod.loc["20a", "value"]
    # preprocessing, radiomics, software, missing data, initialisation
    assert "48x48 px" in claim.loc["9", "value"] and "level 75 / width 350" in claim.loc["9", "value"]
    assert "margin 0.25 of its side plus 0 mm" in claim.loc["9", "value"], claim.loc["9", "value"]  # a cache without margin_mm
    assert "1 reference slices dropped" in claim.loc["9", "value"], claim.loc["9", "value"]
    assert "PyRadiomics v3.1.4" in claim.loc["25", "value"] and "binWidth=25" in claim.loc["25", "value"]
    assert "scikit-learn" in claim.loc["23", "value"] and "pyradiomics" in claim.loc["23", "value"]
    assert "7 too small for texture" in tripod.loc["11", "value"]
    assert "random initialisation" in claim.loc["24", "value"] and "clinical FC 16 units" in claim.loc["22", "value"]
    # the run records no clinical_activation: a network keyed before the setting, or at its default, ReLU
    assert "activation of C and D's clinical layer (assumed): relu" in claim.loc["22", "value"], claim.loc["22", "value"]
    assert "of B, C and D's image FC layer (assumed): relu" in claim.loc["22", "value"], claim.loc["22", "value"]
    # what was tuned and on which cohorts; the paper's silences marked as assumptions; what the tests answer
    assert "development synthetic cohorts only (generator seeds 3, 4, 5, 8-20;" in tripod.loc["12c", "value"]
    assert "never on the study's default cohort (seed 2020)" in tripod.loc["12c", "value"]
    assert "Adam (an assumption: the paper does not name its optimiser)" in claim.loc["25", "value"]
    assert "sizes assumed: the paper does not state them" in claim.loc["22", "value"]
    assert "conditional on the fitted fold models" in claim.loc["29", "value"]
    assert "clinical_rf" in claim.loc["37", "value"] and claim.loc["37", "status"] == "filled"
    # image headers: only P001 has images
    assert "NC: 1 volumes, in-plane spacing 0.70 mm, slice spacing 5.00 mm" in claim.loc["13", "value"]
    # a real cohort (no ground_truth.json): its source, dates, ethics are open
    for item in ("5a", "5b", "17", "8c"):
        assert tripod.loc[item, "status"] == "open", (item, tripod.loc[item].to_dict())
    assert claim.loc["31", "status"] == "open", "no Grad-CAM figure yet"
    assert str(tmp_path) not in " ".join(table["value"]), \
        "no absolute path of this machine in the checklist"


def test_checklist_marks_the_synthetic_cohort_and_reads_the_studys_figures(run_folder, tmp_path):
    cohort_dir, work_dir, _, _ = run_folder
    outputs.write_json(cohort_dir / "ground_truth.json", {"generator": "hccer_lib.synth", "generator_version": "1.1",
                                                          "seed": 2020})
    figures = tmp_path / "figures"
    for name in ("fig8_gradcam.png", "study_gradcam_patients.csv", "study_seed_spread.csv", "table1_clinical.md"):
        outputs.write_text(figures / name, "x")
    table = report.checklist(work_dir, cohort_dir, get_profile("quick"), figures_dir=figures, image_headers=False)
    tripod = table[table["framework"] == report.TRIPOD].set_index("item")
    claim = table[table["framework"] == report.CLAIM].set_index("item")
    assert tripod.loc["5a", "status"] == "filled" and "hccer_lib.synth 1.1 with seed 2020" in tripod.loc["5a", "value"]
    assert claim.loc["31", "status"] == "filled" and claim.loc["39", "status"] == "filled"
    assert claim.loc["30", "status"] == "filled" and "seed simulation" in claim.loc["30", "value"]
    assert claim.loc["13", "status"] == "open", "headers not read"
    csv_path, md_path = report.write_checklist(figures, table, synthetic=True)
    assert csv_path.name == "reporting_checklist.csv" and md_path.name == "reporting_checklist.md"
    text = md_path.read_text()
    counts = table[table["framework"] == report.CLAIM]["status"].value_counts()
    assert outputs.SYNTHETIC_NOTE in text and f"CLAIM 2024: {counts.get('filled', 0)} filled" in text, text[:800]
    assert len(pd.read_csv(csv_path)) == len(table) == 52 + 44


def test_every_case_of_every_checklist_item_names_only_facts_and_phrases(run_folder, tmp_path):
    # The run folder has every fact a run can have; each case is rendered whether or not its condition holds, so
    # a misspelt name in a branch that this run does not take still fails here.
    cohort_dir, work_dir, _, _ = run_folder
    template = report.checklist_template()
    facts = report.checklist_facts(work_dir, cohort_dir, "quick", figures_dir=tmp_path / "figures", image_headers=True)
    facts["slices_without_fold"] = True
    for framework, items in template["items"].items():
        for spec in items:
            for case in spec.get("cases", [spec]):
                one = {"phrases": template["phrases"], "items": {framework: [{"item": spec["item"],
                                                                               "topic": spec["topic"], **case,
                                                                               "when": []}]}}
                row = report.render_checklist(one, facts).iloc[0]
                assert row["status"] in report.STATUSES and "{" not in row["value"], (framework, spec["item"], row)
    for name in template["phrases"]:
        assert report.render_checklist({"phrases": template["phrases"], "items": {report.TRIPOD: [
            {"item": "x", "topic": "x", "status": "open", "value": f"{{{name}}}"}]}}, facts)["value"].iloc[0], name


def test_render_checklist_takes_the_first_case_that_holds_and_names_an_unknown_fact():
    template = {"phrases": {"greeting": ["hello {who}", {"when": "loud", "text": "!", "else": "."}]},
                "items": {report.TRIPOD: [
                    {"item": "1", "topic": "t", "cases": [
                        {"when": ["loud", "not quiet"], "status": "filled", "value": "{greeting}"},
                        {"when": "figures/fig.png", "status": "partly filled", "value": "{n:.1f} {greeting}"},
                        {"status": "open", "value": "nothing"}]}]}}
    facts = {"who": "you", "n": 2, "figures": set()}
    assert report.render_checklist(template, {**facts, "loud": True, "quiet": False})[["status", "value"]].values.tolist() \
        == [["filled", "hello you!"]]
    assert report.render_checklist(template, {**facts, "loud": True, "quiet": True, "figures": {"fig.png"}})[
        ["status", "value"]].values.tolist() == [["partly filled", "2.0 hello you!"]]
    assert report.render_checklist(template, {**facts, "loud": False, "quiet": False})["value"].tolist() == ["nothing"]
    with pytest.raises(ValueError, match="'who', which is neither a fact of this run nor a phrase"):
        report.render_checklist(template, {"n": 2, "figures": set(), "loud": True, "quiet": False})
    with pytest.raises(ValueError, match="condition 'loud' names no fact"):
        report.render_checklist(template, facts)
    bad = {"phrases": {}, "items": {report.TRIPOD: [{"item": "1", "topic": "t", "status": "done", "value": ""}]}}
    with pytest.raises(ValueError, match="status 'done' of TRIPOD\\+AI item 1"):
        report.render_checklist(bad, {})


# --- comparisons, tables beside the paper, patients to explain -------------------------


def test_holm_adjust_by_hand():
    got = report.holm_adjust([0.01, 0.04, 0.03, np.nan, 0.005])
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 -> 0.02, 0.03, 0.06, 0.04 -> running max 0.02, 0.03, 0.06, 0.06
    assert np.allclose(got, [0.03, 0.06, 0.06, np.nan, 0.02], equal_nan=True), got
    assert report.holm_adjust([0.6, 0.7]).tolist() == [1.0, 1.0]


def _patient_predictions(tmp_path, model: str, n: int = 40, signal: float = 0.3, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    y = np.tile([0, 1], n // 2)
    prob = np.clip(0.5 + signal * (y - 0.5) + rng.normal(0, 0.25, n), 0, 1)
    evaluation.write_predictions(tmp_path, model, pd.DataFrame({
        "patient_id": [f"P{i:03d}" for i in range(n)], "slice": pd.NA, "fold": np.arange(n) // 2 % 2,
        "y_true": y, "y_prob": prob}))


def test_study_comparisons_test_every_pair_that_ran_and_record_it(tmp_path):
    for seed, model in enumerate(["clinical_rf", "clinical_rf_strict", "deep_resnet50", "fusion_d", "fusion_d_strict"]):
        _patient_predictions(tmp_path, model, seed=seed)
    figures = tmp_path / "figures"
    table = report.study_comparisons(tmp_path, figures, n_bootstrap=50, seed=3)
    pairs = list(zip(table["model_a"], table["model_b"], strict=True))
    assert pairs == [("clinical_rf", "deep_resnet50"), ("fusion_d", "deep_resnet50"), ("fusion_d", "clinical_rf"),
                     ("clinical_rf", "clinical_rf_strict"), ("fusion_d", "fusion_d_strict")], pairs
    row = table.iloc[1]
    expected = evaluation.comparison_row(tmp_path, "fusion_d", "deep_resnet50", 50, 3)
    assert row["p_value"] == pytest.approx(expected["p_value"]) and row["difference_ci_low"] == pytest.approx(
        expected["difference_ci_low"])
    assert row["paper_difference"] == pytest.approx(0.8248 - 0.7233)
    assert np.isnan(table.iloc[3]["paper_difference"]), "the paper did not run the strict variant"
    assert (table["p_holm"] >= table["p_value"]).all()
    assert table["ci_excludes_zero"].tolist() == [
        (lo > 0 or hi < 0) for lo, hi in zip(table["difference_ci_low"], table["difference_ci_high"], strict=True)]
    on_disk = pd.read_csv(figures / evaluation.COMPARISONS_FILE)
    assert len(on_disk) == 5 and on_disk["n_bootstrap"].eq(50).all(), on_disk


def test_study_comparisons_show_the_difference_over_training_seeds_beside_the_conditional_tests(tmp_path):
    # Two patients of each class, two training seeds per model. fusion_d_joint: seed 0 ranks perfectly (AUC 1),
    # seed 1 gets 2 of 4 pairs (0.5); fusion_d: 3 of 4 pairs (0.75) with both seeds. Over seeds the difference
    # is +0.25 and -0.25: mean 0, SD 0.25 * sqrt(2), model_a better in half of the 2 seed pairs, whatever the
    # seed ensembles' DeLong test says (it is conditional on these fitted models).
    probs = {"fusion_d_joint": {0: [0.9, 0.8, 0.2, 0.1], 1: [0.4, 0.1, 0.3, 0.2]},
             "fusion_d": {0: [0.6, 0.3, 0.4, 0.2], 1: [0.6, 0.3, 0.4, 0.2]}}
    for model, by_seed in probs.items():
        evaluation.write_predictions(tmp_path, model, pd.concat([pd.DataFrame({
            "patient_id": ["P1", "P2", "P3", "P4"], "slice": pd.NA, "fold": [0, 1, 0, 1], "y_true": [1, 1, 0, 0],
            "y_prob": p, "train_seed": seed}) for seed, p in by_seed.items()], ignore_index=True))
    comparisons = [("Table 5", "fusion_d_joint", "fusion_d", "joint loss")]
    row = report.study_comparisons(tmp_path, comparisons=comparisons, n_bootstrap=20).iloc[0]
    assert row["n_seed_pairs"] == 2 and row["seed_fraction_a_better"] == pytest.approx(0.5), row.to_dict()
    assert row["seed_difference_mean"] == pytest.approx(0.0, abs=1e-12)
    assert row["seed_difference_sd"] == pytest.approx(0.25 * np.sqrt(2)), row.to_dict()
    # the conditional comparison is of the seed ensembles: mean probability over the two seeds per patient
    # (fusion_d_joint: 0.65, 0.45 for the ER patients against 0.25, 0.15: AUC 1)
    assert row["auc_a"] == pytest.approx(1.0) and row["auc_b"] == pytest.approx(0.75), row.to_dict()
    # and the columns sit beside DeLong and the bootstrap interval in one row
    assert {"p_value", "difference_ci_low", "difference_ci_high", *evaluation.SEED_COMPARISON_COLUMNS} <= set(row.index)


def test_results_vs_paper_lists_each_model_once_with_its_tables(tmp_path):
    for seed, model in enumerate(["deep_resnet50", "radiomics_rf", "fusion_d"]):
        _patient_predictions(tmp_path, model, seed=seed)
    frame = report.results_vs_paper(tmp_path, n_bootstrap=30, seed=0, cohort="synthetic").set_index("model")
    assert sorted(frame.index) == ["deep_resnet50", "fusion_d", "radiomics_rf"], frame.index.tolist()
    assert frame.loc["deep_resnet50", "tables"] == "Table 3, Table 4" and frame.loc["fusion_d", "tables"] == "Table 4, Table 5"
    assert frame.loc["fusion_d", "paper_auc_mean"] == 0.8248
    assert frame.loc["fusion_d", "auc_minus_paper"] == pytest.approx(frame.loc["fusion_d", "auc_mean"] - 0.8248)
    assert report.results_vs_paper(tmp_path / "empty").empty


def test_pick_explained_patients_takes_one_fold_and_the_most_confident_calls():
    patients = pd.DataFrame({
        "patient_id": ["A", "B", "C", "D", "E", "F", "G", "H", "I"],
        "fold":       [0,   0,   0,   0,   0,   0,   1,   1,   1],
        "y_true":     [1,   1,   0,   0,   1,   0,   1,   0,   0],
        "y_prob":     [0.9, 0.6, 0.1, 0.4, 0.2, 0.8, 0.3, 0.9, 0.2],
    })  # fmt: skip
    picked = report.pick_explained_patients(patients, n_each=2)
    # fold 0 holds all four kinds (fold 1: missed ER, false alarm, correct NER only)
    assert picked["patient_id"].tolist() == ["A", "C", "E", "F"], picked
    assert picked["kind"].tolist() == ["correct ER", "correct NER", "missed ER", "false alarm NER"]
    assert set(picked["fold"]) == {0}
    one = report.pick_explained_patients(patients, n_each=1)
    assert one["patient_id"].tolist() == ["A", "E"], one


def test_pick_explained_patients_of_a_perfect_model_has_no_wrong_call():
    patients = pd.DataFrame({"patient_id": list("ABCD"), "fold": [0, 0, 1, 1], "y_true": [1, 0, 1, 0],
                             "y_prob": [0.8, 0.2, 0.7, 0.4]})
    picked = report.pick_explained_patients(patients, n_each=2)
    assert picked["call"].tolist() == ["correct", "correct"] and picked["patient_id"].tolist() == ["A", "B"], picked


def test_report_plots_draw_every_row():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = pd.DataFrame({"model_a": ["a", "b"], "model_b": ["c", "c"], "auc_difference": [0.1, -0.05],
                          "difference_ci_low": [0.0, -0.1], "difference_ci_high": [0.2, 0.0],
                          "paper_difference": [0.08, np.nan]})
    ax = report.plot_comparisons(table)
    assert sorted(t.get_text() for t in ax.get_yticklabels()) == ["a vs c", "b vs c"]
    assert len(ax.collections[-1].get_offsets()) == 1, "one paper difference (the other is NaN)"
    results = pd.DataFrame({"model": ["m1", "m2"], "auc_mean": [0.7, 0.6], "auc_sd": [0.05, 0.04],
                            "pooled_auc": [0.71, 0.62], "pooled_auc_ci_low": [0.6, 0.5],
                            "pooled_auc_ci_high": [0.8, 0.7], "paper_auc_mean": [0.75, np.nan],
                            "paper_auc_sd": [0.03, np.nan]})
    ax2 = report.plot_results_vs_paper(results)
    assert [t.get_text() for t in ax2.get_xticklabels()] == ["m1", "m2"]
    plt.close("all")


def _cohort_with_references(folder, image: float, clinical: float, both: float):
    """A cohort folder whose ``ground_truth.json`` holds only the learned references (``cv_auc``)."""
    folder.mkdir(parents=True, exist_ok=True)
    references = {"image": image, "clinical": clinical, "both": both}
    outputs.write_json(folder / "ground_truth.json", {"oracle_auc": {k: {"cv_auc": v} for k, v in references.items()}})
    return folder


def _results(**aucs):
    """``results_vs_paper``'s columns that the checks read: name=(seed mean, seed SD, pooled) or name=pooled."""
    rows = []
    for model, value in aucs.items():
        mean, sd, pooled = value if isinstance(value, tuple) else (value, np.nan, value)
        rows.append({"model": model, "seed_auc_mean": mean, "seed_auc_sd": sd, "pooled_auc": pooled})
    return pd.DataFrame(rows)


def test_learning_checks_read_each_model_against_its_inputs_reference_and_the_bounds_by_hand(tmp_path):
    cohort = _cohort_with_references(tmp_path / "cohort", image=0.78, clinical=0.70, both=0.80)
    results = _results(radiomics_rf=0.70, deep_resnet50=(0.74, 0.01, 0.75), clinical_rf=0.72,
                       fusion_a=(0.69, 0.02, 0.70), fusion_b=(0.71, 0.01, 0.72), fusion_d_joint=(0.765, 0.01, 0.78),
                       fusion_d_joint_strict=(0.70, 0.01, 0.71))
    checks = report.learning_checks(results, cohort).set_index("model")
    assert list(checks.index) == ["radiomics_rf", "deep_resnet50", "clinical_rf", "fusion_a", "fusion_b", "fusion_d_joint",
                                  "fusion_d_joint_strict"]
    assert checks["inputs"].tolist() == ["image", "image", "clinical", "both", "both", "both", "both"]
    # a variant outside the registry is read as its network (mean over seeds), without a check
    assert checks.loc["fusion_d_joint_strict", "auc"] == pytest.approx(0.70)
    assert checks.loc["fusion_d_joint_strict", "check"] == "" and checks.loc["fusion_d_joint_strict", "passes"] is None
    # a network is read by its mean over seeds, a forest by its pooled AUC
    assert checks.loc["deep_resnet50", "auc"] == pytest.approx(0.74) and checks.loc["clinical_rf", "auc"] == pytest.approx(0.72)
    assert checks.loc["fusion_a", "below_reference"] == pytest.approx(0.80 - 0.69)
    # deep model: 0.78 - 0.05 = 0.73 asked, 0.74 reached
    assert checks.loc["deep_resnet50", "bound"] == pytest.approx(0.73) and checks.loc["deep_resnet50", "passes"]
    # fusion models: clinical_rf - 0.02 = 0.70 asked; fusion_a 0.69 is 0.01 short, fusion_b passes
    assert checks.loc["fusion_a", "bound"] == pytest.approx(0.70) and not checks.loc["fusion_a", "passes"]
    assert checks.loc["fusion_a", "margin"] == pytest.approx(-0.01) and checks.loc["fusion_b", "passes"]
    # fusion_d_joint: max(0.72, 0.80 - 0.03) = 0.77 asked; 0.765 over seeds is short although its ensemble (0.78) is not
    assert checks.loc["fusion_d_joint", "bound"] == pytest.approx(0.77) and not checks.loc["fusion_d_joint", "passes"]
    # the forests and the radiomics model are not checked
    assert checks.loc[["radiomics_rf", "clinical_rf"], "check"].tolist() == ["", ""]
    assert checks.loc[["radiomics_rf", "clinical_rf"], "passes"].isna().all()


def test_learning_checks_take_the_clinical_forest_as_the_bound_where_it_is_above_the_reference(tmp_path):
    cohort = _cohort_with_references(tmp_path / "cohort", image=0.70, clinical=0.69, both=0.715)
    checks = report.learning_checks(_results(clinical_rf=0.69, fusion_d_joint=(0.688, 0.02, 0.694)), cohort)
    joint = checks.set_index("model").loc["fusion_d_joint"]
    assert joint["bound"] == pytest.approx(0.69) and joint["margin"] == pytest.approx(-0.002) and not joint["passes"]


def test_learning_checks_need_a_synthetic_cohort_and_the_forest_for_the_fusion_bounds(tmp_path):
    assert report.learning_checks(_results(deep_resnet50=(0.7, 0.01, 0.7)), tmp_path) is None, "a real cohort"
    cohort = _cohort_with_references(tmp_path / "cohort", image=0.78, clinical=0.70, both=0.80)
    checks = report.learning_checks(_results(deep_resnet50=(0.70, 0.01, 0.71), fusion_b=(0.71, 0.01, 0.72)), cohort)
    assert checks.set_index("model").loc["fusion_b", "check"] == "", "no clinical_rf row: no fusion bound"
    assert not checks.set_index("model").loc["deep_resnet50", "passes"], "0.70 against 0.73 asked"


def test_the_learning_checks_figure_marks_what_passes_and_what_falls_short(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cohort = _cohort_with_references(tmp_path / "cohort", image=0.78, clinical=0.70, both=0.80)
    checks = report.learning_checks(_results(deep_resnet50=(0.74, 0.01, 0.75), clinical_rf=0.72,
                                             fusion_a=(0.69, 0.02, 0.70)), cohort)
    ax = report.plot_learning_checks(checks)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["deep_resnet50\n(image)", "clinical_rf\n(clinical)",
                                                             "fusion_a\n(both)"]
    assert sorted(t.get_text() for t in ax.texts) == ["0.010 short", "passes"]
    plt.close("all")


def test_the_tuning_statement_names_the_networks_actual_layer_sizes():
    # The checklist says which layer sizes are assumptions: they must be the ones the networks are built with.
    import dataclasses

    from hccer_lib import networks

    defaults = {f.name: f.default for f in dataclasses.fields(networks.NetworkConfig)}
    assert (defaults["image_units"], defaults["clinical_filters"], defaults["clinical_kernel"],
            defaults["clinical_units"]) == (64, 8, 3, 16), defaults
    tuning = report.checklist_template()["phrases"]["tuning"]
    assert "image FC 64 units, fusion C Conv1D 8 filters of kernel 3, fusion D clinical FC 16 units" in tuning, tuning
    from hccer_lib.profiles import get_profile

    assert (get_profile("paper").clinical_activation, get_profile("quick").clinical_activation) == ("relu", "linear")
    assert (get_profile("paper").image_activation, get_profile("quick").image_activation) == ("relu", "linear")
    assert ("activations of C and D's clinical layer and of B, C and D's image FC layer (ReLU in the paper profile, "
            "none in the quick profile)") in " ".join(tuning.split()), tuning


# --- what the networks read (synthetic cohort) ---------------------------------------------


def _cohort_with_traits(folder):
    """clinical.csv and ground_truth.csv of the generator's plan for seed 5 (no images); the generator's image
    score (``oracle_image``) made to follow the rim enhancement alone. Returns the folder and the image inputs."""
    from hccer_lib import synth

    plan = synth.plan_cohort(synth.SynthConfig(seed=5))
    outputs.write_csv(folder / "clinical.csv", plan.clinical)
    inputs = synth.oracle_inputs(synth._cohort_frame(plan))["image"]
    rim = inputs[:, synth.IMAGE_INPUT_NAMES.index("rim")]
    truth = plan.truth.assign(oracle_image=1 / (1 + np.exp(-2.0 * (rim - rim.mean()) / rim.std())))
    outputs.write_csv(folder / "ground_truth.csv", truth)
    return folder, pd.DataFrame(inputs, columns=synth.IMAGE_INPUT_NAMES).assign(patient_id=plan.clinical["patient_id"].to_numpy())


def _network_predictions(patient_ids, logit, labels):
    """Two training seeds and two slices per patient, each with the patient's probability ``sigmoid(logit)``."""
    rows = [pd.DataFrame({"patient_id": patient_ids, "slice": s, "fold": np.arange(len(patient_ids)) % 5, "y_true": labels,
                          "y_prob": 1 / (1 + np.exp(-logit)), "train_seed": seed}) for seed in (1, 2) for s in (0, 1)]
    return pd.concat(rows, ignore_index=True)


def test_image_readings_find_what_the_generator_and_each_network_follow(tmp_path):
    cohort, inputs = _cohort_with_traits(tmp_path / "cohort")
    labels = pd.read_csv(cohort / "clinical.csv")["early_recurrence"].to_numpy()
    ids = inputs["patient_id"].astype(str).to_numpy()
    z = {name: ((inputs[name] - inputs[name].mean()) / inputs[name].std(ddof=0)).to_numpy() for name in ("necrosis", "size_mm")}
    # a network whose logit is the necrosis plus the tumour's size (each standardised), every patient predicted
    deep = _network_predictions(ids, 0.5 * (z["necrosis"] + z["size_mm"]), labels)
    # a second one that reads the necrosis alone, for the first 100 patients only
    necrosis_only = _network_predictions(ids[:100], 3.0 * z["necrosis"][:100], labels[:100])
    readings = report.image_readings({"deep_resnet50": deep, "fusion_a": necrosis_only}, cohort).set_index("reader")
    assert list(readings.index) == [report.GENERATOR_READER, "deep_resnet50", "fusion_a"]
    assert readings["patients"].tolist() == [167, 167, 100]
    assert readings["r2"].to_numpy() == pytest.approx([1.0, 1.0, 1.0], abs=1e-3)
    weights = readings.drop(columns=["patients", "r2"])
    # standardised logits: the weights of a reader that follows one input are 1 on it and 0 elsewhere
    expected_generator = {name: (1.0 if name == "rim" else 0.0) for name in weights.columns}
    assert weights.loc[report.GENERATOR_READER].to_dict() == pytest.approx(expected_generator, abs=2e-3)
    spread = np.std(z["necrosis"] + z["size_mm"])  # the deep logit's SD before it is standardised
    expected_deep = {name: (1.0 / spread if name in ("necrosis", "size_mm") else 0.0) for name in weights.columns}
    assert weights.loc["deep_resnet50"].to_dict() == pytest.approx(expected_deep, abs=2e-3)
    assert weights.loc["fusion_a", "necrosis"] == pytest.approx(1.0, abs=2e-3)
    assert weights.loc["fusion_a"].drop("necrosis").abs().max() < 2e-3


def test_image_readings_need_a_synthetic_cohort_and_name_an_unknown_patient(tmp_path):
    cohort, inputs = _cohort_with_traits(tmp_path / "cohort")
    ids = inputs["patient_id"].astype(str).to_numpy()
    predictions = _network_predictions(np.append(ids[:20], "HCC999"), np.linspace(-1, 1, 21), np.arange(21) % 2)
    with pytest.raises(ValueError, match=r"fusion_b: 1 patients not in .*ground_truth.csv, e\.g\. \['HCC999'\]"):
        report.image_readings({"fusion_b": predictions}, cohort)
    real = tmp_path / "real"
    real.mkdir()
    outputs.write_csv(real / "clinical.csv", pd.read_csv(cohort / "clinical.csv"))
    assert report.image_readings({"fusion_b": predictions}, real) is None, "a real cohort has no generator inputs"
    truth = pd.read_csv(cohort / "ground_truth.csv", dtype={"patient_id": str})
    outputs.write_csv(cohort / "ground_truth.csv", truth.drop(columns="oracle_image"))
    readings = report.image_readings({"fusion_b": predictions[predictions["patient_id"] != "HCC999"]}, cohort)
    assert readings["reader"].tolist() == ["fusion_b"], "without the generator's score, the networks' rows alone"


def test_the_image_readings_figure_labels_each_reader_with_its_r2(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cohort, inputs = _cohort_with_traits(tmp_path / "cohort")
    labels = pd.read_csv(cohort / "clinical.csv")["early_recurrence"].to_numpy()
    deep = _network_predictions(inputs["patient_id"].astype(str).to_numpy(), np.zeros(len(inputs)), labels)
    readings = report.image_readings({"deep_resnet50": deep}, cohort)
    assert readings.loc[1, "r2"] == 0.0, "a constant output follows nothing"
    ax = report.plot_image_readings(readings)
    assert [t.get_text() for t in ax.get_yticklabels()] == [f"{report.GENERATOR_READER} (R² 1.00)", "deep_resnet50 (R² 0.00)"]
    assert len(ax.texts) == 2 * 9 and {t.get_text() for t in ax.texts[9:]} == {"+0.00"}
    plt.close("all")
