"""Clinical variables: the paper's cut-offs, binarisation, Table 1 and the clinical vector.

The raw clinical values of a cohort (``clinical.csv``, see docs/DESIGN.md) are binarised here,
in one place, with the cut-offs of Wang et al. 2020, section II.A and Table 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from hccer_lib.study_run import DEFAULT_SETTINGS


@dataclass(frozen=True)
class ClinicalVariable:
    """One candidate clinical variable: one row group of Table 1.

    ``kind`` is ``"threshold"`` (numeric column; ``low`` is ``value < cutoff``, ``high`` is
    ``value >= cutoff``), ``"binary"`` (0/1 column), ``"count"`` (1 → ``levels[0]``,
    ≥ 2 → ``levels[1]``) or ``"category"`` (the column holds one of ``codes``).
    ``levels`` are the level labels in the order Table 1 lists them; the second level of a
    two-level variable is the one coded 1 (the worse prognosis in the paper's variables).

    ``column`` is the variable's name in the library's frames; ``source`` the column of the
    cohort's table it is read from (None: ``column``). Numeric values are held in ``unit``
    (``"years"``, ``"mm"``, ``"U/L"``, ...), converted from the table's unit by the data
    dictionary (``hccer_lib.dictionary``). ``value_range`` is the plausible closed range in
    ``unit`` (None: unbounded on that side; ``positive`` also refuses 0). ``required``: a
    missing value is an error (else it is counted and imputed inside each training fold).
    ``onehot``: the levels of a category that get one bit each, in bit order, the others
    coding all zeros (None: one bit for the second level of a two-level category, else one
    per level); BCLC's ``("C", "B", "A")`` gives the paper's 0 → 000, A → 001, B → 010, C → 100.
    """

    name: str
    column: str
    kind: str
    levels: tuple[str, ...]
    cutoff: float | None = None
    codes: tuple[str, ...] | None = None
    unit: str = ""
    high_first: bool = False  # ALB: the paper lists ">=40" before "<40"
    value_range: tuple[float | None, float | None] = (None, None)
    positive: bool = False
    required: bool = True
    source: str | None = None
    onehot: tuple[str, ...] | None = None
    aliases: tuple[tuple[str, str], ...] = ()  # a data dictionary's codes: raw text -> level

    @property
    def source_column(self) -> str:
        """The column of the cohort's table holding the raw values."""
        return self.source or self.column


# The 17 variables of Table 1, in the paper's order.
CLINICAL_VARIABLES: tuple[ClinicalVariable, ...] = (
    ClinicalVariable("Sex", "sex", "category", ("female", "male"), codes=("F", "M")),
    ClinicalVariable("Age", "age", "threshold", ("<60", ">=60"), cutoff=60, unit="years", value_range=(0, 120)),
    ClinicalVariable("Tumor size", "tumor_size_mm", "threshold", ("<50", ">=50"), cutoff=50, unit="mm",
                     value_range=(0, 500), positive=True),
    ClinicalVariable("Tumor number", "tumor_number", "count", ("single", "multiple"), value_range=(1, None)),
    ClinicalVariable("Portal vein invasion", "portal_vein_invasion", "binary", ("no", "yes")),
    ClinicalVariable("Liver cirrhosis", "cirrhosis", "binary", ("no", "yes")),
    ClinicalVariable("HBV infection", "hbv", "binary", ("no", "yes")),
    # The paper's text gives 2.81 (after Okamura et al.); its Table 1 and vector use 2.8.
    ClinicalVariable("N/L ratio", "nlr", "threshold", ("<2.8", ">=2.8"), cutoff=2.8, value_range=(0, None)),
    ClinicalVariable("ALT", "alt", "threshold", ("<40", ">=40"), cutoff=40, unit="U/L", value_range=(0, None)),
    ClinicalVariable("AST", "ast", "threshold", ("<50", ">=50"), cutoff=50, unit="U/L", value_range=(0, None)),
    ClinicalVariable("AKP", "akp", "threshold", ("<125", ">=125"), cutoff=125, unit="U/L", value_range=(0, None)),
    ClinicalVariable("GGT", "ggt", "threshold", ("<45", ">=45"), cutoff=45, unit="U/L", value_range=(0, None)),
    ClinicalVariable("ALB", "alb", "threshold", (">=40", "<40"), cutoff=40, unit="g/L", high_first=True,
                     value_range=(0, None)),
    ClinicalVariable("TB", "tb", "threshold", ("<20.5", ">=20.5"), cutoff=20.5, unit="umol/L", value_range=(0, None)),
    ClinicalVariable("AFP", "afp", "threshold", ("<9", ">=9"), cutoff=9, unit="ug/L", value_range=(0, None)),
    ClinicalVariable("CP level", "child_pugh", "category", ("A", "B"), codes=("A", "B")),
    ClinicalVariable("BCLC stage", "bclc", "category", ("0", "A", "B", "C"), codes=("0", "A", "B", "C"),
                     onehot=("C", "B", "A")),
)  # fmt: skip
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


#: ``frame.attrs`` keys set by ``cohort.load_clinical``: the cohort's variables (its data
#: dictionary's; default :data:`CLINICAL_VARIABLES`) and the patients a time-to-event outcome
#: excluded, as ``(patient_id, reason, group)`` triples (``group``: the reason shared by several
#: patients, e.g. ``"censored before the 12-months horizon"``; a pair means group = reason).
VARIABLES_ATTR = "hccer_variables"
EXCLUDED_ATTR = "hccer_excluded"
MISSING_LEVEL = "missing"  # Table 1's row of patients without a value


def variables_of(frame: pd.DataFrame) -> tuple[ClinicalVariable, ...]:
    """The candidate variables of a clinical frame: its data dictionary's, else the paper's 17."""
    return tuple(frame.attrs.get(VARIABLES_ATTR) or CLINICAL_VARIABLES)


def excluded_of(frame: pd.DataFrame) -> pd.DataFrame:
    """Patients left out by the outcome's definition: ``patient_id, reason, group`` (may be empty).

    ``reason`` is the patient's own (``"censored at 7 months, before the 12-months horizon"``),
    ``group`` the reason without the patient's details (``"censored before the 12-months
    horizon"``), by which the study's data-flow table counts them (``report.add_exclusions``).
    """
    rows = [(str(e[0]), str(e[1]), str(e[2] if len(e) > 2 else e[1])) for e in frame.attrs.get(EXCLUDED_ATTR, ())]
    return pd.DataFrame(rows, columns=["patient_id", "reason", "group"])


def binarise(clinical: pd.DataFrame) -> pd.DataFrame:
    """Map raw clinical values to the paper's levels.

    Args:
        clinical: one row per patient with the raw columns of ``clinical.csv`` (in the
            units of :func:`variables_of`; ``cohort.load_clinical`` converts them).

    Returns:
        A frame indexed like ``clinical`` with one column per variable (named by its
        ``column``), holding the level label (e.g. ``"<60"``, ``"yes"``, ``"C"``), NaN
        where the value is missing; it carries ``clinical``'s variables in its ``attrs``.

    Raises:
        ValueError: a value that falls in no level (negative count, unknown code, ...).
    """
    out = {}
    variables = variables_of(clinical)
    for var in variables:
        values = clinical[var.column]
        missing = values.isna().to_numpy()
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
            lookup = dict(zip(var.codes or var.levels, var.levels, strict=True))
            labels = text.map(lookup)
            bad = labels.isna()
        bad = np.asarray(bad) & ~missing
        if bool(np.any(bad)):
            first = clinical.index[bad][0]
            pid = clinical.loc[first, "patient_id"] if "patient_id" in clinical else first
            raise ValueError(
                f"patient {pid}: column {var.column!r} has value {values.loc[first]!r}, "
                f"which is not a valid {var.name} ({var.kind})"
            )
        labels = pd.Series(np.asarray(labels, dtype=object), index=clinical.index, dtype=object)
        out[var.column] = labels.mask(missing)
    levels = pd.DataFrame(out, index=clinical.index)
    levels.attrs[VARIABLES_ATTR] = variables
    return levels


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
    """``frame`` binarised, unless it already holds the level labels (or NaN) of every variable."""
    variables = variables_of(frame)
    columns = [v.column for v in variables]
    if all(c in frame for c in columns) and all(
        (frame[v.column].isna() | frame[v.column].astype(str).isin(v.levels)).all() for v in variables
    ):
        levels = frame[columns].astype(object)
        levels.attrs[VARIABLES_ATTR] = variables
        return levels
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
        One row per (variable, level), in Table 1's order: ``variable`` (column name),
        ``level``, ``total``, ``ner``, ``er`` (patient counts), ``p_value`` (chi-squared on
        the patients with a value, repeated on each level of a variable) and ``note``:
        empty, or ``"not testable: single level"`` (with ``p_value`` NaN) when every patient
        with a value falls in one level. A variable with missing values gets one more row,
        level ``"missing"``, with the count of patients without a value (left out of the test).
    """
    if labels is None:
        labels = clinical[LABEL_COLUMN]
    y = _labels_of(labels, len(clinical))
    levels = _levels_of(clinical)
    rows = []
    for var in variables_of(levels):
        counts = count_table(levels[var.column], y, var)
        observed = int(np.sum(counts.sum(axis=1) > 0))
        p_value, note = (chi_squared_p(counts), "") if observed >= 2 else (float("nan"), SINGLE_LEVEL_NOTE)
        for level, (ner, er) in zip(var.levels, counts, strict=True):
            rows.append(
                {"variable": var.column, "level": level, "total": int(ner + er), "ner": int(ner),
                 "er": int(er), "p_value": p_value, "note": note}
            )
        missing = levels[var.column].isna().to_numpy()
        if missing.any():
            ner, er = int(np.sum(missing & (y == 0))), int(np.sum(missing & (y == 1)))
            rows.append({"variable": var.column, "level": MISSING_LEVEL, "total": ner + er, "ner": ner, "er": er,
                         "p_value": p_value, "note": "missing: left out of the test"})  # fmt: skip
    table = pd.DataFrame(rows)
    table.attrs[VARIABLES_ATTR] = variables_of(levels)
    return table


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
    """Write ``<figures_dir>/table1_clinical.csv`` (the columns of :func:`table1`) and ``.md``.

    The Markdown shows the variable's name, the p-value printed as the paper prints it and
    the paper's printed p-value beside it; on a synthetic cohort it starts with the
    synthetic note. Returns the two paths.
    """
    from pathlib import Path

    from hccer_lib import outputs

    figures_dir = Path(figures_dir)
    csv_path = outputs.write_csv(figures_dir / "table1_clinical.csv", table)
    shown = compare_with_paper(table)
    names = {v.column: v.name for v in (*CLINICAL_VARIABLES, *variables_of(table))}
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
        "(the form that reproduces the paper's p-values); p < 0.05 selects a factor. Patients "
        f"without a value (level '{MISSING_LEVEL}') are left out of the test."
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

    Each test uses the patients with a value of that variable (missing values are left out).

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
    for var in variables_of(levels):
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
    clinical_or_levels: pd.DataFrame, labels, alpha: float = DEFAULT_SETTINGS.alpha, on_single_level: str = "raise"
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
    * a category with ``onehot`` levels: one bit per listed level, in that order, the other
      levels all zeros; BCLC stage is ``[C, B, A]`` as in the paper (0 → 000, A → 001,
      B → 010, C → 100).
    * any other multi-level category: one bit per level (one-hot).

    A missing value (NaN level) gives NaN bits: :func:`clinical_matrix` imputes them.

    Returns:
        ``float32 [n_patients, k]`` in the row order of ``levels``, and the ``k`` bit names
        (e.g. ``"age >=60"``, ``"bclc C"``).
    """
    by_column = {v.column: v for v in (*CLINICAL_VARIABLES, *variables_of(levels))}
    bits, names = [], []
    for column in columns:
        var = by_column[column]
        values = levels[column]
        missing = values.isna().to_numpy()
        values = values.astype(str)
        if var.onehot is not None:
            coded = var.onehot
        elif len(var.levels) == 2:
            coded = (var.levels[1],)
        else:
            coded = var.levels
        for level in coded:
            bit = (values == level).to_numpy(dtype=np.float32)
            bit[missing] = np.nan
            bits.append(bit)
            names.append(f"{column} {level}")
    matrix = np.column_stack(bits).astype(np.float32) if bits else np.zeros((len(levels), 0), np.float32)
    return matrix, names


def impute_levels(levels: pd.DataFrame, columns, train: np.ndarray) -> tuple[pd.DataFrame, list[str]]:
    """The study's rule for missing clinical values, fitted on the training patients only.

    A missing level becomes the most frequent level among the training patients with a
    value (ties: the first in Table 1's order); a variable that some training patient
    lacks also gets an indicator bit ``"<column> missing"`` (1 = the value was missing).
    Nothing of the test patients is used: a test patient may lack a variable that every
    training patient has (imputed, no indicator).

    Args:
        levels: the output of :func:`binarise`.
        columns: the variables to fill.
        train: boolean ``[n_patients]``, the training patients.

    Returns:
        The filled levels (a copy) and the columns that get an indicator, in ``columns`` order.

    Raises:
        ValueError: a variable that no training patient has.
    """
    train = np.asarray(train, dtype=bool)
    filled = levels.copy()
    by_column = {v.column: v for v in (*CLINICAL_VARIABLES, *variables_of(levels))}
    indicators = []
    for column in columns:
        values = levels[column]
        if not values.isna().any():
            continue
        observed = values[train & values.notna().to_numpy()]
        if observed.empty:
            raise ValueError(f"variable {column!r}: no training patient has a value; it cannot be imputed")
        counts = observed.value_counts()
        order = list(by_column[column].levels)
        mode = max(counts.index, key=lambda level: (counts[level], -order.index(level)))
        filled[column] = values.fillna(mode)
        if values[train].isna().any():
            indicators.append(column)
    return filled, indicators


def fit_imputation(levels: pd.DataFrame, columns, train: np.ndarray) -> tuple[dict[str, str], list[str]]:
    """The imputation of :func:`impute_levels` for every variable of ``columns``, to be saved.

    The final model (``model_folder``) keeps it to encode a new patient as its training
    patients were encoded: a missing level becomes ``modes[column]`` (the most frequent
    level among the ``train`` patients with a value; ties: the first in Table 1's order), and
    each column of ``indicators`` (some training patient lacks it) gets a bit
    ``"<column> missing"``. On the same patients :func:`apply_imputation` then gives what
    :func:`impute_levels` and :func:`encode_variables` give.

    Raises:
        ValueError: a variable that no training patient has.
    """
    train = np.asarray(train, dtype=bool)
    by_column = {v.column: v for v in (*CLINICAL_VARIABLES, *variables_of(levels))}
    modes, indicators = {}, []
    for column in columns:
        values = levels[column]
        observed = values[train & values.notna().to_numpy()]
        if observed.empty:
            raise ValueError(f"variable {column!r}: no training patient has a value; it cannot be imputed")
        counts = observed.value_counts()
        order = list(by_column[column].levels)
        modes[column] = str(max(counts.index, key=lambda level: (counts[level], -order.index(level))))
        if values[train].isna().any():
            indicators.append(column)
    return modes, indicators


def apply_imputation(levels: pd.DataFrame, columns, modes: dict[str, str], indicators) -> tuple[np.ndarray, list[str]]:
    """Encoded ``columns`` with missing levels filled from ``modes`` and the ``indicators`` bits
    appended (``"<column> missing"``), as :func:`fit_imputation` fitted them."""
    filled = levels.copy()
    for column in columns:
        filled[column] = levels[column].fillna(modes[column])
    matrix, names = encode_variables(filled, list(columns))
    if indicators:
        flags = np.column_stack([levels[c].isna().to_numpy(dtype=np.float32) for c in indicators])
        matrix = np.column_stack([matrix, flags]).astype(np.float32)
        names = names + [f"{c} {MISSING_LEVEL}" for c in indicators]
    return matrix, names


def _fold_matrix(levels: pd.DataFrame, selected: list[str], train: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Encoded ``selected`` variables with missing values imputed from ``train`` (see :func:`impute_levels`)."""
    filled, indicators = impute_levels(levels, selected, train)
    matrix, names = encode_variables(filled, selected)
    if indicators:
        flags = np.column_stack([levels[c].isna().to_numpy(dtype=np.float32) for c in indicators])
        matrix = np.column_stack([matrix, flags]).astype(np.float32)
        names = names + [f"{c} {MISSING_LEVEL}" for c in indicators]
    return matrix, names


def clinical_matrix(
    clinical: pd.DataFrame,
    protocol: str = "paper",
    train_ids=None,
    alpha: float = DEFAULT_SETTINGS.alpha,
) -> tuple[np.ndarray, list[str]]:
    """The clinical feature matrix of every patient, with variables selected by chi-squared.

    Args:
        clinical: raw clinical frame with ``patient_id`` and ``early_recurrence``.
        protocol: ``"paper"``: selection on the whole cohort, as published (on the
            synthetic cohort: the 9-element vector of section II.A). ``"strict"``:
            selection on the patients ``train_ids`` only, so that nothing of the test
            patients is used; a variable with a single level among them cannot be tested
            and is not selected.
        train_ids: patient ids of the training fold (needed by ``"strict"``; under
            ``"paper"`` they fit the imputation of missing values, default every patient).
        alpha: selection threshold on the p-value.

    Missing values: selection tests the patients with a value; the matrix imputes and flags
    them by :func:`impute_levels`, fitted on the ``train_ids`` patients.

    Returns:
        ``float32 [n_patients, k]`` in the row order of ``clinical`` and the ``k`` bit names.

    Raises:
        ValueError: unknown protocol, missing ``train_ids``, a single-level variable under
        ``"paper"``, or no variable selected.
    """
    levels = binarise(clinical)
    in_train = np.ones(len(clinical), dtype=bool)
    if train_ids is not None:
        in_train = clinical["patient_id"].astype(str).isin([str(i) for i in train_ids]).to_numpy()
        if not in_train.any():
            raise ValueError("none of train_ids is a patient_id of the clinical frame")
    if protocol == "paper":
        selected = select_variables(levels, clinical[LABEL_COLUMN], alpha)
    elif protocol == "strict":
        if train_ids is None:
            raise ValueError("protocol 'strict' needs train_ids (the patients of the training fold)")
        selected = select_variables(levels[in_train], clinical[LABEL_COLUMN][in_train], alpha, on_single_level="skip")
    else:
        raise ValueError(f"protocol must be 'paper' or 'strict', got {protocol!r}")
    if not selected:
        raise ValueError(f"no clinical variable has chi-squared p < {alpha} (protocol {protocol!r})")
    return _fold_matrix(levels, selected, in_train)


# ---------------------------------------------------------------------------------------
# The clinical model: random forest on the binary clinical vector (and a regression beside it)
# ---------------------------------------------------------------------------------------

#: ``n_estimators``: the study's setting (``study_run.StudySettings``); a run passes its own.
RF_PARAMS = {"n_estimators": DEFAULT_SETTINGS.n_estimators, "max_features": "sqrt", "min_samples_leaf": 1, "bootstrap": True, "n_jobs": 1}


def make_clinical_rf(seed: int, **params):
    """The paper's "clinical model (RF)": ``RandomForestClassifier`` with :data:`RF_PARAMS`.

    The paper names only the method; these are scikit-learn's defaults with 500 trees.
    One job: with threads the summed tree probabilities can differ in the last bits from
    run to run, and the study's predictions are meant to be bit-reproducible.
    """
    from sklearn.ensemble import RandomForestClassifier

    settings = {**RF_PARAMS, **params}
    return RandomForestClassifier(random_state=seed, **settings)


#: Inverse L2 penalty of :func:`make_clinical_lr`, chosen on the development cohorts 3, 4, 5 and 8-11
#: (pooled patient AUC over the shared 10 folds, mean over the seven): 0.712 at C = 0.01, 0.701 at 0.1,
#: 0.691 at 1, where the forest reaches 0.621 (README, "A forest or a regression on the clinical vector").
CLINICAL_LR_C = 0.01
#: The classifiers of the clinical model: the paper's forest, and a logistic regression beside it.
CLINICAL_CLASSIFIERS = ("rf", "lr")


def make_clinical_lr():
    """A logistic regression on the standardised clinical bits (L2, ``C`` = :data:`CLINICAL_LR_C`).

    Not the paper's clinical model: the paper reports the forest and writes that "random forest
    performs best in clinical models" without the others' figures; this is the standard model
    of clinical prediction beside it, on the same vector and folds (``clinical_lr``).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=CLINICAL_LR_C, max_iter=1000))


def cross_validate_clinical(
    clinical: pd.DataFrame,
    folds: pd.DataFrame,
    protocol: str = "paper",
    seed: int = 2020,
    alpha: float = DEFAULT_SETTINGS.alpha,
    classifier: str = "rf",
    **rf_params,
) -> tuple[pd.DataFrame, dict[int, list[str]]]:
    """Out-of-fold predictions of the clinical model on the shared folds.

    Args:
        clinical: raw clinical frame (``patient_id``, ``early_recurrence``, 17 variables).
        folds: ``patient_id, y_true, fold`` from ``evaluation.load_or_make_folds``.
        protocol: ``"paper"`` (selection once on the whole cohort) or ``"strict"``
            (selection refit on each training fold); see :func:`clinical_matrix`.
        classifier: ``"rf"``, the paper's random forest (:func:`make_clinical_rf`, with
            ``rf_params``), or ``"lr"``, a logistic regression (:func:`make_clinical_lr`).

    Returns:
        The predictions frame (``patient_id, slice, fold, y_true, y_prob``; ``slice``
        empty: a patient-level model) and the bit names used in each fold.
    """
    if classifier not in CLINICAL_CLASSIFIERS:
        raise ValueError(f"classifier must be one of {CLINICAL_CLASSIFIERS}, got {classifier!r}")
    if classifier == "lr" and rf_params:
        raise ValueError(f"the logistic regression takes no forest settings, got {sorted(rf_params)}")
    ids = clinical["patient_id"].astype(str).to_numpy()
    from hccer_lib.evaluation import fold_of

    fold = fold_of(folds, ids)
    y = clinical[LABEL_COLUMN].to_numpy(dtype=int)
    if protocol == "paper":
        levels = binarise(clinical)
        selected = select_variables(levels, clinical[LABEL_COLUMN], alpha)
        if not selected:
            raise ValueError(f"no clinical variable has chi-squared p < {alpha} (protocol 'paper')")
    prob = np.full(len(ids), np.nan)
    names_per_fold = {}
    for k in sorted(np.unique(fold)):
        test = fold == k
        if protocol == "paper":  # selected once; missing values imputed from the training fold
            matrix, names = _fold_matrix(levels, selected, ~test)
        else:
            matrix, names = clinical_matrix(clinical, protocol, train_ids=ids[~test], alpha=alpha)
        model = make_clinical_rf(seed, **rf_params) if classifier == "rf" else make_clinical_lr()
        model.fit(matrix[~test], y[~test])
        prob[test] = model.predict_proba(matrix[test])[:, 1]
        names_per_fold[int(k)] = names
    frame = pd.DataFrame({"patient_id": ids, "slice": pd.array([pd.NA] * len(ids), dtype="Int64"),
                          "fold": fold.astype(int), "y_true": y, "y_prob": prob})
    return frame, names_per_fold
