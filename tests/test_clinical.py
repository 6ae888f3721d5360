"""Clinical factors: Table 1 counts and p-values, selection, the binary vector, the clinical RF."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import chi2_contingency

from hccer_lib import clinical as cl


@pytest.fixture(scope="module")
def paper_frame() -> pd.DataFrame:
    """A raw clinical frame whose binarised counts are the paper's Table 1."""
    return cl.paper_clinical_frame(seed=0)


def test_table1_equals_paper_counts_and_printed_p_values(paper_frame):
    compared = cl.compare_with_paper(cl.table1(paper_frame))
    assert len(compared) == 36, f"expected 36 (variable, level) rows, got {len(compared)}"
    wrong_counts = compared.loc[~compared["counts_match"], ["variable", "level", "ner", "er", "paper_ner", "paper_er"]]
    assert wrong_counts.empty, f"counts differ from the paper:\n{wrong_counts}"
    wrong_p = compared.loc[~compared["p_match"], ["variable", "p_value", "p_formatted", "paper_p"]]
    assert wrong_p.empty, f"p-values differ from the paper's Table 1:\n{wrong_p}"


def test_paper_p_values_need_the_uncorrected_test():
    """With Yates' correction the 2x2 p-values no longer match the paper (e.g. age 0.018)."""
    (levels, printed) = cl.PAPER_TABLE1["age"]
    table = np.array([[ner, er] for _, ner, er in levels])
    uncorrected = cl.chi_squared_p(table)
    corrected = chi2_contingency(table, correction=True).pvalue
    assert cl.format_p(uncorrected) == printed, f"uncorrected p = {uncorrected}"
    assert cl.format_p(corrected) != printed, f"corrected p = {corrected} also prints as {printed}"


@pytest.mark.parametrize(
    ("p_value", "printed"),
    [(0.00053, "0.001"), (0.00014, "<0.001"), (0.017501, "0.018"), (0.5, "0.500"), (float("nan"), "n/a")],
)
def test_format_p_as_the_paper(p_value, printed):
    assert cl.format_p(p_value) == printed, f"format_p({p_value}) = {cl.format_p(p_value)!r}"


def test_selection_gives_the_papers_seven_factors(paper_frame):
    selected = cl.select_variables(paper_frame, paper_frame["early_recurrence"])
    assert selected == list(cl.PAPER_SELECTED), f"selected {selected}"
    from_levels = cl.select_variables(cl.binarise(paper_frame), paper_frame["early_recurrence"].to_numpy())
    assert from_levels == selected, f"selection from levels gave {from_levels}"


def test_paper_protocol_matrix_is_the_9_element_vector(paper_frame):
    matrix, names = cl.clinical_matrix(paper_frame, "paper")
    expected = cl.encode_paper_vector(cl.binarise(paper_frame))
    assert matrix.shape == (167, 9), f"shape {matrix.shape}"
    assert matrix.dtype == np.float32
    assert np.array_equal(matrix, expected), "clinical_matrix differs from encode_paper_vector"
    assert names[-3:] == ["bclc C", "bclc B", "bclc A"], f"names {names}"


def test_encoding_by_hand():
    levels = pd.DataFrame({"bclc": ["0", "A", "B", "C"], "alb": [">=40", "<40", ">=40", "<40"],
                           "sex": ["female", "male", "male", "female"]})
    matrix, names = cl.encode_variables(levels, ["sex", "alb", "bclc"])
    assert names == ["sex male", "alb <40", "bclc C", "bclc B", "bclc A"], f"names {names}"
    expected = np.array([[0, 0, 0, 0, 0], [1, 1, 0, 0, 1], [1, 0, 0, 1, 0], [0, 1, 1, 0, 0]], dtype=np.float32)
    assert np.array_equal(matrix, expected), f"got\n{matrix}"


def test_single_level_variable_raises_in_selection_and_is_marked_in_table1(paper_frame):
    frame = paper_frame.copy()
    frame["alb"] = 45.0  # every patient >= 40 g/L
    with pytest.raises(ValueError, match="alb"):
        cl.select_variables(frame, frame["early_recurrence"])
    table = cl.table1(frame)
    alb = table[table["variable"] == "alb"]
    assert alb["p_value"].isna().all(), f"ALB p-values {alb['p_value'].tolist()}"
    assert (alb["note"] == cl.SINGLE_LEVEL_NOTE).all(), f"ALB notes {alb['note'].tolist()}"
    others = table[table["variable"] != "alb"]
    assert others["p_value"].notna().all() and (others["note"] == "").all()


def test_single_class_labels_raise(paper_frame):
    with pytest.raises(ValueError, match="single class"):
        cl.table1(paper_frame, labels=np.zeros(len(paper_frame), dtype=int))


def test_strict_protocol_selects_on_training_patients_only(paper_frame):
    low_alb = paper_frame.loc[cl.binarise(paper_frame)["alb"] == "<40", "patient_id"].tolist()
    assert len(low_alb) == 2
    train_ids = paper_frame.loc[~paper_frame["patient_id"].isin(low_alb), "patient_id"]
    matrix, names = cl.clinical_matrix(paper_frame, "strict", train_ids=train_ids)
    assert matrix.shape[0] == len(paper_frame), f"rows {matrix.shape[0]}: every patient must be encoded"
    assert not any(n.startswith("alb") for n in names), f"single-level ALB selected: {names}"
    with pytest.raises(ValueError, match="train_ids"):
        cl.clinical_matrix(paper_frame, "strict")
    with pytest.raises(ValueError, match="protocol"):
        cl.clinical_matrix(paper_frame, "nested")


def test_strict_selection_can_differ_from_paper(paper_frame):
    """Selection on half of the cohort (every second patient) gives other factors."""
    train = paper_frame.iloc[::2]
    strict = cl.select_variables(train, train["early_recurrence"])
    paper = cl.select_variables(paper_frame, paper_frame["early_recurrence"])
    _, names = cl.clinical_matrix(paper_frame, "strict", train_ids=train["patient_id"])
    assert len(names) == len(cl.encode_variables(cl.binarise(paper_frame), strict)[1])
    assert strict != paper, f"half the cohort selected the same factors {strict}; choose another split"


def test_cross_validated_clinical_rf_is_deterministic(paper_frame):
    from hccer_lib.evaluation import make_folds, validate_predictions

    labels = paper_frame.set_index("patient_id")["early_recurrence"]
    folds = make_folds(labels, n_folds=3, seed=1)
    first, names = cl.cross_validate_clinical(paper_frame, folds, "strict", seed=3, n_estimators=20)
    second, _ = cl.cross_validate_clinical(paper_frame, folds, "strict", seed=3, n_estimators=20)
    validate_predictions(first)
    assert first["slice"].isna().all()
    assert sorted(names) == [0, 1, 2], f"folds {sorted(names)}"
    assert first["y_prob"].between(0, 1).all()
    pd.testing.assert_frame_equal(first, second)
    assert (first.set_index("patient_id")["fold"] == folds.set_index("patient_id")["fold"]).all()


def test_clinical_logistic_regression_ranks_an_additive_label_and_refuses_forest_settings(paper_frame):
    from hccer_lib.evaluation import auc, make_folds

    # The label counts three risk bits (PVI, tumour >= 50 mm, AFP >= 9), a sum that a regression on the
    # bits can rank (0.991 measured, the penalty keeping the BCLC bits the selection adds from zero).
    frame = paper_frame.copy()
    risk = frame["portal_vein_invasion"] + (frame["tumor_size_mm"] >= 50) + (frame["afp"] >= 9)
    frame["early_recurrence"] = (risk >= 2).astype(int)
    folds = make_folds(frame.set_index("patient_id")["early_recurrence"], n_folds=5, seed=1)
    predictions, names = cl.cross_validate_clinical(frame, folds, "paper", seed=3, classifier="lr")
    assert {"portal_vein_invasion yes", "tumor_size_mm >=50", "afp >=9"} <= set(names[0]), names[0]
    value = auc(predictions["y_true"], predictions["y_prob"])
    assert value > 0.95, f"out-of-fold AUC {value:.3f} of a regression on the bits that make the label"
    with pytest.raises(ValueError, match="classifier"):
        cl.cross_validate_clinical(frame, folds, "paper", classifier="svm")
    with pytest.raises(ValueError, match="forest settings"):
        cl.cross_validate_clinical(frame, folds, "paper", classifier="lr", n_estimators=20)


def test_binarise_rejects_unknown_category(paper_frame):
    frame = paper_frame.copy()
    frame.loc[5, "bclc"] = "D"
    with pytest.raises(ValueError, match="P006.*bclc"):
        cl.binarise(frame)


def test_a_level_without_patients_is_left_out_of_the_test(paper_frame):
    frame = paper_frame.copy()
    frame.loc[frame["bclc"] == "B", "bclc"] = "C"  # no BCLC B patient any more
    bclc = cl.table1(frame).set_index(["variable", "level"]).loc["bclc"]
    assert bclc.loc["B", "total"] == 0
    counts = np.array([[17, 5], [78, 39], [6 + 1, 18 + 3]])
    expected = chi2_contingency(counts, correction=False).pvalue
    assert bclc["p_value"].iloc[0] == pytest.approx(expected), f"p {bclc['p_value'].iloc[0]} vs {expected}"


def test_write_table1_files(paper_frame, tmp_path):
    csv_path, md_path = cl.write_table1(tmp_path, cl.table1(paper_frame), synthetic=True)
    written = pd.read_csv(csv_path)
    assert list(written.columns)[:6] == ["variable", "level", "total", "ner", "er", "p_value"]
    assert len(written) == 36
    text = md_path.read_text()
    assert text.count("Synthetic cohort") == 1
    assert "| Portal vein invasion | no | 143 | 95 | 48 | 0.001 | 0.001 |" in text, text[:800]
