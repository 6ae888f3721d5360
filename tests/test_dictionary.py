"""The cohort's data dictionary, Excel tables, missing values and time-to-event outcomes.

Every test writes its own cohort folder (clinical table and ``data_dictionary.yaml``; no
images: ``cohort.load_clinical`` reads the table only) and checks answers worked out by hand
or against the paper's Table 1 (``clinical.paper_clinical_frame``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy.stats import chi2_contingency

from hccer_lib import clinical as cl
from hccer_lib.cohort import CohortError, load_clinical
from hccer_lib.dictionary import DICTIONARY_FILE, load_dictionary

DOCS_EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "data_dictionary_example.yaml"


def write(folder: Path, frame: pd.DataFrame, dictionary: dict | None = None, name: str = "clinical.csv", **excel) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if name.endswith(".xlsx"):
        frame.to_excel(folder / name, index=False, **excel)
    else:
        frame.to_csv(folder / name, index=False)
    if dictionary is not None:
        (folder / DICTIONARY_FILE).write_text(yaml.safe_dump(dictionary, sort_keys=False), encoding="utf-8")
    return folder


def hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def paper() -> pd.DataFrame:
    return cl.paper_clinical_frame(seed=0)


# %% Renamed columns, other units, raw codes -----------------------------------------------

RENAMED = {
    "id": "MRN",
    "outcome": {"column": "ER_1y"},
    "variables": {
        "sex": {"source": "gender", "codes": {1: "male", 2: "female"}},
        "age": {"source": "Age"},
        "tumor_size_mm": {"source": "size_cm", "unit": "cm"},
        "tumor_number": {"source": "nodules"},
        "portal_vein_invasion": {"source": "PVTT", "codes": {"Y": "yes", "N": "no"}},
        "cirrhosis": {"source": "cirrhosis"},
        "hbv": {"source": "HBsAg"},
        "nlr": {"source": "NLR"},
        "alt": {"source": "ALT", "unit": "ukat/L"},
        "ast": {"source": "AST"},
        "akp": {"source": "ALP"},
        "ggt": {"source": "GGT"},
        "alb": {"source": "albumin", "unit": "g/dL"},
        "tb": {"source": "bilirubin", "unit": "mg/dL"},
        "afp": {"source": "AFP", "unit": "ng/mL"},
        "child_pugh": {"source": "CP"},
        "bclc": {"source": "BCLC"},
    },
}


def hospital_export(paper: pd.DataFrame) -> pd.DataFrame:
    """The paper frame as a hospital might export it: other names, units and codes."""
    return pd.DataFrame({
        "MRN": paper["patient_id"], "ER_1y": paper["early_recurrence"],
        "gender": paper["sex"].map({"M": 1, "F": 2}), "Age": paper["age"],
        "size_cm": paper["tumor_size_mm"] / 10, "nodules": paper["tumor_number"],
        "PVTT": paper["portal_vein_invasion"].map({1: "Y", 0: "N"}), "cirrhosis": paper["cirrhosis"],
        "HBsAg": paper["hbv"], "NLR": paper["nlr"], "ALT": paper["alt"] / 60, "AST": paper["ast"],
        "ALP": paper["akp"], "GGT": paper["ggt"], "albumin": paper["alb"] / 10,
        "bilirubin": paper["tb"] / 17.1, "AFP": paper["afp"], "CP": paper["child_pugh"], "BCLC": paper["bclc"],
        "ward": "B2",  # an extra column: kept, ignored
    })  # fmt: skip


def test_renamed_columns_other_units_and_codes_give_the_papers_table1(tmp_path, paper):
    folder = write(tmp_path / "renamed", hospital_export(paper), RENAMED)
    before = hashes(folder)
    clinical = load_clinical(folder)
    assert hashes(folder) == before, "load_clinical changed the cohort folder"
    assert clinical["patient_id"].tolist() == paper["patient_id"].tolist()
    assert np.allclose(clinical["tumor_size_mm"], paper["tumor_size_mm"]), "cm not converted to mm"
    assert np.allclose(clinical["tb"], paper["tb"]), "mg/dL not converted to umol/L"
    assert np.allclose(clinical["alt"], paper["alt"]), "ukat/L not converted to U/L"
    assert clinical["sex"].tolist() == paper["sex"].tolist()
    assert "ward" in clinical.columns
    compared = cl.compare_with_paper(cl.table1(clinical))
    assert compared["counts_match"].all(), compared.loc[~compared["counts_match"], ["variable", "level", "total"]]
    assert compared["p_match"].all(), compared.loc[~compared["p_match"], ["variable", "p_formatted", "paper_p"]]
    assert cl.select_variables(clinical, clinical["early_recurrence"]) == list(cl.PAPER_SELECTED)


def test_no_dictionary_is_the_papers(tmp_path, paper):
    folder = write(tmp_path / "plain", paper)
    dictionary = load_dictionary(folder)
    assert dictionary.is_default and dictionary.variables == cl.CLINICAL_VARIABLES
    clinical = load_clinical(folder)
    assert cl.variables_of(clinical) == cl.CLINICAL_VARIABLES
    assert clinical["early_recurrence"].tolist() == paper["early_recurrence"].tolist()


# %% Absent and extra variables -------------------------------------------------------------


def small_cohort() -> pd.DataFrame:
    """Eight patients; ER = 1 for the first four."""
    return pd.DataFrame({
        "pid": [f"H{i}" for i in range(1, 9)],
        "er": [1, 1, 1, 1, 0, 0, 0, 0],
        "Age": [50, 70, 65, 40, 45, 62, 30, 55],
        "grade": ["III", "IV", "III", "I", "II", "I", "III", "II"],
        "PLT": [80, 90, 150, 70, 200, 250, 120, 300],
        "hcv": [1, 0, 1, 1, 0, 0, 0, 1],
        "gross": ["infiltrative", "confluent", "infiltrative", "single nodular", "single nodular",
                  "confluent", "single nodular", "single nodular"],
        "note": "x",
    })  # fmt: skip


SMALL = {
    "id": "pid",
    "outcome": {"column": "er"},
    "variables": {
        "age": {"source": "Age"},
        "differentiation": {"type": "categorical", "source": "grade", "levels": ["I-II", "III-IV"],
                            "codes": {"I": "I-II", "II": "I-II", "III": "III-IV", "IV": "III-IV"}},
        "platelets": {"type": "numeric", "source": "PLT", "unit": "10^9/L", "cutoff": 100, "coded_1": "low"},
        "hcv": {"type": "binary", "source": "hcv", "name": "HCV infection"},
        "nodularity": {"type": "categorical", "source": "gross", "levels": ["single nodular", "confluent", "infiltrative"],
                       "onehot": ["infiltrative", "confluent"]},
    },
}  # fmt: skip


def test_absent_and_new_variables_in_table1_and_the_vector(tmp_path):
    clinical = load_clinical(write(tmp_path / "small", small_cohort(), SMALL))
    assert [v.column for v in cl.variables_of(clinical)] == ["age", "differentiation", "platelets", "hcv", "nodularity"]
    table = cl.table1(clinical).set_index(["variable", "level"])
    # differentiation: ER grades III IV III I -> III-IV 3, I-II 1; NER II I III II -> III-IV 1, I-II 3
    assert table.loc[("differentiation", "III-IV"), ["ner", "er"]].tolist() == [1, 3]
    # platelets < 100 coded 1 and listed second: ER 80 90 70 -> 3 below; NER none below
    assert table.loc[("platelets", "<100"), ["ner", "er"]].tolist() == [0, 3]
    assert list(table.loc["platelets"].index) == [">=100", "<100"]
    expected_p = chi2_contingency([[3, 1], [1, 3]], correction=False).pvalue
    assert table.loc[("differentiation", "I-II"), "p_value"] == pytest.approx(expected_p)
    assert not any(v in table.index.get_level_values(0) for v in ("bclc", "afp")), "absent variables in Table 1"
    levels = cl.binarise(clinical)
    matrix, names = cl.encode_variables(levels, ["platelets", "nodularity", "hcv"])
    assert names == ["platelets <100", "nodularity infiltrative", "nodularity confluent", "hcv yes"]
    assert matrix[:, 0].tolist() == [1, 1, 0, 1, 0, 0, 0, 0]
    assert matrix[:, 1].tolist() == [1, 0, 1, 0, 0, 0, 0, 0]
    assert matrix[:, 2].tolist() == [0, 1, 0, 0, 0, 1, 0, 0]
    md = cl.write_table1(tmp_path / "figures", cl.table1(clinical), synthetic=False)[1].read_text()
    assert "HCV infection" in md


# %% Excel -----------------------------------------------------------------------------------


def test_xlsx_first_sheet_and_named_sheet_read_like_the_csv(tmp_path, paper):
    frame = paper.assign(patient_id=["007", *paper["patient_id"][1:]])
    from_csv = load_clinical(write(tmp_path / "csv", frame))
    from_xlsx = load_clinical(write(tmp_path / "xlsx", frame, name="clinical.xlsx"))
    assert from_xlsx["patient_id"].iloc[0] == "007", from_xlsx["patient_id"].iloc[0]
    pd.testing.assert_frame_equal(from_xlsx, from_csv, check_dtype=False)

    folder = tmp_path / "named"
    folder.mkdir()
    with pd.ExcelWriter(folder / "export.xlsx") as writer:
        pd.DataFrame({"read": ["me"]}).to_excel(writer, sheet_name="Notes", index=False)
        hospital_export(paper).to_excel(writer, sheet_name="Patients", index=False)
    (folder / DICTIONARY_FILE).write_text(yaml.safe_dump({**RENAMED, "table": "export.xlsx", "sheet": "Patients"}))
    named = load_clinical(folder)
    assert cl.compare_with_paper(cl.table1(named))["counts_match"].all()

    (folder / DICTIONARY_FILE).write_text(yaml.safe_dump({**RENAMED, "table": "export.xlsx", "sheet": "Sheet9"}))
    with pytest.raises(CohortError, match=r"^file export.xlsx: no sheet 'Sheet9'; the workbook has 'Notes', 'Patients'$"):
        load_clinical(folder)


# %% Missing values ----------------------------------------------------------------------------


def test_missing_values_in_table1_selection_and_required(tmp_path):
    frame = small_cohort()
    frame.loc[[0, 4, 5], "PLT"] = np.nan  # one ER and two NER patients without platelets
    folder = write(tmp_path / "missing", frame, SMALL)
    clinical = load_clinical(folder)
    table = cl.table1(clinical).set_index(["variable", "level"])
    assert table.loc[("platelets", "missing"), ["total", "ner", "er"]].tolist() == [3, 2, 1]
    assert ("age", "missing") not in table.index, "a missing row for a variable without missing values"
    # the test uses the five patients with a value: ER 90 150 70 (2 below 100), NER 120 300 (none)
    observed = chi2_contingency([[2, 0], [1, 2]], correction=False).pvalue
    assert cl.variable_p_values(clinical, clinical["early_recurrence"])["platelets"] == pytest.approx(observed)

    required = {**SMALL, "variables": {**SMALL["variables"], "platelets": {**SMALL["variables"]["platelets"], "required": True}}}
    (folder / DICTIONARY_FILE).write_text(yaml.safe_dump(required))
    with pytest.raises(CohortError, match=r"^patient H1, file clinical.csv: missing value in column 'PLT' \(variable platelets\)"):
        load_clinical(folder)


def test_imputation_and_indicator_are_fitted_on_the_training_patients(tmp_path):
    frame = small_cohort()
    frame.loc[[1, 6], "grade"] = np.nan  # H2 (train) and H7 (test) lack the grade
    clinical = load_clinical(write(tmp_path / "impute", frame, SMALL))
    levels = cl.binarise(clinical)
    train = np.array([True] * 6 + [False] * 2)
    filled, indicators = cl.impute_levels(levels, ["differentiation"], train)
    # training grades (H1, H3-H6): III I II ... -> III-IV 2 (H1, H3), I-II 3 (H4, H5, H6): mode I-II
    assert filled["differentiation"].tolist()[1] == "I-II" and filled["differentiation"].tolist()[6] == "I-II"
    assert indicators == ["differentiation"]
    # test patients' values never reach the training rows: change them and the train rows stay equal
    ids = clinical["patient_id"].tolist()
    matrix, names = cl.clinical_matrix(clinical, "strict", train_ids=ids[:6], alpha=1.0)
    changed = clinical.copy()
    changed.loc[6:, ["age", "platelets"]] = [[99, 5], [99, 5]]
    changed.loc[6:, "differentiation"] = "III-IV"
    matrix2, names2 = cl.clinical_matrix(changed, "strict", train_ids=ids[:6], alpha=1.0)
    assert names == names2 and "differentiation missing" in names, names
    assert np.array_equal(matrix[:6], matrix2[:6])
    assert not np.isnan(matrix).any()
    # no training patient misses it: imputed for the test patient, no indicator
    train_without = np.array([True, False, True, True, True, True, False, True])
    _, indicators = cl.impute_levels(levels, ["differentiation"], train_without)
    assert indicators == []


def test_cross_validated_clinical_rf_runs_with_missing_values():
    frame = cl.paper_clinical_frame(seed=1)
    frame.loc[frame.index[::10], "afp"] = np.nan
    frame.attrs[cl.VARIABLES_ATTR] = tuple(
        v if v.column != "afp" else type(v)(**{**v.__dict__, "required": False}) for v in cl.CLINICAL_VARIABLES
    )
    folds = pd.DataFrame({"patient_id": frame["patient_id"], "y_true": frame["early_recurrence"],
                          "fold": np.arange(len(frame)) % 3})  # fmt: skip
    predictions, names = cl.cross_validate_clinical(frame, folds, "paper", seed=0)
    assert predictions["y_prob"].notna().all()
    assert all("afp missing" in fold_names for fold_names in names.values()), names


# %% Time to event -----------------------------------------------------------------------------


def test_time_to_event_outcome_with_censoring(tmp_path):
    frame = pd.DataFrame({
        "patient_id": ["T1", "T2", "T3", "T4", "T5", "T6"],
        "rfs_days": [100, 400, 200, 365, 500, 365],
        "recurred": [1, 1, 0, 0, 0, 1],
        "Age": [50, 70, 65, 40, 45, 62],
    })  # fmt: skip
    spec = {"outcome": {"time": "rfs_days", "event": "recurred", "unit": "days", "horizon": 365},
            "variables": {"age": {"source": "Age"}}}  # fmt: skip
    clinical = load_clinical(write(tmp_path / "tte", frame, spec))
    # T1 event at 100 <= 365: ER; T2 event after the horizon: NER; T3 censored at 200: excluded;
    # T4 followed to the horizon: NER; T5 beyond: NER; T6 event at the horizon: ER
    assert clinical["patient_id"].tolist() == ["T1", "T2", "T4", "T5", "T6"]
    assert clinical["early_recurrence"].tolist() == [1, 0, 0, 0, 1]
    excluded = cl.excluded_of(clinical)
    assert excluded["patient_id"].tolist() == ["T3"]
    assert "censored at 200 days, before the 365-days horizon" in excluded["reason"].iloc[0]


# %% Errors name the variable ----------------------------------------------------------------


DICTIONARY_ERRORS = [
    ({"variables": {"tb": {"source": "tb", "unit": "mmol/L"}}}, "variable 'tb': unit 'mmol/L' cannot be converted"),
    ({"variables": {"platelets": {"type": "numeric", "source": "PLT", "unit": "furlongs", "cutoff": 1}}},
     "variable 'platelets': unknown unit 'furlongs'"),
    ({"variables": {"grade": {"type": "ordinal", "source": "g"}}}, "variable 'grade': type 'ordinal' is unknown"),
    ({"variables": {"age": {"source": "age", "cutoff": 65}}}, "variable 'age' is one of the paper's variables"),
    ({"variables": {"sex": {"source": "sex", "codes": {"M": "man"}}}}, "variable 'sex': code 'M' maps to unknown level 'man'"),
    ({"variables": {"age": {"source": "age", "colour": 1}}}, "variable 'age' is one of the paper's variables"),
    ({"outcome": {"time": "t", "event": "e", "unit": "days"}}, "outcome: a time-to-event outcome needs"),
    ({"variables": {"age": {"source": "age"}}, "extra": 1}, "the dictionary: unknown key 'extra'"),
]  # fmt: skip


@pytest.mark.parametrize(("spec", "problem"), DICTIONARY_ERRORS)
def test_bad_dictionary_is_one_line_naming_the_variable(tmp_path, paper, spec, problem):
    folder = write(tmp_path / "bad", paper.head(6), spec)
    with pytest.raises(CohortError) as info:
        load_clinical(folder)
    message = str(info.value)
    assert message.startswith(f"file {DICTIONARY_FILE}: ") and problem in message and "\n" not in message, message


def test_bad_values_name_patient_variable_and_file(tmp_path):
    frame = small_cohort()
    frame.loc[2, "grade"] = "V"
    with pytest.raises(CohortError, match=r"^patient H3, file clinical.csv: column 'grade' \(variable differentiation\) "
                                          r"has unknown category 'V', expected one of I, II, III, IV$"):  # fmt: skip
        load_clinical(write(tmp_path / "v", frame, SMALL))
    frame = small_cohort().drop(columns=["PLT"])
    with pytest.raises(CohortError, match=r"^file clinical.csv: missing column\(s\) PLT \(variable platelets\)$"):
        load_clinical(write(tmp_path / "c", frame, SMALL))


def test_docs_example_is_a_valid_dictionary(tmp_path):
    folder = tmp_path / "example"
    folder.mkdir()
    (folder / DICTIONARY_FILE).write_text(DOCS_EXAMPLE.read_text())
    dictionary = load_dictionary(folder)
    assert dictionary.table == "clinical_export.xlsx" and dictionary.sheet == "Patients"
    assert dictionary.outcome.horizon == 12 and dictionary.outcome.time_unit == "months"
    assert dictionary.factor("tb") == pytest.approx(17.1) and dictionary.factor("tumor_size_mm") == 10
    assert [v.column for v in dictionary.variables][-4:] == ["hcv", "platelets", "differentiation", "nodularity"]


def test_censored_patients_are_counted_in_the_data_flow_table_with_the_reason(tmp_path):
    from hccer_lib import outputs, report

    frame = pd.DataFrame({
        "patient_id": [f"T{i}" for i in range(1, 9)],
        "rfs_months": [3, 20, 7, 12, 30, 2, 5, 15],
        "recurred": [1, 0, 0, 0, 0, 1, 0, 1],
        "Age": [50, 70, 65, 40, 45, 62, 55, 58],
    })  # fmt: skip
    spec = {"outcome": {"time": "rfs_months", "event": "recurred", "unit": "months", "horizon": 12},
            "variables": {"age": {"source": "Age"}}}  # fmt: skip
    clinical = load_clinical(write(tmp_path / "tte", frame, spec))
    # T3 (7 months) and T7 (5 months) are censored before the 12-month horizon: excluded
    assert clinical["patient_id"].tolist() == ["T1", "T2", "T4", "T5", "T6", "T8"]
    excluded = cl.excluded_of(clinical)
    assert excluded["patient_id"].tolist() == ["T3", "T7"]
    assert excluded["reason"].tolist() == ["censored at 7 months, before the 12-months horizon",
                                           "censored at 5 months, before the 12-months horizon"]  # fmt: skip
    assert set(excluded["group"]) == {"censored before the 12-months horizon"}

    folds = pd.DataFrame({"patient_id": clinical["patient_id"], "y_true": clinical["early_recurrence"],
                          "fold": [0, 1, 0, 1, 0, 1]})  # fmt: skip
    flow = report.add_exclusions(report.data_flow(folds), clinical)
    fold_rows, extra = flow.iloc[:2], flow.iloc[2:]
    # ER: T1 (3 months) and T6 (2), both in fold 0; T8's recurrence at 15 months is after the horizon
    assert fold_rows["test_patients"].tolist() == [3, 3] and fold_rows["test_er"].tolist() == [2, 0], flow
    assert fold_rows["excluded"].isna().all() and (fold_rows["reason"] == "").all(), flow
    assert len(extra) == 1 and extra["fold"].isna().all() and extra["test_patients"].isna().all(), flow
    assert extra["excluded"].tolist() == [2], flow
    assert extra["reason"].tolist() == ["censored before the 12-months horizon: T3, T7"], flow
    # 6 analysed + 2 excluded = the 8 rows of the table
    assert int(fold_rows["test_patients"].sum()) + int(extra["excluded"].sum()) == len(frame)

    csv_path, md_path = outputs.write_table(tmp_path / "study_data_flow", flow)
    lines = csv_path.read_text().splitlines()
    assert lines[1].startswith("0,3,0,,3,2,,,") and lines[3] == ',,,,,,,2,"censored before the 12-months horizon: T3, T7"', lines
    assert "| 2 | censored before the 12-months horizon: T3, T7 |" in md_path.read_text()

    # Without exclusions (a 0/1 outcome) the table is data_flow's, unchanged.
    plain = load_clinical(write(tmp_path / "plain", cl.paper_clinical_frame(seed=0).head(6)))
    assert cl.excluded_of(plain).empty
    table = report.data_flow(folds)
    assert report.add_exclusions(table, plain) is table


def test_saved_imputation_equals_the_folds_imputation():
    """fit_imputation + apply_imputation (the final model's) give what a training fold's matrix gives."""
    frame = cl.paper_clinical_frame(seed=2)
    frame.loc[frame.index[::7], "afp"] = np.nan
    frame.attrs[cl.VARIABLES_ATTR] = tuple(
        v if v.column != "afp" else type(v)(**{**v.__dict__, "required": False}) for v in cl.CLINICAL_VARIABLES
    )
    levels = cl.binarise(frame)
    everyone = np.ones(len(frame), dtype=bool)
    modes, indicators = cl.fit_imputation(levels, ["age", "afp", "bclc"], everyone)
    observed = levels["afp"].dropna()
    assert modes["afp"] == observed.value_counts().idxmax() and indicators == ["afp"], (modes, indicators)
    assert modes["bclc"] == "A", modes  # the paper's most frequent stage (117 of 167)
    got, names = cl.apply_imputation(levels, ["age", "afp", "bclc"], modes, indicators)
    expected, expected_names = cl._fold_matrix(levels, ["age", "afp", "bclc"], everyone)
    assert names == expected_names and names[-1] == "afp missing", names
    assert np.array_equal(got, expected)
