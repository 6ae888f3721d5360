"""The study report's reporting checklist and the tables it is filled from.

A reviewer of a prediction-model study reads it against TRIPOD+AI (Collins et al., BMJ
2024;385:e078378; 27 items, some with parts a-g) and, for an imaging AI study, CLAIM 2024
(Tejani et al., Radiology: Artificial Intelligence 2024; 44 items). :func:`checklist`
fills every item that the run itself can answer (counts of patients, slices and events
per fold, preprocessing settings, model specification and hyper-parameters, validation
scheme, software versions with PyRadiomics' parameter file, missing-data handling, class
balance, which analyses and figures exist) and leaves the rest marked ``open`` with what
has to be supplied (ethics approval, data source and dates, blinding, the manuscript's
own text). Item numbers are those of the published checklists.

Status of an item: ``filled`` (the run answers it), ``partly filled`` (the run answers
part of it; the value says what is missing) or ``open``.

:func:`data_flow` (the paper's Table 2 for this run) and :func:`fold_characteristics`
are the per-fold tables behind several items; :func:`calibration_table` summarises the
calibration of out-of-fold predictions.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
from pathlib import Path

import numpy as np
import pandas as pd

from hccer_lib import outputs

CHECKLIST_COLUMNS = ["framework", "item", "topic", "status", "value"]
CHECKLIST_FILE = "reporting_checklist"
TRIPOD = "TRIPOD+AI"
CLAIM = "CLAIM 2024"
STATUSES = ("filled", "partly filled", "open")

#: The paper's Table 2: training and test slices (patients) of its ten experiments.
PAPER_TABLE2 = pd.DataFrame({
    "fold": range(10),
    "train_slices": [695, 681, 683, 691, 694, 676, 700, 694, 680, 691],
    "train_patients": [150, 150, 150, 150, 150, 150, 150, 151, 151, 151],
    "test_slices": [70, 84, 82, 74, 71, 89, 65, 71, 85, 74],
    "test_patients": [17, 17, 17, 17, 17, 17, 17, 16, 16, 16],
})

#: Distributions whose versions the checklist reports (first installed name of each group).
SOFTWARE = (
    ("numpy",), ("pandas",), ("scipy",), ("scikit-learn",), ("SimpleITK",),
    ("pyradiomics", "pyradiomics-bhklab"), ("keras",), ("tensorflow", "tensorflow-cpu", "tensorflow_cpu"),
    ("jax",), ("matplotlib",), ("papermill",), ("nbconvert",), ("pydicom",),
)

#: What was tuned, and on which cohorts (TRIPOD+AI 12c); README "How the CPU recipe was chosen".
TUNING_TEXT = (
    "what was tuned, and where: nothing on the study's folds or on this cohort. The paper profile uses the paper's "
    "settings; the training recipe of the CPU profile (epochs, batch size, learning rate and its schedule, "
    "augmentation, validation share, weight decay, training seeds) was chosen on development synthetic cohorts "
    "only (generator seeds 3 and 4; README 'How the CPU recipe was chosen' lists what was measured on each), never "
    "on the study's default cohort (seed 2020), on the seed simulation's cohorts or on a real cohort; the "
    "preprocessing (HU window, reference phase, margin) and the clinical forest (scikit-learn defaults, 500 trees) "
    "were fixed in advance; the L1 penalty of the radiomics model is chosen by inner cross-validation inside each "
    "training fold. Assumptions where the paper is silent: the optimiser (Adam) and the fusion layer sizes (image "
    "FC 64 units, fusion C Conv1D 8 filters of kernel 3, fusion D clinical FC 16 units)"
)

MODELS = ("clinical_rf", "radiomics_rf", "deep_resnet50", "fusion_a", "fusion_b", "fusion_c", "fusion_d", "fusion_d_joint")


# ---------------------------------------------------------------------------------------
# Per-fold tables
# ---------------------------------------------------------------------------------------


def data_flow(folds: pd.DataFrame, slice_patient_ids=None) -> pd.DataFrame:
    """Patients, ER patients and slices of the training and test side of every fold.

    Args:
        folds: ``patient_id, y_true, fold`` (``evaluation.load_or_make_folds``).
        slice_patient_ids: ``[n_slices]`` patient id of each processed slice image
            (``ProcessedDataset.patient_id``); ``None`` leaves the slice columns empty.

    Returns:
        ``fold, train_patients, train_er, train_slices, test_patients, test_er,
        test_slices`` (the paper's Table 2 form, with the ER counts), one row per fold.

    Raises:
        ValueError: a slice whose patient has no fold.
    """
    folds = folds.assign(patient_id=folds["patient_id"].astype(str))
    slices_per_patient = None
    if slice_patient_ids is not None:
        slices_per_patient = pd.Series(np.asarray(slice_patient_ids).astype(str)).value_counts()
        unknown = sorted(set(slices_per_patient.index) - set(folds["patient_id"]))
        if unknown:
            raise ValueError(f"patient {unknown[0]} has slice images but no fold ({len(unknown)} such patients)")
    rows = []
    for fold in sorted(folds["fold"].unique()):
        test = folds["fold"] == fold
        row = {"fold": int(fold)}
        for side, mask in (("train", ~test), ("test", test)):
            row[f"{side}_patients"] = int(mask.sum())
            row[f"{side}_er"] = int(folds.loc[mask, "y_true"].sum())
            if slices_per_patient is not None:
                row[f"{side}_slices"] = int(slices_per_patient.reindex(folds.loc[mask, "patient_id"]).fillna(0).sum())
            else:
                row[f"{side}_slices"] = pd.NA
        rows.append(row)
    columns = ["fold", "train_patients", "train_er", "train_slices", "test_patients", "test_er", "test_slices"]
    return pd.DataFrame(rows, columns=columns)


def add_exclusions(flow: pd.DataFrame, clinical: pd.DataFrame) -> pd.DataFrame:
    """The data-flow table with the patients left out before the folds, counted per reason.

    Args:
        flow: :func:`data_flow` (with any columns joined to it, e.g. the paper's).
        clinical: the cohort's clinical frame (``cohort.load_clinical``): its excluded patients
            (``clinical.excluded_of``: censored before a time-to-event outcome's horizon).

    Returns:
        ``flow`` itself when no patient was excluded; else ``flow`` with the columns
        ``excluded`` and ``reason`` and one more row per reason (``group``), whose fold and
        counts are empty, ``excluded`` the number of patients and ``reason`` the reason and
        their ids (e.g. ``"censored before the 12-months horizon: H003, H017"``).
    """
    from hccer_lib.clinical import excluded_of

    excluded = excluded_of(clinical)
    if excluded.empty:
        return flow
    out = flow.astype(object)
    out["excluded"] = None
    out["reason"] = ""
    rows = [{**dict.fromkeys(out.columns), "excluded": len(group), "reason": f"{reason}: {', '.join(group['patient_id'])}"}
            for reason, group in excluded.groupby("group", sort=False)]  # fmt: skip
    return pd.concat([out, pd.DataFrame(rows, columns=out.columns, dtype=object)], ignore_index=True)


def fold_characteristics(clinical: pd.DataFrame, folds: pd.DataFrame) -> pd.DataFrame:
    """Demographic and clinical make-up of each test fold and of the whole cohort.

    Returns:
        ``partition`` ("fold k" or "all"), ``patients``, ``er`` (count), ``er_percent``,
        ``male_percent``, ``age_median``, ``age_60_or_more_percent``,
        ``tumour_50mm_or_more_percent`` (raw clinical values, not the binarised vector).
    """
    frame = clinical.assign(patient_id=clinical["patient_id"].astype(str)).merge(
        folds[["patient_id", "fold"]].assign(patient_id=folds["patient_id"].astype(str)), on="patient_id", how="inner")

    def describe(part: pd.DataFrame, name: str) -> dict:
        return {
            "partition": name,
            "patients": len(part),
            "er": int(part["early_recurrence"].sum()),
            "er_percent": 100 * part["early_recurrence"].mean(),
            "male_percent": 100 * (part["sex"] == "M").mean(),
            "age_median": float(part["age"].median()),
            "age_60_or_more_percent": 100 * (part["age"] >= 60).mean(),
            "tumour_50mm_or_more_percent": 100 * (part["tumor_size_mm"] >= 50).mean(),
        }

    rows = [describe(part, f"fold {int(fold)}") for fold, part in frame.groupby("fold")]
    rows.append(describe(frame, "all"))
    return pd.DataFrame(rows)


def calibration_table(frames: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Calibration of out-of-fold predictions at patient level, one row per model.

    Args:
        frames: model name → predictions frame (slice- or patient-level; the seed
            ensemble's patient probability, ``evaluation.patient_level``).

    Returns:
        ``model, n_patients, observed_er_percent, mean_predicted_percent, brier,
        calibration_intercept, calibration_slope``. The intercept is the
        calibration-in-the-large, ``a`` of ``logit P(ER) = a + logit(p)`` with
        ``logit(p)`` as an offset (slope fixed at 1; ``evaluation.calibration_intercept``);
        the slope is ``b`` of the separate free fit ``logit P(ER) = a' + b · logit(p)``
        (``evaluation.calibration_slope``), whose own intercept ``a'`` is not reported
        (Van Calster et al., J Clin Epidemiol 2016 and BMC Med 2019). Perfect calibration
        is 0 and 1; probabilities are clipped to [1e-6, 1 - 1e-6].
    """
    from hccer_lib import evaluation

    rows = []
    for model, frame in frames.items():
        patients = evaluation.patient_level(frame)
        y = patients["y_true"].to_numpy(int)
        p = patients["y_prob"].to_numpy(float)
        rows.append({"model": model, "n_patients": len(y), "observed_er_percent": 100 * y.mean(),
                     "mean_predicted_percent": 100 * p.mean(), "brier": evaluation.brier_score(y, p),
                     "calibration_intercept": evaluation.calibration_intercept(y, p),
                     "calibration_slope": evaluation.calibration_slope(y, p)})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------
# The study's results beside the paper's, and every paired comparison
# ---------------------------------------------------------------------------------------

#: Every paired comparison the study reports: (source in the paper, model_a, model_b, question).
STUDY_COMPARISONS: tuple[tuple[str, str, str, str], ...] = (
    ("Table 3", "deep_resnet50", "radiomics_rf", "deep learning vs conventional radiomics"),
    ("Table 4", "clinical_rf", "deep_resnet50", "clinical model vs deep learning model"),
    *(("Table 4", f"fusion_{k}", reference, f"fusion model {k.upper()} vs {name}")
      for k in "abcd" for reference, name in (("deep_resnet50", "deep model"), ("clinical_rf", "clinical model"))),
    ("Table 5", "fusion_d_joint", "fusion_d", "fusion D with vs without the joint loss"),
    ("Table 5", "fusion_d_joint", "deep_resnet50", "fusion D with joint loss vs deep model"),
    ("Table 5", "fusion_d_joint", "clinical_rf", "fusion D with joint loss vs clinical model"),
    ("Conclusion", "fusion_d", "radiomics_rf", "fusion D vs conventional radiomics ('significantly superior')"),
    ("Protocol", "clinical_rf", "clinical_rf_strict", "clinical selection on the whole cohort (paper) vs in each training fold (strict)"),
)  # fmt: skip


def holm_adjust(p_values) -> np.ndarray:
    """Holm's step-down adjustment of ``[m]`` p-values (family-wise error), in the input order.

    The i-th smallest p-value is multiplied by ``m - i + 1`` (i from 1), the running
    maximum taken, and the result capped at 1. NaN stays NaN and does not count in ``m``.
    """
    p = np.asarray(p_values, dtype=float)
    adjusted = np.full_like(p, np.nan)
    valid = np.flatnonzero(~np.isnan(p))
    order = valid[np.argsort(p[valid], kind="stable")]
    m = len(order)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, (m - rank) * p[index])
        adjusted[index] = min(running, 1.0)
    return adjusted


def strict_variant_pairs(work_dir: str | os.PathLike) -> list[tuple[str, str, str, str]]:
    """``("Protocol", <model>, <model>_strict, ...)`` for every deep or fusion model with a ``_strict`` variant."""
    from hccer_lib import evaluation

    pairs = []
    for model in MODELS[2:]:
        strict = f"{model}_strict"
        if evaluation.predictions_path(work_dir, model).is_file() and evaluation.predictions_path(work_dir, strict).is_file():
            pairs.append(("Protocol", model, strict, f"{model}: clinical selection on the whole cohort vs in each training fold"))
    return pairs


def study_comparisons(
    work_dir: str | os.PathLike,
    figures_dir: str | os.PathLike | None = None,
    n_bootstrap: int = 1000,
    seed: int = 2020,
    comparisons=None,
) -> pd.DataFrame:
    """Every paired comparison of :data:`STUDY_COMPARISONS` whose two models have predictions.

    Each pair is tested at patient level (``evaluation.comparison_row``: DeLong test and
    paired bootstrap 95% interval of the AUC difference, patients resampled) and, when
    ``figures_dir`` is given, recorded in ``figures/model_comparisons.csv``.

    What each answers: the DeLong test and the bootstrap interval are conditional on the
    fitted fold models (the seed ensembles): they resample patients only and ignore
    training variance, so they say whether these trained models rank these patients
    differently. The ``seed_*`` columns, shown beside them, compare the models over
    retraining (the per-seed pooled AUCs, paired by seed). Neither covers the sampling of
    the cohort (the seed simulation, :mod:`hccer_lib.simulation`, does).

    Args:
        comparisons: ``(source, model_a, model_b, question)`` tuples; default
            :data:`STUDY_COMPARISONS` plus :func:`strict_variant_pairs`.

    Returns:
        ``source, question, model_a, model_b, paper_auc_a, paper_auc_b, paper_difference``
        (the paper's fold-mean AUCs, empty where it did not run the model), ``auc_a,
        auc_b, auc_difference, difference_ci_low, difference_ci_high, p_value``
        (DeLong), ``p_holm`` (Holm over the rows), ``ci_excludes_zero, n_patients`` (all of
        the seed ensembles, conditional on the fitted models), then the difference of the
        pooled AUCs over training seeds (``evaluation.SEED_COMPARISON_COLUMNS``).
    """
    from hccer_lib import evaluation

    comparisons = list(STUDY_COMPARISONS) + strict_variant_pairs(work_dir) if comparisons is None else list(comparisons)
    rows = []
    for source, model_a, model_b, question in comparisons:
        if not (evaluation.predictions_path(work_dir, model_a).is_file() and evaluation.predictions_path(work_dir, model_b).is_file()):
            continue
        if figures_dir is not None:
            table = evaluation.record_comparison(figures_dir, work_dir, model_a, model_b, n_bootstrap, seed)
            row = table[(table["model_a"] == model_a) & (table["model_b"] == model_b)].iloc[-1].to_dict()
        else:
            row = evaluation.comparison_row(work_dir, model_a, model_b, n_bootstrap, seed)
        paper_a = evaluation.PAPER_RESULTS.get(model_a, {}).get("auc_mean", np.nan)
        paper_b = evaluation.PAPER_RESULTS.get(model_b, {}).get("auc_mean", np.nan)
        rows.append({"source": source, "question": question, "model_a": model_a, "model_b": model_b,
                     "paper_auc_a": paper_a, "paper_auc_b": paper_b, "paper_difference": paper_a - paper_b,
                     **{k: row[k] for k in ("auc_a", "auc_b", "auc_difference", "difference_ci_low",
                                            "difference_ci_high", "p_value", "n_patients", *evaluation.SEED_COMPARISON_COLUMNS)}})
    columns = ["source", "question", "model_a", "model_b", "paper_auc_a", "paper_auc_b", "paper_difference", "auc_a",
               "auc_b", "auc_difference", "difference_ci_low", "difference_ci_high", "p_value", "p_holm",
               "ci_excludes_zero", "n_patients", *evaluation.SEED_COMPARISON_COLUMNS]
    frame = pd.DataFrame(rows, columns=[c for c in columns if c not in ("p_holm", "ci_excludes_zero")])
    frame["p_holm"] = holm_adjust(frame["p_value"]) if len(frame) else pd.Series(dtype=float)
    frame["ci_excludes_zero"] = (frame["difference_ci_low"] > 0) | (frame["difference_ci_high"] < 0)
    return frame[columns]


def plot_comparisons(table: pd.DataFrame, title: str = "", ax=None):
    """Forest plot: each comparison's AUC difference with its bootstrap 95% interval, and the paper's.

    Args:
        table: from :func:`study_comparisons`.
    Returns:
        The matplotlib axes.
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(8, 0.42 * max(len(table), 2) + 1.2))
    y = np.arange(len(table))[::-1]
    difference = table["auc_difference"].to_numpy(float)
    errors = np.vstack([difference - table["difference_ci_low"].to_numpy(float),
                        table["difference_ci_high"].to_numpy(float) - difference])
    ax.errorbar(difference, y, xerr=errors, fmt="o", color="black", capsize=3, label="this study (patient level, 95% CI)")
    paper = table["paper_difference"].to_numpy(float)
    shown = ~np.isnan(paper)
    ax.scatter(paper[shown], y[shown], marker="x", color="tab:red", s=50, zorder=3, label="paper (fold-mean AUC)")
    ax.axvline(0, color="grey", linewidth=1)
    ax.set_yticks(y, [f"{a} vs {b}" for a, b in zip(table["model_a"], table["model_b"], strict=True)], fontsize=8)
    ax.set_xlabel("AUC difference (model_a - model_b)")
    ax.set_title(title or "Paired comparisons", fontsize=10)
    ax.legend(fontsize=7, loc="best")
    return ax


def results_vs_paper(
    work_dir: str | os.PathLike, n_bootstrap: int = 1000, seed: int = 2020, cohort: str = ""
) -> pd.DataFrame:
    """The rows of the paper's Tables 3, 4 and 5 (``evaluation.results_table``) in one frame.

    A model in several tables appears once; ``tables`` lists them. Adds the paper's AUC
    and accuracy as numbers (``paper_auc_mean, paper_auc_sd, paper_accuracy_mean``) and
    ``auc_minus_paper`` (this study's fold-mean AUC at patient level minus the paper's fold
    mean, whose level the paper does not state). Every fold metric is at patient level
    (``evaluation.summarise_model``); ``slice_*`` keep the slice-level fold metrics of
    slice-level models, the paper's form (inferred), never compared across levels.
    """
    from hccer_lib import evaluation

    frames = []
    for table in evaluation.TABLE_MODELS:
        frame = evaluation.results_table(work_dir, table=table, n_bootstrap=n_bootstrap, seed=seed, cohort=cohort)
        frames.append(frame.assign(tables=table.replace("table", "Table ")))
    combined = pd.concat([f for f in frames if len(f)], ignore_index=True) if any(len(f) for f in frames) else frames[0]
    if len(combined) == 0:
        return combined.assign(paper_auc_mean=[], paper_auc_sd=[], paper_accuracy_mean=[], auc_minus_paper=[])
    tables = combined.groupby("model", sort=False)["tables"].agg(", ".join)
    combined = combined.drop_duplicates("model").drop(columns="tables").merge(tables, left_on="model", right_index=True)
    paper = combined["model"].map(evaluation.PAPER_RESULTS)
    combined["paper_auc_mean"] = [p["auc_mean"] if isinstance(p, dict) else np.nan for p in paper]
    combined["paper_auc_sd"] = [p["auc_sd"] if isinstance(p, dict) else np.nan for p in paper]
    combined["paper_accuracy_mean"] = [p["accuracy_mean"] if isinstance(p, dict) else np.nan for p in paper]
    combined["auc_minus_paper"] = combined["auc_mean"] - combined["paper_auc_mean"]
    return combined.reset_index(drop=True)


def plot_results_vs_paper(frame: pd.DataFrame, title: str = "", ax=None):
    """AUC per model: this study's fold mean ± SD and pooled AUC with its 95% CI, the paper's mean ± SD.

    Args:
        frame: from :func:`results_vs_paper`.
    Returns:
        The matplotlib axes.
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(max(6, 0.9 * len(frame) + 2), 4.5))
    x = np.arange(len(frame))
    ax.errorbar(x - 0.15, frame["auc_mean"], yerr=frame["auc_sd"], fmt="o", color="tab:blue", capsize=3,
                label="this study: mean ± SD over folds (patient level)")
    pooled = frame["pooled_auc"].to_numpy(float)
    ax.errorbar(x, pooled, yerr=np.vstack([pooled - frame["pooled_auc_ci_low"], frame["pooled_auc_ci_high"] - pooled]),
                fmt="s", color="tab:cyan", capsize=3, label="this study: pooled patient AUC, 95% CI")
    ax.errorbar(x + 0.15, frame["paper_auc_mean"], yerr=frame["paper_auc_sd"], fmt="*", color="tab:red", capsize=3,
                markersize=10, label="paper: mean ± SD over folds")
    ax.axhline(0.5, color="grey", linestyle=":", linewidth=1)
    ax.set_xticks(x, frame["model"], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("AUC")
    ax.set_ylim(0.3, 1.0)
    ax.set_title(title or "AUC beside the paper's", fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    return ax


def pick_explained_patients(patients: pd.DataFrame, n_each: int = 2, threshold: float = 0.5) -> pd.DataFrame:
    """Correctly and wrongly predicted patients of one test fold, for a saliency figure.

    One fold is chosen, so that a single network (that fold's) explains every patient:
    the fold with the most of the four kinds (correct ER, correct NER, missed ER, false
    alarm NER), then the most wrong calls, then the lowest number. In it, ``n_each``
    correct and ``n_each`` wrong patients are taken, alternating ER and NER where both
    exist, the most confident first (highest probability for an ER call, lowest for a
    NER call).

    Args:
        patients: patient-level out-of-fold predictions ``patient_id, fold, y_true,
            y_prob`` (``evaluation.patient_level``).
        threshold: ER is called when ``y_prob >= threshold``.

    Returns:
        ``patient_id, fold, y_true, y_prob, call`` (``"correct"``/``"wrong"``),
        ``kind`` (e.g. ``"missed ER"``), correct ones first; at most ``2 * n_each`` rows.
    """
    frame = patients[["patient_id", "fold", "y_true", "y_prob"]].copy()
    called = (frame["y_prob"] >= threshold).astype(int)
    frame["call"] = np.where(called == frame["y_true"], "correct", "wrong")
    kinds = {("correct", 1): "correct ER", ("correct", 0): "correct NER", ("wrong", 1): "missed ER",
             ("wrong", 0): "false alarm NER"}
    frame["kind"] = [kinds[(c, int(y))] for c, y in zip(frame["call"], frame["y_true"], strict=True)]
    # confidence in the call made: the probability for an ER call, 1 - probability for a NER call
    frame["confidence"] = np.where(called == 1, frame["y_prob"], 1 - frame["y_prob"])
    per_fold = frame.groupby("fold").agg(n_kinds=("kind", "nunique"), n_wrong=("call", lambda c: int((c == "wrong").sum())))
    per_fold = per_fold.reset_index().sort_values(["n_kinds", "n_wrong", "fold"], ascending=[False, False, True])
    chosen_fold = per_fold["fold"].iloc[0]
    in_fold = frame[frame["fold"] == chosen_fold]
    picked = []
    for call in ("correct", "wrong"):
        part = in_fold[in_fold["call"] == call]
        queues = [part[part["y_true"] == y].sort_values(["confidence", "patient_id"], ascending=[False, True])
                  for y in (1, 0)]
        queues = [q for q in queues if len(q)]
        taken, i = 0, 0
        while taken < n_each and any(len(q) for q in queues):
            queue = queues[i % len(queues)]
            if len(queue):
                picked.append(queue.iloc[0])
                queues[i % len(queues)] = queue.iloc[1:]
                taken += 1
            i += 1
    columns = ["patient_id", "fold", "y_true", "y_prob", "call", "kind"]
    return pd.DataFrame(picked, columns=frame.columns)[columns].reset_index(drop=True)


# ---------------------------------------------------------------------------------------
# What the run left behind
# ---------------------------------------------------------------------------------------


def software_versions() -> dict[str, str]:
    """Python and the installed versions of the study's main packages (absent ones left out)."""
    versions = {"python": platform.python_version()}
    for names in SOFTWARE:
        for name in names:
            try:
                versions[names[0]] = importlib.metadata.version(name)
                break
            except importlib.metadata.PackageNotFoundError:
                continue
    return versions


def _newest_json(paths, accept=lambda meta: True) -> dict | None:
    found = []
    for path in paths:
        try:
            meta = json.loads(Path(path).read_text())
        except (OSError, ValueError):
            continue
        if accept(meta):
            found.append((Path(path).stat().st_mtime, str(path), meta))
    return max(found)[2] if found else None


def dataset_slices(work_dir: str | os.PathLike, image_size: int) -> tuple[dict | None, np.ndarray | None]:
    """The newest processed dataset of ``image_size`` pixels (notebook 02), without reading its images.

    Returns:
        ``(settings JSON, patient id of each slice [n_slices])``; ``(None, None)`` when there
        is none, ``(meta, None)`` when its arrays are missing.
    """
    work_dir = Path(work_dir)
    meta = _newest_json(sorted((work_dir / "processed").glob("images_*.json")),
                        lambda m: m.get("settings", {}).get("image_size") == image_size)
    if meta is None:
        return None, None
    npz = work_dir / "processed" / f"images_{meta['key']}.npz"
    if not npz.is_file():
        return meta, None
    with np.load(npz) as arrays:
        return meta, arrays["patient_id"].astype(str)


def _run_settings(work_dir: Path, profile_name: str) -> dict[str, dict]:
    """Model → the newest ``runs/<model>/<key>/settings.json`` of ``profile_name``."""
    runs = {}
    for model_dir in sorted((work_dir / "runs").glob("*")) if (work_dir / "runs").is_dir() else []:
        meta = _newest_json(model_dir.glob("*/settings.json"), lambda m: m.get("profile") == profile_name)
        if meta is not None:
            runs[model_dir.name] = meta
    return runs


def _image_geometry(cohort_dir: Path, patients: list[str]) -> dict[str, dict]:
    """Per phase: number of files read and the range of in-plane and slice spacing (mm), from headers only."""
    import SimpleITK as sitk

    from hccer_lib import cohort

    geometry = {}
    for phase in cohort.PHASES:
        spacings = []
        for pid in patients:
            path = cohort.phase_path(cohort_dir, pid, phase)
            if not path.is_file():
                continue
            reader = sitk.ImageFileReader()
            reader.SetFileName(str(path))
            try:
                reader.ReadImageInformation()
            except RuntimeError:
                continue
            spacings.append(reader.GetSpacing())
        if spacings:
            array = np.array(spacings)
            geometry[phase] = {"n": len(spacings), "inplane": (array[:, 0].min(), array[:, 0].max()),
                               "slice": (array[:, 2].min(), array[:, 2].max())}
    return geometry


def _range(values: tuple[float, float], unit: str = "mm") -> str:
    low, high = values
    return f"{low:.2f} {unit}" if np.isclose(low, high) else f"{low:.2f}-{high:.2f} {unit}"


def _figure_names(figures_dir: Path | None) -> set[str]:
    if figures_dir is None or not Path(figures_dir).is_dir():
        return set()
    return {p.name for p in Path(figures_dir).iterdir() if p.is_file()}


# ---------------------------------------------------------------------------------------
# The checklist
# ---------------------------------------------------------------------------------------


def checklist(
    work_dir: str | os.PathLike,
    cohort_dir: str | os.PathLike,
    profile,
    figures_dir: str | os.PathLike | None = None,
    seed: int = 2020,
    synthetic: bool | None = None,
    selection_protocol: str = "paper",
    image_headers: bool = True,
    results: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """TRIPOD+AI and CLAIM 2024 items, filled from the run where it can answer them.

    Args:
        work_dir: the cohort's work folder (``folds.csv``, ``processed/``, ``runs/``,
            ``predictions/``).
        cohort_dir: the cohort folder (``clinical.csv``, ``images/``).
        profile: a :class:`profiles.Profile` or its name.
        figures_dir: where the study's tables and figures are (evidence of the analyses
            that ran); ``None``: not consulted.
        seed: the run's seed (folds, training).
        synthetic: whether the cohort is the generated one; default: it is when it holds
            ``ground_truth.json``.
        selection_protocol: clinical variable selection of the deep and fusion models.
        image_headers: read the phase images' headers for their spacing (a few seconds).
        results: :func:`results_vs_paper` of this run, to reuse its pooled AUCs; default:
            computed from the prediction files.

    Returns:
        ``framework, item, topic, status, value``; ``status`` one of :data:`STATUSES`.
    """
    from hccer_lib import clinical as clinical_module
    from hccer_lib import cohort, evaluation
    from hccer_lib.profiles import get_profile

    profile = get_profile(profile) if isinstance(profile, str) else profile
    work_dir, cohort_dir = Path(work_dir), Path(cohort_dir)
    figures = _figure_names(figures_dir)
    ground_truth_path = cohort_dir / "ground_truth.json"
    if synthetic is None:
        synthetic = ground_truth_path.is_file()
    ground_truth = json.loads(ground_truth_path.read_text()) if ground_truth_path.is_file() else {}

    patients = cohort.load_clinical(cohort_dir)
    n, n_er = len(patients), int(patients["early_recurrence"].sum())
    folds_path = work_dir / "folds.csv"
    folds = pd.read_csv(folds_path, dtype={"patient_id": str}) if folds_path.is_file() else None
    dataset_meta, slice_ids = dataset_slices(work_dir, profile.image_size)
    radiomics_meta = _newest_json(sorted((work_dir / "processed").glob("radiomics_*.json")),
                                  lambda m: m.get("mode") == profile.radiomics_mode)
    runs = _run_settings(work_dir, profile.name)
    predicted = [m for m in MODELS if evaluation.predictions_path(work_dir, m).is_file()]
    geometry = _image_geometry(cohort_dir, list(patients["patient_id"].astype(str))) if image_headers else {}
    versions = software_versions()
    try:
        _, vector_names = clinical_module.clinical_matrix(patients, protocol="paper")
        selected_text = ", ".join(vector_names)
    except ValueError as err:
        selected_text = f"none ({err})"

    rows: list[dict] = []

    def add(framework: str, item: str, topic: str, status: str, value: str) -> None:
        if status not in STATUSES:
            raise ValueError(f"status {status!r} of {framework} item {item} is not one of {STATUSES}")
        rows.append({"framework": framework, "item": item, "topic": topic, "status": status, "value": value})

    manuscript = "to be written in the manuscript: the run cannot answer it"
    cohort_name = "synthetic cohort" if synthetic else f"cohort {cohort_dir.name!r}"
    synthetic_source = (f"synthetic cohort generated by {ground_truth.get('generator', 'hccer_lib.synth')} "
                        f"{ground_truth.get('generator_version', '')} with seed {ground_truth.get('seed', '?')}: "
                        "no patients; it reproduces the paper's Table 1 counts")

    # -- facts used by several items ------------------------------------------------------
    counts = f"{n} patients, {n_er} ER ({100 * n_er / n:.1f}%), {n - n_er} NER"
    if slice_ids is not None:
        counts += f"; {len(slice_ids)} ROI slice images of {len(set(slice_ids))} patients"
    flow = data_flow(folds, slice_ids) if folds is not None else None
    if flow is not None:
        flow_text = "; ".join(
            f"fold {r.fold}: train {r.train_patients} patients ({r.train_er} ER"
            + (f", {r.train_slices} slices" if not pd.isna(r.train_slices) else "")
            + f"), test {r.test_patients} ({r.test_er} ER" + (f", {r.test_slices} slices" if not pd.isna(r.test_slices) else "")
            + ")" for r in flow.itertuples())
        n_folds = int(folds["fold"].nunique())
        folds_seed = int(folds["seed"].iloc[0]) if "seed" in folds else seed
        validation = (f"{n_folds}-fold cross-validation split by patient (every slice of a patient on one side), "
                      f"stratified by label (scikit-learn StratifiedKFold, shuffled, seed {folds_seed}); the same "
                      "folds (folds.csv) for every model, so every comparison is paired; out-of-fold predictions "
                      "of every model in predictions/<model>.csv")
        er_range = (flow["test_er"] / flow["test_patients"] * 100)
        balance = (f"ER {100 * n_er / n:.1f}% of patients; test folds {er_range.min():.0f}-{er_range.max():.0f}% ER")
    else:
        flow_text = validation = balance = ""
    preprocess = ""
    if dataset_meta is not None:
        s = dataset_meta["settings"]
        preprocess = (f"per reference-phase ({s['reference_phase']}) ROI slice: the matching slice of each other phase "
                      f"by physical z relative to that phase's ROI centre (tolerance "
                      f"{'one slice thickness' if s['tolerance_mm'] is None else str(s['tolerance_mm']) + ' mm'}), a "
                      f"square crop around each phase's ROI centre (margin {s['margin']}), linear resampling to "
                      f"{s['image_size']}x{s['image_size']} px, HU window level {s['window_level']:g} / width "
                      f"{s['window_width']:g} mapped to [0, 1], NC/ART/PV stacked as 3 channels; "
                      f"{len(dataset_meta.get('dropped', []))} reference slices dropped for lack of a match")
    deep_spec = (f"profile {profile.name!r}: image {profile.image_size} px, ResNet blocks {tuple(profile.resnet_blocks)} "
                 f"width {profile.resnet_width} ((3, 4, 6, 3) and 64 are ResNet50), Adam (an assumption: the paper does not name "
                 f"its optimiser) lr {profile.learning_rate:g}, "
                 f"batch {profile.batch_size}, {profile.epochs} epochs (fixed, no early stopping), cross entropy on "
                 "the 2-neuron softmax; augmentation " + ("dihedral flips/turns" if getattr(profile, "augment", False) else "none"))
    network_text = ""
    if runs:
        any_fusion = next((runs[m] for m in ("fusion_d", "fusion_b", "fusion_c", "fusion_a", "fusion_d_joint") if m in runs), None)
        if any_fusion is not None:
            net = any_fusion["network"]
            network_text = (f"; fusion layers (sizes assumed: the paper does not state them): image FC "
                            f"{net['image_units']} units (B, C, D), C: Conv1D "
                            f"{net['clinical_filters']} filters kernel {net['clinical_kernel']}, D: clinical FC "
                            f"{net['clinical_units']} units; D joint: equation (4) loss weights")
    imagenet_text = "no network trained yet"
    if runs:
        found = {m: r.get("imagenet_file_found") for m, r in runs.items()}
        backends = sorted({r.get("keras_backend", "?") for r in runs.values()})
        is_resnet50 = tuple(profile.resnet_blocks) == (3, 4, 6, 3) and profile.resnet_width == 64
        if is_resnet50 and any(found.values()):
            imagenet_text = "ImageNet weights (Keras ResNet50 file) for the image pathway, fine-tuned; heads random (Glorot)"
        else:
            imagenet_text = ("random initialisation (Keras defaults: Glorot uniform, BN gamma 1 beta 0)"
                             + ("" if is_resnet50 else ": ImageNet weights exist only for ResNet50")
                             + f"; each fold seeded with keras.utils.set_random_seed(seed + fold), seed {seed}")
        imagenet_text += f"; Keras backend {', '.join(backends)}"
    radiomics_text = ""
    if radiomics_meta is not None:
        setting = radiomics_meta["params"]["setting"]
        radiomics_text = (f"PyRadiomics {radiomics_meta['pyradiomics_version']} ({radiomics_meta['params_file']}, "
                          f"mode {radiomics_meta['mode']}): feature classes {', '.join(radiomics_meta['params']['featureClass'])}; "
                          + ", ".join(f"{k}={setting[k]}" for k in ("binWidth", "normalize", "resampledPixelSpacing",
                                                                    "force2D", "label") if k in setting)
                          + f"; {radiomics_meta['n_features']} features over 3 phases")
    missing = ["clinical.csv: no missing value is accepted (cohort.load_clinical stops at the first one, naming "
               "patient and column), so no clinical imputation"]
    if radiomics_meta is not None:
        missing.append("radiomics: " + radiomics_meta.get("report_summary", ""))
    if dataset_meta is not None:
        missing.append(f"images: {len(dataset_meta.get('dropped', []))} reference slices without a matching slice in "
                       "another phase were left out")
    software = ", ".join(f"{k} {v}" for k, v in versions.items())
    if radiomics_meta is not None:
        software += f"; features extracted with PyRadiomics {radiomics_meta['pyradiomics_version']}"
    geometry_text = "; ".join(f"{phase}: {g['n']} volumes, in-plane spacing {_range(g['inplane'])}, slice spacing "
                              f"{_range(g['slice'])}" for phase, g in geometry.items())
    have = {name: name in figures for name in (
        "table1_clinical.md", "model_comparisons.csv", "study_comparisons.csv", "study_calibration.csv",
        "fig8_calibration_decision.png", "fig8_gradcam.png", "study_gradcam_patients.csv", "study_seed_spread.csv",
        "study_paper_differences.csv")}
    performance = ""
    if predicted:
        summaries = []
        known = results.set_index("model") if results is not None and len(results) else None
        for model in predicted:
            if known is not None and model in known.index:
                s = known.loc[model]
            else:
                s = evaluation.summarise_model(evaluation.read_predictions(work_dir, model), profile.n_bootstrap, seed)
            summaries.append(f"{model} {s['pooled_auc']:.3f} [{s['pooled_auc_ci_low']:.3f}, {s['pooled_auc_ci_high']:.3f}]")
        performance = ("pooled out-of-fold patient-level AUC with 95% bootstrap interval over patients: "
                       + "; ".join(summaries) + "; per-fold mean ± SD in figures/table3-5")
    models_text = ("clinical_rf (random forest on the binary clinical vector, " + ", ".join(
        f"{k}={v}" for k, v in clinical_module.RF_PARAMS.items()) + "); radiomics_rf (median imputation, "
        "standardisation, L1 logistic regression selection with C by inner cross-validation grouped by patient, "
        "random forest 500 trees min_samples_leaf 2; all fitted inside each training fold); deep_resnet50 and "
        "fusion models A-D and D with the joint loss (ResNet image pathway; " + deep_spec + network_text + ")")
    protocol_text = ("clinical variables selected by Pearson chi-squared p < 0.05 on "
                     + ("the whole cohort, as the paper did (protocol 'paper': test patients take part in the "
                        "selection)" if selection_protocol == "paper" else "each training fold (protocol 'strict')")
                     + f"; selected on the whole cohort: {selected_text}; clinical_rf_strict repeats the clinical "
                       "model with selection inside each training fold")

    # -- TRIPOD+AI -----------------------------------------------------------------------
    T = TRIPOD
    add(T, "1", "Title", "open", manuscript)
    add(T, "2", "Abstract", "open", manuscript + " (TRIPOD+AI for Abstracts)")
    add(T, "3a", "Background: healthcare context", "open", manuscript)
    add(T, "3b", "Background: target population and intended use", "open", manuscript)
    add(T, "3c", "Background: health inequalities", "open", manuscript)
    add(T, "4", "Objectives", "open", manuscript)
    add(T, "5a", "Data: sources", "filled" if synthetic else "open",
        synthetic_source if synthetic else f"{cohort_name}: its source, rationale and representativeness")
    add(T, "5b", "Data: dates", "filled" if synthetic else "open",
        "no accrual: generated data" if synthetic else "start and end of accrual and end of follow-up")
    add(T, "6a", "Participants: setting", "filled" if synthetic else "open",
        "none: generated data" if synthetic else "setting, number and location of centres")
    add(T, "6b", "Participants: eligibility", "partly filled",
        f"every patient of clinical.csv with three phases and a tumour ROI is used ({n}); the cohort's "
        "inclusion and exclusion criteria are to be stated")
    add(T, "6c", "Participants: treatments", "open", "treatments received (the paper: curative resection)")
    add(T, "7", "Data preparation", "filled" if preprocess else "open",
        ("every cohort file is validated before use (cohort.validate_cohort: one named error per bad value); "
         + preprocess) if preprocess else "run notebook 02 (preprocessing)")
    add(T, "8a", "Outcome: definition", "partly filled",
        f"early_recurrence (0/1) of clinical.csv: recurrence within one year of resection; {counts}; how and when "
        "it was assessed is to be stated")
    add(T, "8b", "Outcome: assessors", "open", "qualifications of the outcome assessors, if subjective")
    add(T, "8c", "Outcome: blinding", "open", "actions to blind the outcome assessment")
    add(T, "9a", "Predictors: choice", "filled",
        "the 17 clinical variables of the paper's Table 1 (binarised with its cut-offs, clinical.CLINICAL_VARIABLES) "
        "and the triple-phase CT ROI; " + protocol_text)
    add(T, "9b", "Predictors: definition", "partly filled",
        "cut-offs in clinical.CLINICAL_VARIABLES; images: NC, ART, PV phases in HU; how and when measured is to be stated")
    add(T, "9c", "Predictors: assessors", "open", "who drew the tumour ROIs, their qualifications")
    add(T, "10", "Sample size", "partly filled",
        f"the whole available {cohort_name} ({n} patients, {n_er} events, {n_er / 17:.1f} events per candidate "
        "clinical variable); no sample-size calculation; the seed simulation (notebook 08) gives the smallest AUC "
        "difference this size can detect" if have["study_paper_differences.csv"] else
        f"the whole available {cohort_name} ({n} patients, {n_er} events); no sample-size calculation")
    add(T, "11", "Missing data", "filled", "; ".join(missing))
    add(T, "12a", "Analytical methods: data use", "filled" if validation else "open", validation or "run notebook 01")
    add(T, "12b", "Analytical methods: predictor handling", "filled",
        "clinical: binary indicators at the paper's cut-offs (BCLC 3 bits); images: HU window to [0, 1], the networks' "
        "PhaseScaling maps them to ImageNet's caffe input; radiomics: median imputation and standardisation fitted "
        "on the training fold")
    add(T, "12c", "Analytical methods: model type and building", "filled", models_text + "; " + TUNING_TEXT)
    add(T, "12d", "Analytical methods: heterogeneity across clusters", "open",
        "single cohort (one centre): not examined; fold-to-fold SD is reported")
    add(T, "12e", "Analytical methods: performance measures", "filled",
        "accuracy (threshold 0.5) and AUC per fold as mean ± SD at patient level for every model (slice-level fold "
        "metrics kept beside, as the paper's form, inferred); pooled patient-level AUC with 95% bootstrap interval; DeLong test and paired bootstrap interval of AUC differences for every paired "
        "comparison (conditional on the fitted fold models), beside the AUC differences over training seeds; Brier score, calibration intercept and slope, reliability curves; decision curves (net benefit)")
    add(T, "12f", "Analytical methods: model updating", "filled", "none (no recalibration)")
    add(T, "12g", "Analytical methods: how predictions were calculated", "filled",
        "by the study's code (hccer_lib, notebooks 01-06); out-of-fold probabilities in predictions/<model>.csv; "
        "slice probabilities averaged per patient for patient-level results")
    add(T, "13", "Class imbalance", "filled" if balance else "open",
        f"no class-imbalance method (no reweighting or resampling); {balance}" if balance else "run notebook 01")
    add(T, "14", "Fairness", "open", "approaches to model fairness; subgroup performance is not examined")
    add(T, "15", "Model output", "filled",
        "probability of ER (second neuron of the softmax; random forest class probability); patient probability = "
        "mean over the patient's slices; class = probability >= 0.5 (fixed, not tuned) for accuracy")
    add(T, "16", "Training versus evaluation", "filled",
        "internal cross-validation: training and test patients come from the same cohort, setting, eligibility, "
        "outcome and predictors")
    add(T, "17", "Ethical approval", "open",
        "synthetic cohort: no human data; a real cohort: name the approving board and the consent or waiver"
        if synthetic else "name the approving board and the consent or waiver")
    add(T, "18a", "Open science: funding", "open", manuscript)
    add(T, "18b", "Open science: conflicts of interest", "open", manuscript)
    add(T, "18c", "Open science: protocol", "open", "where the protocol can be accessed, or that none was prepared")
    add(T, "18d", "Open science: registration", "open", "register and number, or that the study was not registered")
    add(T, "18e", "Open science: data sharing", "filled" if synthetic else "open",
        "the synthetic cohort is regenerated by the code (python -m hccer_lib synth, seed "
        f"{ground_truth.get('seed', '?')})" if synthetic else "availability of the cohort's data")
    add(T, "18f", "Open science: code sharing", "partly filled",
        "the whole analysis is the repository's code (hccer_lib, notebooks, run_all.sh); its public location is to be stated")
    add(T, "19", "Patient and public involvement", "open", manuscript)
    add(T, "20a", "Participants: flow", "partly filled",
        f"{counts}; the number screened and excluded is the cohort's own")
    add(T, "20b", "Participants: characteristics", "filled" if have["table1_clinical.md"] else "partly filled",
        "Table 1 (figures/table1_clinical.md): every clinical variable by outcome; per-fold make-up in the study "
        "report (report.fold_characteristics); follow-up time is to be stated")
    add(T, "20c", "Participants: development vs evaluation data", "filled" if folds is not None else "open",
        "every test fold is drawn from the same cohort, stratified by label; its make-up beside the whole cohort: "
        "report.fold_characteristics" if folds is not None else "run notebook 01")
    add(T, "21", "Model development: participants and events per analysis", "filled" if flow_text else "open",
        flow_text or "run notebooks 01-02")
    add(T, "22", "Model specification", "partly filled",
        models_text + "; the code rebuilds every fold's model (training.train_fold) and saves whole-cohort refits "
        "that predict new patients (hccer_lib.final_model, notebook 07); whether trained weights are shared is to be stated")
    add(T, "23a", "Model performance with confidence intervals", "partly filled" if performance else "open",
        (performance + "; key subgroups are not examined") if performance else "run notebooks 01-06")
    add(T, "23b", "Model performance: heterogeneity across clusters", "open", "single cohort: not examined")
    add(T, "24", "Model updating", "filled", "none")
    add(T, "25", "Interpretation", "open", manuscript)
    add(T, "26", "Limitations", "open",
        manuscript + ("; among them: the synthetic cohort, the paper's selection of clinical variables on the whole "
                      "cohort, internal validation only" if synthetic else ""))
    add(T, "27a", "Usability: poor-quality or missing inputs", "partly filled",
        "the loaders refuse a bad input with one named error (cohort.validate_cohort); how to act on it in care is "
        "to be stated")
    add(T, "27b", "Usability: user interaction and expertise", "open",
        "the model needs a tumour ROI per phase, drawn by a reader; expertise required is to be stated")
    add(T, "27c", "Usability: next steps", "open", manuscript)

    # -- CLAIM 2024 ----------------------------------------------------------------------
    C = CLAIM
    add(C, "1", "Title: identification as an AI study", "open", manuscript)
    add(C, "2", "Abstract", "open", manuscript)
    add(C, "3", "Background and role of the AI approach", "open", manuscript)
    add(C, "4", "Aims, objectives and hypotheses", "open", manuscript)
    add(C, "5", "Prospective or retrospective study", "filled" if synthetic else "open",
        "synthetic data, no patients" if synthetic else "retrospective or prospective (the paper: retrospective)")
    add(C, "6", "Study goal", "open", manuscript)
    add(C, "7", "Data sources", "filled" if synthetic else "open",
        synthetic_source if synthetic else f"{cohort_name}: source of the images and clinical data")
    add(C, "8", "Inclusion and exclusion criteria", "partly filled",
        f"every patient of clinical.csv with three phases and a tumour ROI ({n}); the cohort's criteria are to be stated")
    add(C, "9", "Data pre-processing", "filled" if preprocess else "open", preprocess or "run notebook 02")
    add(C, "10", "Selection of data subsets", "filled" if dataset_meta is not None else "open",
        "all ROI slices of the reference phase (one sample per slice, all of a patient's slices used)"
        if dataset_meta is not None else "run notebook 02")
    add(C, "11", "De-identification methods", "filled" if synthetic else "open",
        "not needed: generated data" if synthetic else "how the images and clinical data were de-identified")
    add(C, "12", "Missing data", "filled", "; ".join(missing))
    add(C, "13", "Image acquisition protocol", "partly filled" if geometry_text else "open",
        (geometry_text + ("; generated volumes" if synthetic else "; scanner, kVp, contrast timing are to be stated"))
        if geometry_text else "scanner, reconstruction and contrast timing of each phase")
    add(C, "14", "Reference standard: definition", "partly filled",
        "early recurrence within one year of resection (early_recurrence of clinical.csv); how it was established "
        "is to be stated")
    add(C, "15", "Reference standard: rationale", "open", manuscript)
    add(C, "16", "Reference standard: source of annotations", "partly filled",
        "tumour ROIs read from <phase>_roi label images and/or roi_boxes.csv" + ("; generated with the volumes"
                                                                                  if synthetic else "; who drew them is to be stated"))
    add(C, "17", "Annotation of the test set", "partly filled",
        "test patients' ROIs are the same kind of input as the training patients' (drawn before the analysis); "
        "how they were drawn is to be stated")
    add(C, "18", "Inter- and intra-rater variability", "open", "not measured")
    add(C, "19", "Assignment to partitions", "filled" if validation else "open", validation or "run notebook 01")
    add(C, "20", "Level at which partitions are disjoint", "filled" if folds is not None else "open",
        "patient: folds.csv assigns each patient to one fold, and every slice takes its patient's fold"
        + ("" if slice_ids is None or set(slice_ids) <= set(folds["patient_id"].astype(str)) else " (WARNING: some "
           "slices have no fold)") if folds is not None else "run notebook 01")
    add(C, "21", "Intended sample size", "partly filled",
        f"the whole available cohort ({n} patients, {n_er} ER); no sample-size calculation")
    add(C, "22", "Detailed description of the model", "filled", models_text)
    add(C, "23", "Software libraries and packages", "filled", software)
    add(C, "24", "Initialisation of model parameters", "filled", imagenet_text)
    add(C, "25", "Details of training", "filled", deep_spec + "; " + (radiomics_text or "radiomics not run"))
    add(C, "26", "Selection of the final model", "filled",
        "no selection on test data: fixed epochs, the last weights of each fold are evaluated; the paper's model "
        "comparisons are reported for all models")
    add(C, "27", "Ensembling", "filled", "none (one network per fold)")
    add(C, "28", "Metrics of model performance", "filled",
        "accuracy and AUC (per fold and pooled), Brier score, calibration intercept and slope, net benefit")
    add(C, "29", "Statistical significance and uncertainty", "filled",
        "95% bootstrap interval of each pooled AUC; DeLong test and paired bootstrap 95% interval of every AUC "
        "difference (patients resampled; conditional on the fitted fold models, training variance ignored), beside "
        "the difference over training seeds (mean, SD, share of seed pairs in which model_a was better)"
        + ("; the seed simulation's spread of AUCs over simulated cohorts, with the significance threshold (1.96 SE) "
           "and detectable difference (2.80 SE) of every simulated pair" if have["study_seed_spread.csv"] else ""))
    add(C, "30", "Robustness or sensitivity analysis", "filled" if have["study_seed_spread.csv"] else "partly filled",
        "clinical variable selection on the whole cohort (paper) vs inside each training fold (strict)"
        + ("; seed simulation: the study's protocol repeated on other simulated cohorts (clinical models on every "
           "cohort, radiomics on the first ones, networks only when deep cohorts are asked for)"
           if have["study_seed_spread.csv"] else "; the seed simulation has not run"))
    add(C, "31", "Explainability or interpretability", "filled" if have["fig8_gradcam.png"] else "open",
        "Grad-CAM on the three phases for correctly and wrongly predicted patients (figures/fig8_gradcam.png)"
        if have["fig8_gradcam.png"] else "run notebook 08 (Grad-CAM)")
    add(C, "32", "Evaluation on internal data", "filled" if validation else "open", validation or "run notebook 01")
    add(C, "33", "Testing on external data", "open", "not done: internal cross-validation only")
    add(C, "34", "Clinical trial registration", "open", "registration, or that the study was not registered")
    add(C, "35", "Numbers of patients included and excluded", "partly filled",
        f"{counts}; excluded patients are the cohort's own")
    add(C, "36", "Characteristics of cases in each partition", "filled" if folds is not None else "open",
        "report.fold_characteristics: ER, sex, age and tumour size of every test fold beside the whole cohort"
        if folds is not None else "run notebook 01")
    add(C, "37", "Performance metrics and statistical uncertainty", "filled" if performance else "open",
        performance or "run notebooks 01-06")
    add(C, "38", "Diagnostic performance and its precision", "partly filled" if performance else "open",
        "accuracy at threshold 0.5 per fold at patient level (mean ± SD); sensitivity and specificity are not tabulated"
        if performance else "run notebooks 01-06")
    add(C, "39", "Failure analysis of incorrect results", "filled" if have["study_gradcam_patients.csv"] else "open",
        "Grad-CAM of wrongly predicted patients beside correctly predicted ones (figures/study_gradcam_patients.csv)"
        if have["study_gradcam_patients.csv"] else "run notebook 08")
    add(C, "40", "Study limitations", "open", manuscript)
    add(C, "41", "Implications for practice", "open", manuscript)
    add(C, "42", "Protocol or additional technical details", "partly filled",
        "the notebooks and hccer_lib document every step; a study protocol is to be referenced")
    add(C, "43", "Availability of software, model and data", "partly filled",
        "the code reruns the whole study (run_all.sh)" + ("; the synthetic cohort is regenerated by it" if synthetic else
                                                         "; data availability is to be stated"))
    add(C, "44", "Funding", "open", manuscript)
    return pd.DataFrame(rows, columns=CHECKLIST_COLUMNS)


def write_checklist(figures_dir: str | os.PathLike, frame: pd.DataFrame, synthetic: bool) -> tuple[Path, Path]:
    """Write ``figures/reporting_checklist.{csv,md}`` (atomic); the Markdown counts the statuses."""
    counts = frame.groupby(["framework", "status"]).size().unstack(fill_value=0)
    summary = "; ".join(f"{framework}: " + ", ".join(f"{int(row.get(s, 0))} {s}" for s in STATUSES)
                        for framework, row in counts.iterrows())
    note = ("Filled from the run itself where it can answer an item (the value says from what); `open` items need "
            "the manuscript or the cohort's documentation. Item numbers of TRIPOD+AI (Collins et al., BMJ 2024) and "
            "CLAIM 2024 (Tejani et al., Radiology: Artificial Intelligence 2024). " + summary + ".")
    if synthetic:
        note = outputs.SYNTHETIC_NOTE + "\n\n" + note
    return outputs.write_table(Path(figures_dir) / CHECKLIST_FILE, frame,
                               title="Reporting checklist: TRIPOD+AI and CLAIM 2024", note=note)
