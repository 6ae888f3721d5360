"""Clinical variables: the paper's cut-offs, binarisation, Table 1 and the clinical vector.

The raw clinical values of a cohort (``clinical.csv``, see DESIGN.md) are binarised here,
in one place, with the cut-offs of Wang et al. 2020, section II.A and Table 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class ClinicalVariable:
    """One row group of the paper's Table 1.

    ``kind`` is ``"threshold"`` (numeric column; ``low`` is ``value < cutoff``, ``high`` is
    ``value >= cutoff``), ``"binary"`` (0/1 column), ``"count"`` (1 → ``levels[0]``,
    ≥ 2 → ``levels[1]``) or ``"category"`` (the column holds one of ``codes``).
    ``levels`` are the level labels in the order the paper's Table 1 lists them.
    """

    name: str
    column: str
    kind: str
    levels: tuple[str, ...]
    cutoff: float | None = None
    codes: tuple[str, ...] | None = None
    unit: str = ""
    high_first: bool = False  # ALB: the paper lists ">=40" before "<40"


# The 17 variables of Table 1, in the paper's order.
CLINICAL_VARIABLES: tuple[ClinicalVariable, ...] = (
    ClinicalVariable("Sex", "sex", "category", ("female", "male"), codes=("F", "M")),
    ClinicalVariable("Age", "age", "threshold", ("<60", ">=60"), cutoff=60, unit="years"),
    ClinicalVariable("Tumor size", "tumor_size_mm", "threshold", ("<50", ">=50"), cutoff=50, unit="mm"),
    ClinicalVariable("Tumor number", "tumor_number", "count", ("single", "multiple")),
    ClinicalVariable("Portal vein invasion", "portal_vein_invasion", "binary", ("no", "yes")),
    ClinicalVariable("Liver cirrhosis", "cirrhosis", "binary", ("no", "yes")),
    ClinicalVariable("HBV infection", "hbv", "binary", ("no", "yes")),
    # The paper's text gives 2.81 (after Okamura et al.); its Table 1 and vector use 2.8.
    ClinicalVariable("N/L ratio", "nlr", "threshold", ("<2.8", ">=2.8"), cutoff=2.8),
    ClinicalVariable("ALT", "alt", "threshold", ("<40", ">=40"), cutoff=40, unit="U/L"),
    ClinicalVariable("AST", "ast", "threshold", ("<50", ">=50"), cutoff=50, unit="U/L"),
    ClinicalVariable("AKP", "akp", "threshold", ("<125", ">=125"), cutoff=125, unit="U/L"),
    ClinicalVariable("GGT", "ggt", "threshold", ("<45", ">=45"), cutoff=45, unit="U/L"),
    ClinicalVariable("ALB", "alb", "threshold", (">=40", "<40"), cutoff=40, unit="g/L", high_first=True),
    ClinicalVariable("TB", "tb", "threshold", ("<20.5", ">=20.5"), cutoff=20.5, unit="umol/L"),
    ClinicalVariable("AFP", "afp", "threshold", ("<9", ">=9"), cutoff=9, unit="ug/L"),
    ClinicalVariable("CP level", "child_pugh", "category", ("A", "B"), codes=("A", "B")),
    ClinicalVariable("BCLC stage", "bclc", "category", ("0", "A", "B", "C"), codes=("0", "A", "B", "C")),
)
VARIABLES_BY_COLUMN = {v.column: v for v in CLINICAL_VARIABLES}

# The paper's Table 1: per variable, (level, NER count, ER count), and the p-value as printed.
PAPER_TABLE1: dict[str, tuple[tuple[tuple[str, int, int], ...], str]] = {
    "sex": ((("female", 17, 10), ("male", 85, 55)), "0.826"),
    "age": ((("<60", 55, 47), (">=60", 47, 18)), "0.018"),
    "tumor_size_mm": ((("<50", 74, 28), (">=50", 28, 37)), "<0.001"),
    "tumor_number": ((("single", 97, 58), ("multiple", 5, 7)), "0.152"),
    "portal_vein_invasion": ((("no", 95, 48), ("yes", 7, 17)), "0.001"),
    "cirrhosis": ((("no", 31, 21), ("yes", 71, 44)), "0.794"),
    "hbv": ((("no", 25, 8), ("yes", 77, 57)), "0.054"),
    "nlr": ((("<2.8", 71, 35), (">=2.8", 31, 30)), "0.039"),
    "alt": ((("<40", 66, 38), (">=40", 36, 27)), "0.417"),
    "ast": ((("<50", 77, 46), (">=50", 25, 19)), "0.500"),
    "akp": ((("<125", 85, 46), (">=125", 17, 19)), "0.054"),
    "ggt": ((("<45", 46, 20), (">=45", 56, 45)), "0.065"),
    "alb": (((">=40", 100, 65), ("<40", 2, 0)), "0.256"),
    "tb": ((("<20.5", 81, 41), (">=20.5", 21, 24)), "0.020"),
    "afp": ((("<9", 39, 11), (">=9", 63, 54)), "0.003"),
    "child_pugh": ((("A", 89, 51), ("B", 13, 14)), "0.132"),
    "bclc": ((("0", 17, 5), ("A", 78, 39), ("B", 1, 3), ("C", 6, 18)), "<0.001"),
}
PAPER_N_NER, PAPER_N_ER = 102, 65

# Section II.A: the seven selected factors and the 9-element binary vector, in this order.
PAPER_SELECTED = ("age", "tumor_size_mm", "portal_vein_invasion", "nlr", "tb", "afp", "bclc")
BCLC_BITS = {"0": (0, 0, 0), "A": (0, 0, 1), "B": (0, 1, 0), "C": (1, 0, 0)}


def binarise(clinical: pd.DataFrame) -> pd.DataFrame:
    """Map raw clinical values to the paper's levels.

    Args:
        clinical: one row per patient with the raw columns of ``clinical.csv``.

    Returns:
        A frame indexed like ``clinical`` with one column per variable (named by its
        ``column``), holding the level label (e.g. ``"<60"``, ``"yes"``, ``"C"``).

    Raises:
        ValueError: a value that falls in no level (missing, negative count, unknown code).
    """
    out = {}
    for var in CLINICAL_VARIABLES:
        values = clinical[var.column]
        if var.kind == "threshold":
            numeric = pd.to_numeric(values, errors="coerce")
            low, high = (var.levels[1], var.levels[0]) if var.high_first else var.levels
            labels = np.where(numeric >= var.cutoff, high, low)
            bad = numeric.isna()
        elif var.kind == "binary":
            numeric = pd.to_numeric(values, errors="coerce")
            labels = np.where(numeric == 1, var.levels[1], var.levels[0])
            bad = ~numeric.isin([0, 1])
        elif var.kind == "count":
            numeric = pd.to_numeric(values, errors="coerce")
            labels = np.where(numeric >= 2, var.levels[1], var.levels[0])
            bad = ~(numeric >= 1) | (numeric != np.round(numeric))
        else:  # category
            text = values.astype(str).str.strip()
            text = text.str.replace(r"\.0$", "", regex=True)  # BCLC "0" read as 0.0
            lookup = dict(zip(var.codes, var.levels, strict=True))
            labels = text.map(lookup)
            bad = labels.isna()
        if bool(np.any(bad)):
            first = clinical.index[np.asarray(bad)][0]
            pid = clinical.loc[first, "patient_id"] if "patient_id" in clinical else first
            raise ValueError(
                f"patient {pid}: column {var.column!r} has value {values.loc[first]!r}, "
                f"which is not a valid {var.name} ({var.kind})"
            )
        out[var.column] = pd.Series(labels, index=clinical.index, dtype=object)
    return pd.DataFrame(out, index=clinical.index)


def encode_paper_vector(levels: pd.DataFrame) -> np.ndarray:
    """The 9-element binary clinical vector of section II.A.

    Args:
        levels: the output of :func:`binarise`.

    Returns:
        ``float32`` array ``[n_patients, 9]``: age ≥ 60, size ≥ 50 mm, PVI, NLR ≥ 2.8,
        TB ≥ 20.5, AFP ≥ 9, then BCLC as three bits (0 → 000, A → 001, B → 010, C → 100).
    """
    cols = []
    for column in PAPER_SELECTED[:-1]:
        var = VARIABLES_BY_COLUMN[column]
        cols.append((levels[column] == var.levels[1]).to_numpy(dtype=np.float32))
    bits = np.array([BCLC_BITS[b] for b in levels["bclc"]], dtype=np.float32).reshape(-1, 3)
    return np.column_stack([*cols, bits]).astype(np.float32)


# ---------------------------------------------------------------------------------------
# Table 1: counts per level and the chi-squared test as the paper used it
# ---------------------------------------------------------------------------------------

LABEL_COLUMN = "early_recurrence"
SINGLE_LEVEL_NOTE = "not testable: single level"


def _levels_of(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` binarised, unless it already holds the level labels of every variable."""
    columns = [v.column for v in CLINICAL_VARIABLES]
    if all(c in frame for c in columns) and all(
        frame[v.column].astype(str).isin(v.levels).all() for v in CLINICAL_VARIABLES
    ):
        return frame[columns].astype(str)
    return binarise(frame)


def _labels_of(labels, n_rows: int) -> np.ndarray:
    """0/1 labels as an int array of length ``n_rows``; ``ValueError`` otherwise."""
    y = pd.to_numeric(pd.Series(np.asarray(labels).ravel()), errors="coerce")
    if len(y) != n_rows:
        raise ValueError(f"got {len(y)} labels for {n_rows} patients")
    if not y.isin([0, 1]).all():
        raise ValueError(f"labels must be 0/1, got values {sorted(set(y.dropna()) - {0, 1})[:5]}")
    y = y.to_numpy(dtype=int)
    if len(set(y)) < 2:
        raise ValueError(f"labels hold a single class ({y[0] if len(y) else 'none'}): no test is possible")
    return y


def count_table(levels: pd.Series, y: np.ndarray, variable: ClinicalVariable) -> np.ndarray:
    """Contingency table ``[n_levels, 2]`` (columns NER, ER) in Table 1's level order."""
    return np.array(
        [[int(np.sum((levels == level).to_numpy() & (y == cls))) for cls in (0, 1)] for level in variable.levels]
    )


def chi_squared_p(table: np.ndarray) -> float:
    """Pearson chi-squared p-value of a ``[levels, classes]`` count table, as in the paper.

    No Yates continuity correction (``scipy.stats.chi2_contingency(correction=False)``):
    on the paper's Table 1 counts this reproduces every printed p-value to three decimals,
    the corrected test does not. Levels observed in no patient are left out.

    Raises:
        ValueError: fewer than two observed levels or fewer than two classes.
    """
    from scipy.stats import chi2_contingency

    table = np.asarray(table)
    table = table[table.sum(axis=1) > 0]
    if table.shape[0] < 2:
        raise ValueError(SINGLE_LEVEL_NOTE)
    if (table.sum(axis=0) == 0).any():
        raise ValueError("a class has no patient")
    return float(chi2_contingency(table, correction=False).pvalue)


def table1(clinical: pd.DataFrame, labels=None) -> pd.DataFrame:
    """The paper's Table 1 computed from a cohort.

    Args:
        clinical: raw clinical frame (``clinical.csv``) or the output of :func:`binarise`.
        labels: 0/1 early recurrence per row; default ``clinical["early_recurrence"]``.

    Returns:
        One row per (variable, level), in the paper's order: ``variable`` (column name),
        ``level``, ``total``, ``ner``, ``er`` (patient counts), ``p_value`` (chi-squared,
        repeated on each level of a variable) and ``note``: empty, or
        ``"not testable: single level"`` (with ``p_value`` NaN) when every patient falls in
        one level of that variable.
    """
    if labels is None:
        labels = clinical[LABEL_COLUMN]
    y = _labels_of(labels, len(clinical))
    levels = _levels_of(clinical)
    rows = []
    for var in CLINICAL_VARIABLES:
        counts = count_table(levels[var.column], y, var)
        observed = int(np.sum(counts.sum(axis=1) > 0))
        p_value, note = (chi_squared_p(counts), "") if observed >= 2 else (float("nan"), SINGLE_LEVEL_NOTE)
        for level, (ner, er) in zip(var.levels, counts, strict=True):
            rows.append(
                {"variable": var.column, "level": level, "total": int(ner + er), "ner": int(ner),
                 "er": int(er), "p_value": p_value, "note": note}
            )
    return pd.DataFrame(rows)


def paper_table1() -> pd.DataFrame:
    """The paper's Table 1 as printed: ``variable, level, total, ner, er, paper_p``."""
    rows = []
    for column, (levels, printed) in PAPER_TABLE1.items():
        for level, ner, er in levels:
            rows.append({"variable": column, "level": level, "total": ner + er, "ner": ner, "er": er, "paper_p": printed})
    return pd.DataFrame(rows)


def format_p(p_value: float) -> str:
    """A p-value printed as the paper prints it: rounded to three decimals, ``"<0.001"``
    when that rounds to 0.000 (the paper prints p = 0.00053 as ``"0.001"``)."""
    if not np.isfinite(p_value):
        return "n/a"
    text = f"{p_value:.3f}"
    return "<0.001" if text == "0.000" else text


def compare_with_paper(table: pd.DataFrame) -> pd.DataFrame:
    """Table 1 of a cohort beside the paper's: ``paper_*`` columns and ``counts_match``, ``p_match``.

    ``p_match`` compares the p-value formatted as the paper prints it (three decimals).
    """
    paper = paper_table1().rename(columns={"total": "paper_total", "ner": "paper_ner", "er": "paper_er"})
    out = table.merge(paper, on=["variable", "level"], how="left")
    out["p_formatted"] = out["p_value"].map(format_p)
    out["counts_match"] = (
        (out["total"] == out["paper_total"]) & (out["ner"] == out["paper_ner"]) & (out["er"] == out["paper_er"])
    )
    out["p_match"] = out["p_formatted"] == out["paper_p"]
    return out


def paper_clinical_frame(seed: int = 0) -> pd.DataFrame:
    """A raw clinical frame (``clinical.csv`` columns) whose Table 1 equals the paper's.

    Only the per-variable counts are the paper's; the joint distribution of variables is
    a seeded random arrangement. Raw values sit on either side of each cut-off (e.g. age 50
    for ``"<60"``, 70 for ``">=60"``). For tests and examples; the study's synthetic cohort
    comes from ``hccer_lib.synth``.

    Returns:
        167 rows: ``patient_id`` (``"P001"``...), ``early_recurrence`` (102 zeros, 65 ones)
        and the 17 raw columns.
    """
    rng = np.random.default_rng(seed)
    y = np.array([0] * PAPER_N_NER + [1] * PAPER_N_ER)
    frame = {"patient_id": [f"P{i + 1:03d}" for i in range(len(y))], LABEL_COLUMN: y}
    for var in CLINICAL_VARIABLES:
        levels_of_patient = np.empty(len(y), dtype=object)
        for cls in (0, 1):
            labels = [lvl for lvl, ner, er in PAPER_TABLE1[var.column][0] for _ in range((ner, er)[cls])]
            levels_of_patient[y == cls] = rng.permutation(np.array(labels, dtype=object))
        frame[var.column] = [_raw_value(var, level) for level in levels_of_patient]
    return pd.DataFrame(frame)


def _raw_value(var: ClinicalVariable, level: str):
    """A raw value that :func:`binarise` maps to ``level``."""
    index = var.levels.index(level)
    if var.kind == "threshold":
        is_high = level.startswith(">=")
        step = max(1.0, var.cutoff * 0.2)
        return float(var.cutoff + step if is_high else var.cutoff - step)
    if var.kind == "binary":
        return index
    if var.kind == "count":
        return 1 + index
    return var.codes[index]
