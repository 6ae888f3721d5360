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


def write_table1(figures_dir, table: pd.DataFrame, synthetic: bool) -> tuple:
    """Write ``figures/table1_clinical.csv`` (the columns of :func:`table1`) and ``.md``.

    The Markdown shows the variable's name, the p-value printed as the paper prints it and
    the paper's printed p-value beside it; on a synthetic cohort it starts with the
    synthetic note. Returns the two paths.
    """
    from pathlib import Path

    from hccer_lib import outputs

    figures_dir = Path(figures_dir)
    csv_path = outputs.write_csv(figures_dir / "table1_clinical.csv", table)
    shown = compare_with_paper(table)
    names = {v.column: v.name for v in CLINICAL_VARIABLES}
    first = ~shown["variable"].duplicated()
    markdown = pd.DataFrame({
        "variable": np.where(first, shown["variable"].map(names), ""),
        "level": shown["level"],
        "total": shown["total"],
        "NER": shown["ner"],
        "ER": shown["er"],
        "p (chi-squared)": np.where(first, shown["p_formatted"], ""),
        "paper p": np.where(first, shown["paper_p"].fillna(""), ""),
        "note": np.where(first, shown["note"], ""),
    })
    note = (
        "Pearson chi-squared test without continuity correction on the binarised variables "
        "(the form that reproduces the paper's p-values); p < 0.05 selects a factor."
    )
    if synthetic:
        note = outputs.SYNTHETIC_NOTE + "\n\n" + note
    text = f"# Table 1: clinical variables of patients with ER and NER\n\n{note}\n\n" + outputs.frame_to_markdown(markdown)
    md_path = outputs.write_text(figures_dir / "table1_clinical.md", text)
    return csv_path, md_path


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


# ---------------------------------------------------------------------------------------
# Selection (p < alpha) and the binary clinical vector
# ---------------------------------------------------------------------------------------


def variable_p_values(clinical_or_levels: pd.DataFrame, labels, on_single_level: str = "raise") -> dict[str, float]:
    """Chi-squared p-value of every Table 1 variable, keyed by column, in the paper's order.

    Args:
        clinical_or_levels: raw clinical frame or the output of :func:`binarise`.
        labels: 0/1 per row.
        on_single_level: ``"raise"`` (``ValueError`` naming the variable) or ``"skip"``
            (the variable is left out of the result) when all patients share one level.
    """
    if on_single_level not in ("raise", "skip"):
        raise ValueError(f"on_single_level must be 'raise' or 'skip', got {on_single_level!r}")
    y = _labels_of(labels, len(clinical_or_levels))
    levels = _levels_of(clinical_or_levels)
    p_values = {}
    for var in CLINICAL_VARIABLES:
        counts = count_table(levels[var.column], y, var)
        if np.sum(counts.sum(axis=1) > 0) < 2:
            if on_single_level == "skip":
                continue
            only = var.levels[int(np.argmax(counts.sum(axis=1)))]
            raise ValueError(
                f"variable {var.column!r} ({var.name}): every patient has level {only!r}; "
                f"the chi-squared test is undefined ({SINGLE_LEVEL_NOTE})"
            )
        p_values[var.column] = chi_squared_p(counts)
    return p_values


def select_variables(
    clinical_or_levels: pd.DataFrame, labels, alpha: float = 0.05, on_single_level: str = "raise"
) -> list[str]:
    """The variables whose chi-squared p-value is below ``alpha`` (section II.A), paper order.

    On the paper's Table 1 counts this gives :data:`PAPER_SELECTED`. See
    :func:`variable_p_values` for the arguments.
    """
    p_values = variable_p_values(clinical_or_levels, labels, on_single_level)
    return [column for column, p in p_values.items() if p < alpha]


def encode_variables(levels: pd.DataFrame, columns: list[str] | tuple[str, ...]) -> tuple[np.ndarray, list[str]]:
    """Binary encoding of the chosen variables, in the order given.

    * two-level variables: one bit, 1 for the second level listed in Table 1 (``>=`` the
      cut-off, ``yes``, ``male``, ``multiple``, CP ``B``). For ALB the paper lists
      ``>=40`` first, so its bit is 1 for ``<40``: in every variable the bit marks the level
      associated with the worse prognosis, and ALB ``<40`` (low albumin) is that level.
    * BCLC stage: three bits as in the paper, ``[C, B, A]`` (0 → 000, A → 001, B → 010,
      C → 100).
    * any other multi-level category: one bit per level (one-hot).

    Returns:
        ``float32 [n_patients, k]`` in the row order of ``levels``, and the ``k`` bit names
        (e.g. ``"age >=60"``, ``"bclc C"``).
    """
    bits, names = [], []
    for column in columns:
        var = VARIABLES_BY_COLUMN[column]
        values = levels[column].astype(str)
        if column == "bclc":
            for bit, stage in enumerate(("C", "B", "A")):  # the order of the paper's bits
                bits.append(np.array([BCLC_BITS[v][bit] for v in values], dtype=np.float32))
                names.append(f"bclc {stage}")
        elif len(var.levels) == 2:
            bits.append((values == var.levels[1]).to_numpy(dtype=np.float32))
            names.append(f"{column} {var.levels[1]}")
        else:
            for level in var.levels:
                bits.append((values == level).to_numpy(dtype=np.float32))
                names.append(f"{column} {level}")
    matrix = np.column_stack(bits).astype(np.float32) if bits else np.zeros((len(levels), 0), np.float32)
    return matrix, names


def clinical_matrix(
    clinical: pd.DataFrame,
    protocol: str = "paper",
    train_ids=None,
    alpha: float = 0.05,
) -> tuple[np.ndarray, list[str]]:
    """The clinical feature matrix of every patient, with variables selected by chi-squared.

    Args:
        clinical: raw clinical frame with ``patient_id`` and ``early_recurrence``.
        protocol: ``"paper"``: selection on the whole cohort, as published (on the
            synthetic cohort: the 9-element vector of section II.A). ``"strict"``:
            selection on the patients ``train_ids`` only, so that nothing of the test
            patients is used; a variable with a single level among them cannot be tested
            and is not selected.
        train_ids: patient ids of the training fold (``"strict"`` only).
        alpha: selection threshold on the p-value.

    Returns:
        ``float32 [n_patients, k]`` in the row order of ``clinical`` and the ``k`` bit names.

    Raises:
        ValueError: unknown protocol, missing ``train_ids``, a single-level variable under
        ``"paper"``, or no variable selected.
    """
    levels = binarise(clinical)
    if protocol == "paper":
        selected = select_variables(levels, clinical[LABEL_COLUMN], alpha)
    elif protocol == "strict":
        if train_ids is None:
            raise ValueError("protocol 'strict' needs train_ids (the patients of the training fold)")
        in_train = clinical["patient_id"].astype(str).isin([str(i) for i in train_ids]).to_numpy()
        if not in_train.any():
            raise ValueError("none of train_ids is a patient_id of the clinical frame")
        selected = select_variables(levels[in_train], clinical[LABEL_COLUMN][in_train], alpha, on_single_level="skip")
    else:
        raise ValueError(f"protocol must be 'paper' or 'strict', got {protocol!r}")
    if not selected:
        raise ValueError(f"no clinical variable has chi-squared p < {alpha} (protocol {protocol!r})")
    return encode_variables(levels, selected)


# ---------------------------------------------------------------------------------------
# The clinical model: random forest on the binary clinical vector
# ---------------------------------------------------------------------------------------

RF_PARAMS = {"n_estimators": 500, "max_features": "sqrt", "min_samples_leaf": 1, "bootstrap": True, "n_jobs": 1}


def make_clinical_rf(seed: int, **params):
    """The paper's "clinical model (RF)": ``RandomForestClassifier`` with :data:`RF_PARAMS`.

    The paper names only the method; these are scikit-learn's defaults with 500 trees.
    One job: with threads the summed tree probabilities can differ in the last bits from
    run to run, and the study's predictions are meant to be bit-reproducible.
    """
    from sklearn.ensemble import RandomForestClassifier

    settings = {**RF_PARAMS, **params}
    return RandomForestClassifier(random_state=seed, **settings)


def cross_validate_clinical(
    clinical: pd.DataFrame,
    folds: pd.DataFrame,
    protocol: str = "paper",
    seed: int = 2020,
    alpha: float = 0.05,
    **rf_params,
) -> tuple[pd.DataFrame, dict[int, list[str]]]:
    """Out-of-fold predictions of the clinical RF on the shared folds.

    Args:
        clinical: raw clinical frame (``patient_id``, ``early_recurrence``, 17 variables).
        folds: ``patient_id, y_true, fold`` from ``evaluation.load_or_make_folds``.
        protocol: ``"paper"`` (selection once on the whole cohort) or ``"strict"``
            (selection refit on each training fold); see :func:`clinical_matrix`.

    Returns:
        The predictions frame (``patient_id, slice, fold, y_true, y_prob``; ``slice``
        empty: a patient-level model) and the bit names used in each fold.
    """
    ids = clinical["patient_id"].astype(str).to_numpy()
    from hccer_lib.evaluation import fold_of

    fold = fold_of(folds, ids)
    y = clinical[LABEL_COLUMN].to_numpy(dtype=int)
    if protocol == "paper":
        whole_matrix, whole_names = clinical_matrix(clinical, "paper", alpha=alpha)
    prob = np.full(len(ids), np.nan)
    names_per_fold = {}
    for k in sorted(np.unique(fold)):
        test = fold == k
        if protocol == "paper":
            matrix, names = whole_matrix, whole_names
        else:
            matrix, names = clinical_matrix(clinical, protocol, train_ids=ids[~test], alpha=alpha)
        model = make_clinical_rf(seed, **rf_params).fit(matrix[~test], y[~test])
        prob[test] = model.predict_proba(matrix[test])[:, 1]
        names_per_fold[int(k)] = names
    frame = pd.DataFrame({"patient_id": ids, "slice": pd.array([pd.NA] * len(ids), dtype="Int64"),
                          "fold": fold.astype(int), "y_true": y, "y_prob": prob})
    return frame, names_per_fold
