"""The study report's reporting checklist and the tables it is filled from.

A reviewer of a prediction-model study reads it against TRIPOD+AI (Collins et al., BMJ
2024;385:e078378; 27 items, some with parts a-g) and, for an imaging AI study, CLAIM 2024
(Tejani et al., Radiology: Artificial Intelligence 2024; 44 items). :func:`checklist`
fills every item that the run itself can answer (counts of patients, slices and events
per fold, preprocessing settings, model specification and hyper-parameters, validation
scheme, software versions with PyRadiomics' parameter file, missing-data handling, class
balance, which analyses and figures exist) and leaves the rest marked ``open`` with what
has to be supplied (ethics approval, data source and dates, blinding, the manuscript's
own text). Item numbers are those of the published checklists. The items, their wording
and when each counts as filled are data (``checklist.yaml`` beside this module);
:func:`checklist_facts` measures the run and :func:`render_checklist` fills them in.

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
from hccer_lib.models import (
    FUSION_MODELS,
    MODEL_NAMES,
    NETWORK_MODELS,
    PAPER_TABLE_ROWS,
    REGISTRY,
    paper_auc,
    paper_values,
)
from hccer_lib.models import get as model_record
from hccer_lib.profiles import DEFAULT_LAYER_ACTIVATION
from hccer_lib.study_run import DEFAULT_SETTINGS

CHECKLIST_COLUMNS = ["framework", "item", "topic", "status", "value"]
CHECKLIST_FILE = "reporting_checklist"
TRIPOD = "TRIPOD+AI"
CLAIM = "CLAIM 2024"
STATUSES = ("filled", "partly filled", "open")
#: The checklist's items, their wording and when each is filled (format in its header).
CHECKLIST_ITEMS_FILE = Path(__file__).with_name("checklist.yaml")

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

#: The study's main models, in its order: the model registry's (``models.MODEL_NAMES``).
MODELS = MODEL_NAMES


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
    ("Table 4", "clinical_lr", "clinical_rf", "a logistic regression vs the forest on the clinical vector ('random forest performs best')"),
    ("Table 5", "fusion_d_joint", "clinical_lr", "fusion D with joint loss vs a logistic regression on its clinical vector"),
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
    for model in NETWORK_MODELS:
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
    ``figures_dir`` is given, recorded in ``<figures_dir>/model_comparisons.csv``, which is first
    written anew from the earlier notebooks' comparison files (``evaluation.assemble_comparisons``):
    the file then holds every comparison of the run.

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
    if figures_dir is not None:
        evaluation.assemble_comparisons(figures_dir)
    for source, model_a, model_b, question in comparisons:
        if not (evaluation.predictions_path(work_dir, model_a).is_file() and evaluation.predictions_path(work_dir, model_b).is_file()):
            continue
        if figures_dir is not None:
            table = evaluation.record_comparison(figures_dir, work_dir, model_a, model_b, n_bootstrap, seed)
            row = table[(table["model_a"] == model_a) & (table["model_b"] == model_b)].iloc[-1].to_dict()
        else:
            row = evaluation.comparison_row(work_dir, model_a, model_b, n_bootstrap, seed)
        paper_a, paper_b = paper_auc(model_a), paper_auc(model_b)
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
    for table in PAPER_TABLE_ROWS:
        frame = evaluation.results_table(work_dir, table=table, n_bootstrap=n_bootstrap, seed=seed, cohort=cohort)
        frames.append(frame.assign(tables=table.replace("table", "Table ")))
    combined = pd.concat([f for f in frames if len(f)], ignore_index=True) if any(len(f) for f in frames) else frames[0]
    if len(combined) == 0:
        return combined.assign(paper_auc_mean=[], paper_auc_sd=[], paper_accuracy_mean=[], auc_minus_paper=[])
    tables = combined.groupby("model", sort=False)["tables"].agg(", ".join)
    combined = combined.drop_duplicates("model").drop(columns="tables").merge(tables, left_on="model", right_index=True)
    paper = [paper_values(model) for model in combined["model"]]
    combined["paper_auc_mean"] = [np.nan if p is None else p.auc_mean for p in paper]
    combined["paper_auc_sd"] = [np.nan if p is None else p.auc_sd for p in paper]
    combined["paper_accuracy_mean"] = [np.nan if p is None else p.accuracy_mean for p in paper]
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


#: What a network must reach on a synthetic cohort for the study to say that it learns what the cohort holds,
#: against the cohort's learned references (logistic regressions on the generator's true inputs, ``cv_auc`` of
#: ``ground_truth.json``) and the clinical forest: the deep model within ``DEEP_REFERENCE_GAP`` of the image
#: reference; fusion_d_joint at least max(clinical_rf, both reference - ``JOINT_REFERENCE_GAP``); no fusion model
#: below clinical_rf - ``FUSION_FOREST_GAP``. Each network is read by its pooled patient AUC, mean over training seeds.
DEEP_REFERENCE_GAP = 0.05
JOINT_REFERENCE_GAP = 0.03
FUSION_FOREST_GAP = 0.02
#: The learned reference that each model is read against: the one of the inputs it sees (radiomics: the image).
REFERENCE_OF_INPUTS = {("image",): "image", ("clinical",): "clinical", ("clinical", "image"): "both"}


def learning_checks(results: pd.DataFrame, cohort_dir: str | os.PathLike) -> pd.DataFrame | None:
    """Each model against the learned reference of its inputs, and the networks against their checks (above).

    ``results`` has one row per model with ``pooled_auc`` (the seed ensemble's) and ``seed_auc_mean``,
    ``seed_auc_sd`` (``evaluation.summarise_model``; :func:`results_vs_paper`). Returns one row per model of
    ``results`` that reads the clinical vector, the image or both (a variant such as ``fusion_d_strict`` as its
    model does, but unchecked): ``model``, ``inputs`` (``image``, ``clinical``,
    ``both``), ``auc`` (a network's mean over training seeds, another model's pooled AUC), ``auc_sd`` (over
    seeds), ``pooled_auc``, ``learned_reference`` (of its inputs), ``below_reference``, and for the networks
    that are checked ``check`` (what is asked), ``bound`` (the AUC asked for), ``margin`` (``auc - bound``)
    and ``passes``. ``None`` for a cohort without ``ground_truth.json`` (a real cohort has no learned
    references). The fusion checks need the clinical forest's row: without it they are not made.
    """
    from hccer_lib import synth

    truth = synth.read_ground_truth(cohort_dir)
    if truth is None:
        return None
    references = {name: float(truth["oracle_auc"][name]["cv_auc"]) for name in ("image", "clinical", "both")}
    by_model = results.set_index("model")
    forest = float(by_model.loc["clinical_rf", "pooled_auc"]) if "clinical_rf" in by_model.index else None
    rows = []
    registered = {record.name for record in REGISTRY}
    for model in results["model"]:
        # a variant outside the registry (``fusion_d_strict``) reads the inputs of its model, unchecked
        base = model if model in registered else max([m for m in MODEL_NAMES if model.startswith(m + "_")], key=len,
                                                        default=None)
        if base is None:
            continue
        seen = {"image" if i == "radiomics" else i for i in model_record(base).inputs}
        inputs = REFERENCE_OF_INPUTS.get(tuple(sorted(seen)))
        if inputs is None:
            continue
        row = by_model.loc[model]
        network = base in NETWORK_MODELS
        auc = float(row["seed_auc_mean"]) if network else float(row["pooled_auc"])
        check, bound = "", np.nan
        if model == "deep_resnet50":
            check, bound = f"within {DEEP_REFERENCE_GAP} of the image reference", references["image"] - DEEP_REFERENCE_GAP
        elif model == "fusion_d_joint" and forest is not None:
            check = f"at least max(clinical_rf, both reference - {JOINT_REFERENCE_GAP})"
            bound = max(forest, references["both"] - JOINT_REFERENCE_GAP)
        elif model in FUSION_MODELS and forest is not None:
            check, bound = f"not below clinical_rf - {FUSION_FOREST_GAP}", forest - FUSION_FOREST_GAP
        rows.append({
            "model": model, "inputs": inputs, "auc": auc,
            "auc_sd": float(row["seed_auc_sd"]) if network else np.nan, "pooled_auc": float(row["pooled_auc"]),
            "learned_reference": references[inputs], "below_reference": references[inputs] - auc,
            "check": check, "bound": bound, "margin": auc - bound if check else np.nan,
            "passes": bool(auc >= bound) if check else None,
        })
    return pd.DataFrame(rows, columns=["model", "inputs", "auc", "auc_sd", "pooled_auc", "learned_reference",
                                       "below_reference", "check", "bound", "margin", "passes"])


def plot_learning_checks(frame: pd.DataFrame, title: str = "", ax=None):
    """Each model's AUC beside the learned reference of its inputs and, for the checked networks, the AUC asked for.

    Args:
        frame: from :func:`learning_checks`.
    Returns:
        The matplotlib axes.
    """
    import matplotlib.pyplot as plt

    frame = frame.reset_index(drop=True)
    if ax is None:
        _, ax = plt.subplots(figsize=(max(6, 0.9 * len(frame) + 2), 4.5))
    x = np.arange(len(frame))
    ax.errorbar(x, frame["auc"], yerr=frame["auc_sd"].fillna(0.0), fmt="o", color="tab:blue", capsize=3,
                label="this run: mean ± SD over training seeds (forests: pooled)")
    ax.plot(x + 0.18, frame["pooled_auc"], "s", color="tab:cyan", label="this run: seed ensemble, pooled")
    ax.hlines(frame["learned_reference"], x - 0.35, x + 0.35, color="black", linewidth=2,
              label="learned reference of the model's inputs")
    checked = frame[frame["check"] != ""]
    ax.hlines(checked["bound"], checked.index - 0.35, checked.index + 0.35, color="tab:red", linestyles="--",
              label="AUC asked for (check)")
    for i, row in checked.iterrows():
        ax.annotate("passes" if row["passes"] else f"{-row['margin']:.3f} short", (i, min(row["bound"], row["auc"])),
                    xytext=(0, -16), textcoords="offset points", ha="center", fontsize=7,
                    color="tab:green" if row["passes"] else "tab:red")
    ax.set_xticks(x, [f"{m}\n({i})" for m, i in zip(frame["model"], frame["inputs"], strict=True)], rotation=30,
                  ha="right", fontsize=8)
    ax.set_ylabel("pooled patient AUC")
    ax.set_ylim(min(0.4, float(np.nanmin(frame[["auc", "pooled_auc"]].to_numpy(float))) - 0.05), 1.0)
    ax.set_title(title or "What the models learn against what the cohort holds", fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    return ax


#: The row of :func:`image_readings` for the generator's own image score (``oracle_image`` of ``ground_truth.csv``).
GENERATOR_READER = "generator (what ER depends on)"


def image_readings(predictions: dict[str, pd.DataFrame], cohort_dir: str | os.PathLike) -> pd.DataFrame | None:
    """What each network's output follows among what the generator put in the images (synthetic cohort).

    One row per reader: first the generator's own image score (:data:`GENERATOR_READER`: ``oracle_image`` of
    ``ground_truth.csv``, the population-fitted regression of early recurrence on the image inputs, so what the
    label depends on through the images; left out where the file has no such column), then each network of ``predictions`` (model -> out-of-fold
    predictions; its patient logit from the seed ensemble's probability, ``evaluation.patient_level``). Each
    reader's logit is standardised over the cohort's patients and regressed on the generator's image inputs,
    each standardised (``synth.image_input_regression``; a description fitted and read on the same patients).
    Columns: ``reader``, ``patients``, ``r2`` (the share of the logit's variance that the inputs explain), then
    one per input of ``synth.IMAGE_INPUT_NAMES``: the SD of the reader's logit per SD of the input, the others
    held fixed. A network that learned what the label depends on has the generator's pattern, scaled by its
    ``r2``. A fusion model's logit also follows the clinical vector, which these inputs do not hold (bar the
    tumour's size and count of nodules), so its ``r2`` is lower by construction. ``None`` for a real cohort.

    Raises:
        ValueError: a patient of a network's predictions is not in the cohort, named with the model.
    """
    from hccer_lib import evaluation, synth

    table = synth.truth_table(cohort_dir)
    if table is None:
        return None
    table = table.set_index(table["patient_id"].astype(str), drop=False)
    scores = {}
    if "oracle_image" in table:  # a cohort written before the generator kept its scores has no such row
        scores[GENERATOR_READER] = (table, evaluation.clipped_logit(table["oracle_image"]))
    for model, frame in predictions.items():
        patients = evaluation.patient_level(frame).set_index("patient_id")
        unknown = sorted(set(patients.index.astype(str)) - set(table.index))
        if unknown:
            raise ValueError(f"{model}: {len(unknown)} patients not in {Path(cohort_dir) / 'ground_truth.csv'}, "
                             f"e.g. {unknown[:3]}")
        rows = table.loc[patients.index.astype(str)]
        scores[model] = (rows, evaluation.clipped_logit(patients["y_prob"]))
    records = []
    for reader, (rows, logit) in scores.items():
        weights, r2 = synth.image_input_regression(synth.standardise(np.asarray(logit, dtype=float)),
                                                   rows.reset_index(drop=True))
        records.append({"reader": reader, "patients": len(rows), "r2": r2, **weights})
    return pd.DataFrame(records, columns=["reader", "patients", "r2", *synth.IMAGE_INPUT_NAMES])


def plot_image_readings(frame: pd.DataFrame, title: str = "", ax=None):
    """:func:`image_readings` as a heat map: readers by rows, the generator's image inputs by columns.

    Returns:
        The matplotlib axes.
    """
    import matplotlib.pyplot as plt

    inputs = [c for c in frame.columns if c not in ("reader", "patients", "r2")]
    values = frame[inputs].to_numpy(float)
    if ax is None:
        _, ax = plt.subplots(figsize=(1.0 * len(inputs) + 3.5, 0.55 * len(frame) + 1.8))
    limit = max(float(np.nanmax(np.abs(values))), 0.1)
    image = ax.imshow(values, cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto")
    for (i, j), value in np.ndenumerate(values):
        ax.text(j, i, f"{value:+.2f}", ha="center", va="center", fontsize=7,
                color="white" if abs(value) > 0.6 * limit else "black")
    ax.set_xticks(np.arange(len(inputs)), inputs, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(np.arange(len(frame)), [f"{r} (R² {v:.2f})" for r, v in zip(frame["reader"], frame["r2"], strict=True)],
                  fontsize=8)
    ax.figure.colorbar(image, ax=ax, label="SD of the logit per SD of the input", shrink=0.8)
    ax.set_title(title or "What each network's output follows among the generator's image inputs", fontsize=10)
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


def dataset_slices(
    work_dir: str | os.PathLike, profile, cohort_dir: str | os.PathLike
) -> tuple[dict | None, np.ndarray | None]:
    """The processed dataset that the models used, without reading its images.

    That is the cache of the study's preprocessing for ``profile`` (``preprocessing.study_settings``:
    notebook 02's recorded settings) on the cohort's current content: its key
    (``preprocessing.dataset_key``) names the file, as ``preprocessing.study_dataset`` finds it;
    never another cache of the folder (other settings, an older cohort) however recent.

    Returns:
        ``(settings JSON, patient id of each slice [n_slices])``; ``(None, None)`` when there
        is none, ``(meta, None)`` when its arrays are missing.
    """
    from hccer_lib import preprocessing

    work_dir = Path(work_dir)
    key = preprocessing.dataset_key(preprocessing.study_settings(work_dir, profile),
                                    preprocessing.cohort_fingerprint(cohort_dir))
    json_path = work_dir / "processed" / f"images_{key}.json"
    if not json_path.is_file():
        return None, None
    try:
        meta = json.loads(json_path.read_text())
    except ValueError as err:
        raise ValueError(f"{json_path}: not a processed dataset's settings ({err})") from None
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
    selection_protocol: str = DEFAULT_SETTINGS.selection_protocol,
    image_headers: bool = True,
    results: pd.DataFrame | None = None,
    results_dir: str | os.PathLike | None = None,
    study=None,
) -> pd.DataFrame:
    """TRIPOD+AI and CLAIM 2024 items, filled from the run where it can answer them.

    The items, their wording and when each is filled are data (:data:`CHECKLIST_ITEMS_FILE`);
    :func:`checklist_facts` measures the run, :func:`render_checklist` fills them in.

    Args:
        work_dir: the cohort's work folder (the folds ``folds_<n>_seed<s>.csv``, ``processed/``, ``runs/``).
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
        results_dir: the folder of the run's ``predictions/`` (``StudyRun.results_dir``);
            default ``work_dir``.
        study: the run's settings (``StudyRun.study_settings``: ``alpha``, ``n_estimators``,
            ``inner_folds`` as the checklist states them); ``None``: the study's (``DEFAULT_SETTINGS``).

    Returns:
        ``framework, item, topic, status, value``; ``status`` one of :data:`STATUSES`.
    """
    facts = checklist_facts(work_dir, cohort_dir, profile, figures_dir=figures_dir, seed=seed, synthetic=synthetic,
                            selection_protocol=selection_protocol, image_headers=image_headers, results=results,
                            results_dir=results_dir, study=study)
    return render_checklist(checklist_template(), facts)


def checklist_template(path: str | os.PathLike = CHECKLIST_ITEMS_FILE) -> dict:
    """The checklist's phrases and items (``checklist.yaml``; its header describes the format)."""
    import yaml

    template = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    if set(template) != {"phrases", "items"} or set(template["items"]) != {TRIPOD, CLAIM}:
        raise ValueError(f"{path}: expected 'phrases' and 'items' of {TRIPOD} and {CLAIM}, got {sorted(template)}")
    return template


def checklist_facts(
    work_dir: str | os.PathLike,
    cohort_dir: str | os.PathLike,
    profile,
    figures_dir: str | os.PathLike | None = None,
    seed: int = 2020,
    synthetic: bool | None = None,
    selection_protocol: str = DEFAULT_SETTINGS.selection_protocol,
    image_headers: bool = True,
    results: pd.DataFrame | None = None,
    results_dir: str | os.PathLike | None = None,
    study=None,
) -> dict:
    """What the run can say about itself: the facts the checklist's templates name.

    Arguments as :func:`checklist`. A fact absent from a run (no folds yet, no network
    trained) is left out, and so is every item's text that needs it: the template's
    conditions (``folds``, ``dataset``, ``runs``, ...) say which case applies.
    """
    from hccer_lib import clinical as clinical_module
    from hccer_lib import cohort, evaluation
    from hccer_lib.profiles import get_profile

    study = DEFAULT_SETTINGS if study is None else study

    profile = get_profile(profile) if isinstance(profile, str) else profile
    work_dir, cohort_dir = Path(work_dir), Path(cohort_dir)
    results_dir = work_dir if results_dir is None else Path(results_dir)
    ground_truth_path = cohort_dir / "ground_truth.json"
    ground_truth = json.loads(ground_truth_path.read_text()) if ground_truth_path.is_file() else {}
    patients = cohort.load_clinical(cohort_dir)
    n, n_er = len(patients), int(patients["early_recurrence"].sum())
    is_resnet50 = tuple(profile.resnet_blocks) == (3, 4, 6, 3) and profile.resnet_width == 64
    facts = {
        "figures": _figure_names(figures_dir), "seed": seed,
        "synthetic": ground_truth_path.is_file() if synthetic is None else synthetic,
        "cohort_folder": cohort_dir.name, "generator": ground_truth.get("generator", "hccer_lib.synth"),
        "generator_version": ground_truth.get("generator_version", ""), "generator_seed": ground_truth.get("seed", "?"),
        "n": n, "n_er": n_er, "n_ner": n - n_er, "er_percent": 100 * n_er / n,
        "events_per_variable": n_er / len(clinical_module.CLINICAL_VARIABLES),
        "profile_name": profile.name, "image_size": profile.image_size, "resnet_blocks": str(tuple(profile.resnet_blocks)),
        "resnet_width": profile.resnet_width, "learning_rate": profile.learning_rate, "batch_size": profile.batch_size,
        "epochs": profile.epochs, "augment": bool(getattr(profile, "augment", False)), "resnet50": is_resnet50,
        "rf_params": ", ".join(f"{k}={v}" for k, v in {**clinical_module.RF_PARAMS, "n_estimators": study.n_estimators}.items()),
        "alpha": study.alpha, "n_estimators": study.n_estimators, "inner_folds": study.inner_folds,
        "paper_protocol": selection_protocol == "paper",
        "software_versions": ", ".join(f"{k} {v}" for k, v in software_versions().items()),
    }
    try:
        _, vector_names = clinical_module.clinical_matrix(patients, protocol="paper")
        facts["selected_variables"] = ", ".join(vector_names)
    except ValueError as err:
        facts["selected_variables"] = f"none ({err})"

    # folds and slices (notebooks 01, 02)
    folds_path = evaluation.folds_path(work_dir, profile.n_folds, seed)
    folds = pd.read_csv(folds_path, dtype={"patient_id": str}) if folds_path.is_file() else None
    dataset_meta, slice_ids = dataset_slices(work_dir, profile, cohort_dir)
    facts["slices"] = slice_ids is not None
    if slice_ids is not None:
        facts.update(n_slices=len(slice_ids), n_slice_patients=len(set(slice_ids)))
    facts["folds"] = folds is not None
    if folds is not None:
        flow = data_flow(folds, slice_ids)
        er_percent = flow["test_er"] / flow["test_patients"] * 100
        facts.update(
            fold_flow=_fold_flow_text(flow), n_folds=int(folds["fold"].nunique()),
            folds_seed=int(folds["seed"].iloc[0]) if "seed" in folds else seed,
            test_er_min=er_percent.min(), test_er_max=er_percent.max(),
            slices_without_fold=slice_ids is not None and not set(slice_ids) <= set(folds["patient_id"].astype(str)))
    facts["dataset"] = dataset_meta is not None
    if dataset_meta is not None:
        s = dataset_meta["settings"]
        facts.update(reference_phase=s["reference_phase"], tolerance_is_slice_thickness=s["tolerance_mm"] is None,
                     tolerance_mm=s["tolerance_mm"], margin=s["margin"], margin_mm=s.get("margin_mm", 0.0),
                     dataset_image_size=s["image_size"],
                     window_level=s["window_level"], window_width=s["window_width"],
                     n_dropped=len(dataset_meta.get("dropped", [])))

    # radiomics (notebook 03)
    radiomics_meta = _newest_json(sorted((work_dir / "processed").glob("radiomics_*.json")),
                                  lambda m: m.get("mode") == profile.radiomics_mode)
    facts["radiomics"] = radiomics_meta is not None
    if radiomics_meta is not None:
        setting = radiomics_meta["params"]["setting"]
        facts.update(
            pyradiomics_version=radiomics_meta["pyradiomics_version"], radiomics_params_file=radiomics_meta["params_file"],
            radiomics_mode=radiomics_meta["mode"], radiomics_feature_classes=", ".join(radiomics_meta["params"]["featureClass"]),
            radiomics_settings=", ".join(f"{k}={setting[k]}" for k in ("binWidth", "normalize", "resampledPixelSpacing",
                                                                       "force2D", "label") if k in setting),
            radiomics_n_features=radiomics_meta["n_features"], radiomics_summary=radiomics_meta.get("report_summary", ""))

    # networks (notebooks 04-06)
    runs = _run_settings(work_dir, profile.name)
    facts["runs"] = bool(runs)
    facts["imagenet"] = bool(runs) and is_resnet50 and any(r.get("imagenet_file_found") for r in runs.values())
    if runs:
        facts["keras_backends"] = ", ".join(sorted({r.get("keras_backend", "?") for r in runs.values()}))
    fusion = next((runs[m] for m in ("fusion_d", "fusion_b", "fusion_c", "fusion_a", "fusion_d_joint") if m in runs), None)
    facts["fusion_run"] = fusion is not None
    if fusion is not None:
        facts.update({key: fusion["network"][key]
                      for key in ("image_units", "clinical_filters", "clinical_kernel", "clinical_units")})
        # a run records it only where it is not the default (networks.KEYED_AT_DEFAULT_SINCE)
        facts["clinical_activation"] = fusion["network"].get("clinical_activation", DEFAULT_LAYER_ACTIVATION)
        facts["image_activation"] = fusion["network"].get("image_activation", DEFAULT_LAYER_ACTIVATION)

    # pooled AUCs of the models that have predictions
    predicted = [m for m in MODELS if evaluation.predictions_path(results_dir, m).is_file()]
    facts["predictions"] = bool(predicted)
    if predicted:
        known = results.set_index("model") if results is not None and len(results) else None
        summaries = []
        for model in predicted:
            if known is not None and model in known.index:
                s = known.loc[model]
            else:
                s = evaluation.summarise_model(evaluation.read_predictions(results_dir, model), profile.n_bootstrap, seed)
            summaries.append(f"{model} {s['pooled_auc']:.3f} [{s['pooled_auc_ci_low']:.3f}, {s['pooled_auc_ci_high']:.3f}]")
        facts["pooled_aucs"] = "; ".join(summaries)

    # image headers
    geometry = _image_geometry(cohort_dir, list(patients["patient_id"].astype(str))) if image_headers else {}
    facts["geometry"] = "; ".join(f"{phase}: {g['n']} volumes, in-plane spacing {_range(g['inplane'])}, slice "
                                  f"spacing {_range(g['slice'])}" for phase, g in geometry.items())
    return facts


def _fold_flow_text(flow: pd.DataFrame) -> str:
    """One clause per fold of :func:`data_flow`: training and test patients, events and slices."""
    def slices(count) -> str:
        return "" if pd.isna(count) else f", {count} slices"

    return "; ".join(f"fold {r.fold}: train {r.train_patients} patients ({r.train_er} ER{slices(r.train_slices)}), "
                     f"test {r.test_patients} ({r.test_er} ER{slices(r.test_slices)})" for r in flow.itertuples())


def render_checklist(template: dict, facts: dict) -> pd.DataFrame:
    """Fill the template's items (:func:`checklist_template`) with ``facts`` (:func:`checklist_facts`).

    Returns:
        ``framework, item, topic, status, value`` in the template's order.
    """
    context = _Context(template["phrases"], facts)
    rows = []
    for framework, items in template["items"].items():
        for spec in items:
            where = f"{framework} item {spec.get('item')}"
            cases = spec.get("cases", [spec])
            case = next((c for c in cases if context.holds(c.get("when", []), where)), None)
            if case is None:
                raise ValueError(f"{where}: no case holds")
            if case["status"] not in STATUSES:
                raise ValueError(f"status {case['status']!r} of {where} is not one of {STATUSES}")
            rows.append({"framework": framework, "item": spec["item"], "topic": spec["topic"],
                         "status": case["status"], "value": context.render(case["value"], where)})
    return pd.DataFrame(rows, columns=CHECKLIST_COLUMNS)


class _Context(dict):
    """Facts, and the template's phrases rendered on first use (``str.format_map`` asks for them by name)."""

    def __init__(self, phrases: dict, facts: dict):
        super().__init__(facts)
        self.phrases = phrases

    def __missing__(self, name: str) -> str:
        if name not in self.phrases:
            raise ValueError(f"the checklist names {name!r}, which is neither a fact of this run nor a phrase")
        self[name] = self.render(self.phrases[name], f"phrase {name!r}")
        return self[name]

    def holds(self, when, where: str) -> bool:
        """Whether every condition of ``when`` (a name, ``"not <name>"``, ``"figures/<file>"``, or a list) holds."""
        for condition in [when] if isinstance(when, str) else when:
            negate = condition.startswith("not ")
            name = condition.removeprefix("not ")
            if name.startswith("figures/"):
                value = name.removeprefix("figures/") in self["figures"]
            elif name in self:
                value = bool(self[name])
            else:
                raise ValueError(f"{where}: condition {condition!r} names no fact of this run")
            if value == negate:
                return False
        return True

    def render(self, text, where: str) -> str:
        """A template string, or a list of pieces (strings or ``{when, text, else}``), filled in."""
        if isinstance(text, str):
            return text.format_map(self)
        pieces = []
        for piece in text:
            if isinstance(piece, str):
                pieces.append(piece.format_map(self))
            elif self.holds(piece["when"], where):
                pieces.append(self.render(piece["text"], where))
            elif "else" in piece:
                pieces.append(self.render(piece["else"], where))
        return "".join(pieces)


def write_checklist(figures_dir: str | os.PathLike, frame: pd.DataFrame, synthetic: bool) -> tuple[Path, Path]:
    """Write ``<figures_dir>/reporting_checklist.{csv,md}`` (atomic); the Markdown counts the statuses."""
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
