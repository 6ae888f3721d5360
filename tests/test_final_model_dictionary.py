"""The final model keeps its cohort's data dictionary and clinical imputation (issue 14).

A 40-patient cohort exported with other column names and units (age in months, tumour size in
cm, AFP in ng/mL, a hepatitis C flag coded pos/neg, platelets of our own) and missing AFP values:
the clinical forest is refit on it, saved and reloaded, and new patients whose table follows
the same dictionary are predicted with the imputation fitted on the whole training cohort.
Expected levels, modes and bits are worked out by hand below.
"""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import yaml
from test_cohort import PHASES, ct_volume, label_like

from hccer_lib import final_model as fm
from hccer_lib import model_arrays, model_folder, new_patients, prediction
from hccer_lib.cohort import CohortError
from hccer_lib.dictionary import DICTIONARY_FILE
from hccer_lib.profiles import get_profile

PROFILE = replace(get_profile("smoke"), image_size=32)
SPEC = {
    "table": "export.csv",
    "id": "MRN",
    "outcome": {"column": "ER_1y"},
    "variables": {
        "age": {"source": "age_months", "unit": "months"},
        "tumor_size_mm": {"source": "size_cm", "unit": "cm"},
        "afp": {"source": "AFP", "unit": "ng/mL"},
        "hcv": {"type": "binary", "source": "antiHCV", "codes": {"pos": "yes", "neg": "no"}},
        "platelets": {"type": "numeric", "source": "PLT", "unit": "10^9/L", "cutoff": 100, "coded_1": "low"},
    },
}
COLUMNS = ["MRN", "ER_1y", "age_months", "size_cm", "AFP", "antiHCV", "PLT"]


def training_table() -> pd.DataFrame:
    """20 ER and 20 NER patients.

    Size: ER 16 of 20 >= 5 cm, NER 4 of 20. AFP: ER 15 high, 3 low, 2 missing; NER 4 high,
    13 low, 3 missing: observed 19 >= 9 against 16 < 9, so the mode is ">=9", and 5 training
    patients lack AFP, so the vector gets the bit "afp missing". Age, HCV and platelets are
    split 10/10 within each class (p = 1): only size and AFP are selected.
    """
    rows = []
    for k in range(40):
        er, j = int(k < 20), k % 20
        large = j < 16 if er else j < 4
        afp = ([250.0] * 15 + [3.0] * 3 + [None] * 2)[j] if er else ([40.0] * 4 + [2.0] * 13 + [None] * 3)[j]
        rows.append({"MRN": f"D{k:03d}", "ER_1y": er, "age_months": 600 if j % 2 else 840,
                     "size_cm": 6.5 if large else 3.0, "AFP": afp, "antiHCV": "pos" if j % 2 else "neg",
                     "PLT": 80 if j % 4 < 2 else 200})  # fmt: skip
    return pd.DataFrame(rows, columns=COLUMNS)


def write_images(folder: Path, patient_id: str) -> None:
    target = folder / "images" / patient_id
    target.mkdir(parents=True)
    for phase in PHASES:
        image = ct_volume(phase)
        sitk.WriteImage(image, str(target / f"{phase}.nii.gz"))
        sitk.WriteImage(label_like(image), str(target / f"{phase}_roi.nii.gz"))


def new_patient_table() -> pd.DataFrame:
    """N1: large tumour, AFP missing; N2: the same with the imputed level observed (AFP 30);
    N3: small tumour, low AFP. No outcome column (unknown labels)."""
    return pd.DataFrame({"MRN": ["N1", "N2", "N3"], "age_months": [700, 700, 500], "size_cm": [7.0, 7.0, 2.0],
                         "AFP": [None, 30.0, 4.0], "antiHCV": ["pos", "neg", ""], "PLT": [150, 150, None]})  # fmt: skip


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("dictionary_model")
    cohort = root / "hospital_a"
    cohort.mkdir()
    training_table().to_csv(cohort / "export.csv", index=False)
    (cohort / DICTIONARY_FILE).write_text(yaml.safe_dump(SPEC, sort_keys=False), encoding="utf-8")
    final = fm.refit_final_model(cohort, root / "work", PROFILE, models=("clinical_rf",), seed=1, clinical_estimators=40)
    folder = final.save(root / "final_model")
    return {"root": root, "cohort": cohort, "final": final, "folder": folder}


def test_final_model_saves_the_dictionary_and_the_imputation(saved):
    clinical = saved["final"].manifest["clinical"]
    assert clinical["variables"] == ["tumor_size_mm", "afp"], clinical
    assert clinical["bit_names"] == ["tumor_size_mm >=50", "afp >=9", "afp missing"], clinical
    # size: 20 of 40 tumours >= 50 mm, a tie broken by Table 1's order (the first level, "<50")
    assert clinical["imputation"] == {"modes": {"tumor_size_mm": "<50", "afp": ">=9"}, "indicators": ["afp"]}, clinical
    assert clinical["dictionary"] == SPEC, clinical["dictionary"]
    loaded = model_folder.load_final_model(saved["folder"])  # the self-check cohort follows the dictionary, one patient without AFP
    assert loaded.manifest["clinical"] == clinical
    check = pd.read_csv(saved["folder"] / model_folder.SELF_CHECK_COHORT / "clinical.csv", dtype=str, keep_default_na=False)
    assert list(check.columns) == COLUMNS and check["AFP"].iloc[-1] == "", check


def test_predict_cohort_following_the_dictionary_uses_the_saved_imputation(saved, tmp_path):
    final = model_folder.load_final_model(saved["folder"])
    cohort = tmp_path / "hospital_b"
    cohort.mkdir()
    new_patient_table().to_csv(cohort / "export.csv", index=False)  # no data_dictionary.yaml: the model's is used
    for pid in ("N1", "N2", "N3"):
        write_images(cohort, pid)
    patients, _ = prediction.predict_cohort(final, cohort, progress=False)
    assert patients["status"].tolist() == ["ok"] * 3, patients[["patient_id", "status", "reason"]]
    assert patients["y_true"].isna().all(), "no outcome column: unknown labels"
    forest = final.forests["clinical_rf"]
    # N1: 70 mm (>=50), AFP missing -> the saved mode ">=9" and the indicator; N2: AFP 30 observed
    expected = model_arrays.forest_predict_proba(forest, np.array([[1, 1, 1], [1, 1, 0], [0, 0, 0]], dtype=np.float32))[:, 1]
    assert np.allclose(patients["clinical_rf"].to_numpy(dtype=float), expected, rtol=0, atol=1e-12), (patients, expected)
    assert patients["clinical_rf"].between(0, 1).all()

    # The same patient as a patient folder (predict --patient): the table named as the dictionary says.
    one = tmp_path / "N1"
    one.mkdir()
    new_patient_table().head(1).to_csv(one / "export.csv", index=False)
    for phase in PHASES:
        image = ct_volume(phase)
        sitk.WriteImage(image, str(one / f"{phase}.nii.gz"))
        sitk.WriteImage(label_like(image), str(one / f"{phase}_roi.nii.gz"))
    patient = new_patients.read_patient_folder(one, model_folder.peek_clinical_settings(saved["folder"]))
    predicted = final.predict_patient(patient)
    assert predicted.clinical_bits.tolist() == [[1, 1, 1]], predicted.clinical_bits
    assert predicted.probabilities["clinical_rf"] == pytest.approx(expected[0], abs=1e-12)


def test_predict_cohort_with_its_own_dictionary(saved, tmp_path):
    final = model_folder.load_final_model(saved["folder"])
    cohort = tmp_path / "hospital_c"
    cohort.mkdir()
    table = new_patient_table().rename(columns={"size_cm": "diameter_mm", "MRN": "pid"})
    table["diameter_mm"] = table["diameter_mm"] * 10  # this hospital exports millimetres
    table.to_csv(cohort / "clinical.csv", index=False)
    own = {"id": "pid", "variables": {"tumor_size_mm": {"source": "diameter_mm"}, "afp": {"source": "AFP"}}}
    (cohort / DICTIONARY_FILE).write_text(yaml.safe_dump(own), encoding="utf-8")
    for pid in ("N1", "N2", "N3"):
        write_images(cohort, pid)
    patients, _ = prediction.predict_cohort(final, cohort, progress=False)
    bits = np.array([[1, 1, 1], [1, 1, 0], [0, 0, 0]], dtype=np.float32)
    expected = model_arrays.forest_predict_proba(final.forests["clinical_rf"], bits)[:, 1]
    assert patients["status"].tolist() == ["ok"] * 3, patients
    assert np.allclose(patients["clinical_rf"].to_numpy(dtype=float), expected, rtol=0, atol=1e-12)

    # A dictionary without a variable the model reads is one error naming the variable and the file.
    (cohort / DICTIONARY_FILE).write_text(yaml.safe_dump({"id": "pid", "variables": {"tumor_size_mm": {"source": "diameter_mm"}}}))
    with pytest.raises(CohortError) as info:
        prediction.predict_cohort(final, cohort, progress=False)
    assert str(info.value).startswith(f"file {DICTIONARY_FILE}: variable 'afp': the model reads it"), str(info.value)


def test_a_bad_row_of_a_dictionary_table_names_the_patient_and_the_table(saved, tmp_path):
    final = model_folder.load_final_model(saved["folder"])
    cohort = tmp_path / "hospital_d"
    cohort.mkdir()
    table = new_patient_table().astype(object)
    table.loc[1, "size_cm"] = "big"
    table.to_csv(cohort / "export.csv", index=False)
    for pid in ("N1", "N2", "N3"):
        write_images(cohort, pid)
    patients, _ = prediction.predict_cohort(final, cohort, progress=False)
    assert patients["status"].tolist() == ["ok", "failed", "ok"], patients
    reason = patients["reason"].iloc[1]
    assert reason.startswith("patient N2, file export.csv: column 'size_cm' (variable tumor_size_mm)"), reason


def test_an_edited_imputation_is_refused(saved, tmp_path):
    import shutil

    from test_final_model import edit_manifest, set_in

    folder = tmp_path / "edited"
    shutil.copytree(saved["folder"], folder)
    edit_manifest(folder, set_in(["clinical", "imputation", "modes", "afp"], "high"))
    with pytest.raises(model_folder.ModelFolderError, match="the clinical imputation of 'afp' is not one of its levels"):
        model_folder.load_final_model(folder)
