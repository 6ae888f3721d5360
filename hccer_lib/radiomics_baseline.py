"""Conventional radiomics baseline: PyRadiomics features per phase -> LASSO selection -> random forest.

The paper's "conventional radiomics model" (IV.A, Table 3: 67.04% ± 4.9, AUC 0.6400 ± 0.03).

* Features: PyRadiomics on the tumour ROI of each phase (NC, ART, PV), with the settings of
  the parameter file ``radiomics_params.yaml`` beside this module. The ROI is the bounding
  box the radiologists drew, so the features describe the box (tumour plus the liver in its
  corners), not a tumour outline.
* ``mode="2d"`` (default): one row per reference-phase ROI slice, the three phases' slices
  matched by physical position exactly as in :mod:`hccer_lib.preprocessing`; 2-D texture per
  slice (``force2D``), the same unit the deep model classifies. ``mode="3d"``: one row per
  patient, features of the whole box volume of each phase.
* Small-ROI rule: texture features (every class but ``firstorder`` and ``shape``/``shape2D``)
  of an ROI with fewer than ``min_texture_voxels`` voxels, or with a single grey level after
  binning, are set to NaN rather than to PyRadiomics' degenerate values; an ROI on which
  PyRadiomics fails gets NaN for all its features. Every such ROI is counted in the
  extraction report, and the NaNs are replaced by the training-fold median (``SimpleImputer``
  inside the pipeline). Nothing is dropped, nothing crashes.
* Model: ``SimpleImputer(median) -> StandardScaler -> LassoSelector (L1 logistic regression,
  C by inner cross-validation grouped by patient) -> RandomForestClassifier``, all fitted
  inside each training fold of the shared folds.

Feature tables are cached in ``work_dir/processed/radiomics_<key>.csv`` with a ``.json``
beside them (PyRadiomics version, effective settings, extraction report, time).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk
from sklearn.base import BaseEstimator
from sklearn.ensemble import RandomForestClassifier
from sklearn.feature_selection import SelectorMixin
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from hccer_lib import outputs
from hccer_lib.cohort import PHASES
from hccer_lib.evaluation import fold_of
from hccer_lib.preprocessing import (
    DEFAULT_REFERENCE_PHASE,
    box_area_mm2,
    cohort_fingerprint,
    map_patients,
    match_phase_boxes,
)
from hccer_lib.study_run import DEFAULT_SETTINGS

PARAMS_FILE = Path(__file__).with_name("radiomics_params.yaml")
MODEL_NAME = "radiomics_rf"
ID_COLUMNS = ["patient_id", "slice", "z_mm", "roi_area_mm2", "y_true"]
#: Feature classes that stay valid on a tiny or constant ROI; every other class is texture.
NON_TEXTURE_CLASSES = ("firstorder", "shape", "shape2D")
DEFAULT_MIN_TEXTURE_VOXELS = DEFAULT_SETTINGS.min_texture_voxels  # the study's setting (study_run.StudySettings)
#: Inverse L1 penalties tried by the inner cross-validation (standardised features). Weaker
#: penalties than C = 1 keep nearly every feature and make liblinear slow.
DEFAULT_CS = tuple(np.logspace(-3, 0, 7).round(6))
FORMAT_VERSION = 2  # 2: roi_area_mm2

log = logging.getLogger("hccer")


# --------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------


def load_params(
    mode: str = "2d",
    feature_classes: tuple[str, ...] | None = None,
    params_file: str | os.PathLike = PARAMS_FILE,
) -> dict:
    """The PyRadiomics parameters of the parameter file, adapted to ``mode`` and ``feature_classes``.

    ``mode="2d"`` sets ``force2D: true``; ``"3d"`` sets it false and turns ``shape2D`` into ``shape``.
    ``feature_classes`` (e.g. ``profile.radiomics_feature_classes``) replaces the file's list.
    """
    import yaml

    if mode not in ("2d", "3d"):
        raise ValueError(f"mode must be '2d' or '3d', got {mode!r}")
    params = yaml.safe_load(Path(params_file).read_text())
    params = copy.deepcopy(params)
    classes = list(feature_classes) if feature_classes is not None else list(params.get("featureClass", {}))
    shape_name = "shape2D" if mode == "2d" else "shape"
    classes = [shape_name if c in ("shape", "shape2D") else c for c in classes]
    params["featureClass"] = {c: [] for c in dict.fromkeys(classes)}
    params["setting"]["force2D"] = mode == "2d"
    return params


@dataclass
class ExtractionReport:
    """What the small-ROI rule and failures did during one extraction.

    Attributes:
        n_rows: rows of the feature table (slices in 2-D, patients in 3-D).
        n_rois: ROIs extracted (rows x 3 phases).
        small_rois: ROIs under ``min_texture_voxels`` voxels (texture set to NaN).
        constant_rois: ROIs with one grey level after binning (texture set to NaN).
        failed_rois: ROIs on which PyRadiomics raised (all features NaN), with the message.
        dropped_slices: reference slices without a matched slice in another phase.
    """

    n_rows: int = 0
    n_rois: int = 0
    small_rois: list[str] = field(default_factory=list)
    constant_rois: list[str] = field(default_factory=list)
    failed_rois: list[str] = field(default_factory=list)
    dropped_slices: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{self.n_rows} rows, {self.n_rois} ROIs: {len(self.small_rois)} too small for texture, "
            f"{len(self.constant_rois)} with a single grey level, {len(self.failed_rois)} failed "
            f"(their values are imputed with the training-fold median); "
            f"{len(self.dropped_slices)} reference slices without a match in another phase"
        )


# --------------------------------------------------------------------------------------------
# Extraction
# --------------------------------------------------------------------------------------------


def _extractor(params: dict):
    import radiomics
    from radiomics import featureextractor

    radiomics.setVerbosity(logging.ERROR)
    logging.getLogger("radiomics").setLevel(logging.ERROR)  # also when the root logger shows INFO
    return featureextractor.RadiomicsFeatureExtractor(copy.deepcopy(params))


def _is_texture(feature_name: str) -> bool:
    # PyRadiomics names features <imageType>_<class>_<feature>, e.g. original_glcm_Contrast
    parts = feature_name.split("_")
    return len(parts) >= 3 and parts[1] not in NON_TEXTURE_CLASSES


def extract_roi(
    image: sitk.Image,
    mask: sitk.Image,
    params: dict,
    min_texture_voxels: int = DEFAULT_MIN_TEXTURE_VOXELS,
    extractor=None,
    feature_names: list[str] | None = None,
) -> tuple[dict[str, float], str]:
    """PyRadiomics features of one ROI, with the small-ROI rule applied.

    Args:
        image: HU image (3-D; a single slice for 2-D features).
        mask: label image, same geometry; the ROI is ``mask == params['setting']['label']``.
        feature_names: the names to return as NaN if PyRadiomics fails (else only ``{}`` on failure).
    Returns:
        ``(features, status)``: feature name -> float (NaN where the rule applies) and a status
        ``"ok"``, ``"small"`` (texture NaN), ``"constant"`` (texture NaN) or ``"failed: <message>"``
        (all NaN).
    """
    extractor = extractor or _extractor(params)
    label = params["setting"].get("label", 1)
    roi_values = sitk.GetArrayViewFromImage(image)[sitk.GetArrayViewFromImage(mask) == label]
    try:
        raw = extractor.execute(image, mask, label=label)
    except Exception as err:  # PyRadiomics raises ValueError/RuntimeError on unusable ROIs
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        return {name: float("nan") for name in feature_names or []}, f"failed: {message}"
    features = {k: float(v) for k, v in raw.items() if not k.startswith("diagnostics_")}
    bin_width = params["setting"].get("binWidth", 25)
    status = "ok"
    if roi_values.size < min_texture_voxels:
        status = "small"
    elif np.unique(np.floor(roi_values / bin_width)).size < 2:
        status = "constant"
    if status != "ok":
        features = {k: (float("nan") if _is_texture(k) else v) for k, v in features.items()}
    features = {k: (v if np.isfinite(v) else float("nan")) for k, v in features.items()}
    return features, status


def _box_mask(image: sitk.Image, boxes: list) -> sitk.Image:
    """A label image (1 inside the slice boxes) with the geometry of ``image``."""
    array = np.zeros(sitk.GetArrayViewFromImage(image).shape, dtype=np.uint8)  # [z, y, x]
    for box in boxes:
        array[box.slice, box.y_min : box.y_max + 1, box.x_min : box.x_max + 1] = 1
    mask = sitk.GetImageFromArray(array)
    mask.CopyInformation(image)
    return mask


def _crop(image: sitk.Image, mask: sitk.Image, boxes: list, pad: int = 6) -> tuple[sitk.Image, sitk.Image]:
    """Crop image and mask to the boxes plus ``pad`` voxels in-plane (keeps physical geometry)."""
    size = image.GetSize()
    x0 = max(0, min(b.x_min for b in boxes) - pad)
    x1 = min(size[0], max(b.x_max for b in boxes) + pad + 1)
    y0 = max(0, min(b.y_min for b in boxes) - pad)
    y1 = min(size[1], max(b.y_max for b in boxes) + pad + 1)
    z0, z1 = min(b.slice for b in boxes), max(b.slice for b in boxes) + 1
    return image[x0:x1, y0:y1, z0:z1], mask[x0:x1, y0:y1, z0:z1]


def extract_patient(
    images: dict[str, sitk.Image],
    boxes: dict[str, list],
    params: dict,
    mode: str = "2d",
    reference_phase: str = DEFAULT_REFERENCE_PHASE,
    tolerance_mm: float | None = None,
    min_texture_voxels: int = DEFAULT_MIN_TEXTURE_VOXELS,
) -> tuple[list[dict], dict]:
    """Feature rows of one patient: one per matched reference slice (2-D) or one in all (3-D).

    Columns of a row: ``slice`` (reference slice index, ``None`` in 3-D), ``z_mm``,
    ``roi_area_mm2`` (the reference phase's box in the slice, mm²; NaN in 3-D), then
    ``<phase>_<feature name>`` for NC, ART and PV. Returns ``(rows, notes)``, where ``notes``
    holds the lists ``small``, ``constant``, ``failed`` (ROI descriptions) and ``dropped``.
    """
    extractor = _extractor(params)
    notes: dict[str, list[str]] = {"small": [], "constant": [], "failed": [], "dropped": []}
    if mode == "3d":
        units = [{"slice": None, "z_mm": float("nan"), "roi_area_mm2": float("nan"), "boxes": {p: boxes[p] for p in PHASES}}]
    else:
        matched, dropped = match_phase_boxes(images, boxes, reference_phase, tolerance_mm)
        notes["dropped"] = [f"slice {d['slice']} ({d['unmatched']})" for d in dropped]
        units = [{"slice": m["slice"], "z_mm": m["z_mm"], "boxes": {p: [m["boxes"][p]] for p in PHASES},
                  "roi_area_mm2": box_area_mm2(images[reference_phase], m["boxes"][reference_phase])}
                 for m in matched]
    rows, names = [], {}
    for unit in units:
        row = {"slice": unit["slice"], "z_mm": unit["z_mm"], "roi_area_mm2": unit["roi_area_mm2"]}
        for phase in PHASES:
            phase_boxes = unit["boxes"][phase]
            image, mask = _crop(images[phase], _box_mask(images[phase], phase_boxes), phase_boxes)
            features, status = extract_roi(image, mask, params, min_texture_voxels, extractor, names.get(phase))
            if features and phase not in names:
                names[phase] = list(features)
            where = f"{phase} slice {unit['slice']}" if mode == "2d" else phase
            if status != "ok":
                notes[status.split(":")[0]].append(f"{where}: {status}" if status.startswith("failed") else where)
            row.update({f"{phase}_{k}": v for k, v in features.items()})
        rows.append(row)
    return rows, notes


def features_key(params: dict, mode: str, reference_phase: str, tolerance_mm, min_texture_voxels: int, fingerprint: str) -> str:
    """12-hex-digit key of a feature table: settings, PyRadiomics version, cohort fingerprint."""
    import radiomics

    return outputs.settings_key(
        {
            "params": params,
            "mode": mode,
            "reference_phase": reference_phase,
            "tolerance_mm": tolerance_mm,
            "min_texture_voxels": min_texture_voxels,
            "pyradiomics": radiomics.__version__,
            "cohort": fingerprint,
            "format": FORMAT_VERSION,
        }
    )


def _extract_one(args) -> tuple[str, list[dict], dict]:
    cohort_dir, patient_id, params, mode, reference_phase, tolerance_mm, min_texture_voxels = args
    from hccer_lib.preprocessing import load_patient_inputs

    images, boxes = load_patient_inputs(cohort_dir, patient_id)
    rows, notes = extract_patient(images, boxes, params, mode, reference_phase, tolerance_mm, min_texture_voxels)
    return patient_id, rows, notes


def extract_cohort(
    cohort_dir: str | os.PathLike,
    work_dir: str | os.PathLike,
    mode: str = "2d",
    feature_classes: tuple[str, ...] | None = None,
    params_file: str | os.PathLike = PARAMS_FILE,
    reference_phase: str = DEFAULT_REFERENCE_PHASE,
    tolerance_mm: float | None = None,
    min_texture_voxels: int = DEFAULT_MIN_TEXTURE_VOXELS,
    n_jobs: int | None = None,
    force: bool = False,
    progress: bool = True,
) -> tuple[pd.DataFrame, dict]:
    """Radiomics features of every patient, or the cached table made with the same settings.

    Returns:
        ``(features, meta)``: ``features`` has ``patient_id, slice, z_mm, roi_area_mm2, y_true`` and one
        column per ``<phase>_<feature>``; ``meta`` is the JSON written beside the CSV
        (``pyradiomics_version``, ``params``, ``report``, ``seconds``, ``key``, ...).
    """
    import radiomics

    from hccer_lib import cohort

    params = load_params(mode, feature_classes, params_file)
    key = features_key(params, mode, reference_phase, tolerance_mm, min_texture_voxels, cohort_fingerprint(cohort_dir))
    csv_path = Path(work_dir) / "processed" / f"radiomics_{key}.csv"
    json_path = csv_path.with_suffix(".json")
    if csv_path.exists() and json_path.exists() and not force:
        log.info("radiomics: reading cached features %s", csv_path.name)
        return pd.read_csv(csv_path, dtype={"patient_id": str}), json.loads(json_path.read_text())

    clinical = cohort.load_clinical(cohort_dir)
    patients = list(clinical["patient_id"].astype(str))
    labels = dict(zip(patients, clinical["early_recurrence"].astype(int), strict=True))
    log.info("radiomics: %s features of %d patients -> %s", mode, len(patients), csv_path)
    tasks = [(str(cohort_dir), pid, params, mode, reference_phase, tolerance_mm, min_texture_voxels) for pid in patients]
    n_jobs = n_jobs or min(len(patients), os.cpu_count() or 1)
    start = time.perf_counter()
    extracted = map_patients(_extract_one, tasks, n_jobs, f"radiomics ({mode})", progress, chunksize=2)
    results = {pid: (rows, notes) for pid, rows, notes in extracted}
    seconds = time.perf_counter() - start

    report = ExtractionReport()
    records = []
    for pid in patients:
        rows, notes = results[pid]
        for row in rows:
            records.append({"patient_id": pid, "y_true": labels[pid], **row})
        report.small_rois += [f"{pid} {n}" for n in notes["small"]]
        report.constant_rois += [f"{pid} {n}" for n in notes["constant"]]
        report.failed_rois += [f"{pid} {n}" for n in notes["failed"]]
        report.dropped_slices += [f"{pid} {n}" for n in notes["dropped"]]
    features = pd.DataFrame.from_records(records)
    feature_cols = [c for c in features.columns if c not in ID_COLUMNS]
    features = features[ID_COLUMNS + feature_cols]
    features["slice"] = features["slice"].astype("Int64")
    report.n_rows, report.n_rois = len(features), len(features) * len(PHASES)
    meta = {
        "key": key,
        "mode": mode,
        "pyradiomics_version": radiomics.__version__,
        "params": params,
        "params_file": Path(params_file).name,
        "reference_phase": reference_phase,
        "tolerance_mm": tolerance_mm,
        "min_texture_voxels": min_texture_voxels,
        "cohort": Path(cohort_dir).name,
        "n_jobs": n_jobs,
        "seconds": round(seconds, 1),
        "n_features": len(feature_cols),
        "report": report.__dict__,
        "report_summary": report.summary(),
    }
    outputs.write_csv(csv_path, features)
    outputs.write_json(json_path, meta)
    return features, meta


def feature_columns(features: pd.DataFrame) -> list[str]:
    """The feature columns (``<phase>_...``) of a feature table."""
    return [c for c in features.columns if c.split("_")[0] in PHASES]


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------


class LassoSelector(SelectorMixin, BaseEstimator):
    """Keep the features with a non-zero coefficient in an L1-penalised logistic regression.

    The penalty ``C`` (grid ``Cs``, default 0.001 to 1) is chosen by inner cross-validation (AUC)
    on the training data only;
    ``cv`` may be a number of folds or a list of ``(train, validation)`` index pairs (grouped
    by patient for slice-level data). If no feature survives, the ``min_features`` features
    with the largest absolute coefficient at the weakest penalty of the grid are kept.

    Attributes (learned): ``C_``, ``coef_`` ``[n_features]``, ``support_`` bool ``[n_features]``,
    ``fallback_`` (True when the rule above applied).
    """

    def __init__(self, Cs=DEFAULT_CS, cv=5, min_features: int = 1, random_state: int | None = None, threshold: float = 1e-5):
        self.Cs = Cs
        self.cv = cv
        self.min_features = min_features
        self.random_state = random_state
        self.threshold = threshold

    def fit(self, X, y):
        X = np.asarray(X, dtype=float)
        y = np.asarray(y)
        model = LogisticRegressionCV(
            Cs=list(self.Cs) if not isinstance(self.Cs, int) else self.Cs, l1_ratios=(1.0,), solver="liblinear", cv=self.cv, scoring="roc_auc",
            random_state=self.random_state, use_legacy_attributes=False, max_iter=500,
        ).fit(X, y)
        self.C_ = float(np.ravel(model.C_)[0])
        self.coef_ = np.ravel(model.coef_)
        self.support_ = np.abs(self.coef_) > self.threshold
        self.fallback_ = not self.support_.any()
        if self.fallback_:
            weakest = float(np.max(model.Cs_))
            coef = np.ravel(
                LogisticRegression(C=weakest, l1_ratio=1.0, solver="liblinear", random_state=self.random_state).fit(X, y).coef_
            )
            order = np.argsort(-np.abs(coef), kind="stable")[: self.min_features]
            self.support_ = np.zeros(X.shape[1], dtype=bool)
            self.support_[order] = True
        self.n_features_in_ = X.shape[1]
        return self

    def _get_support_mask(self):
        return self.support_


def make_pipeline(seed: int, inner_cv=DEFAULT_SETTINGS.inner_folds, n_estimators: int = DEFAULT_SETTINGS.n_estimators, n_jobs: int | None = None) -> Pipeline:
    """``SimpleImputer(median) -> StandardScaler -> LassoSelector -> RandomForestClassifier(random_state=seed)``."""
    return Pipeline([
        ("impute", SimpleImputer(strategy="median", keep_empty_features=True)),
        ("scale", StandardScaler()),
        ("lasso", LassoSelector(cv=inner_cv, random_state=seed)),
        ("forest", RandomForestClassifier(n_estimators=n_estimators, random_state=seed, n_jobs=n_jobs, min_samples_leaf=2)),
    ])


def inner_splits(train_patients: np.ndarray, y: np.ndarray, n_splits: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified inner folds of the training rows, grouped by patient (no patient on both sides)."""
    n_groups = len(np.unique(train_patients))
    n_splits = max(2, min(n_splits, n_groups, int(np.bincount(y).min()) if len(np.unique(y)) > 1 else 2))
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(len(y)), y, groups=train_patients))


def cross_validate(
    features: pd.DataFrame,
    folds: pd.DataFrame,
    seed: int,
    inner_folds: int = DEFAULT_SETTINGS.inner_folds,
    n_estimators: int = DEFAULT_SETTINGS.n_estimators,
    n_jobs: int | None = None,
    progress: bool = True,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Out-of-fold predictions of the radiomics pipeline on the shared folds.

    Args:
        features: from :func:`extract_cohort` (slice rows in 2-D, patient rows in 3-D).
        folds: ``patient_id, y_true, fold`` (``evaluation.load_or_make_folds``).
    Returns:
        ``(predictions, selection)``: predictions ``patient_id, slice, fold, y_true, y_prob``
        (the shared format) and, for slice rows, ``roi_area_mm2``; selection: one row per fold, one bool column per feature (selected
        by LASSO in that fold), plus ``C`` and ``fallback``.
    """
    columns = feature_columns(features)
    X = features[columns].to_numpy(dtype=float)
    y = features["y_true"].to_numpy(dtype=int)
    patients = features["patient_id"].astype(str).to_numpy()
    fold = fold_of(folds, patients)
    prob = np.full(len(features), np.nan)
    selection = []
    from tqdm import tqdm

    for k in tqdm(sorted(np.unique(fold)), desc="radiomics folds", disable=not progress):
        train, test = fold != k, fold == k
        pipeline = make_pipeline(seed, inner_splits(patients[train], y[train], inner_folds, seed), n_estimators, n_jobs)
        pipeline.fit(X[train], y[train])
        prob[test] = pipeline.predict_proba(X[test])[:, 1]
        lasso = pipeline.named_steps["lasso"]
        selection.append({"fold": int(k), "C": lasso.C_, "fallback": lasso.fallback_, **dict(zip(columns, lasso.support_, strict=True))})
    predictions = pd.DataFrame({
        "patient_id": patients,
        "slice": features["slice"].astype("Int64"),
        "fold": fold,
        "y_true": y,
        "y_prob": prob,
    })
    if "roi_area_mm2" in features and features["roi_area_mm2"].notna().all():  # slice rows (2-D)
        predictions["roi_area_mm2"] = features["roi_area_mm2"].to_numpy(dtype=float)
    return predictions, pd.DataFrame(selection)


def selection_frequency(selection: pd.DataFrame) -> pd.DataFrame:
    """``feature, phase, n_folds_selected, fraction`` sorted by how often each fold kept a feature."""
    columns = [c for c in selection.columns if c not in ("fold", "C", "fallback")]
    counts = selection[columns].astype(int).sum()
    frame = pd.DataFrame({"feature": counts.index, "n_folds_selected": counts.to_numpy()})
    frame["phase"] = frame["feature"].str.split("_").str[0]
    frame["fraction"] = frame["n_folds_selected"] / len(selection)
    frame = frame[frame["n_folds_selected"] > 0]
    return frame.sort_values(["n_folds_selected", "feature"], ascending=[False, True]).reset_index(drop=True)


def plot_selection(selection: pd.DataFrame, top: int = 25, title: str = ""):
    """Bar chart of the features LASSO kept and in how many folds, coloured by phase."""
    import matplotlib.pyplot as plt

    frequency = selection_frequency(selection).head(top)
    colours = {"NC": "tab:gray", "ART": "tab:red", "PV": "tab:blue"}
    fig, ax = plt.subplots(figsize=(8, 0.28 * max(len(frequency), 4) + 1.2))
    labels = [f.replace("_original_", " ") for f in frequency["feature"]]
    ax.barh(range(len(frequency)), frequency["n_folds_selected"], color=[colours.get(p, "k") for p in frequency["phase"]])
    ax.set_yticks(range(len(frequency)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, len(selection))
    ax.set_xlabel(f"folds that selected the feature (of {len(selection)})")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colours.values()]
    ax.legend(handles, list(colours), title="phase", loc="lower right", fontsize=7)
    ax.set_title(title or f"LASSO selection per fold (top {len(frequency)} features)", fontsize=10)
    fig.tight_layout()
    return fig

