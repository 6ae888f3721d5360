"""Seed simulation: how far the study's AUCs move from one synthetic cohort to the next.

The study has one cohort of 167 patients (65 ER, 102 NER). This module repeats the
study's own protocol on many cohorts drawn by the generator (:mod:`hccer_lib.synth`) with
other seeds, and measures

* the spread of each model's AUC at n = 167 (:func:`summarise`);
* for every pair of simulated models, from the SD (``SE``) of their paired AUC difference
  across the simulated cohorts, the **significance threshold** ``z_{0.975} · SE ≈ 1.96 · SE``
  (the smallest observed difference a two-sided test at alpha 0.05 calls significant) and the
  **detectable difference** ``(z_{0.975} + z_{0.8}) · SE ≈ 2.80 · SE`` (the smallest true
  difference such a test finds with power 0.8) (:func:`detectable_differences`);
* the paper's reported differences against both, for the pairs whose two models were
  simulated; a pair whose models were not simulated is "not measured", never judged by
  another pair's noise (:func:`paper_differences`), and a figure (:func:`plot_spread`).

What runs on each simulated cohort (seed ``s``; folds, forests and networks are seeded
with ``s`` too, as the notebooks seed everything with ``seed``):

* ``clinical`` seeds (no images needed, a few seconds each): the clinical table of
  :func:`hccer_lib.synth.plan_cohort` (the ``clinical.csv`` that ``generate_cohort``
  writes for that seed), :func:`hccer_lib.evaluation.make_folds` with the profile's
  ``n_folds``, :func:`hccer_lib.clinical.cross_validate_clinical` for ``clinical_rf``
  (selection on the whole cohort, the paper's protocol) and ``clinical_rf_strict``
  (selection inside each training fold); and the generator's oracle rules
  (``oracle_clinical``, ``oracle_image``, ``oracle_both``: logistic regressions on the
  generator's true inputs, fitted once on a large generated population, never on a cohort;
  see :func:`hccer_lib.synth.oracle_aucs`), scored on the cohort's patients.
* ``image`` seeds (the first ones of the clinical seeds): the whole cohort with images is
  generated in a temporary folder (about 150 MB, deleted afterwards), PyRadiomics features
  are extracted with the profile's settings and ``radiomics_rf`` is cross-validated on the
  same folds (:mod:`hccer_lib.radiomics_baseline`).
* ``deep`` seeds (opt-in, none by default): ``deep_resnet50``, ``fusion_d`` and
  ``fusion_d_joint`` trained by :func:`hccer_lib.training.train_cross_validated` with the
  profile's network settings.
* ``oracle_cohorts``: many more cohorts, drawn without images by
  :func:`hccer_lib.synth.sample_population` (each with the paper's exact Table 1 counts),
  scored by the same fixed oracle rules: the sampling spread of a *fixed* scoring rule's
  AUC at n = 167, free of any training noise.

Everything is cached per seed under ``<work_root>/simulation/<settings key>/`` (the
out-of-fold predictions of each seed and part, written atomically), so a rerun is
resumable and instant, and raising the counts reuses the seeds already done.

All results are about SYNTHETIC cohorts (:data:`hccer_lib.outputs.SYNTHETIC_NOTE`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from hccer_lib import clinical, evaluation, outputs, ray_jobs, synth
from hccer_lib.models import paper_auc, paper_values
from hccer_lib.profiles import Profile, get_profile
from hccer_lib.study_run import DEFAULT_SETTINGS, StudySettings

logger = logging.getLogger("hccer")

SIMULATION_VERSION = 1  # part of the settings key: raise it when a change here changes results
STUDY_SEED = 2020  # the study's own cohort (data/synthetic_seed2020); never one of the simulated seeds
ORACLE_RULE_SEED = STUDY_SEED  # the oracle rules are those of the study cohort's ground_truth.json
ORACLE_CHUNK = 100  # replicate cohorts drawn (and cached) together
MIN_PAIR_COHORTS = 5  # a paper comparison is measured only when its own pair ran on this many cohorts


class SeedCounts(NamedTuple):
    """How many simulated cohorts run each part of the study.

    Attributes:
        clinical: cohorts on which the clinical models and the oracle rules run (no images).
        image: the first ``image`` of those also get images, radiomics and ``radiomics_rf``.
        deep: the first ``deep`` of those also train the deep models (opt-in: slow).
        oracle_cohorts: further image-free cohorts scored by the fixed oracle rules only.
    """

    clinical: int
    image: int = 0
    deep: int = 0
    oracle_cohorts: int = 0


# Per profile. Costs measured on the project's shared 2-core CPU (other jobs running,
# load 2-4): one clinical seed at 10 folds (two random forests of 500 trees per fold,
# 0.9 s per fit, plus the oracle scores) takes ~19 s in one process, and two run side by
# side (~10-15 s per seed in all); at 2 folds (smoke) ~7 s. Fitting the oracle rules:
# ~10 s once per run. 100 oracle cohorts: 0.7 s at 10 folds. One image seed: ~140 s
# (generation ~35 s, PyRadiomics with every feature class ~55-150 s, radiomics
# cross-validation ~75 s at 10 folds). Measured totals: smoke 13 s (25 s at load 3);
# quick 16 seeds ~6 min (20 seeds took 10 min at load 4). A rerun reads the cache:
# under a second. The deep models stay opt-in: on this CPU one seed at the smoke profile
# (2 folds, 1 epoch) took ~1 min for the three, at the quick profile about 2.5 min per
# model; at the paper profile (GPU) tens of minutes per model.
SIMULATION_SEEDS: dict[str, SeedCounts] = {
    "smoke": SeedCounts(clinical=2, image=0, deep=0, oracle_cohorts=200),
    "quick": SeedCounts(clinical=16, image=1, deep=0, oracle_cohorts=1000),
    "paper": SeedCounts(clinical=50, image=10, deep=0, oracle_cohorts=5000),
}

CLINICAL_MODELS = {"clinical_rf": "paper", "clinical_rf_strict": "strict"}  # model -> selection protocol
ORACLE_MODELS = {"oracle_clinical": "clinical", "oracle_image": "image", "oracle_both": "both"}  # -> synth input set
RADIOMICS_MODEL = "radiomics_rf"
DEEP_MODELS = ("deep_resnet50", "fusion_d", "fusion_d_joint")
MODEL_ORDER = (
    "clinical_rf", "clinical_rf_strict", RADIOMICS_MODEL, *DEEP_MODELS, *ORACLE_MODELS,
)  # fmt: skip
# The models' settings (alpha, n_estimators, inner_folds, min_texture_voxels) are the run's
# (study_run.StudySettings, notebook 08 passes them); ``study=None``: the study's (DEFAULT_SETTINGS).

RESULT_COLUMNS = [
    "design", "cohort", "seed", "model", "level", "n_patients", "auc", "auc_se", "auc_fold_mean", "auc_fold_sd",
    "accuracy_fold_mean", "auc_fold_mean_slice", "auc_fold_sd_slice", "accuracy_fold_mean_slice",
    "oracle_clinical_auc", "oracle_image_auc", "oracle_both_auc",
]  # fmt: skip
DETECTABLE_COLUMNS = [
    "model_a", "model_b", "n_seeds", "mean_difference", "sd_difference", "significance_threshold",
    "min_detectable_difference", "correlation", "min_detectable_difference_unpaired", "fold_mean_difference",
    "sd_fold_mean_difference", "significance_threshold_fold_mean", "min_detectable_difference_fold_mean",
    "se_delong_mean", "significance_threshold_delong", "min_detectable_difference_delong", "delong_power",
]  # fmt: skip
PAIR_COLUMNS = [
    "design", "cohort", "seed", "model_a", "model_b", "auc_a", "auc_b", "difference", "fold_mean_difference",
    "se_delong", "p_delong",
]  # fmt: skip


# %% Settings, seeds, cache ---------------------------------------------------------------


def _profile(profile: str | Profile) -> Profile:
    return get_profile(profile) if isinstance(profile, str) else profile


def seed_counts(profile: str | Profile, n_seeds=None) -> SeedCounts:
    """The counts a run uses: ``SIMULATION_SEEDS[profile]``, or ``n_seeds``.

    Args:
        n_seeds: ``None`` (the profile's counts), an int (that many clinical seeds, the
            profile's other counts capped at it) or a :class:`SeedCounts` / tuple.
    """
    profile = _profile(profile)
    if n_seeds is None or isinstance(n_seeds, int | np.integer):
        if profile.name not in SIMULATION_SEEDS:
            raise ValueError(f"no simulation counts for profile {profile.name!r}; pass n_seeds "
                             f"(profiles with counts: {sorted(SIMULATION_SEEDS)})")
        counts = SIMULATION_SEEDS[profile.name]
        if n_seeds is not None:
            n = int(n_seeds)
            counts = SeedCounts(n, min(counts.image, n), min(counts.deep, n), counts.oracle_cohorts)
    else:
        counts = SeedCounts(*n_seeds)
    if min(counts) < 0:
        raise ValueError(f"seed counts must be >= 0, got {counts}")
    if counts.image > counts.clinical or counts.deep > counts.clinical:
        raise ValueError(f"image and deep seeds are taken from the clinical seeds: need image, deep <= clinical, got {counts}")
    return counts


def simulation_seeds(n: int, base_seed: int = STUDY_SEED) -> list[int]:
    """The first ``n`` generator seeds: ``base_seed + 1, base_seed + 2, ...`` without
    :data:`STUDY_SEED` (the study's own cohort). Deterministic; the image and deep seeds
    are the first ones of this list."""
    seeds, candidate = [], base_seed
    while len(seeds) < n:
        candidate += 1
        if candidate != STUDY_SEED:
            seeds.append(candidate)
    return seeds


def simulation_settings(profile: str | Profile, study: StudySettings | None = None) -> dict:
    """Everything that changes a simulated cohort's results (hashed into the cache folder).

    ``study``: the models' settings (``alpha``, ``n_estimators``, ``inner_folds``,
    ``min_texture_voxels``; ``selection_protocol`` is not used: both clinical protocols are simulated).
    The counts and the base seed are not part of it: each seed is cached on its own.
    """
    study = DEFAULT_SETTINGS if study is None else study
    import radiomics
    import sklearn

    from hccer_lib import radiomics_baseline as rb

    profile = _profile(profile)
    synth_settings = {k: v for k, v in asdict(synth.SynthConfig()).items() if k not in ("seed", "n_patients")}
    return {
        "simulation_version": SIMULATION_VERSION,
        "n_folds": profile.n_folds,
        "generator_version": synth.GENERATOR_VERSION,
        "synth_settings": synth_settings,
        "clinical": {"rf": clinical.RF_PARAMS, "n_estimators": study.n_estimators, "alpha": study.alpha},
        "oracle": {"rule_seed": ORACLE_RULE_SEED, "replicates": list(synth.ORACLE_REPLICATES), "chunk": ORACLE_CHUNK},
        "radiomics": {
            "mode": profile.radiomics_mode,
            "params": rb.load_params(profile.radiomics_mode, profile.radiomics_feature_classes),
            "inner_folds": study.inner_folds,
            "n_estimators": study.n_estimators,
            "min_texture_voxels": study.min_texture_voxels,
            "format": rb.FORMAT_VERSION,
            "pyradiomics": radiomics.__version__,
        },
        "scikit_learn": sklearn.__version__,
    }


def _deep_key(profile: Profile) -> str:
    """Key of the deep models' settings (imports the training stack, so only when needed)."""
    from hccer_lib import preprocessing, training

    fields = training.training_settings(profile)
    images = {"roi_margin": profile.roi_margin, "format": preprocessing.FORMAT_VERSION}  # the crops the networks see
    return outputs.settings_key({"fields": fields, "training": training.TRAINING_VERSION, "models": DEEP_MODELS,
                                 "images": images})


def simulation_dir(profile: str | Profile, work_root: str | os.PathLike, study: StudySettings | None = None) -> Path:
    """``<work_root>/simulation/<settings key>/``."""
    return Path(work_root) / "simulation" / outputs.settings_key(simulation_settings(profile, study))  # None: the study's


def _part_path(folder: Path, seed: int, part: str) -> Path:
    return folder / f"seed_{seed}_{part}.csv"


def _read_part(path: Path) -> pd.DataFrame:
    frame = pd.read_csv(path, dtype={"patient_id": str, "model": str})
    frame["slice"] = frame["slice"].astype("Int64")
    return frame


# %% One simulated cohort -----------------------------------------------------------------


_WORKER_ORACLES: dict | None = None


def _init_worker(oracles: dict) -> None:
    global _WORKER_ORACLES
    _WORKER_ORACLES = oracles


def fixed_oracles() -> dict:
    """The oracle rules (input set -> fitted sklearn pipeline) of the study's cohort.

    Fitted once per process (~9 s) on the population that
    :func:`hccer_lib.synth.oracle_aucs` uses for seed :data:`ORACLE_RULE_SEED`, so the
    scores on the study's own cohort are those of its ``ground_truth.json``. The same
    fixed rules score every simulated cohort (a cohort written with seed ``s`` states the
    rules refitted on seed ``s``'s population in its own ``ground_truth.json``; the two
    fits differ by the noise of 25 000 generated patients only).
    """
    return synth.fit_oracles(synth.SynthConfig(seed=ORACLE_RULE_SEED))[0]


def _latent_frame(plan: synth.CohortPlan) -> pd.DataFrame:
    """The plan's clinical table beside its latent traits (what the oracles read)."""
    traits = plan.truth[["z_img", *synth.TRAITS]].reset_index(drop=True)
    return pd.concat([plan.clinical.reset_index(drop=True), traits], axis=1)


def cohort_folds(table: pd.DataFrame, n_folds: int, seed: int) -> pd.DataFrame:
    """The study's folds of a cohort (``evaluation.make_folds`` on its labels)."""
    labels = pd.Series(table["early_recurrence"].to_numpy(dtype=int), index=table["patient_id"].astype(str))
    return evaluation.make_folds(labels, n_folds, seed)


def clinical_part(seed: int, n_folds: int, oracles: dict | None = None, study: StudySettings | None = None) -> pd.DataFrame:
    """Out-of-fold predictions of the clinical models and the oracle rules on cohort ``seed``.

    ``study``: ``alpha`` and ``n_estimators`` of the clinical models.

    No image is drawn: the clinical table and the latent traits come from
    :func:`hccer_lib.synth.plan_cohort` (the same table ``generate_cohort`` writes).

    Returns:
        The shared predictions format (``patient_id, slice, fold, y_true, y_prob``; slice
        empty) plus ``model``, 167 rows per model of ``CLINICAL_MODELS`` and ``ORACLE_MODELS``.
    """
    oracles = oracles if oracles is not None else fixed_oracles()
    study = DEFAULT_SETTINGS if study is None else study
    plan = synth.plan_cohort(synth.SynthConfig(seed=seed))
    table = plan.clinical
    folds = cohort_folds(table, n_folds, seed)
    frames = []
    for model, protocol in CLINICAL_MODELS.items():
        frame, _ = clinical.cross_validate_clinical(table, folds, protocol, seed=seed, alpha=study.alpha,
                                                  n_estimators=study.n_estimators)
        frames.append(frame.assign(model=model))
    ids = table["patient_id"].astype(str).to_numpy()
    inputs = synth.oracle_inputs(_latent_frame(plan))
    for model, input_set in ORACLE_MODELS.items():
        frames.append(pd.DataFrame({
            "patient_id": ids,
            "slice": pd.array([pd.NA] * len(ids), dtype="Int64"),
            "fold": evaluation.fold_of(folds, ids),
            "y_true": table["early_recurrence"].to_numpy(dtype=int),
            "y_prob": oracles[input_set].predict_proba(inputs[input_set])[:, 1],
            "model": model,
        }))  # fmt: skip
    return pd.concat(frames, ignore_index=True)


def _clinical_task(args: tuple[int, int, str, StudySettings], oracles: dict | None = None) -> tuple[int, float]:
    """Compute and cache one clinical seed (in a worker: the oracles of ``_init_worker``);
    returns (seed, seconds)."""
    seed, n_folds, path, study = args
    start = time.perf_counter()
    outputs.write_csv(path, clinical_part(seed, n_folds, oracles if oracles is not None else _WORKER_ORACLES, study))
    return seed, time.perf_counter() - start


def _image_task(args: tuple) -> tuple[int, dict[str, str], float]:
    """Compute and cache the image parts of one seed (in a worker, beside the clinical seeds);
    returns (seed, part -> cached file name, seconds)."""
    seed, profile, parts, folder, deep_part, study = args
    start = time.perf_counter()
    written = _write_image_parts(Path(folder), seed, image_parts(seed, profile, parts, Path(folder) / "scratch", study=study),
                                 deep_part)
    return seed, written, time.perf_counter() - start


def _write_image_parts(folder: Path, seed: int, found: dict[str, pd.DataFrame], deep_part: str | None) -> dict[str, str]:
    """Cache the image parts of ``seed`` (each written whole); returns part -> cached part name."""
    written = {}
    for part, frame in found.items():
        written[part] = part if part == "radiomics" else deep_part
        outputs.write_csv(_part_path(folder, seed, written[part]), frame)
    return written


def image_parts(seed: int, profile: Profile, parts: tuple[str, ...], scratch: Path, progress: bool = False,
                study: StudySettings | None = None) -> dict[str, pd.DataFrame]:
    """Generate cohort ``seed`` with images in a temporary folder and run the image models.

    Args:
        study: ``n_estimators``, ``inner_folds`` and ``min_texture_voxels`` of the radiomics model.
        parts: ``"radiomics"`` (``radiomics_rf``) and/or ``"deep"`` (``DEEP_MODELS``).
        scratch: folder under which the temporary cohort goes (deleted afterwards, also
            on failure).

    Returns:
        part -> predictions frame (shared format plus ``model``; slice rows).
    """
    from hccer_lib import cohort

    study = DEFAULT_SETTINGS if study is None else study
    scratch.mkdir(parents=True, exist_ok=True)
    found: dict[str, pd.DataFrame] = {}
    with tempfile.TemporaryDirectory(prefix=f".seed_{seed}_", dir=scratch) as tmp:
        cohort_dir = Path(tmp) / "synthetic"
        synth.generate_cohort(cohort_dir, synth.SynthConfig(seed=seed), n_jobs=os.cpu_count(), progress=progress)
        table = cohort.load_clinical(cohort_dir)
        planned = synth.synthesize_clinical(synth.SynthConfig(seed=seed))
        if not (table["patient_id"].tolist() == planned["patient_id"].tolist()
                and (table["early_recurrence"].to_numpy() == planned["early_recurrence"].to_numpy()).all()):  # fmt: skip
            raise RuntimeError(f"seed {seed}: the written clinical.csv differs from the planned clinical table")
        folds = cohort_folds(table, profile.n_folds, seed)
        if "radiomics" in parts:
            from hccer_lib import radiomics_baseline as rb

            features, _ = rb.extract_cohort(
                cohort_dir, cohort_dir, mode=profile.radiomics_mode, feature_classes=profile.radiomics_feature_classes,
                min_texture_voxels=study.min_texture_voxels, progress=progress,
            )
            predictions, _ = rb.cross_validate(features, folds, seed=seed, inner_folds=study.inner_folds,
                                               n_estimators=study.n_estimators, progress=progress)
            found["radiomics"] = predictions.assign(model=RADIOMICS_MODEL)
        if "deep" in parts:
            from hccer_lib import preprocessing, training

            dataset = preprocessing.study_dataset(cohort_dir, cohort_dir, profile, progress=progress)  # the study's crops
            frames = [
                training.train_cross_validated(model, dataset, table, folds, profile, cohort_dir, seed=seed).assign(model=model)
                for model in DEEP_MODELS
            ]
            found["deep"] = pd.concat(frames, ignore_index=True)
    return found


# %% Metrics of one cohort ----------------------------------------------------------------


def _fold_scores(y: np.ndarray, probs: np.ndarray, fold: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUC and accuracy (threshold 0.5) per model and fold, ``[k, n_folds]`` each, of
    ``probs [k, n]``: the same values as ``evaluation.fold_metrics`` on those rows (AUC as
    the share of (ER, NER) pairs ranked right, ties counting one half)."""
    folds = np.unique(fold)
    aucs = np.empty((len(probs), len(folds)))
    accuracies = np.empty((len(probs), len(folds)))
    for f, k in enumerate(folds):
        inside = fold == k
        positive, negative = probs[:, inside & (y == 1)], probs[:, inside & (y == 0)]
        if positive.shape[1] == 0 or negative.shape[1] == 0:
            raise ValueError(f"fold {k}: one class only, so its AUC is undefined")
        diff = positive[:, :, None] - negative[:, None, :]
        aucs[:, f] = ((diff > 0).sum(axis=(1, 2)) + 0.5 * (diff == 0).sum(axis=(1, 2))) / diff[0].size
        accuracies[:, f] = ((probs[:, inside] >= 0.5).astype(int) == y[inside]).mean(axis=1)
    return aucs, accuracies


def patient_metrics(
    y: np.ndarray, fold: np.ndarray, probs: np.ndarray, models: list[str]
) -> tuple[list[dict], list[dict]]:
    """Rows and pairs of one cohort from patient-level out-of-fold probabilities.

    Every metric is at patient level, for every model, so that the fold-mean differences
    of the pairs compare like with like.

    Args:
        y: ``[n]`` 0/1 labels; fold: ``[n]`` fold of each patient.
        probs: ``[k, n]`` probability of ER of each of the ``k`` ``models``.

    Returns:
        (one dict per model: ``model, n_patients, auc`` (pooled), ``auc_se`` (DeLong),
        ``auc_fold_mean, auc_fold_sd`` (ddof=1), ``accuracy_fold_mean`` (per fold, at
        patient level); one dict per pair
        ``model_a, model_b`` (in the order given): ``auc_a, auc_b, difference,
        fold_mean_difference, se_delong, p_delong`` (DeLong test of the paired AUCs, as
        ``evaluation.delong_test``).
    """
    from scipy.stats import norm

    aucs, cov = evaluation.delong_covariance(y, probs)
    fold_aucs, fold_accuracies = _fold_scores(y, probs, fold)
    rows = []
    for i, model in enumerate(models):
        fold_auc, fold_accuracy = fold_aucs[i], fold_accuracies[i]
        rows.append({
            "model": model, "n_patients": len(y), "auc": float(aucs[i]), "auc_se": float(np.sqrt(max(cov[i, i], 0.0))),
            "auc_fold_mean": float(np.mean(fold_auc)), "auc_fold_sd": _sd(np.asarray(fold_auc)),
            "accuracy_fold_mean": float(np.mean(fold_accuracy)),
        })  # fmt: skip
    pairs = []
    for i, model_a in enumerate(models):
        for j in range(i + 1, len(models)):
            difference = float(aucs[i] - aucs[j])
            variance = float(cov[i, i] + cov[j, j] - 2 * cov[i, j])
            if variance <= 1e-15:
                p_value = 1.0 if abs(difference) < 1e-12 else 0.0
            else:
                p_value = float(2 * norm.sf(abs(difference) / np.sqrt(variance)))
            pairs.append({
                "model_a": model_a, "model_b": models[j], "auc_a": float(aucs[i]), "auc_b": float(aucs[j]),
                "difference": difference,
                "fold_mean_difference": rows[i]["auc_fold_mean"] - rows[j]["auc_fold_mean"],
                "se_delong": float(np.sqrt(max(variance, 0.0))), "p_delong": p_value,
            })  # fmt: skip
    return rows, pairs


def cohort_metrics(predictions: pd.DataFrame) -> tuple[list[dict], list[dict]]:
    """Rows and pairs (:func:`patient_metrics`) of one cohort's predictions, all models.

    Args:
        predictions: the shared predictions format plus ``model``. Slice-level models are
            averaged per patient (``evaluation.patient_level``); every metric of the rows
            and the pairs is computed on those patient probabilities (the study's primary
            level, the same for every model).

    Returns:
        The rows (with ``level``: ``"slice"`` or ``"patient"``, the rows the model
        predicts, and for slice-level models ``auc_fold_mean_slice, auc_fold_sd_slice,
        accuracy_fold_mean_slice``: the per-fold metrics on the slice rows, the paper's
        form (inferred), NaN for patient-level models and never differenced against
        another model) and the pairs, models in :data:`MODEL_ORDER`.
    """
    names = list(dict.fromkeys(predictions["model"]))
    models = [m for m in MODEL_ORDER if m in names] + sorted(set(names) - set(MODEL_ORDER))
    per_patient, slice_scores, levels = {}, {}, {}
    for model in models:
        frame = predictions[predictions["model"] == model].drop(columns="model")
        if frame["slice"].notna().any():
            levels[model] = "slice"
            per_fold = evaluation.fold_metrics(frame)
            slice_scores[model] = {"auc_fold_mean_slice": float(per_fold["auc"].mean()),
                                   "auc_fold_sd_slice": _sd(per_fold["auc"].to_numpy()),
                                   "accuracy_fold_mean_slice": float(per_fold["accuracy"].mean())}
            frame = evaluation.patient_level(frame)
        else:
            levels[model] = "patient"
            if frame["patient_id"].duplicated().any():
                raise ValueError(f"{model}: more than one row for a patient in a patient-level model")
        per_patient[model] = frame.set_index(frame["patient_id"].astype(str)).sort_index()
    reference = per_patient[models[0]]
    for model in models[1:]:
        other = per_patient[model]
        if not other.index.equals(reference.index) or not (other["y_true"].to_numpy() == reference["y_true"].to_numpy()).all():
            raise ValueError(f"{models[0]} and {model} predict different patients or labels; a paired comparison needs the same")
    y = reference["y_true"].to_numpy(dtype=int)
    fold = reference["fold"].to_numpy(dtype=int)
    probs = np.vstack([per_patient[m]["y_prob"].to_numpy(dtype=float) for m in models])
    rows, pairs = patient_metrics(y, fold, probs, models)
    no_slices = dict.fromkeys(("auc_fold_mean_slice", "auc_fold_sd_slice", "accuracy_fold_mean_slice"), np.nan)
    for row in rows:
        row["level"] = levels[row["model"]]
        row.update(slice_scores.get(row["model"], no_slices))
    return rows, pairs


# %% Fixed oracle rules on many image-free cohorts -----------------------------------------


def oracle_chunk(chunk: int, base_seed: int, n_folds: int, oracles: dict | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The fixed oracle rules on :data:`ORACLE_CHUNK` generated cohorts (no images).

    The cohorts are replicates of :func:`hccer_lib.synth.sample_population` (seed
    ``SeedSequence([base_seed, 6, chunk])``), each with the paper's exact Table 1 counts:
    102 NER and 65 ER patients. Folds per cohort: ``make_folds(..., n_folds, seed=cohort
    number)``.

    Returns:
        (rows, pairs) as :func:`run_simulation` and its pairs, ``design`` =
        ``"oracle_replicate"``, ``cohort`` = ``"replicate <number>"``.
    """
    oracles = oracles if oracles is not None else fixed_oracles()
    population = synth.sample_population(synth.SynthConfig(), ORACLE_CHUNK, np.random.SeedSequence([base_seed, 6, chunk]))
    n_ner, n_er = clinical.PAPER_N_NER, clinical.PAPER_N_ER
    label = population["early_recurrence"].to_numpy()
    # sample_population stacks the NER replicates, then the ER replicates, each replicate's
    # patients together (tests check that every replicate has the paper's exact counts).
    replicate = np.where(label == 0, np.arange(len(label)) // n_ner,
                         (np.arange(len(label)) - ORACLE_CHUNK * n_ner) // n_er)  # fmt: skip
    inputs = synth.oracle_inputs(population)
    scores = {model: oracles[input_set].predict_proba(inputs[input_set])[:, 1] for model, input_set in ORACLE_MODELS.items()}
    models = list(ORACLE_MODELS)
    rows, pairs = [], []
    for r in range(ORACLE_CHUNK):
        number = chunk * ORACLE_CHUNK + r
        members = np.flatnonzero(replicate == r)
        ids = [f"P{i:03d}" for i in range(len(members))]
        fold = evaluation.make_folds(pd.Series(label[members], index=ids), n_folds, number)["fold"].to_numpy()
        probs = np.vstack([scores[m][members] for m in models])
        cohort_rows, cohort_pairs = patient_metrics(label[members], fold, probs, models)
        tag = {"design": "oracle_replicate", "cohort": f"replicate {number}", "seed": pd.NA}
        oracle_aucs = {f"{row['model']}_auc": row["auc"] for row in cohort_rows}
        rows += [{**tag, **row, "level": "patient", **oracle_aucs} for row in cohort_rows]
        pairs += [{**tag, **pair} for pair in cohort_pairs]
    return pd.DataFrame(rows, columns=RESULT_COLUMNS), pd.DataFrame(pairs, columns=PAIR_COLUMNS)


# %% The simulation --------------------------------------------------------------------------


def run_simulation(
    profile: str | Profile,
    work_root: str | os.PathLike,
    n_seeds=None,
    base_seed: int = STUDY_SEED,
    progress: bool = True,
    n_jobs: int | None = None,
    executor: str | None = None,
    study: StudySettings | None = None,
) -> pd.DataFrame:
    """Repeat the study on simulated cohorts; one row per (cohort, model).

    Args:
        profile: name or :class:`Profile`: ``n_folds`` and the radiomics (and network)
            settings of the study's notebooks.
        work_root: the data root (e.g. ``data``); results are cached in
            ``<work_root>/simulation/<settings key>/`` and reused by every later run.
        n_seeds: ``None`` (``SIMULATION_SEEDS[profile]``), an int (clinical seeds) or a
            :class:`SeedCounts`.
        base_seed: the seeds are ``base_seed + 1, ...`` (:func:`simulation_seeds`),
            never :data:`STUDY_SEED`; the oracle cohorts derive from it too.
        progress: one line per computed seed (and per part).
        n_jobs: processes for the clinical seeds (default: one per CPU).
        executor: ``"ray"``: the clinical seeds as Ray tasks instead (``hccer_lib.ray_jobs``;
            ``None``: ``$HCCER_EXECUTOR``, else local processes); the same cached parts.
        study: the models' settings, the run's (``StudyRun.study_settings``, passed by notebook 08):
            ``alpha``, ``n_estimators``, ``inner_folds``, ``min_texture_voxels``; part of the cache key.
            ``None``: the study's (``study_run.DEFAULT_SETTINGS``).

    Returns:
        Columns ``design`` (``"study"``: the study's protocol on a generated cohort;
        ``"oracle_replicate"``: a fixed oracle rule on an image-free cohort), ``cohort``
        (``"seed <s>"`` or ``"replicate <r>"``, the pairing key), ``seed`` (generator seed,
        NA for replicates), ``model``, ``level`` (the rows the model predicts), ``n_patients``,
        ``auc`` (pooled patient-level out-of-fold AUC), ``auc_se`` (its DeLong SE on that
        cohort), ``auc_fold_mean``, ``auc_fold_sd``, ``accuracy_fold_mean`` (over the folds,
        at patient level for every model), ``auc_fold_mean_slice``, ``auc_fold_sd_slice``,
        ``accuracy_fold_mean_slice`` (the same on the slice rows of slice-level models: the
        paper's form, inferred; NaN otherwise), and the cohort's oracle AUCs ``oracle_clinical_auc``,
        ``oracle_image_auc``, ``oracle_both_auc``. ``attrs``: ``settings_key``,
        ``simulation_dir`` (relative to ``work_root``), ``counts``, ``base_seed`` and
        ``pairs_file``: the per-cohort DeLong tests of every pair of models
        (:func:`paired_tests`), also written to ``<simulation dir>/pairs_<...>.csv``.
    """
    profile = _profile(profile)
    study = DEFAULT_SETTINGS if study is None else study
    counts = seed_counts(profile, n_seeds)
    settings = simulation_settings(profile, study)
    key = outputs.settings_key(settings)
    folder = Path(work_root) / "simulation" / key
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "settings.json").exists():
        outputs.write_json(folder / "settings.json", settings)
    say = print if progress else logger.info
    seeds = simulation_seeds(counts.clinical, base_seed)
    deep_part = f"deep_{_deep_key(profile)}" if counts.deep else None
    start = time.perf_counter()
    say(f"simulation: profile {profile.name}, {counts.clinical} clinical / {counts.image} image / {counts.deep} deep seeds "
        f"(from {seeds[0] if seeds else '-'}), {counts.oracle_cohorts} oracle cohorts; cache {folder}")

    oracles: dict | None = None

    def get_oracles() -> dict:
        nonlocal oracles
        if oracles is None:
            say("simulation: fitting the fixed oracle rules on the generator's population (once, ~10 s)")
            oracles = fixed_oracles()
        return oracles

    # Image seeds: one generated cohort serves its radiomics and deep parts.
    wanted = {s: [p for p, n in (("radiomics", counts.image), ("deep", counts.deep)) if s in seeds[:n]] for s in seeds}
    image_todo = []  # (seed, its image parts not cached yet)
    for seed in seeds:
        missing = [p for p in wanted[seed] if not _part_path(folder, seed, p if p == "radiomics" else deep_part).exists()]
        if missing:
            image_todo.append((seed, missing))

    def image_done(seed: int, written: dict[str, str], seconds: float) -> None:
        for part, name in written.items():
            say(f"simulation: seed {seed} {part}: {_line(folder, seed, name)} [{seconds:.0f} s]")

    # Clinical seeds (side by side in worker processes).
    todo = [s for s in seeds if not _part_path(folder, s, "clinical").exists()]
    say(f"simulation: clinical seeds: {len(seeds) - len(todo)} cached, {len(todo)} to run")
    if todo:
        tasks = [(s, profile.n_folds, str(_part_path(folder, s, "clinical")), study) for s in todo]
        # A radiomics-only image seed (a cohort drawn, its features extracted) runs in the same workers,
        # submitted first (the longest job), instead of after the clinical seeds on partly idle cores.
        beside = [(seed, missing) for seed, missing in image_todo if missing == ["radiomics"]]
        n_jobs = max(1, min(n_jobs or os.cpu_count() or 1, len(todo) + len(beside)))
        if ray_jobs.executor(executor) == "ray":
            describe = lambda task: f"simulation: seed {task[0]} clinical"  # noqa: E731
            for i, (_, (seed, seconds)) in enumerate(ray_jobs.map_tasks(_clinical_task, tasks, get_oracles(), describe), 1):
                say(f"simulation: seed {seed} clinical ({i}/{len(todo)}, Ray): {_line(folder, seed, 'clinical')} [{seconds:.1f} s]")
        elif n_jobs > 1:
            with ProcessPoolExecutor(n_jobs, initializer=_init_worker, initargs=(get_oracles(),)) as pool:
                image_futures = [pool.submit(_image_task, (seed, profile, tuple(missing), str(folder), deep_part, study))
                                 for seed, missing in beside]
                if beside:
                    say(f"simulation: seed{'s' if len(beside) > 1 else ''} {', '.join(str(seed) for seed, _ in beside)}: "
                        "generating the cohort with images for radiomics, beside the clinical seeds")
                for i, (seed, seconds) in enumerate(pool.map(_clinical_task, tasks), 1):
                    say(f"simulation: seed {seed} clinical ({i}/{len(todo)}): {_line(folder, seed, 'clinical')} [{seconds:.1f} s]")
                for future in image_futures:
                    image_done(*future.result())
            image_todo = [item for item in image_todo if item not in beside]
        else:
            for i, task in enumerate(tasks, 1):
                seed, seconds = _clinical_task(task, get_oracles())
                say(f"simulation: seed {seed} clinical ({i}/{len(todo)}): {_line(folder, seed, 'clinical')} [{seconds:.1f} s]")

    for seed, missing in image_todo:
        t0 = time.perf_counter()
        say(f"simulation: seed {seed}: generating the cohort with images for {', '.join(missing)}")
        found = image_parts(seed, profile, tuple(missing), folder / "scratch", progress=False, study=study)
        image_done(seed, _write_image_parts(folder, seed, found, deep_part), time.perf_counter() - t0)
    with contextlib.suppress(OSError):
        (folder / "scratch").rmdir()  # empty once every temporary cohort is gone

    # Metrics per cohort, from the cached predictions.
    rows, pairs = [], []
    for seed in seeds:
        names = ["clinical"] + [p if p == "radiomics" else deep_part for p in wanted[seed]]
        predictions = pd.concat([_read_part(_part_path(folder, seed, n)) for n in names], ignore_index=True)
        cohort_rows, cohort_pairs = cohort_metrics(predictions)
        tag = {"design": "study", "cohort": f"seed {seed}", "seed": seed}
        oracle_aucs = {f"{r['model']}_auc": r["auc"] for r in cohort_rows if r["model"] in ORACLE_MODELS}
        rows += [{**tag, **row, **oracle_aucs} for row in cohort_rows]
        pairs += [{**tag, **pair} for pair in cohort_pairs]
    frames = [pd.DataFrame(rows, columns=RESULT_COLUMNS)]
    pair_frames = [pd.DataFrame(pairs, columns=PAIR_COLUMNS)]

    # Fixed oracle rules on many image-free cohorts (cached per chunk).
    n_chunks = -(-counts.oracle_cohorts // ORACLE_CHUNK)
    for chunk in range(n_chunks):
        row_path = folder / f"oracle_{base_seed}_chunk_{chunk}.csv"
        pair_path = folder / f"oracle_{base_seed}_chunk_{chunk}_pairs.csv"
        if not (row_path.exists() and pair_path.exists()):
            t0 = time.perf_counter()
            chunk_rows, chunk_pairs = oracle_chunk(chunk, base_seed, profile.n_folds, get_oracles())
            outputs.write_csv(pair_path, chunk_pairs)
            outputs.write_csv(row_path, chunk_rows)
            say(f"simulation: oracle cohorts {chunk * ORACLE_CHUNK}-{(chunk + 1) * ORACLE_CHUNK - 1} "
                f"[{time.perf_counter() - t0:.1f} s]")
        frames.append(pd.read_csv(row_path, dtype={"cohort": str}))
        pair_frames.append(pd.read_csv(pair_path, dtype={"cohort": str}))
    keep = {f"replicate {r}" for r in range(counts.oracle_cohorts)}
    results = _tidy(pd.concat(frames, ignore_index=True), keep)
    pair_table = _tidy(pd.concat(pair_frames, ignore_index=True), keep)
    pairs_path = folder / f"pairs_{base_seed}_{'-'.join(str(c) for c in counts)}.csv"
    outputs.write_csv(pairs_path, pair_table)
    outputs.write_csv(folder / f"results_{base_seed}_{'-'.join(str(c) for c in counts)}.csv", results)
    results.attrs.update({
        "settings_key": key, "simulation_dir": str(Path("simulation") / key), "work_root": str(work_root),
        "pairs_file": str(pairs_path), "counts": dict(counts._asdict()), "base_seed": base_seed,
        "profile": profile.name,
    })  # fmt: skip
    say(f"simulation: {results['cohort'].nunique()} cohorts, {len(results)} rows in {time.perf_counter() - start:.0f} s "
        "(SYNTHETIC cohorts)")
    return results


def _tidy(frame: pd.DataFrame, keep_replicates: set[str]) -> pd.DataFrame:
    """Study rows plus the wanted replicate rows, ``seed`` as nullable Int64."""
    frame = frame[(frame["design"] == "study") | frame["cohort"].isin(keep_replicates)].reset_index(drop=True)
    frame["seed"] = pd.array(frame["seed"], dtype="Int64")
    return frame


def _line(folder: Path, seed: int, part: str) -> str:
    """``model AUC, ...`` of one cached part, for the progress line."""
    frame = _read_part(_part_path(folder, seed, part))
    aucs = []
    for model, rows in frame.groupby("model", sort=False):
        patients = evaluation.patient_level(rows.drop(columns="model"))
        aucs.append(f"{model} {evaluation.auc(patients['y_true'], patients['y_prob']):.3f}")
    return ", ".join(aucs)


# %% Summaries ------------------------------------------------------------------------------


def _model_sort_key(model: str) -> tuple[int, str]:
    return (MODEL_ORDER.index(model) if model in MODEL_ORDER else len(MODEL_ORDER), model)


def summarise(results: pd.DataFrame) -> pd.DataFrame:
    """The spread of each model's AUC over the simulated cohorts.

    Returns:
        One row per model: ``model, n_seeds`` (cohorts), ``auc_mean, auc_sd`` (SD over
        cohorts, ddof=1), ``auc_q025, auc_q975`` (the central 95% of the cohorts' pooled
        AUCs), ``fold_mean_auc_mean, fold_mean_auc_sd`` (the same for the mean of the
        patient-level fold AUCs), ``fold_sd_mean`` (the typical SD over the folds of one
        study, what the paper prints after ±), ``fold_mean_auc_slice_mean`` (mean over
        cohorts of the slice-level fold mean: the paper's form, inferred; NaN for
        patient-level models), ``auc_se_mean`` (mean DeLong SE: what one
        study would estimate for the spread), ``paper_auc_mean, paper_auc_sd`` (the
        paper's values, where it reports the model).
    """
    rows = []
    for model in sorted(results["model"].unique(), key=_model_sort_key):
        part = results[results["model"] == model]
        auc, fold_mean = part["auc"].to_numpy(dtype=float), part["auc_fold_mean"].to_numpy(dtype=float)
        paper = paper_values(model)
        rows.append({
            "model": model, "n_seeds": len(part), "auc_mean": auc.mean(), "auc_sd": _sd(auc),
            "auc_q025": np.quantile(auc, 0.025), "auc_q975": np.quantile(auc, 0.975),
            "fold_mean_auc_mean": fold_mean.mean(), "fold_mean_auc_sd": _sd(fold_mean),
            "fold_sd_mean": part["auc_fold_sd"].mean(), "fold_sd_q025": part["auc_fold_sd"].quantile(0.025),
            "fold_sd_q975": part["auc_fold_sd"].quantile(0.975), "auc_se_mean": part["auc_se"].mean(),
            "fold_mean_auc_slice_mean": part["auc_fold_mean_slice"].mean() if "auc_fold_mean_slice" in part else np.nan,
            "paper_auc_mean": paper_auc(model), "paper_auc_sd": np.nan if paper is None else paper.auc_sd,
        })  # fmt: skip
    return pd.DataFrame(rows)


def _sd(values: np.ndarray) -> float:
    return float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")


def paired_tests(results: pd.DataFrame) -> pd.DataFrame | None:
    """The per-cohort DeLong tests of every pair of models of a :func:`run_simulation`
    result (from its ``pairs_file``), restricted to its cohorts; ``None`` when unknown."""
    path = results.attrs.get("pairs_file")
    if not path or not Path(path).exists():
        return None
    pairs = pd.read_csv(path, dtype={"cohort": str})
    return pairs[pairs["cohort"].isin(set(results["cohort"]))].reset_index(drop=True)


def z_significance(alpha: float = 0.05) -> float:
    """``z_{1 - alpha/2}`` (1.96 for alpha 0.05): the significance threshold in SEs."""
    from scipy.stats import norm

    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    return float(norm.ppf(1 - alpha / 2))


def z_factor(alpha: float = 0.05, power: float = 0.8) -> float:
    """``z_{1 - alpha/2} + z_{power}`` (2.80 for alpha 0.05 and power 0.8)."""
    from scipy.stats import norm

    if not (0 < alpha < 1 and 0 < power < 1):
        raise ValueError(f"alpha and power must lie in (0, 1), got {alpha}, {power}")
    return float(norm.ppf(1 - alpha / 2) + norm.ppf(power))


def detectable_differences(results: pd.DataFrame, alpha: float = 0.05, power: float = 0.8) -> pd.DataFrame:
    """The smallest AUC difference between two models that the design detects.

    For two models ``a`` and ``b`` run on the same cohorts, ``d_c = AUC_a - AUC_b`` on
    cohort ``c``; its SD over the simulated cohorts is the standard error of the
    difference that one study of this design measures (cohort sampling, folds, the
    models' own randomness all included). A two-sided test at level ``alpha`` detects a
    true difference ``Delta`` with probability ``power`` when

        Delta >= (z_{1 - alpha/2} + z_{power}) * SD(d)        (2.80 * SD for 0.05 and 0.8)

    which is ``min_detectable_difference``, the **detectable difference** (pooled
    patient-level AUC). An *observed* difference is significant at level ``alpha`` when it
    exceeds the **significance threshold** ``z_{1 - alpha/2} * SD(d)`` (1.96 * SD):
    ``significance_threshold``. The two answer different questions (is this observed
    difference beyond chance; would this design find a true difference of this size) and
    are given side by side. The same on the mean of the patient-level fold AUCs (the form of
    the paper's tables) are ``significance_threshold_fold_mean`` and
    ``min_detectable_difference_fold_mean``.

    ``min_detectable_difference_unpaired = (z_{1 - alpha/2} + z_{power}) *
    sqrt(SD_a^2 + SD_b^2)``, from the single-model SDs over the same cohorts, is the
    version for two AUCs measured on *independent* cohorts (e.g. a rerun on another
    cohort against the paper's number); pairing removes ``2 cov(a, b)`` from the variance,
    so the paired one is smaller whenever the models' AUCs move together. Against a value
    known exactly it is ``(z + z) * SD_a``.

    ``min_detectable_difference_delong = (z + z) * mean DeLong SE`` is the textbook
    version for one study, which assumes patients sampled independently. The generator
    gives every cohort the paper's exact Table 1 counts, so the simulated spread of
    models that read the clinical variables is smaller than that of cohorts sampled
    freely (the fixed clinical oracle: SD 0.013 over cohorts against a DeLong SE of
    0.037): the simulated thresholds are optimistic, and a difference found below them is
    inside the noise a fortiori.

    Returns:
        One row per pair run on at least two common cohorts: ``model_a, model_b,
        n_seeds, mean_difference, sd_difference, significance_threshold,
        min_detectable_difference, correlation`` (of the two AUCs over cohorts),
        ``min_detectable_difference_unpaired``, ``fold_mean_difference,
        sd_fold_mean_difference, significance_threshold_fold_mean,
        min_detectable_difference_fold_mean``, ``se_delong_mean`` (mean DeLong SE of the
        difference within one cohort), ``significance_threshold_delong``,
        ``min_detectable_difference_delong`` and ``delong_power`` (share of cohorts whose DeLong test gives p < alpha: the power
        of one study at the simulated true difference); the last three NaN when the
        pairs file is not available.
    """
    factor = z_factor(alpha, power)
    z_sig = z_significance(alpha)
    wide = results.pivot_table(index="cohort", columns="model", values=["auc", "auc_fold_mean"], aggfunc="first")
    models = sorted(results["model"].unique(), key=_model_sort_key)
    tests = paired_tests(results)
    rows = []
    for i, model_a in enumerate(models):
        for model_b in models[i + 1 :]:
            both = wide["auc"][[model_a, model_b]].dropna()
            if len(both) < 2:
                continue
            a, b = both[model_a].to_numpy(), both[model_b].to_numpy()
            fold_a = wide["auc_fold_mean"].loc[both.index, model_a].to_numpy()
            fold_b = wide["auc_fold_mean"].loc[both.index, model_b].to_numpy()
            sd_difference, sd_fold = _sd(a - b), _sd(fold_a - fold_b)
            se_mean = power_delong = np.nan
            if tests is not None:
                pair = tests[(tests["model_a"] == model_a) & (tests["model_b"] == model_b) & tests["cohort"].isin(both.index)]
                if len(pair):
                    se_mean = float(pair["se_delong"].mean())
                    power_delong = float((pair["p_delong"] < alpha).mean())
            rows.append({
                "model_a": model_a, "model_b": model_b, "n_seeds": len(both),
                "mean_difference": float(np.mean(a - b)), "sd_difference": sd_difference,
                "significance_threshold": z_sig * sd_difference, "min_detectable_difference": factor * sd_difference,
                "correlation": float(np.corrcoef(a, b)[0, 1]) if np.std(a) > 0 and np.std(b) > 0 else np.nan,
                "min_detectable_difference_unpaired": factor * float(np.sqrt(_sd(a) ** 2 + _sd(b) ** 2)),
                "fold_mean_difference": float(np.mean(fold_a - fold_b)), "sd_fold_mean_difference": sd_fold,
                "significance_threshold_fold_mean": z_sig * sd_fold, "min_detectable_difference_fold_mean": factor * sd_fold,
                "se_delong_mean": se_mean, "significance_threshold_delong": z_sig * se_mean,
                "min_detectable_difference_delong": factor * se_mean,
                "delong_power": power_delong,
            })  # fmt: skip
    return pd.DataFrame(rows, columns=DETECTABLE_COLUMNS)


#: The paper's comparisons: (label, model_a, model_b). Each is measured only by the simulated
#: pair of its own two models; no other pair stands in for it.
PAPER_COMPARISONS: tuple[tuple[str, str, str], ...] = (
    ("Table 5: joint loss", "fusion_d_joint", "fusion_d"),
    ("Table 4: fusion D vs fusion B", "fusion_d", "fusion_b"),
    ("Table 4: fusion D vs clinical model", "fusion_d", "clinical_rf"),
    ("Table 4: fusion D vs deep model", "fusion_d", "deep_resnet50"),
    ("Table 4: clinical model vs deep model", "clinical_rf", "deep_resnet50"),
    ("Table 3: deep vs radiomics model", "deep_resnet50", RADIOMICS_MODEL),
    ("Conclusion: fusion D vs radiomics model", "fusion_d", RADIOMICS_MODEL),
)

PAPER_DIFFERENCE_COLUMNS = [
    "comparison", "model_a", "model_b", "paper_a", "paper_b", "paper_difference", "measured", "n_seeds",
    "se_difference", "significance_threshold", "detectable_difference", "detectable_difference_pooled",
    "detectable_difference_delong", "verdict", "reason",
]  # fmt: skip


def verdict_of(difference: float, significance_threshold: float, detectable_difference: float) -> str:
    """An observed AUC difference against the significance threshold (z_{0.975} SE) and the
    detectable difference ((z_{0.975} + z_{0.8}) SE), in words."""
    size = abs(difference)
    if size < significance_threshold:
        return "below the significance threshold: not distinguishable from this design's noise"
    if size < detectable_difference:
        return ("above the significance threshold, below the detectable difference: significant as observed, "
                "but a true difference this size is found with power below 0.8")
    return "above the detectable difference"


def paper_differences(results: pd.DataFrame, alpha: float = 0.05, power: float = 0.8) -> pd.DataFrame:
    """The paper's reported AUC differences against this design's noise, pair by pair.

    The paper reports the mean of the 10 fold AUCs, so each difference is set against the
    SD over the simulated cohorts of the same pair's difference of patient-level fold-mean
    AUCs (``sd_fold_mean_difference`` of :func:`detectable_differences`): its
    **significance threshold** ``z_{1 - alpha/2} · SE`` (1.96 · SE) and its **detectable
    difference** ``(z_{1 - alpha/2} + z_{power}) · SE`` (2.80 · SE). A comparison is
    measured only when both of its models were simulated on at least
    :data:`MIN_PAIR_COHORTS` cohorts; otherwise it is "not measured" (the networks are not
    simulated unless deep cohorts are asked for), never judged by another pair's noise.

    Returns:
        :data:`PAPER_DIFFERENCE_COLUMNS`: ``comparison, model_a, model_b, paper_a, paper_b,
        paper_difference, measured, n_seeds`` (cohorts of the pair), ``se_difference``
        (fold-mean form), ``significance_threshold``, ``detectable_difference`` (fold-mean
        form), ``detectable_difference_pooled`` (pooled patient AUC),
        ``detectable_difference_delong`` (from the pair's mean DeLong SE: patients sampled
        independently), ``verdict`` (:func:`verdict_of`, or "not measured") and ``reason``
        (why not measured, or what the SE is).
    """
    table = detectable_differences(results, alpha, power)
    z_sig, factor = z_significance(alpha), z_factor(alpha, power)
    simulated = set(results["model"])
    rows = []
    for label, model_a, model_b in PAPER_COMPARISONS:
        paper_a, paper_b = paper_auc(model_a), paper_auc(model_b)
        difference = round(paper_a - paper_b, 4)
        row = {"comparison": label, "model_a": model_a, "model_b": model_b, "paper_a": paper_a, "paper_b": paper_b,
               "paper_difference": difference}
        match = table[((table["model_a"] == model_a) & (table["model_b"] == model_b))
                      | ((table["model_a"] == model_b) & (table["model_b"] == model_a))] if len(table) else table
        n_seeds = int(match["n_seeds"].iloc[0]) if len(match) else 0
        if n_seeds < MIN_PAIR_COHORTS:
            missing = [m for m in (model_a, model_b) if m not in simulated]
            reason = (f"{' and '.join(missing)} not simulated" if missing else
                      f"the pair ran on {n_seeds} cohorts, fewer than {MIN_PAIR_COHORTS}")
            rows.append({**row, "measured": False, "n_seeds": n_seeds, "se_difference": np.nan,
                         "significance_threshold": np.nan, "detectable_difference": np.nan,
                         "detectable_difference_pooled": np.nan, "detectable_difference_delong": np.nan,
                         "verdict": "not measured", "reason": reason})  # fmt: skip
            continue
        stats = match.iloc[0]
        se = float(stats["sd_fold_mean_difference"])
        threshold, detectable = z_sig * se, factor * se
        rows.append({**row, "measured": True, "n_seeds": n_seeds, "se_difference": se,
                     "significance_threshold": threshold, "detectable_difference": detectable,
                     "detectable_difference_pooled": float(stats["min_detectable_difference"]),
                     "detectable_difference_delong": float(stats["min_detectable_difference_delong"]),
                     "verdict": verdict_of(difference, threshold, detectable),
                     "reason": f"SD over {n_seeds} simulated cohorts of the pair's fold-mean AUC difference"})  # fmt: skip
    return pd.DataFrame(rows, columns=PAPER_DIFFERENCE_COLUMNS)


# %% Figure ------------------------------------------------------------------------------------


def plot_spread(results: pd.DataFrame, alpha: float = 0.05, power: float = 0.8, max_points: int = 300, seed: int = 0):
    """AUC of each model across the simulated cohorts, and the paper's differences.

    Left: box (central 95% as whiskers) and points of the pooled patient-level AUC per
    model (at most ``max_points`` points drawn per model), the mean over cohorts of the
    patient-level fold-mean AUC as a hollow diamond, the paper's reported AUC as a red
    star, lines at the mean oracle AUCs (the ceilings). Right: for each of the paper's
    comparisons (:func:`paper_differences`), the paper's difference (red dot) and, where
    the pair was simulated, its significance threshold (dark bar, 1.96 SE) and detectable
    difference (light bar, 2.80 SE); "not measured" where it was not.

    Returns:
        The matplotlib Figure (labelled SYNTHETIC).
    """
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(seed)
    models = sorted(results["model"].unique(), key=_model_sort_key)
    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 5.5), gridspec_kw={"width_ratios": [1.35, 1]})
    values = [results.loc[results["model"] == m, "auc"].to_numpy(dtype=float) for m in models]
    left.boxplot(values, positions=range(len(models)), widths=0.55, showfliers=False,
                 medianprops={"color": "black"}, whis=(2.5, 97.5))  # fmt: skip
    paper_shown = False
    for x, (model, auc) in enumerate(zip(models, values, strict=True)):
        shown = auc if len(auc) <= max_points else rng.choice(auc, max_points, replace=False)
        colour = "tab:green" if model.startswith("oracle_") else "tab:blue"
        left.scatter(x + rng.uniform(-0.18, 0.18, len(shown)), shown, s=8, alpha=0.5 if len(shown) < 100 else 0.15,
                     color=colour, zorder=3)  # fmt: skip
        fold_mean = results.loc[results["model"] == model, "auc_fold_mean"].mean()
        left.scatter([x + 0.33], [fold_mean], marker="D", facecolor="none", edgecolor="black", s=30, zorder=4,
                     label="mean of fold AUCs (patient level)" if x == 0 else None)  # fmt: skip
        if paper_values(model) is not None:
            left.scatter([x], [paper_auc(model)], marker="*", s=160, color="tab:red",
                         zorder=5, label=None if paper_shown else "paper's reported AUC (fold mean)")  # fmt: skip
            paper_shown = True
    for model, style in zip(ORACLE_MODELS, (":", "--", "-."), strict=True):
        column = f"{model}_auc"
        if column in results and results[column].notna().any():
            left.axhline(results[column].mean(), color="tab:green", linestyle=style, linewidth=1,
                         label=f"{model} mean (ceiling)")  # fmt: skip
    counts = [len(v) for v in values]
    left.set_xticks(range(len(models)), [f"{m}\n(n={c})" for m, c in zip(models, counts, strict=True)],
                    rotation=30, ha="right", fontsize=8)  # fmt: skip
    left.set_ylabel("pooled out-of-fold AUC, patient level")
    left.set_title("AUC per simulated cohort (167 patients)", fontsize=10)
    left.legend(fontsize=7, loc="upper left")
    left.grid(axis="y", alpha=0.3)

    table = paper_differences(results, alpha, power)
    y = np.arange(len(table))[::-1]
    measured = table["measured"].to_numpy(dtype=bool)
    if measured.any():
        right.barh(y[measured], table["detectable_difference"][measured], color="lightgrey", edgecolor="grey",
                   label=f"detectable difference ((z {1 - alpha / 2:g} + z {power:g}) SE, power {power:g})")
        right.barh(y[measured], table["significance_threshold"][measured], height=0.4, color="dimgrey",
                   label=f"significance threshold (z {1 - alpha / 2:g} SE, alpha {alpha:g})")  # fmt: skip
    right.scatter(table["paper_difference"], y, color="tab:red", zorder=3, label="paper's difference (fold-mean AUC)")
    largest = np.nanmax([table["paper_difference"].abs().max(), table["detectable_difference"].max(), 0.01])
    right.set_xlim(min(0.0, table["paper_difference"].min() * 1.1), largest * 1.15)
    for row_y in y[~measured]:
        right.text(largest * 0.02, row_y, "not measured (models not simulated)", fontsize=7, va="center", color="dimgrey")
    labels = [f"{r.model_a} vs {r.model_b}" for r in table.itertuples()]
    right.set_yticks(y, labels, fontsize=7)
    right.axvline(0, color="black", linewidth=0.8)
    right.set_xlabel("AUC difference")
    right.set_title("The paper's differences against this design's noise", fontsize=10)
    right.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=1)
    n_study = results.loc[results["design"] == "study", "cohort"].nunique()
    fig.suptitle(f"SYNTHETIC cohorts: seed simulation ({n_study} study cohorts, "
                 f"{results.loc[results['design'] != 'study', 'cohort'].nunique()} oracle cohorts)", fontsize=11)
    fig.text(0.01, 0.005, outputs.SYNTHETIC_NOTE, fontsize=6, color="dimgrey")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    return fig
