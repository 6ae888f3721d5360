"""External validation (issue 14): the final models of one cohort applied to another labelled cohort.

Known answers on hand-made numbers for the calibration; end to end with the tiny final model of
``test_final_model`` (fitted as the 12 patients of ``test_training.tiny_clinical``, marked
synthetic) on a second cohort written here, whose patients all share the same images: the
image-only models give every patient the same probability (AUC 0.5, slope undefined).
"""

import math
import shutil
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score
from test_cohort import CLINICAL_ROW, write_cohort
from test_final_model import study  # noqa: F401  the module's tiny cohort and saved final model
from test_final_model_dictionary import saved  # noqa: F401  a clinical forest fitted through a data dictionary
from test_training import tiny_clinical

from hccer_lib import external_validation as ev
from hccer_lib.cohort import load_clinical
from hccer_lib.runner import REPO_ROOT

# %% Calibration: known answers ---------------------------------------------------------------------


def test_calibration_intercept_with_slope_fixed_at_one():
    # Every patient predicted 0.5, one ER in four: logit P(ER) = a + logit(0.5) = a, so a = logit(1/4) = -ln 3.
    got = ev.calibration_intercept([1, 0, 0, 0], [0.5] * 4)
    assert got == pytest.approx(-math.log(3), abs=1e-9), got
    # Predicted 0.2 for a cohort with 20% ER: calibrated in the large.
    assert ev.calibration_intercept([1, 0, 0, 0, 0], [0.2] * 5) == pytest.approx(0.0, abs=1e-9)
    assert math.isnan(ev.calibration_intercept([0, 0, 0], [0.1, 0.2, 0.3])), "one class: undefined"


def test_calibration_slope_of_too_timid_predictions():
    # logit(p) = -ln 3 (p 0.25) for ten patients with one ER and +ln 3 (p 0.75) for ten with nine ER: the
    # observed logits are -/+ ln 9 = 2 x the predicted ones, so the free fit has slope 2, intercept 0.
    y = [1] + [0] * 9 + [1] * 9 + [0]
    p = [0.25] * 10 + [0.75] * 10
    slope = ev.calibration_slope(y, p)
    assert slope == pytest.approx(2.0, abs=1e-4), slope
    assert ev.calibration_intercept(y, p) == pytest.approx(0.0, abs=1e-9)
    assert math.isnan(ev.calibration_slope([1, 0, 1], [0.4] * 3)), "constant predictions: no slope"


# %% Case-mix -------------------------------------------------------------------------------------------


def write_table(root: Path, rows: list[dict]) -> Path:
    root.mkdir(parents=True)
    pd.DataFrame(rows).to_csv(root / "clinical.csv", index=False)
    return root


def test_case_mix_puts_both_table1_side_by_side(tmp_path):
    development = write_table(tmp_path / "dev", [dict(CLINICAL_ROW, patient_id=f"D{k}", early_recurrence=int(k < 2),
                                                      sex="MMMF"[k]) for k in range(4)])  # fmt: skip
    external = write_table(tmp_path / "ext", [dict(CLINICAL_ROW, patient_id=f"E{k}", early_recurrence=int(k == 0),
                                                   sex="FFM"[k], bclc="C") for k in range(3)])  # fmt: skip
    table = ev.case_mix_table(load_clinical(development), load_clinical(external)).set_index(["variable", "level"])
    assert table.loc[("patients", "all"), ["development_n", "development_er", "external_n", "external_er"]].tolist() == [4, 2, 3, 1]
    male = table.loc[("sex", "male")]
    assert (male["development_n"], male["development_percent"]) == (3, 75.0), male
    assert male["external_n"] == 1 and male["external_percent"] == pytest.approx(100 / 3), male
    assert table.loc[("bclc", "C"), ["development_n", "external_n"]].tolist() == [0, 3]
    alone = ev.case_mix_table(None, load_clinical(external))
    assert alone["development_n"].isna().all() and alone["external_n"].iloc[0] == 3, alone


# %% End to end on a tiny final model ----------------------------------------------------------------


def write_external_cohort(root: Path) -> Path:
    """write_cohort's P001-P003, P004-P008 with P001's images (4 ER, 4 NER), P009 without its PV phase."""
    cohort = write_cohort(root)
    frame = pd.read_csv(cohort / "clinical.csv", dtype=str)
    rows = [dict(CLINICAL_ROW, patient_id=f"P{k:03d}", early_recurrence=int(k in (4, 5, 6, 9)), age=50 + 5 * k,
                 tumor_size_mm=30.0 + 8 * k, bclc="0ABC"[k % 4], extra_note="kept") for k in range(4, 10)]  # fmt: skip
    frame = pd.concat([frame, pd.DataFrame(rows).astype(str)], ignore_index=True)
    frame.loc[frame["patient_id"] == "P002", "age"] = "65"
    frame.to_csv(cohort / "clinical.csv", index=False)
    for k in range(4, 10):
        shutil.copytree(cohort / "images" / "P001", cohort / "images" / f"P{k:03d}")
    for name in ("PV.nii.gz", "PV_roi.nii.gz"):
        (cohort / "images" / "P009" / name).unlink()
    return cohort


@pytest.fixture(scope="module")
def external(study, tmp_path_factory):  # noqa: F811
    root = tmp_path_factory.mktemp("external")
    development = write_table(root / "development", tiny_clinical().to_dict("records"))
    cohort = write_external_cohort(root / "hospital_b")
    result = ev.validate_externally(study["folder"], cohort, development_cohort=development, n_bootstrap=200, seed=1,
                                    self_check=False)  # fmt: skip
    return {"root": root, "development": development, "cohort": cohort, "result": result}


def test_external_validation_on_a_second_cohort(external):
    result = external["result"]
    assert result.synthetic and result.label == " (SYNTHETIC)", "models fitted on a synthetic cohort are labelled"
    assert (result.n_failed, result.n_unlabelled) == (1, 0), result.predictions[["patient_id", "status", "reason"]]
    failed = result.predictions.set_index("patient_id").loc["P009"]
    assert failed["status"] == "failed" and "PV" in failed["reason"], failed["reason"]
    discrimination = result.discrimination.set_index("model")
    assert set(discrimination.index) == {"clinical_rf", "radiomics_rf", "deep_resnet50", "fusion_d_joint"}
    assert (discrimination["n_patients"] == 8).all() and (discrimination["n_er"] == 4).all(), discrimination

    predicted = result.predictions[result.predictions["status"] == "ok"]
    y = predicted["y_true"].astype(int).to_numpy()
    # Every patient has the same images: the image-only models predict one probability for all.
    for model in ("deep_resnet50", "radiomics_rf"):
        p = predicted[model].to_numpy(float)
        assert np.ptp(p) < 1e-6, (model, p)
        row = discrimination.loc[model]
        assert (row["auc"], row["auc_ci_low"], row["auc_ci_high"]) == pytest.approx((0.5, 0.5, 0.5)), row
        calibration = result.calibration.set_index("model").loc[model]
        assert math.isnan(calibration["calibration_slope"]), calibration
        # half of the patients have ER: a = logit(1/2) - logit(p) = -logit(p)
        assert calibration["calibration_intercept"] == pytest.approx(-math.log(p[0] / (1 - p[0])), abs=1e-6), calibration
    p = predicted["clinical_rf"].to_numpy(float)
    assert np.ptp(p) > 0, "the clinical forest tells the patients apart"
    assert discrimination.loc["clinical_rf", "auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    low, high = discrimination.loc["clinical_rf", ["auc_ci_low", "auc_ci_high"]]
    assert 0 <= low <= discrimination.loc["clinical_rf", "auc"] <= high <= 1, (low, high)

    decision = result.decision[result.decision["model"] == "clinical_rf"].set_index("threshold")
    # treat all at threshold 0.5 with prevalence 1/2: 1/2 - 1/2 x 0.5/0.5 = 0
    assert decision.loc[0.5, "treat_all"] == pytest.approx(0.0, abs=1e-12), decision.loc[0.5]
    reliability = result.reliability[result.reliability["model"] == "deep_resnet50"]
    assert reliability["n"].tolist() == [8] and reliability["fraction_positive"].tolist() == [0.5], reliability

    case_mix = result.case_mix.set_index(["variable", "level"])
    assert case_mix.loc[("patients", "all"), ["development_n", "development_er", "external_n", "external_er"]].tolist() \
        == [12, 6, 8, 4], case_mix.head()


def test_development_cohort_must_match_the_model_folder(study, tmp_path):  # noqa: F811
    with pytest.raises(ValueError, match="has 3 patients; the models .* were fitted on 12"):
        ev.validate_externally(study["folder"], study["cohort"], development_cohort=study["cohort"], self_check=False)


def test_external_validate_command_writes_every_output(study, external, tmp_path):  # noqa: F811
    from test_cli import run_cli

    out = tmp_path / "out"
    result = run_cli("external-validate", "--model", str(study["folder"]), "--cohort", str(external["cohort"]),
                     "--development-cohort", str(external["development"]), "--out", str(out),
                     "--n-bootstrap", "200", "--seed", "1")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "external validation (SYNTHETIC)" in result.stdout and "1 patients not predicted" in result.stdout, result.stdout
    for name in ("external_discrimination.csv", "external_discrimination.md", "external_calibration.csv",
                 "external_calibration.md", "external_reliability.csv", "external_decision_curve.csv",
                 "external_case_mix.csv", "external_case_mix.md", "external_predictions.csv", "fig9_external_validation.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert "SYNTHETIC" in (out / "external_discrimination.md").read_text()
    written = pd.read_csv(out / "external_discrimination.csv").set_index("model")
    expected = external["result"].discrimination.set_index("model")
    for column in ("auc", "auc_ci_low", "auc_ci_high"):
        assert np.allclose(written[column], expected.loc[written.index, column], atol=1e-12), column
    bad = run_cli("external-validate", "--model", str(tmp_path / "nowhere"), "--cohort", str(external["cohort"]))
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1, bad.stderr


@pytest.mark.slow
def test_notebook_09_validates_when_given_an_external_cohort(study, external, tmp_path):  # noqa: F811
    import papermill as pm

    target = tmp_path / "09.ipynb"
    pm.execute_notebook(str(REPO_ROOT / "notebooks" / "09_external_validation.ipynb"), str(target),
                        parameters={"profile": "smoke", "cohort_dir": str(external["development"]), "synthetic": False,
                                    "data_root": str(tmp_path / "data"), "figures_dir": str(tmp_path / "figures"),
                                    "external_cohort": str(external["cohort"]), "model_dir": str(study["folder"])},
                        cwd=str(REPO_ROOT), kernel_name="python3", progress_bar=False)  # fmt: skip
    out = tmp_path / "figures" / external["development"].resolve().name / "smoke" / "external_validation"
    assert (out / "fig9_external_validation.png").is_file() and (out / "external_case_mix.md").is_file()
    shown = nbformat.read(target, as_version=4)
    text = "".join(o.get("text", "") for c in shown.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "clinical_rf" in text and "AUC" in text, text[-2000:]


# %% External cohort read by the model's data dictionary ------------------------------------------------
# The clinical forest of test_final_model_dictionary (fitted on 40 patients exported with other column
# names and units: age in months, size in cm, AFP in ng/mL; selected: size >= 50 mm and AFP >= 9 with an
# "afp missing" bit, the saved mode of AFP ">=9") applied to a second hospital whose table follows the
# model's dictionary but has no data_dictionary.yaml of its own, as predict --cohort reads it.

EXTERNAL_ROWS = [  # MRN, ER_1y, age_months, size_cm, AFP, antiHCV, PLT
    ("E1", "1", 840, "6.5", 250, "pos", 80), ("E2", "1", 600, "6.0", None, "neg", 200),
    ("E3", "1", 720, "5.0", 3, "pos", 200), ("E4", "1", 719, "3.0", 40, "neg", 80),
    ("E5", "0", 840, "7.0", 2, "pos", 200), ("E6", "0", 600, "2.0", None, "neg", 80),
    ("E7", "0", 600, "3.0", 500, "neg", 200), ("E8", "0", 600, "4.9", 1, "pos", 200),
    ("E9", "", 700, "7.0", 30, "pos", 150),  # no outcome: predicted, label unknown, left out
    ("E10", "1", 700, "big", 30, "pos", 150),  # refused: not predicted, left out
]  # fmt: skip
# Hand counts of the eight labelled patients (n, ER), the units converted: 720 months = 60 years (>= 60),
# 719 months < 60; 5.0 cm = 50 mm (>= 50), 4.9 cm < 50; AFP missing for E2 and E6.
EXTERNAL_CASE_MIX = {
    ("patients", "all"): (8, 4), ("age", "<60"): (5, 2), ("age", ">=60"): (3, 2),
    ("tumor_size_mm", "<50"): (4, 1), ("tumor_size_mm", ">=50"): (4, 3),
    ("afp", "<9"): (3, 1), ("afp", ">=9"): (3, 2), ("afp", "missing"): (2, 1),
    ("hcv", "no"): (4, 2), ("hcv", "yes"): (4, 2), ("platelets", "<100"): (3, 2), ("platelets", ">=100"): (5, 2),
}  # fmt: skip
# The bits the model reads (size >= 50, AFP >= 9, AFP missing), E2 and E6 given the saved mode ">=9".
EXTERNAL_BITS = [[1, 1, 0], [1, 1, 1], [1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 1, 1], [0, 1, 0], [0, 0, 0]]


def write_dictionary_cohort(root: Path, table: pd.DataFrame, name: str, own: dict | None = None) -> Path:
    """A cohort folder with ``table`` as ``name``, every patient's images, and ``own`` as its dictionary."""
    import yaml
    from test_final_model_dictionary import write_images

    from hccer_lib.dictionary import DICTIONARY_FILE

    root.mkdir(parents=True)
    table.to_csv(root / name, index=False)
    if own is not None:
        (root / DICTIONARY_FILE).write_text(yaml.safe_dump(own, sort_keys=False), encoding="utf-8")
    for pid in table.iloc[:, 0]:
        write_images(root, str(pid))
    return root


def check_case_mix(case_mix: pd.DataFrame, side: str, expected: dict) -> None:
    table = case_mix.set_index(["variable", "level"])
    for key, (n, er) in expected.items():
        assert table.loc[key, [f"{side}_n", f"{side}_er"]].tolist() == [n, er], (side, key, table.loc[key])


def test_external_cohort_without_its_own_dictionary_is_read_with_the_models(saved, tmp_path):  # noqa: F811
    from test_final_model_dictionary import COLUMNS, training_table

    from hccer_lib import model_arrays

    table = pd.DataFrame(EXTERNAL_ROWS, columns=COLUMNS)
    external = write_dictionary_cohort(tmp_path / "hospital_b", table, "export.csv")  # no data_dictionary.yaml
    # the development cohort without its own dictionary either: read with the model's too
    development = tmp_path / "hospital_a"
    development.mkdir()
    training_table().to_csv(development / "export.csv", index=False)

    result = ev.validate_externally(saved["folder"], external, development_cohort=development, n_bootstrap=200,
                                    seed=1, self_check=False)  # fmt: skip
    assert (result.n_failed, result.n_unlabelled) == (1, 1), result.predictions[["patient_id", "status", "reason"]]
    reason = result.predictions.set_index("patient_id").loc["E10", "reason"]
    assert reason.startswith("patient E10, file export.csv: column 'size_cm' (variable tumor_size_mm)"), reason

    predicted = result.predictions[result.predictions["status"] == "ok"].iloc[:8]
    expected = model_arrays.forest_predict_proba(saved["final"].forests["clinical_rf"], np.array(EXTERNAL_BITS, dtype=np.float32))[:, 1]
    assert predicted["patient_id"].tolist() == [f"E{k}" for k in range(1, 9)], predicted
    assert np.allclose(predicted["clinical_rf"].to_numpy(float), expected, rtol=0, atol=1e-12), (predicted, expected)
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    row = result.discrimination.set_index("model").loc["clinical_rf"]
    assert (row["n_patients"], row["n_er"]) == (8, 4) and row["auc"] == pytest.approx(roc_auc_score(y, expected), abs=1e-12)

    check_case_mix(result.case_mix, "external", EXTERNAL_CASE_MIX)
    check_case_mix(result.case_mix, "development", {  # test_final_model_dictionary.training_table's counts
        ("patients", "all"): (40, 20), ("tumor_size_mm", ">=50"): (20, 16), ("afp", ">=9"): (19, 15),
        ("afp", "missing"): (5, 2), ("age", ">=60"): (20, 10), ("platelets", "<100"): (20, 10)})  # fmt: skip

    # The same patients exported by a third hospital with its own dictionary (other names, millimetres,
    # age in years, no HCV or platelets): the external columns of the variables it defines are the same.
    own = {"id": "pid", "outcome": {"column": "recurrence"},
           "variables": {"age": {"source": "age_years"}, "tumor_size_mm": {"source": "diameter_mm"}, "afp": {"source": "AFP"}}}  # fmt: skip
    mine = pd.DataFrame({"pid": table["MRN"], "recurrence": table["ER_1y"], "age_years": table["age_months"] / 12,
                         "diameter_mm": [str(float(s) * 10) if s != "big" else s for s in table["size_cm"]], "AFP": table["AFP"]})  # fmt: skip
    third = write_dictionary_cohort(tmp_path / "hospital_c", mine, "clinical.csv", own)
    again = ev.validate_externally(saved["folder"], third, development_cohort=development, n_bootstrap=200, seed=1,
                                   self_check=False)  # fmt: skip
    assert (again.n_failed, again.n_unlabelled) == (1, 1), again.predictions[["patient_id", "status", "reason"]]
    shared = {key: value for key, value in EXTERNAL_CASE_MIX.items() if key[0] not in ("hcv", "platelets")}
    check_case_mix(again.case_mix, "external", shared)
    undefined = again.case_mix[again.case_mix["variable"].isin(["hcv", "platelets"])]  # the development cohort's only
    assert len(undefined) == 4 and undefined["external_n"].isna().all() and (undefined["development_n"] == 20).all(), undefined
    assert np.allclose(again.predictions["clinical_rf"].iloc[:8].to_numpy(float), expected, rtol=0, atol=1e-12)


def test_a_bad_development_row_names_the_folder_the_patient_and_the_file(saved, tmp_path):  # noqa: F811
    from test_final_model_dictionary import training_table

    from hccer_lib.cohort import CohortError

    development = tmp_path / "hospital_a"
    development.mkdir()
    bad = training_table().astype(object)
    bad.loc[3, "size_cm"] = "big"
    bad.to_csv(development / "export.csv", index=False)
    with pytest.raises(CohortError) as info:
        ev.read_development_cohort(development, saved["final"].manifest["clinical"])
    message = str(info.value)
    assert message.startswith(f"patient D003, file export.csv: development cohort {development}: column 'size_cm'"), message
