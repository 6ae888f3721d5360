"""External validation: the final models of one cohort applied to another labelled cohort.

The development cohort's final models (the folder written by notebook 07,
``model_folder.load_final_model``) predict every patient of a second, labelled cohort
through the same path as ``python -m hccer_lib predict --cohort``
(``prediction.predict_cohort``: a patient that cannot be predicted gets a failed row and is
left out, counted). On the predicted patients of the second cohort, per model:

- **discrimination**: AUC (``evaluation.auc``) with a percentile bootstrap 95% interval over
  patients (``evaluation.bootstrap_auc_ci``);
- **calibration**: observed and mean predicted ER, Brier score, the calibration intercept
  (calibration-in-the-large: ``logit P(ER) = a + logit(p)``, ``logit(p)`` an offset, slope
  fixed at 1) and the calibration slope (``logit P(ER) = a + b · logit(p)``, both free), and
  the reliability curve (``evaluation.reliability_curve``); a calibrated model has 0 and 1;
- **decision curves**: net benefit against threshold (``evaluation.net_benefit``);
- **case-mix**: Table 1 (``clinical.table1``) of both cohorts side by side, when the
  development cohort's folder is known. Both are read by the rule of ``predict --cohort``
  (their own ``data_dictionary.yaml``, else the model's saved dictionary, else the paper's):
  the external cohort exactly as its predictions read it (``new_patients.read_cohort_clinical``).

Probabilities are clipped to ``[CLIP, 1 - CLIP]`` before the logit. Everything is computed at
patient level (the final models give one probability per patient). Results on a synthetic
cohort, or from models fitted on one, are labelled SYNTHETIC.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from hccer_lib import evaluation, outputs

#: Probabilities are clipped to [CLIP, 1 - CLIP] before their logit is taken.
CLIP = evaluation.CALIBRATION_CLIP
#: Equal-width bins of the reliability curve.
RELIABILITY_BINS = 10
#: Output files (in the output folder); tables are written as .csv and .md.
DISCRIMINATION_FILE = "external_discrimination"
CALIBRATION_FILE = "external_calibration"
RELIABILITY_FILE = "external_reliability.csv"
DECISION_FILE = "external_decision_curve.csv"
CASE_MIX_FILE = "external_case_mix"
PREDICTIONS_FILE = "external_predictions.csv"
FIGURE_FILE = "fig9_external_validation.png"
SYNTHETIC_LABEL = "SYNTHETIC"


# %% Calibration -------------------------------------------------------------------------------

# One implementation for the study report and external validation (hccer_lib.evaluation).
calibration_intercept = evaluation.calibration_intercept
calibration_slope = evaluation.calibration_slope


# %% Per-model tables -----------------------------------------------------------------------------


def model_frames(patients: pd.DataFrame, models: list[str]) -> dict[str, pd.DataFrame]:
    """The predicted, labelled patients of ``predict_cohort``'s table, per model.

    Args:
        patients: ``prediction.predict_cohort``'s first frame (``patient_id, y_true,
            <model>..., status``).
        models: the output columns to read.

    Returns:
        model → ``patient_id, slice, fold, y_true, y_prob`` (``evaluation``'s predictions
        form; one row per patient, ``slice`` and ``fold`` 0).
    """
    from hccer_lib.prediction import STATUS_OK

    used = patients[(patients["status"] == STATUS_OK) & patients["y_true"].notna()]
    return {model: pd.DataFrame({"patient_id": used["patient_id"].astype(str).to_numpy(), "slice": 0, "fold": 0,
                                 "y_true": used["y_true"].astype(int).to_numpy(),
                                 "y_prob": used[model].astype(float).to_numpy()})
            for model in models}  # fmt: skip


def discrimination_table(frames: dict[str, pd.DataFrame], n_bootstrap: int = 1000, seed: int = 2020) -> pd.DataFrame:
    """``model, n_patients, n_er, auc, auc_ci_low, auc_ci_high`` (percentile bootstrap 95%, patients resampled)."""
    from hccer_lib import evaluation

    rows = []
    for model, frame in frames.items():
        y, p = frame["y_true"].to_numpy(int), frame["y_prob"].to_numpy(float)
        low, high = evaluation.bootstrap_auc_ci(y, p, n_bootstrap=n_bootstrap, seed=seed)
        rows.append({"model": model, "n_patients": len(y), "n_er": int(y.sum()), "auc": evaluation.auc(y, p),
                     "auc_ci_low": low, "auc_ci_high": high})
    return pd.DataFrame(rows, columns=["model", "n_patients", "n_er", "auc", "auc_ci_low", "auc_ci_high"])


def calibration_table(frames: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """``model, n_patients, observed_er_percent, mean_predicted_percent, brier, calibration_intercept,
    calibration_slope`` (:func:`calibration_intercept`, :func:`calibration_slope`)."""
    from hccer_lib import evaluation

    rows = []
    for model, frame in frames.items():
        y, p = frame["y_true"].to_numpy(int), frame["y_prob"].to_numpy(float)
        rows.append({"model": model, "n_patients": len(y), "observed_er_percent": 100 * y.mean(),
                     "mean_predicted_percent": 100 * p.mean(), "brier": evaluation.brier_score(y, p),
                     "calibration_intercept": calibration_intercept(y, p), "calibration_slope": calibration_slope(y, p)})
    return pd.DataFrame(rows)


def reliability_table(frames: dict[str, pd.DataFrame], n_bins: int = RELIABILITY_BINS) -> pd.DataFrame:
    """``model`` and ``evaluation.reliability_curve``'s columns, every model's bins."""
    from hccer_lib import evaluation

    parts = [evaluation.reliability_curve(f["y_true"], f["y_prob"], n_bins).assign(model=m) for m, f in frames.items()]
    frame = pd.concat(parts, ignore_index=True)
    return frame[["model", *[c for c in frame.columns if c != "model"]]]


def decision_table(frames: dict[str, pd.DataFrame], thresholds=None) -> pd.DataFrame:
    """``model`` and ``evaluation.net_benefit``'s columns (threshold, net_benefit, treat_all, treat_none)."""
    from hccer_lib import evaluation

    parts = [evaluation.net_benefit(f["y_true"], f["y_prob"], thresholds).assign(model=m) for m, f in frames.items()]
    frame = pd.concat(parts, ignore_index=True)
    return frame[["model", *[c for c in frame.columns if c != "model"]]]


def case_mix_table(development: pd.DataFrame | None, external: pd.DataFrame) -> pd.DataFrame:
    """Table 1 (``clinical.table1``) of both cohorts side by side.

    Args:
        development: the development cohort's clinical frame (``cohort.load_clinical``), or
            ``None`` when it is not known (its columns are then empty).
        external: the external cohort's clinical frame (the validated patients).

    Returns:
        ``variable, level`` (the first row ``patients`` / ``all``), then per cohort
        (``development_``, ``external_``): ``n`` (patients of the level), ``percent`` (of the
        cohort's patients), ``er`` (ER patients of the level), ``p_value`` (the cohort's own
        chi-squared test). Rows of the development cohort first, in Table 1's order; levels
        only the external cohort has come after.
    """
    from hccer_lib import clinical

    def one(frame: pd.DataFrame | None, prefix: str) -> pd.DataFrame:
        columns = [f"{prefix}_{c}" for c in ("n", "percent", "er", "p_value")]
        if frame is None:
            return pd.DataFrame(columns=["variable", "level", *columns])
        n = len(frame)
        table = clinical.table1(frame)
        labels = frame[clinical.LABEL_COLUMN].astype(int)
        head = pd.DataFrame([{"variable": "patients", "level": "all", "total": n, "er": int(labels.sum()), "p_value": np.nan}])
        table = pd.concat([head, table[["variable", "level", "total", "er", "p_value"]]], ignore_index=True)
        table["percent"] = 100 * table["total"] / n
        return table.rename(columns={"total": columns[0], "percent": columns[1], "er": columns[2], "p_value": columns[3]})[
            ["variable", "level", *columns]]

    dev, ext = one(development, "development"), one(external, "external")
    if development is None:
        merged = ext.merge(dev, on=["variable", "level"], how="left")
    else:
        merged = dev.merge(ext, on=["variable", "level"], how="outer", sort=False)
        order = {key: i for i, key in enumerate(zip(dev["variable"], dev["level"], strict=True))}
        later = {key: len(order) + i for i, key in enumerate(zip(ext["variable"], ext["level"], strict=True))}
        rank = [order.get(key, later.get(key)) for key in zip(merged["variable"], merged["level"], strict=True)]
        merged = merged.iloc[np.argsort(rank, kind="stable")].reset_index(drop=True)
    columns = ["variable", "level"] + [f"{p}_{c}" for p in ("development", "external") for c in ("n", "percent", "er", "p_value")]
    return merged[columns]


# %% The whole validation ---------------------------------------------------------------------------


@dataclass
class ExternalValidation:
    """The result of :func:`validate_externally`.

    Attributes:
        model_folder, cohort_dir: the final models and the labelled cohort they were applied to.
        development_name: the development cohort's name (the model folder's manifest).
        development_dir: its folder when known (for the case-mix), else ``None``.
        synthetic: the models were fitted on a synthetic cohort, or the cohort is synthetic.
        models: the models validated (``FinalModel.model_names``).
        predictions: ``predict_cohort``'s per-patient table (failed rows included).
        n_failed, n_unlabelled: patients left out: not predicted, or without a label.
        discrimination, calibration, reliability, decision, case_mix: the tables.
        note: the model folder's note (research use; synthetic).
    """

    model_folder: Path
    cohort_dir: Path
    development_name: str
    development_dir: Path | None
    synthetic: bool
    models: list[str]
    predictions: pd.DataFrame
    n_failed: int
    n_unlabelled: int
    discrimination: pd.DataFrame
    calibration: pd.DataFrame
    reliability: pd.DataFrame
    decision: pd.DataFrame
    case_mix: pd.DataFrame
    note: str

    @property
    def label(self) -> str:
        """`` (SYNTHETIC)`` for titles, or empty."""
        return f" ({SYNTHETIC_LABEL})" if self.synthetic else ""

    def frames(self) -> dict[str, pd.DataFrame]:
        """Model → the validated patients' predictions (:func:`model_frames`)."""
        return model_frames(self.predictions, self.models)

    def summary_lines(self) -> list[str]:
        """One line per model (AUC with CI, calibration intercept and slope), then what was left out."""
        head = (f"external validation{self.label}: models of {self.development_name!r} on {self.cohort_dir.name!r}, "
                f"{int(self.discrimination['n_patients'].iloc[0]) if len(self.discrimination) else 0} patients "
                f"({int(self.discrimination['n_er'].iloc[0]) if len(self.discrimination) else 0} ER)")  # fmt: skip
        lines = [head]
        calibration = self.calibration.set_index("model")
        for row in self.discrimination.itertuples():
            c = calibration.loc[row.model]
            lines.append(f"  {row.model:16s} AUC {row.auc:.3f} [{row.auc_ci_low:.3f}, {row.auc_ci_high:.3f}], "
                         f"calibration intercept {c['calibration_intercept']:+.3f}, slope {c['calibration_slope']:.3f}, "
                         f"Brier {c['brier']:.3f}")  # fmt: skip
        if self.n_failed or self.n_unlabelled:
            lines.append(f"left out: {self.n_failed} patients not predicted, {self.n_unlabelled} without a label")
        if self.development_dir is None:
            lines.append("case-mix: the development cohort's folder is not known (--development-cohort): "
                         "its columns are empty")
        return lines


def find_development_cohort(model_folder: str | os.PathLike, clinical_settings: dict | None = None) -> Path | None:
    """The development cohort of a model folder written by notebook 07, when it lies beside it.

    Notebook 07 writes ``<work_dir>/results/<profile>/final_model`` (``StudyRun.final_model_dir``);
    the synthetic cohort is its own work folder, so its clinical table is in that work folder.
    Returns the first of the model folder's parent and, for a folder laid out so, that work folder
    that holds a clinical table (``clinical.csv``, a data dictionary, or the table named by the
    model's saved dictionary in ``clinical_settings``), else ``None``.
    """
    from hccer_lib.cohort import CLINICAL_FILE
    from hccer_lib.dictionary import DICTIONARY_FILE
    from hccer_lib.study_run import RESULTS_FOLDER

    folder = Path(model_folder).resolve()
    candidates = [folder.parent] + ([folder.parents[2]] if folder.parent.parent.name == RESULTS_FOLDER else [])
    spec = (clinical_settings or {}).get("dictionary") or {}
    names = [CLINICAL_FILE, DICTIONARY_FILE] + ([spec["table"]] if isinstance(spec.get("table"), str) else [])
    return next((c for c in candidates if any((c / name).is_file() for name in names)), None)


def read_development_cohort(development_dir: str | os.PathLike, clinical_settings: dict | None = None) -> pd.DataFrame:
    """The development cohort's clinical table for the case-mix, read by the rule of ``predict --cohort``.

    Its own ``data_dictionary.yaml`` when it has one (checked against the model's variables),
    else the model's saved dictionary (``clinical_settings``: the model's ``manifest["clinical"]``),
    else the paper's (``new_patients.cohort_dictionary``); every row must be valid.

    Raises:
        cohort.CohortError: the first problem, its text naming the development cohort's folder
            (the patient and the file as ``cohort.load_clinical`` names them).
    """
    from hccer_lib import cohort, new_patients

    development_dir = Path(development_dir)
    try:
        return cohort.load_clinical(development_dir, new_patients.cohort_dictionary(development_dir, clinical_settings))
    except cohort.CohortError as err:
        raise cohort.CohortError(f"development cohort {development_dir}: {err.problem}", err.patient, err.file) from None


def validate_externally(
    model_folder: str | os.PathLike,
    cohort_dir: str | os.PathLike,
    development_cohort: str | os.PathLike | None = None,
    n_bootstrap: int = 1000,
    seed: int = 2020,
    progress: bool = False,
    self_check: bool = True,
) -> ExternalValidation:
    """Apply the final models in ``model_folder`` to the labelled cohort ``cohort_dir`` and measure them.

    Args:
        development_cohort: the folder of the cohort the models were fitted on, for the
            case-mix table; default :func:`find_development_cohort` (``None`` leaves the
            development columns empty).
        n_bootstrap, seed: the AUC's bootstrap interval.
        self_check: ``load_final_model``'s end-to-end check of the folder.

    Raises:
        model_folder.ModelFolderError: a folder that cannot be trusted.
        cohort.CohortError: a problem of the cohort's table itself.
        ValueError: the development cohort does not match the folder's manifest (patients),
            or the predicted, labelled patients do not hold both classes.
    """
    from hccer_lib import new_patients, prediction
    from hccer_lib.model_folder import load_final_model

    model_folder, cohort_dir = Path(model_folder), Path(cohort_dir)
    final = load_final_model(model_folder, self_check=self_check)
    trained_on = final.manifest["cohort"]
    settings = final.manifest["clinical"]
    development_dir = (Path(development_cohort) if development_cohort is not None
                       else find_development_cohort(model_folder, settings))  # fmt: skip
    development = None
    if development_dir is not None:
        development = read_development_cohort(development_dir, settings)
        if len(development) != trained_on["n_patients"]:
            raise ValueError(f"the development cohort {development_dir} has {len(development)} patients; the models of "
                             f"{model_folder} were fitted on {trained_on['n_patients']} ({trained_on['name']!r})")  # fmt: skip

    patients, _ = prediction.predict_cohort(final, cohort_dir, progress=progress)
    ok = patients["status"] == prediction.STATUS_OK
    labelled = ok & patients["y_true"].notna()
    y = patients.loc[labelled, "y_true"].astype(int)
    if y.nunique() < 2:
        raise ValueError(f"external validation needs predicted patients of both classes; {cohort_dir} has "
                         f"{int(y.sum())} ER and {int((y == 0).sum())} NER predicted of {len(patients)} patients "
                         f"({int((~ok).sum())} not predicted)")  # fmt: skip
    frames = model_frames(patients, final.model_names)

    # the external cohort read as predict_cohort read it: its own dictionary, else the model's
    external, _ = new_patients.read_cohort_clinical(cohort_dir, settings)
    used = set(patients.loc[labelled, "patient_id"].astype(str))
    attrs = dict(external.attrs)
    external = external[external["patient_id"].astype(str).isin(used)].reset_index(drop=True)
    external.attrs = attrs

    synthetic = bool(trained_on.get("synthetic")) or (cohort_dir / "ground_truth.json").is_file()
    return ExternalValidation(
        model_folder=model_folder, cohort_dir=cohort_dir, development_name=str(trained_on["name"]),
        development_dir=development_dir, synthetic=synthetic, models=list(final.model_names), predictions=patients,
        n_failed=int((~ok).sum()), n_unlabelled=int((ok & patients["y_true"].isna()).sum()),
        discrimination=discrimination_table(frames, n_bootstrap, seed), calibration=calibration_table(frames),
        reliability=reliability_table(frames), decision=decision_table(frames),
        case_mix=case_mix_table(development, external), note=final.manifest["note"],
    )  # fmt: skip


def plot_external_validation(result: ExternalValidation):
    """ROC, reliability and decision curves of every model on the external cohort; returns the figure."""
    import matplotlib.pyplot as plt

    from hccer_lib import evaluation

    frames = result.frames()
    fig, axes = plt.subplots(1, 3, figsize=(16, 5))
    evaluation.plot_roc(frames, axes[0])
    evaluation.plot_reliability(frames, axes[1], n_bins=RELIABILITY_BINS)
    evaluation.plot_decision_curve(frames, axes[2])
    fig.suptitle(f"Models of {result.development_name!r} on the external cohort {result.cohort_dir.name!r}{result.label}")
    fig.tight_layout()
    return fig


def write_external_validation(result: ExternalValidation, out: str | os.PathLike) -> list[Path]:
    """Write the tables, the per-patient predictions and the figure to ``out``; returns the paths."""
    import matplotlib.pyplot as plt

    out = Path(out)
    note = (outputs.SYNTHETIC_NOTE + " " if result.synthetic else "") + result.note
    where = f"models of {result.development_name!r} on {result.cohort_dir.name!r}{result.label}"
    written = [outputs.write_csv(out / PREDICTIONS_FILE, result.predictions)]
    written += outputs.write_table(out / DISCRIMINATION_FILE, result.discrimination, title=f"Discrimination, {where}",
                                   note=note + " AUC at patient level; 95% percentile bootstrap interval over patients.")
    written += outputs.write_table(out / CALIBRATION_FILE, result.calibration, title=f"Calibration, {where}",
                                   note=note + " calibration_intercept: logit P(ER) = a + logit(p) (slope fixed at 1); "
                                   "calibration_slope: logit P(ER) = a + b logit(p); 0 and 1 when calibrated.")
    written.append(outputs.write_csv(out / RELIABILITY_FILE, result.reliability))
    written.append(outputs.write_csv(out / DECISION_FILE, result.decision))
    dev = result.development_dir.name if result.development_dir is not None else "not given"
    written += outputs.write_table(out / CASE_MIX_FILE, result.case_mix,
                                   title=f"Case-mix: Table 1 of the development cohort ({dev}) and of the external cohort "
                                   f"({result.cohort_dir.name}){result.label}", note=note)
    fig = plot_external_validation(result)
    written.append(outputs.save_figure(fig, out / FIGURE_FILE))
    plt.close(fig)
    return written
