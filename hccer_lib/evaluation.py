"""Evaluation shared by every model: folds, out-of-fold predictions, metrics, comparisons.

Every model of the study is evaluated on the same folds (10-fold cross-validation split by
patient, stratified by label, computed once per cohort, seed and number of folds) and
writes its out-of-fold predictions to ``<results_dir>/predictions/<model>.csv`` (the run's
results folder, ``StudyRun.results_dir``: ``data/<cohort>/results/<profile>``)::

    patient_id, slice, fold, y_true, y_prob[, train_seed][, roi_area_mm2]   (slice empty for patient-level models)

A network trained with several initialisation seeds keeps every seed's out-of-fold
predictions in one file, told apart by ``train_seed``. Slice-level models give each slice's
tumour area (``roi_area_mm2``), and a patient's probability is the mean of its slices'
weighted by it (:func:`patient_level`, :func:`area_weighted_mean`): the slices that cut
through the tumour count more than those that graze its edge. Unless said otherwise a
statistic uses the **seed ensemble**: that mean per patient over slices and seeds;
:func:`seed_aucs` gives the pooled AUC of each seed alone, whose spread is the training noise.

Everything statistical is computed from those files:

* accuracy (threshold 0.5) and AUC per fold, mean ± SD over folds, at **patient level** for
  every model (slice probabilities averaged per patient, weighted by area): the primary per-fold metrics, the
  same level for the networks, the radiomics model and the clinical forest, so they can be
  compared; for slice-level models also on the slice rows (``slice_*``), kept as the paper's
  form (inferred: the paper does not say at which level its fold metrics are), never set
  beside another model's patient-level metrics;
* the pooled patient-level AUC with a 95% bootstrap confidence interval over patients;
* the DeLong test of two correlated AUCs (same patients), fast algorithm of Sun & Xu (2014),
  with a paired bootstrap confidence interval of the AUC difference (patients resampled);
* Brier score, calibration intercept (slope fixed at 1, ``logit(p)`` an offset) and calibration
  slope (free fit), reliability curve, decision curve (net benefit).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from hccer_lib import outputs
from hccer_lib.models import PAPER_TABLE_ROWS, REGISTRY, paper_values

PREDICTION_COLUMNS = ["patient_id", "slice", "fold", "y_true", "y_prob"]
#: The optional column of a network trained with several seeds: the seed of the row's network.
SEED_COLUMN = "train_seed"
#: The optional column of slice-level predictions: the tumour's area in the slice, mm² (the
#: reference phase's ROI box, ``preprocessing.ProcessedDataset.roi_area_mm2``). Where present, a
#: patient's probability is the slices' mean weighted by it (:func:`patient_level`).
AREA_COLUMN = "roi_area_mm2"
FOLD_COLUMNS = ["patient_id", "y_true", "fold"]
#: Columns of the comparison files (``model_comparisons*.csv`` in the run's figures folder): the DeLong test, then the paired bootstrap
#: 95% interval of ``auc_a - auc_b`` (patients resampled with ``n_bootstrap`` and ``bootstrap_seed``).
#: The DeLong test and the bootstrap compare the seed ensembles and are conditional on the fitted
#: models; the ``seed_*`` columns give the difference of the pooled patient AUCs over training
#: seeds (paired by seed where both models have it): its mean, SD, the number of seed pairs and
#: the fraction of them in which model_a was better. A model without seeds counts as one seed.
SEED_COMPARISON_COLUMNS = ("seed_difference_mean", "seed_difference_sd", "n_seed_pairs", "seed_fraction_a_better")
COMPARISON_COLUMNS = ["model_a", "model_b", "auc_a", "auc_b", "p_value",
                      "auc_difference", "difference_ci_low", "difference_ci_high", "n_patients",
                      "n_bootstrap", "bootstrap_seed", *SEED_COMPARISON_COLUMNS]
#: Every comparison of a run, assembled by notebook 08 (:func:`assemble_comparisons`) from the
#: notebooks' own files and its own rows; each file has one writer.
COMPARISONS_FILE = "model_comparisons.csv"
#: The comparisons each earlier notebook records (:func:`record_comparison`), one file per notebook.
NOTEBOOK_COMPARISON_FILES = {
    "01_select_clinical": "model_comparisons_clinical.csv",
    "04_deep_model": "model_comparisons_deep.csv",
    "05_fusion_models": "model_comparisons_fusion.csv",
    "06_joint_loss": "model_comparisons_joint_loss.csv",
}

#: The columns of :func:`summarise_model` that the results tables show, in order.
RESULT_SUMMARY_COLUMNS = ("level", "n_patients", "accuracy_mean", "accuracy_sd", "auc_mean", "auc_sd", "pooled_auc",
                          "pooled_auc_ci_low", "pooled_auc_ci_high", "n_train_seeds", "seed_auc_mean", "seed_auc_sd",
                          "slice_accuracy_mean", "slice_accuracy_sd", "slice_auc_mean", "slice_auc_sd")
#: What the ``slice_*`` columns are, in every table and note that shows them.
SLICE_LEVEL_LABEL = "the paper's form (inferred: the paper does not say)"
TABLE_FILES = {"table3": "table3_radiomics_vs_deep", "table4": "table4_fusion", "table5": "table5_joint_loss"}
#: The partial tables that the notebooks before a table's own write (each file has one writer):
#: notebook 01 the clinical rows of Table 4, notebook 03 the radiomics row of Table 3; the full
#: tables (:data:`TABLE_FILES`) are written by notebooks 04 (Table 3), 05 (Table 4) and 06 (Table 5).
PARTIAL_TABLE_FILES = {"table3": "table3_radiomics", "table4": "table4_clinical"}
TABLE_TITLES = {
    "table3": "Table 3: conventional radiomics model vs deep learning model",
    "table4": "Table 4: deep learning model, clinical model and fusion models A-D",
    "table5": "Table 5: fusion model D with and without the joint loss",
}


# ---------------------------------------------------------------------------------------
# Folds
# ---------------------------------------------------------------------------------------


def make_folds(labels: pd.Series, n_folds: int, seed: int) -> pd.DataFrame:
    """Split patients into ``n_folds`` folds stratified by label (the paper's Table 2).

    With the paper's 65 ER and 102 NER patients and 10 folds, every test fold holds 6-7 ER
    and 10-11 NER patients. The split depends only on the patients, their labels and the
    seed, not on the order of ``labels`` (patients are sorted by id first).

    Args:
        labels: 0/1 early recurrence, indexed by ``patient_id``.
        n_folds: number of folds (≥ 2).
        seed: shuffling seed.

    Returns:
        ``patient_id`` (str), ``y_true``, ``fold`` (0 .. n_folds-1), sorted by patient_id.

    Raises:
        ValueError: duplicate patients, labels not 0/1, or a class with fewer patients than
        folds (a test fold would lack that class and its AUC would be undefined).
    """
    from sklearn.model_selection import StratifiedKFold

    if n_folds < 2:
        raise ValueError(f"n_folds must be at least 2, got {n_folds}")
    labels = pd.Series(labels)
    labels.index = labels.index.astype(str)
    if labels.index.duplicated().any():
        raise ValueError(f"duplicate patient_id in labels: {labels.index[labels.index.duplicated()][:3].tolist()}")
    y = pd.to_numeric(labels, errors="coerce")
    if not y.isin([0, 1]).all():
        raise ValueError("labels must be 0/1 (early recurrence)")
    y = y.astype(int).sort_index()
    for cls, name in ((1, "ER"), (0, "NER")):
        count = int((y == cls).sum())
        if count < n_folds:
            raise ValueError(f"only {count} {name} patients (label {cls}) for {n_folds} folds: every test fold needs one")
    fold = np.empty(len(y), dtype=int)
    splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    for k, (_, test) in enumerate(splitter.split(np.zeros(len(y)), y.to_numpy())):
        fold[test] = k
    return pd.DataFrame({"patient_id": y.index.to_numpy(dtype=str), "y_true": y.to_numpy(), "fold": fold})


def folds_path(work_dir: str | os.PathLike, n_folds: int, seed: int) -> Path:
    """``<work_dir>/folds_<n_folds>_seed<seed>.csv``: the folds of one fold count and seed."""
    return Path(work_dir) / f"folds_{int(n_folds)}_seed{int(seed)}.csv"


def load_or_make_folds(work_dir: str | os.PathLike, clinical: pd.DataFrame, n_folds: int, seed: int) -> pd.DataFrame:
    """The cohort's folds from ``work_dir/folds_<n_folds>_seed<seed>.csv`` (:func:`folds_path`), made when absent or stale.

    The file is keyed by the fold count and the seed, so that runs with other ones (another
    profile, ``--seed``) keep their own; it also holds ``n_folds`` and ``seed`` and is rebuilt
    (and a line says so) when the patients or their labels differ from the request. Every
    model of a run reads the same file, so that every comparison of models is paired.

    Args:
        clinical: frame with ``patient_id`` and ``early_recurrence``.

    Returns:
        ``patient_id, y_true, fold`` as :func:`make_folds`.
    """
    path = folds_path(work_dir, n_folds, seed)
    labels = pd.Series(clinical["early_recurrence"].to_numpy(), index=clinical["patient_id"].astype(str))
    wanted = make_folds(labels, n_folds, seed)
    if path.exists():
        saved = pd.read_csv(path, dtype={"patient_id": str})
        same_key = (
            set(saved.columns) >= {*FOLD_COLUMNS, "n_folds", "seed"}
            and (saved["n_folds"] == n_folds).all()
            and (saved["seed"] == seed).all()
        )
        if same_key and saved[FOLD_COLUMNS].reset_index(drop=True).equals(wanted):
            return wanted
        print(f"hccer: folds in {path} are for other settings or patients; rebuilding", flush=True)
    outputs.write_csv(path, wanted.assign(n_folds=n_folds, seed=seed))
    return wanted


# ---------------------------------------------------------------------------------------
# Prediction files
# ---------------------------------------------------------------------------------------


def fold_of(folds: pd.DataFrame, patient_ids) -> np.ndarray:
    """The fold of each of ``patient_ids`` (``[n]`` ints), from a ``load_or_make_folds`` frame.

    Raises:
        ValueError: a patient that has no fold, named, with the count of such patients.
    """
    lookup = dict(zip(folds["patient_id"].astype(str), folds["fold"].astype(int), strict=True))
    ids = [str(p) for p in patient_ids]
    missing = sorted(set(ids) - set(lookup))
    if missing:
        raise ValueError(f"patient {missing[0]} has no fold ({len(missing)} such patients): "
                         "the folds were made for another cohort")
    return np.array([lookup[p] for p in ids], dtype=int)


def _check_model_name(model: str) -> None:
    if not re.fullmatch(r"[a-z0-9][a-z0-9_]*", model):
        raise ValueError(f"model name {model!r}: use lower-case letters, digits and underscores")


def validate_predictions(frame: pd.DataFrame, model: str = "predictions") -> pd.DataFrame:
    """The predictions frame with normalised types; ``ValueError`` says what is wrong.

    Checks: the five columns (and ``train_seed`` and ``roi_area_mm2``, kept when present; an
    area column without a value, as in a table of several models' rows, is dropped), y_true
    0/1, y_prob finite in [0, 1], areas finite and > 0, one fold and one label per
    patient, no duplicate (patient_id, slice, train_seed), and every seed predicting the same rows.
    """
    missing = [c for c in PREDICTION_COLUMNS if c not in frame]
    if missing:
        raise ValueError(f"{model}: missing columns {missing}; need {PREDICTION_COLUMNS}")
    seeded = SEED_COLUMN in frame
    with_area = AREA_COLUMN in frame and frame[AREA_COLUMN].notna().any()  # an empty column: a patient-level model's rows
    out = frame[PREDICTION_COLUMNS + ([SEED_COLUMN] if seeded else []) + ([AREA_COLUMN] if with_area else [])].copy()
    if len(out) == 0:
        raise ValueError(f"{model}: no predictions")
    if AREA_COLUMN in out:
        area = pd.to_numeric(out[AREA_COLUMN], errors="coerce").astype(float)
        bad = ~np.isfinite(area) | (area <= 0)
        if bad.any():
            row = out[bad].iloc[0]
            raise ValueError(f"{model}: {AREA_COLUMN} must be > 0; patient {row['patient_id']}, slice {row['slice']} "
                             f"has {row[AREA_COLUMN]!r}")
        out[AREA_COLUMN] = area
    out["patient_id"] = out["patient_id"].astype(str)
    out["slice"] = pd.to_numeric(out["slice"], errors="raise").astype("Int64")
    out["fold"] = pd.to_numeric(out["fold"], errors="raise").astype(int)
    if seeded:
        out[SEED_COLUMN] = pd.to_numeric(out[SEED_COLUMN], errors="raise").astype(int)
    y_true = pd.to_numeric(out["y_true"], errors="coerce")
    if not y_true.isin([0, 1]).all():
        raise ValueError(f"{model}: y_true must be 0/1, got {sorted(set(out['y_true']) - {0, 1})[:5]}")
    out["y_true"] = y_true.astype(int)
    y_prob = pd.to_numeric(out["y_prob"], errors="coerce").astype(float)
    bad = ~np.isfinite(y_prob) | (y_prob < 0) | (y_prob > 1)
    if bad.any():
        row = out[bad].iloc[0]
        raise ValueError(f"{model}: y_prob must be in [0, 1]; patient {row['patient_id']} has {row['y_prob']!r}")
    out["y_prob"] = y_prob
    per_patient = out.groupby("patient_id")[["fold", "y_true"]].nunique()
    inconsistent = per_patient[(per_patient > 1).any(axis=1)]
    if len(inconsistent):
        raise ValueError(f"{model}: patient {inconsistent.index[0]} has more than one fold or label")
    row_key = ["patient_id", "slice"] + ([SEED_COLUMN] if seeded else [])
    if out.duplicated(row_key).any():
        row = out[out.duplicated(row_key)].iloc[0]
        seed_text = f", train seed {row[SEED_COLUMN]}" if seeded else ""
        raise ValueError(f"{model}: duplicate row for patient {row['patient_id']}, slice {row['slice']}{seed_text}")
    if seeded:
        rows_per_seed = out.groupby(SEED_COLUMN).size()
        if rows_per_seed.nunique() > 1:
            raise ValueError(f"{model}: the training seeds predict different numbers of rows {rows_per_seed.to_dict()}")
    return out


def seed_ensemble(frame: pd.DataFrame) -> pd.DataFrame:
    """The mean probability of each row (patient, slice) over training seeds, without ``train_seed``.

    A frame without ``train_seed`` comes back validated and otherwise unchanged.
    """
    frame = validate_predictions(frame)
    if SEED_COLUMN not in frame:
        return frame
    area = [AREA_COLUMN] if AREA_COLUMN in frame else []  # a slice's area is the same for every seed
    keys = ["patient_id", "slice", "fold", "y_true", *area]
    return frame.groupby(keys, as_index=False, dropna=False, sort=False)["y_prob"].mean()[PREDICTION_COLUMNS + area]


def seed_frames(frame: pd.DataFrame) -> dict[int | None, pd.DataFrame]:
    """``{train_seed: that seed's rows}``; ``{None: frame}`` for a frame without seeds."""
    frame = validate_predictions(frame)
    if SEED_COLUMN not in frame:
        return {None: frame}
    return {int(s): part.drop(columns=SEED_COLUMN) for s, part in frame.groupby(SEED_COLUMN)}


def seed_aucs(frame: pd.DataFrame) -> dict[int | None, float]:
    """Pooled patient-level AUC of each training seed alone (``{None: auc}`` without seeds)."""
    aucs = {}
    for seed, part in seed_frames(frame).items():
        patients = patient_level(part)
        aucs[seed] = auc(patients["y_true"], patients["y_prob"])
    return aucs


def predictions_path(work_dir: str | os.PathLike, model: str) -> Path:
    """``<work_dir>/predictions/<model>.csv``; a run passes its results folder (``StudyRun.results_dir``) as ``work_dir``."""
    _check_model_name(model)
    return Path(work_dir) / "predictions" / f"{model}.csv"


def write_predictions(work_dir: str | os.PathLike, model: str, frame: pd.DataFrame) -> Path:
    """Validate and write a model's out-of-fold predictions (atomic); returns the path."""
    frame = validate_predictions(frame, model)
    return outputs.write_csv(predictions_path(work_dir, model), frame)


def read_predictions(work_dir: str | os.PathLike, model: str) -> pd.DataFrame:
    """A model's predictions frame; ``FileNotFoundError`` names the missing file."""
    path = predictions_path(work_dir, model)
    if not path.exists():
        raise FileNotFoundError(f"no predictions for model {model!r}: {path} does not exist (run its notebook first)")
    return validate_predictions(pd.read_csv(path, dtype={"patient_id": str}), model)


def area_weighted_mean(probabilities, areas) -> float:
    """The slices' probabilities averaged with weights proportional to the tumour's area in each slice.

    A patient's slices do not show the tumour equally: the first and last cut its edge, a few
    pixels of it resized to the whole image. Weighting each slice by the tumour's cross-section
    (mm², or any unit: only the ratios count) lets the slices that show most of it count most.
    Chosen on development cohorts only (docs/cpu_recipe.md).
    """
    probabilities, areas = np.asarray(probabilities, dtype=float), np.asarray(areas, dtype=float)
    return float(np.sum(probabilities * areas) / np.sum(areas))


def patient_level(frame: pd.DataFrame, how: str = "mean") -> pd.DataFrame:
    """One row per patient: slice probabilities aggregated by ``how`` (mean, median, max).

    ``mean`` weights each slice by the tumour's area in it (:func:`area_weighted_mean`) when the
    frame has ``roi_area_mm2``, and counts every slice alike otherwise. With ``train_seed``,
    the slices of every seed are aggregated together: with ``mean``, the seed ensemble's
    patient probability.

    Returns:
        ``patient_id, fold, y_true, y_prob`` sorted by patient_id; a patient-level frame
        comes back unchanged (one row per patient).
    """
    if how not in ("mean", "median", "max"):
        raise ValueError(f"how must be 'mean', 'median' or 'max', got {how!r}")
    frame = validate_predictions(frame)
    keys = ["patient_id", "fold", "y_true"]
    if how == "mean" and AREA_COLUMN in frame:
        weighted = frame.assign(y_prob=frame["y_prob"] * frame[AREA_COLUMN])
        sums = weighted.groupby(keys, as_index=False)[["y_prob", AREA_COLUMN]].sum()
        grouped = sums.assign(y_prob=sums["y_prob"] / sums[AREA_COLUMN])
    else:
        grouped = frame.groupby(keys, as_index=False)["y_prob"].agg(how)
    return grouped[["patient_id", "fold", "y_true", "y_prob"]].sort_values("patient_id").reset_index(drop=True)


# ---------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------


def accuracy(y_true, y_prob, threshold: float = 0.5) -> float:
    """Fraction of correct calls when ``y_prob >= threshold`` is called ER."""
    y_true, y_prob = np.asarray(y_true), np.asarray(y_prob)
    return float(np.mean((y_prob >= threshold).astype(int) == y_true))


def _midrank(x: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return rankdata(x, method="average")


def _delong_components(y_true, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AUCs ``[k]`` and structural components V10 ``[k, m]``, V01 ``[k, n]`` by midranks.

    ``probs`` is ``[k, n_patients]`` (k classifiers); m positives, n negatives.
    Sun & Xu (2014): V10_i = (Tz_i - Tx_i) / n, V01_j = 1 - (Tz_j - Ty_j) / m, where Tz, Tx,
    Ty are midranks in the pooled sample, among positives and among negatives.
    """
    y_true = np.asarray(y_true).astype(int)
    probs = np.atleast_2d(np.asarray(probs, dtype=float))
    positive, negative = probs[:, y_true == 1], probs[:, y_true == 0]
    m, n = positive.shape[1], negative.shape[1]
    if m == 0 or n == 0:
        raise ValueError(f"AUC undefined: {m} positive and {n} negative patients")
    aucs, v10, v01 = [], [], []
    for pos, neg in zip(positive, negative, strict=True):
        tz = _midrank(np.concatenate([pos, neg]))
        tx, ty = _midrank(pos), _midrank(neg)
        aucs.append((tz[:m].sum() - m * (m + 1) / 2) / (m * n))
        v10.append((tz[:m] - tx) / n)
        v01.append(1.0 - (tz[m:] - ty) / m)
    return np.array(aucs), np.array(v10), np.array(v01)


def delong_covariance(y_true, probs) -> tuple[np.ndarray, np.ndarray]:
    """AUCs ``[k]`` and their DeLong covariance ``[k, k]`` for ``probs [k, n_patients]``."""
    aucs, v10, v01 = _delong_components(y_true, probs)
    m, n = v10.shape[1], v01.shape[1]
    s10 = np.atleast_2d(np.cov(v10)) if m > 1 else np.zeros((len(aucs), len(aucs)))
    s01 = np.atleast_2d(np.cov(v01)) if n > 1 else np.zeros((len(aucs), len(aucs)))
    return aucs, s10 / m + s01 / n


def delong_test(y_true, prob_a, prob_b) -> tuple[float, float, float]:
    """DeLong test of two correlated AUCs (the same patients): ``(auc_a, auc_b, p_value)``.

    Two-sided p-value of z = (auc_a - auc_b) / sqrt(Var(auc_a - auc_b)). Identical
    predictions give p = 1.
    """
    from scipy.stats import norm

    aucs, cov = delong_covariance(y_true, np.vstack([prob_a, prob_b]))
    difference = aucs[0] - aucs[1]
    variance = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    if variance <= 1e-15:
        p_value = 1.0 if abs(difference) < 1e-12 else 0.0
    else:
        p_value = float(2 * norm.sf(abs(difference) / np.sqrt(variance)))
    return float(aucs[0]), float(aucs[1]), p_value


def auc(y_true, y_prob) -> float:
    """Area under the ROC curve (Mann-Whitney U / (m n)); ``ValueError`` if a class is absent."""
    return float(_delong_components(y_true, np.asarray(y_prob)[None, :])[0][0])


def bootstrap_auc_ci(
    y_true, y_prob, n_bootstrap: int = 1000, seed: int = 2020, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the AUC, resampling rows (patients).

    Resamples with a single class are drawn again (counted against 10 × n_bootstrap tries).
    """
    y_true, y_prob = np.asarray(y_true).astype(int), np.asarray(y_prob, dtype=float)
    rng = np.random.default_rng(seed)
    values: list[float] = []
    tries = 0
    while len(values) < n_bootstrap and tries < 10 * n_bootstrap:
        tries += 1
        index = rng.integers(0, len(y_true), len(y_true))
        if 0 < y_true[index].sum() < len(index):
            values.append(auc(y_true[index], y_prob[index]))
    if not values:
        raise ValueError("bootstrap: no resample holds both classes")
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def bootstrap_auc_difference_ci(
    y_true, prob_a, prob_b, n_bootstrap: int = 1000, seed: int = 2020, level: float = 0.95
) -> tuple[float, float]:
    """Paired percentile bootstrap interval of ``AUC(prob_a) - AUC(prob_b)`` on the same patients.

    Each resample draws patients (rows) with replacement and computes both AUCs on the same
    drawn patients, so the correlation of two models scored on one cohort is kept (the
    bootstrap counterpart of :func:`delong_test`). Resamples with a single class are drawn
    again (counted against 10 × n_bootstrap tries).

    Args:
        y_true: ``[n]`` 0/1 labels; prob_a, prob_b: ``[n]`` probabilities of the two models
            for the same patients in the same order.
        n_bootstrap: number of resamples kept; seed: seed of the resampling.
        level: coverage of the interval.

    Returns:
        ``(low, high)`` of the difference ``auc_a - auc_b``.

    Raises:
        ValueError: arrays of different lengths, or no resample holding both classes.
    """
    from scipy.stats import rankdata

    y_true = np.asarray(y_true).astype(int)
    probs = np.vstack([np.asarray(prob_a, dtype=float), np.asarray(prob_b, dtype=float)])
    if probs.shape[1] != len(y_true):
        raise ValueError(f"y_true has {len(y_true)} patients but the predictions {probs.shape[1]}")
    if n_bootstrap < 1:
        raise ValueError(f"n_bootstrap must be at least 1, got {n_bootstrap}")
    rng = np.random.default_rng(seed)
    n = len(y_true)
    differences: list[np.ndarray] = []
    kept = drawn = 0
    while kept < n_bootstrap and drawn < 10 * n_bootstrap:
        batch = min(n_bootstrap - kept, 10 * n_bootstrap - drawn)
        index = rng.integers(0, n, (batch, n))  # one resample of the patients per row
        drawn += batch
        y = y_true[index]
        m = y.sum(axis=1)
        both = (m > 0) & (m < n)
        index, y, m = index[both], y[both], m[both]
        # Mann-Whitney AUC of each resample from midranks (ties count 1/2), as auc()
        aucs = [((rankdata(p[index], axis=1) * y).sum(axis=1) - m * (m + 1) / 2) / (m * (n - m)) for p in probs]
        differences.append(aucs[0] - aucs[1])
        kept += int(both.sum())
    if kept == 0:
        raise ValueError("bootstrap: no resample holds both classes")
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(np.concatenate(differences), [tail, 100 - tail])
    return float(low), float(high)


def fold_metrics(frame: pd.DataFrame) -> pd.DataFrame:
    """Accuracy (threshold 0.5) and AUC of each fold, on the rows as given.

    For a slice-level model pass :func:`patient_level` of its rows (the study's primary,
    patient-level fold metrics) or the slice rows (the paper's form, inferred); the two
    levels are never compared with each other (:func:`fold_table` gives both). Rows of
    several training seeds are averaged per row first (:func:`seed_ensemble`).

    Returns:
        ``fold, n, n_er, accuracy, auc`` (accuracy as a fraction).

    Raises:
        ValueError: naming the fold, when a fold has a single class (AUC undefined).
    """
    frame = seed_ensemble(frame) if "slice" in frame else frame
    rows = []
    for fold, part in frame.groupby("fold"):
        n_er = int(part["y_true"].sum())
        if n_er in (0, len(part)):
            cls = "ER" if n_er == 0 else "NER"
            raise ValueError(f"fold {fold}: no {cls} case among its {len(part)} rows, so its AUC is undefined")
        rows.append({"fold": int(fold), "n": len(part), "n_er": n_er,
                     "accuracy": accuracy(part["y_true"], part["y_prob"]), "auc": auc(part["y_true"], part["y_prob"])})
    return pd.DataFrame(rows)


def fold_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per-fold metrics at patient level, and for a slice-level model also on its slice rows.

    Returns:
        ``fold, n_patients, n_er, accuracy, auc`` (:func:`fold_metrics` of
        :func:`patient_level`: the seed ensemble's mean probability per patient; the
        primary per-fold metrics of every model), then ``n_slices, slice_accuracy,
        slice_auc`` (:func:`fold_metrics` of the slice rows: the paper's form, inferred;
        NaN for a patient-level model).
    """
    frame = validate_predictions(frame)
    table = fold_metrics(patient_level(frame)).rename(columns={"n": "n_patients"})
    if frame["slice"].notna().any():
        slices = fold_metrics(frame).rename(columns={"n": "n_slices", "accuracy": "slice_accuracy", "auc": "slice_auc"})
        table = table.merge(slices.drop(columns="n_er"), on="fold", how="left")
    else:
        table = table.assign(n_slices=pd.NA, slice_accuracy=np.nan, slice_auc=np.nan)
    table["n_slices"] = table["n_slices"].astype("Int64")
    return table


def summarise_model(frame: pd.DataFrame, n_bootstrap: int = 1000, seed: int = 2020) -> dict:
    """A model's summary: per-fold and pooled, at patient level; the slice-level fold metrics beside.

    Returns:
        ``level`` ("slice" or "patient": the rows the model predicts), ``n_patients``,
        ``n_rows``, ``accuracy_mean``, ``accuracy_sd`` (percent), ``auc_mean``, ``auc_sd``
        (mean and SD over folds, ddof=1, of the per-fold metrics at patient level: slice
        probabilities averaged per patient; the same level for every model),
        ``pooled_auc`` (all out-of-fold patients together), ``pooled_auc_ci_low``,
        ``pooled_auc_ci_high`` (95% percentile bootstrap over patients), ``brier``
        (patient level), ``n_train_seeds``, ``seed_auc_mean``, ``seed_auc_sd`` (the
        pooled patient AUC of each training seed alone: mean and SD over seeds, SD NaN
        for one seed), ``slice_accuracy_mean``, ``slice_accuracy_sd``, ``slice_auc_mean``,
        ``slice_auc_sd`` (the per-fold metrics on the slice rows of a slice-level model,
        :data:`SLICE_LEVEL_LABEL`; NaN for a patient-level model: never to be compared
        with another model's patient-level values). With several training seeds every
        entry but ``seed_*`` is the seed ensemble's (mean probability over seeds).
    """
    frame = validate_predictions(frame)
    patients = patient_level(frame)
    per_seed = pd.Series(seed_aucs(frame))
    per_fold = fold_table(frame)
    low, high = bootstrap_auc_ci(patients["y_true"], patients["y_prob"], n_bootstrap, seed)
    slice_level = per_fold["slice_auc"].notna().any()
    summary = {
        "level": "slice" if slice_level else "patient",
        "n_patients": len(patients),
        "n_rows": len(seed_ensemble(frame)),
        "accuracy_mean": 100 * per_fold["accuracy"].mean(),
        "accuracy_sd": 100 * per_fold["accuracy"].std(ddof=1),
        "auc_mean": per_fold["auc"].mean(),
        "auc_sd": per_fold["auc"].std(ddof=1),
        "pooled_auc": auc(patients["y_true"], patients["y_prob"]),
        "pooled_auc_ci_low": low,
        "pooled_auc_ci_high": high,
        "brier": brier_score(patients["y_true"], patients["y_prob"]),
        "n_train_seeds": len(per_seed),
        "seed_auc_mean": per_seed.mean(),
        "seed_auc_sd": per_seed.std(ddof=1) if len(per_seed) > 1 else float("nan"),
        "slice_accuracy_mean": 100 * per_fold["slice_accuracy"].mean() if slice_level else float("nan"),
        "slice_accuracy_sd": 100 * per_fold["slice_accuracy"].std(ddof=1) if slice_level else float("nan"),
        "slice_auc_mean": per_fold["slice_auc"].mean() if slice_level else float("nan"),
        "slice_auc_sd": per_fold["slice_auc"].std(ddof=1) if slice_level else float("nan"),
    }
    return {k: (v if isinstance(v, str) else float(v) if not isinstance(v, int) else v) for k, v in summary.items()}


#: Probabilities are clipped to [CALIBRATION_CLIP, 1 - CALIBRATION_CLIP] before their logit is taken.
CALIBRATION_CLIP = 1e-6
#: Largest |intercept| searched for the calibration-in-the-large (logit units).
INTERCEPT_BOUND = 50.0


def clipped_logit(y_prob) -> np.ndarray:
    """``log(p / (1 - p))`` of probabilities clipped to ``[CALIBRATION_CLIP, 1 - CALIBRATION_CLIP]``."""
    p = np.clip(np.asarray(y_prob, dtype=float), CALIBRATION_CLIP, 1 - CALIBRATION_CLIP)
    return np.log(p / (1 - p))


def calibration_intercept(y_true, y_prob) -> float:
    """Calibration-in-the-large: ``a`` of ``logit P(ER) = a + logit(p)`` (slope fixed at 1).

    The maximum-likelihood ``a`` with ``logit(p)`` as an offset (Van Calster et al., J Clin
    Epidemiol 2016; Van Calster et al., BMC Med 2019): the root of ``sum(y) =
    sum(expit(logit(p) + a))``. It is 0 when the predicted risks match the observed rate on
    average, negative when they are too high. It is *not* the intercept of the free fit of
    :func:`calibration_slope`, which depends on the slope. Probabilities are clipped to
    ``[CALIBRATION_CLIP, 1 - CALIBRATION_CLIP]``. NaN when one class is absent.
    """
    from scipy.optimize import brentq
    from scipy.special import expit

    y = np.asarray(y_true, dtype=float)
    offset = clipped_logit(y_prob)
    if len(y) == 0 or y.sum() in (0, len(y)):
        return float("nan")
    return float(brentq(lambda a: y.sum() - expit(offset + a).sum(), -INTERCEPT_BOUND, INTERCEPT_BOUND, xtol=1e-12))


def calibration_slope(y_true, y_prob) -> float:
    """Calibration slope: ``b`` of ``logit P(ER) = a + b · logit(p)``, both fitted (unpenalised).

    1 when calibrated; below 1 when the predictions are too extreme, above 1 when too timid.
    NaN when one class is absent or every prediction is the same.
    """
    from sklearn.linear_model import LogisticRegression

    y = np.asarray(y_true, dtype=int)
    x = clipped_logit(y_prob)
    if len(y) == 0 or y.sum() in (0, len(y)) or np.ptp(x) == 0:
        return float("nan")
    fit = LogisticRegression(C=np.inf, tol=1e-10, max_iter=10_000).fit(x[:, None], y)
    return float(fit.coef_[0, 0])


def brier_score(y_true, y_prob) -> float:
    """Mean squared difference between probability and 0/1 outcome."""
    y_true, y_prob = np.asarray(y_true, dtype=float), np.asarray(y_prob, dtype=float)
    return float(np.mean((y_prob - y_true) ** 2))


def reliability_curve(y_true, y_prob, n_bins: int = 10) -> pd.DataFrame:
    """Observed ER fraction against mean predicted probability in equal-width bins.

    Bins are ``[0, 1/n_bins), ..., [1 - 1/n_bins, 1]``; empty bins are left out (as
    ``sklearn.calibration.calibration_curve(strategy="uniform")``).

    Returns:
        ``bin_low, bin_high, n, mean_predicted, fraction_positive``.
    """
    y_true, y_prob = np.asarray(y_true, dtype=float), np.asarray(y_prob, dtype=float)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    index = np.clip(np.searchsorted(edges[1:-1], y_prob, side="right"), 0, n_bins - 1)
    rows = []
    for b in range(n_bins):
        inside = index == b
        if inside.any():
            rows.append({"bin_low": edges[b], "bin_high": edges[b + 1], "n": int(inside.sum()),
                         "mean_predicted": float(y_prob[inside].mean()),
                         "fraction_positive": float(y_true[inside].mean())})
    return pd.DataFrame(rows)


def net_benefit(y_true, y_prob, thresholds=None) -> pd.DataFrame:
    """Decision curve: net benefit of treating patients with ``y_prob >= pt``.

    NB(pt) = TP/n - FP/n × pt / (1 - pt); also "treat all" and "treat none" (0).

    Returns:
        ``threshold, net_benefit, treat_all, treat_none``.
    """
    y_true, y_prob = np.asarray(y_true).astype(int), np.asarray(y_prob, dtype=float)
    thresholds = np.arange(0.01, 1.0, 0.01) if thresholds is None else np.asarray(thresholds, dtype=float)
    if np.any((thresholds <= 0) | (thresholds >= 1)):
        raise ValueError("decision-curve thresholds must lie strictly between 0 and 1")
    n = len(y_true)
    prevalence = y_true.mean()
    rows = []
    for pt in thresholds:
        treated = y_prob >= pt
        tp, fp = np.sum(treated & (y_true == 1)), np.sum(treated & (y_true == 0))
        odds = pt / (1 - pt)
        rows.append({"threshold": float(pt), "net_benefit": tp / n - fp / n * odds,
                     "treat_all": prevalence - (1 - prevalence) * odds, "treat_none": 0.0})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------
# Tables beside the paper, and paired comparisons
# ---------------------------------------------------------------------------------------


def _table_models(work_dir: Path, table: str) -> list[str]:
    """The table's models plus their variants that have predictions: the registry's (``variant_of``,
    e.g. ``clinical_lr``) and any other ``<model>_<suffix>`` (``fusion_d_strict``)."""
    registered = {m.name for m in REGISTRY}
    found = sorted(p.stem for p in (work_dir / "predictions").glob("*.csv"))
    models = []
    for base in PAPER_TABLE_ROWS[table]:
        models.append(base)
        models += [m.name for m in REGISTRY if m.variant_of == base and m.name in found]
        models += [m for m in found if m.startswith(base + "_") and m not in registered]
    return models


def results_table(
    work_dir: str | os.PathLike,
    models: list[str] | None = None,
    table: str = "table4",
    n_bootstrap: int = 1000,
    seed: int = 2020,
    cohort: str = "",
) -> pd.DataFrame:
    """The study's results beside the paper's, for the models whose predictions exist.

    Args:
        models: model names; default the paper's models of ``table`` and their variants
            (e.g. ``clinical_rf_strict``). Models without a prediction file are left out.
        table: ``"table3"``, ``"table4"`` or ``"table5"``.
        cohort: text of the ``cohort`` column (e.g. ``"synthetic"``).

    Returns:
        ``model, level, n_patients, accuracy_mean, accuracy_sd`` (percent),
        ``auc_mean, auc_sd`` (per fold at patient level, mean ± SD over folds),
        ``pooled_auc, pooled_auc_ci_low, pooled_auc_ci_high`` (of the seed ensemble for
        networks trained with several seeds), ``n_train_seeds, seed_auc_mean,
        seed_auc_sd`` (pooled patient AUC over training seeds), ``slice_accuracy_mean,
        slice_accuracy_sd, slice_auc_mean, slice_auc_sd`` (per fold on the slice rows of
        a slice-level model: the paper's form, inferred; empty for patient-level
        models), ``paper_accuracy, paper_auc`` (as printed, "76.03±10.0"; empty for
        variants the paper did not run), ``cohort``. See :func:`summarise_model`.
    """
    if table not in PAPER_TABLE_ROWS:
        raise ValueError(f"table must be one of {sorted(PAPER_TABLE_ROWS)}, got {table!r}")
    work_dir = Path(work_dir)
    models = _table_models(work_dir, table) if models is None else list(models)
    rows = []
    for model in models:
        if not predictions_path(work_dir, model).exists():
            continue
        summary = summarise_model(read_predictions(work_dir, model), n_bootstrap, seed)
        paper = paper_values(model)  # the model registry's record of the paper's values
        rows.append({
            "model": model,
            **{k: summary[k] for k in RESULT_SUMMARY_COLUMNS},
            "paper_accuracy": f"{paper.accuracy_mean:.2f}±{paper.accuracy_sd:.1f}" if paper else "",
            "paper_auc": f"{paper.auc_mean:.4f}±{paper.auc_sd:.2f}" if paper else "",
            "cohort": cohort,
        })
    return pd.DataFrame(rows, columns=["model", *RESULT_SUMMARY_COLUMNS, "paper_accuracy", "paper_auc", "cohort"])


def write_results_table(
    figures_dir: str | os.PathLike, table: str, frame: pd.DataFrame, synthetic: bool, stem: str | None = None
) -> tuple[Path, Path]:
    """Write ``<figures_dir>/<stem>.{csv,md}``; the synthetic note heads the Markdown.

    ``stem``: the file's name without suffix; default the table's own (:data:`TABLE_FILES`), a
    notebook that shows part of the table passes its own (:data:`PARTIAL_TABLE_FILES`).
    """
    note = (
        "Accuracy in percent (threshold 0.5) and AUC: mean ± SD over the cross-validation folds (SD with ddof=1), "
        "at patient level for every model (slice probabilities averaged per patient, each slice weighted by the "
        "tumour's area in it), so that the rows compare like with like. Pooled AUC: all out-of-fold patients together, with a 95% bootstrap interval over "
        "patients. Networks trained with several initialisation seeds: every column but seed_* is the seed "
        "ensemble's (mean probability over seeds); seed_auc_mean ± seed_auc_sd is the pooled patient AUC of one "
        "training seed, over seeds (the training noise). slice_*: the same per-fold metrics on the slice rows of "
        f"the slice-level models, {SLICE_LEVEL_LABEL}; empty for patient-level models and not comparable with "
        "the patient-level columns. paper_*: the values the paper prints (its level not stated)."
    )
    if synthetic:
        note = outputs.SYNTHETIC_NOTE + "\n\n" + note
    return outputs.write_table(Path(figures_dir) / (stem or TABLE_FILES[table]), frame, title=TABLE_TITLES[table], note=note)


def paired_patients(work_dir: str | os.PathLike, model_a: str, model_b: str) -> pd.DataFrame:
    """Patient-level predictions of two models on the same patients.

    Returns:
        ``patient_id, fold, y_true, prob_a, prob_b`` sorted by patient_id (slice
        probabilities averaged per patient, :func:`patient_level`).

    Raises:
        ValueError: the models predict different patients or disagree on a label.
    """
    a = patient_level(read_predictions(work_dir, model_a)).set_index("patient_id")
    b = patient_level(read_predictions(work_dir, model_b)).set_index("patient_id")
    if set(a.index) != set(b.index):
        only = sorted(set(a.index) ^ set(b.index))
        raise ValueError(f"{model_a} and {model_b} predict different patients (e.g. {only[:3]}); a paired test needs the same")
    b = b.loc[a.index]
    if not (a["y_true"] == b["y_true"]).all():
        raise ValueError(f"{model_a} and {model_b} disagree on the labels of some patients")
    return pd.DataFrame({"patient_id": a.index.to_numpy(), "fold": a["fold"].to_numpy(), "y_true": a["y_true"].to_numpy(),
                         "prob_a": a["y_prob"].to_numpy(), "prob_b": b["y_prob"].to_numpy()})


def compare_models(work_dir: str | os.PathLike, model_a: str, model_b: str) -> tuple[float, float, float]:
    """DeLong test of two models at patient level, on the same patients (paired)."""
    pairs = paired_patients(work_dir, model_a, model_b)
    return delong_test(pairs["y_true"].to_numpy(), pairs["prob_a"].to_numpy(), pairs["prob_b"].to_numpy())


def comparison_row(
    work_dir: str | os.PathLike, model_a: str, model_b: str, n_bootstrap: int = 1000, seed: int = 2020
) -> dict:
    """One row of the comparisons table: DeLong test and paired bootstrap interval of the difference.

    Returns:
        dict with the keys of :data:`COMPARISON_COLUMNS`; ``auc_difference = auc_a - auc_b``
        at patient level, its 95% interval from :func:`bootstrap_auc_difference_ci`.
    """
    pairs = paired_patients(work_dir, model_a, model_b)
    y, prob_a, prob_b = pairs["y_true"].to_numpy(), pairs["prob_a"].to_numpy(), pairs["prob_b"].to_numpy()
    auc_a, auc_b, p_value = delong_test(y, prob_a, prob_b)
    low, high = bootstrap_auc_difference_ci(y, prob_a, prob_b, n_bootstrap, seed)
    over_seeds = seed_auc_differences(seed_aucs(read_predictions(work_dir, model_a)),
                                      seed_aucs(read_predictions(work_dir, model_b)))
    return {"model_a": model_a, "model_b": model_b, "auc_a": auc_a, "auc_b": auc_b, "p_value": p_value,
            "auc_difference": auc_a - auc_b, "difference_ci_low": low, "difference_ci_high": high,
            "n_patients": len(pairs), "n_bootstrap": int(n_bootstrap), "bootstrap_seed": int(seed),
            "seed_difference_mean": float(over_seeds.mean()),
            "seed_difference_sd": float(over_seeds.std(ddof=1)) if len(over_seeds) > 1 else float("nan"),
            "n_seed_pairs": len(over_seeds), "seed_fraction_a_better": float((over_seeds > 0).mean())}


def seed_auc_differences(aucs_a: dict, aucs_b: dict) -> np.ndarray:
    """Differences ``auc_a - auc_b`` of per-seed pooled AUCs (:func:`seed_aucs` of each model).

    Paired by training seed where the two models share seeds (the same initialisation
    seeds, as the study trains every network); otherwise every seed of one model against
    every seed of the other (a model without seeds is one seed, ``None``).
    """
    shared = sorted(set(aucs_a) & set(aucs_b) - {None})
    if shared:
        return np.array([aucs_a[s] - aucs_b[s] for s in shared])
    return np.array([a - b for a in aucs_a.values() for b in aucs_b.values()])


def record_comparison(
    figures_dir: str | os.PathLike,
    work_dir: str | os.PathLike,
    model_a: str,
    model_b: str,
    n_bootstrap: int,
    seed: int,
    file: str = COMPARISONS_FILE,
) -> pd.DataFrame:
    """Add or replace the row of (model_a, model_b) in ``<figures_dir>/<file>``.

    ``n_bootstrap`` and ``seed``: the run's (the profile's ``n_bootstrap``, the run's seed), as its
    tables' intervals use; no default, so that no notebook records with other values than its run's.

    The row (:func:`comparison_row`: DeLong test and the paired bootstrap interval of the
    AUC difference) of the same pair (in either order) is replaced, other rows are kept
    (rows written before the interval columns existed get empty ones); the file is
    written atomically. Returns the whole table.

    ``file``: each notebook records into its own (:data:`NOTEBOOK_COMPARISON_FILES`), so that
    every file has one writer; ``model_comparisons.csv`` is notebook 08's (:func:`assemble_comparisons`).
    """
    row = pd.DataFrame([comparison_row(work_dir, model_a, model_b, n_bootstrap, seed)], columns=COMPARISON_COLUMNS)
    path = Path(figures_dir) / file
    table = pd.read_csv(path) if path.exists() else pd.DataFrame(columns=COMPARISON_COLUMNS)
    same_pair = ((table["model_a"] == model_a) & (table["model_b"] == model_b)) | (
        (table["model_a"] == model_b) & (table["model_b"] == model_a)
    )
    kept = table.loc[~same_pair].reindex(columns=COMPARISON_COLUMNS)
    table = pd.concat([kept, row], ignore_index=True) if len(kept) else row
    outputs.write_csv(path, _comparison_counts(table))
    return table


def _comparison_counts(table: pd.DataFrame) -> pd.DataFrame:
    counts = ["n_patients", "n_bootstrap", "bootstrap_seed", "n_seed_pairs"]
    table[counts] = table[counts].astype("Int64")  # whole numbers, empty for rows without the interval
    return table


def assemble_comparisons(figures_dir: str | os.PathLike, file: str = COMPARISONS_FILE) -> pd.DataFrame:
    """Write ``<figures_dir>/<file>`` anew from the notebooks' own comparison files (:data:`NOTEBOOK_COMPARISON_FILES`).

    The rows in the notebooks' order, a pair recorded twice kept once (the later row); files
    that do not exist (notebooks skipped or not run) are left out. A row recorded afterwards
    (:func:`record_comparison` with ``file``) replaces its pair. Returns the table written.
    """
    frames = []
    for name in NOTEBOOK_COMPARISON_FILES.values():
        path = Path(figures_dir) / name
        if path.is_file():
            try:
                frames.append(pd.read_csv(path).reindex(columns=COMPARISON_COLUMNS))
            except (OSError, ValueError) as err:
                raise ValueError(f"{path}: cannot read the comparisons ({err})") from None
    frames = [f for f in frames if len(f)]
    if not frames:
        table = pd.DataFrame(columns=COMPARISON_COLUMNS)
    else:
        table = pd.concat(frames, ignore_index=True)
        pair = table[["model_a", "model_b"]].apply(lambda r: frozenset(r), axis=1)
        table = table.loc[~pair.duplicated(keep="last")].reset_index(drop=True)
        table = _comparison_counts(table)
    outputs.write_csv(Path(figures_dir) / file, table)
    return table


# ---------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------


def _axes(ax):
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=(5, 5))
    return ax


def plot_roc(frames: dict[str, pd.DataFrame], ax=None):
    """Patient-level ROC curves of several models (out-of-fold predictions pooled).

    Args:
        frames: model name → predictions frame (slice- or patient-level).

    Returns:
        The matplotlib axes.
    """
    from sklearn.metrics import roc_curve

    ax = _axes(ax)
    for model, frame in frames.items():
        patients = patient_level(frame)
        fpr, tpr, _ = roc_curve(patients["y_true"], patients["y_prob"])
        ax.plot(fpr, tpr, label=f"{model} (AUC {auc(patients['y_true'], patients['y_prob']):.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", xlim=(0, 1), ylim=(0, 1.01), title="ROC (patient level)")
    ax.legend(loc="lower right", fontsize="small")
    return ax


def plot_reliability(frames: dict[str, pd.DataFrame], ax=None, n_bins: int = 10):
    """Reliability diagram (patient level) of several models."""
    ax = _axes(ax)
    for model, frame in frames.items():
        patients = patient_level(frame)
        curve = reliability_curve(patients["y_true"], patients["y_prob"], n_bins)
        brier = brier_score(patients["y_true"], patients["y_prob"])
        ax.plot(curve["mean_predicted"], curve["fraction_positive"], marker="o", label=f"{model} (Brier {brier:.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set(xlabel="mean predicted probability", ylabel="observed ER fraction", xlim=(0, 1), ylim=(0, 1),
           title="Reliability (patient level)")
    ax.legend(loc="upper left", fontsize="small")
    return ax


def plot_decision_curve(frames: dict[str, pd.DataFrame], ax=None, thresholds=None):
    """Decision curves (net benefit, patient level) with "treat all" and "treat none"."""
    ax = _axes(ax)
    curve = None
    for model, frame in frames.items():
        patients = patient_level(frame)
        curve = net_benefit(patients["y_true"], patients["y_prob"], thresholds)
        ax.plot(curve["threshold"], curve["net_benefit"], label=model)
    if curve is not None:
        ax.plot(curve["threshold"], curve["treat_all"], color="grey", linestyle="--", label="treat all")
        ax.axhline(0.0, color="black", linewidth=1, label="treat none")
        top = max(curve["treat_all"].max(), 0.05)
        ax.set_ylim(-0.05, top * 1.2)
    ax.set(xlabel="threshold probability", ylabel="net benefit", title="Decision curve (patient level)")
    ax.legend(loc="upper right", fontsize="small")
    return ax
