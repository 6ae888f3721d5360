"""The final models: every model refit on the whole cohort, with the settings of its cross-validation.

After cross-validation has measured how well each model generalises, each one is refit on
every patient of the cohort (:func:`refit_final_model`) with the run's profile and seed,
into a :class:`model_folder.FinalModel` that :meth:`~model_folder.FinalModel.save` writes
as a model folder (:mod:`hccer_lib.model_folder`, which also reads it back). A model folder
can also be put together from models fitted elsewhere: :func:`new_final_model`, then
:func:`add_clinical_rf`, :func:`add_radiomics_rf`, :func:`add_network`.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pandas as pd

from hccer_lib import __version__
from hccer_lib.clinical import LABEL_COLUMN
from hccer_lib.cohort import CohortError
from hccer_lib.model_arrays import forest_arrays, radiomics_spec
from hccer_lib.model_folder import (
    FORMAT_NAME,
    FORMAT_VERSION,
    RESEARCH_NOTE,
    SYNTHETIC_MODEL_NOTE,
    FinalModel,
    versions,
)
from hccer_lib.models import MODEL_NAMES, NETWORK_MODELS, PRIMARY_ORDER, output_names
from hccer_lib.study_run import DEFAULT_SETTINGS

logger = logging.getLogger("hccer")


def available_models(work_dir: str | os.PathLike) -> list[str]:
    """The models of :data:`MODEL_NAMES` whose cross-validated predictions exist in ``work_dir``."""
    from hccer_lib import evaluation

    return [m for m in MODEL_NAMES if evaluation.predictions_path(work_dir, m).is_file()]


def new_final_model(
    cohort_name: str,
    clinical: pd.DataFrame,
    profile,
    variables: list[str],
    seed: int = 2020,
    selection_protocol: str = DEFAULT_SETTINGS.selection_protocol,
    alpha: float = DEFAULT_SETTINGS.alpha,
    synthetic: bool = False,
    preprocess_settings=None,
    dictionary_spec: dict | None = None,
) -> FinalModel:
    """An empty :class:`FinalModel` (no model yet) for a cohort and its settings.

    Args:
        cohort_name: the cohort folder's name (no path).
        clinical: the raw clinical frame the models are fitted on (counts and the imputation
            of missing values are kept).
        variables: the selected clinical variables (``clinical.select_variables``); their
            bits (``clinical.encode_variables``), with an indicator bit for each variable some
            patient lacks, are the clinical vector of every model.
        preprocess_settings: ``preprocessing.PreprocessSettings`` (default: the profile's
            image size with the default window, phase, margin and tolerance).
        dictionary_spec: the cohort's data dictionary (``dictionary.load_spec``; None: the
            paper's), saved to read new patients as the cohort was read.
    """
    from hccer_lib import preprocessing
    from hccer_lib.clinical import apply_imputation, binarise, fit_imputation

    if preprocess_settings is None:
        preprocess_settings = preprocessing.PreprocessSettings(image_size=profile.image_size)
    settings = preprocess_settings if isinstance(preprocess_settings, dict) else asdict(preprocess_settings)
    levels = binarise(clinical)
    modes, indicators = fit_imputation(levels, variables, np.ones(len(levels), dtype=bool))
    _, bit_names = apply_imputation(levels, variables, modes, indicators)
    labels = clinical[LABEL_COLUMN].to_numpy(dtype=int)
    manifest = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "hccer_version": __version__,
        "versions": versions(),
        "cohort": {"name": str(cohort_name), "synthetic": bool(synthetic), "n_patients": len(clinical), "n_er": int(labels.sum())},
        "profile": profile.as_dict(),
        "seed": int(seed),
        "selection_protocol": selection_protocol,
        "clinical": {"alpha": alpha, "variables": list(variables), "bit_names": list(bit_names),
                     "imputation": {"modes": modes, "indicators": list(indicators)},
                     "dictionary": None if dictionary_spec is None else json.loads(json.dumps(dictionary_spec))},
        "preprocessing": {"settings": dict(settings), "format_version": preprocessing.FORMAT_VERSION},
        "models": {},
        "primary_model": None,
        "note": (SYNTHETIC_MODEL_NOTE + " " if synthetic else "") + RESEARCH_NOTE,
    }
    return FinalModel(manifest=manifest)


def add_clinical_rf(final: FinalModel, forest, **details) -> None:
    """Add the fitted clinical random forest (on ``final.bit_names``, in that order)."""
    if forest.n_features_in_ != len(final.bit_names):
        raise ValueError(f"the forest reads {forest.n_features_in_} features, the clinical vector has {len(final.bit_names)}")
    final.forests["clinical_rf"] = forest_arrays(forest)
    details = {"feature_names": final.bit_names, "n_estimators": len(forest.estimators_), **details}
    _add_entry(final, "clinical_rf", "forest", ["clinical"], ["clinical_rf/forest.npz"], details)


def add_radiomics_rf(final: FinalModel, pipeline, feature_columns: list[str], extraction: dict, **details) -> None:
    """Add the fitted radiomics pipeline (``radiomics_baseline.make_pipeline``).

    Args:
        feature_columns: the columns it was fitted on, in order.
        extraction: how to extract a new patient's features: ``params`` (PyRadiomics),
            ``mode``, ``reference_phase``, ``tolerance_mm``, ``min_texture_voxels``.
    """
    import radiomics

    from hccer_lib import radiomics_baseline as rb

    missing = [k for k in ("params", "mode", "reference_phase", "tolerance_mm", "min_texture_voxels") if k not in extraction]
    if missing:
        raise ValueError(f"extraction settings lack {missing}")
    final.radiomics = radiomics_spec(pipeline, feature_columns)
    final.forests["radiomics_rf"] = forest_arrays(pipeline.named_steps["forest"])
    final.manifest["radiomics"] = {
        **{k: extraction[k] for k in ("params", "mode", "reference_phase", "tolerance_mm", "min_texture_voxels")},
        "pyradiomics_version": radiomics.__version__,
        "format_version": rb.FORMAT_VERSION,
    }
    details = {"n_features": len(feature_columns), "n_selected": len(final.radiomics["selected"]),
               "lasso_C": final.radiomics["lasso_C"], "n_estimators": len(pipeline.named_steps["forest"].estimators_),
               **details}  # fmt: skip
    _add_entry(final, "radiomics_rf", "forest", ["radiomics"], ["radiomics_rf/forest.npz", "radiomics_rf/pipeline.json"], details)


def add_network(final: FinalModel, name: str, model, config, **details) -> None:
    """Add a trained network: an uncompiled copy built from ``config`` carries its weights.

    Building the copy from the recorded settings proves that they describe the weights
    (``load_final_model`` checks it again).
    """
    from hccer_lib import networks

    if name not in NETWORK_MODELS:
        raise ValueError(f"unknown network {name!r}; choose one of {NETWORK_MODELS}")
    config = replace(config, n_clinical=len(final.bit_names), imagenet="none")
    size = final.manifest["preprocessing"]["settings"]["image_size"]
    if config.image_size != size:
        raise ValueError(f"{name} takes {config.image_size} px images, the preprocessing makes {size} px")
    clean = networks.build_model(name, config)
    clean.set_weights(model.get_weights())
    final.networks[name] = clean
    network = {k: (list(v) if isinstance(v, tuple) else v) for k, v in config.as_dict().items()}
    inputs = ["image"] if name == "deep_resnet50" else ["image", "clinical"]
    _add_entry(final, name, "network", inputs, [f"{name}/model.keras"], {"network": network, **details})


def _add_entry(final: FinalModel, name: str, kind: str, inputs: list[str], files: list[str], details: dict) -> None:
    final.manifest["models"][name] = {"kind": kind, "inputs": inputs, "outputs": output_names(name),
                                      "files": [*files, f"{name}/model.json"], "details": details}  # fmt: skip
    final.manifest["models"] = {m: final.manifest["models"][m] for m in MODEL_NAMES if m in final.manifest["models"]}
    final.manifest["primary_model"] = next(m for m in PRIMARY_ORDER if m in final.manifest["models"])


def refit_final_model(
    cohort_dir: str | os.PathLike,
    work_dir: str | os.PathLike,
    profile,
    models: list[str] | tuple[str, ...] = MODEL_NAMES,
    seed: int = 2020,
    selection_protocol: str = DEFAULT_SETTINGS.selection_protocol,
    imagenet: str = "auto",
    synthetic: bool = False,
    alpha: float = DEFAULT_SETTINGS.alpha,
    clinical_estimators: int = DEFAULT_SETTINGS.n_estimators,
    radiomics_estimators: int = DEFAULT_SETTINGS.n_estimators,
    inner_folds: int = DEFAULT_SETTINGS.inner_folds,
    radiomics_mode: str | None = None,
    min_texture_voxels: int = DEFAULT_SETTINGS.min_texture_voxels,
    verbose: int | str = 0,
) -> FinalModel:
    """Refit ``models`` on every patient of the cohort, with the settings of their cross-validation.

    ``clinical_rf``: the random forest on the clinical vector (variables selected by
    chi-squared on the whole cohort, with ``alpha``). ``radiomics_rf``: the radiomics
    pipeline on the cached feature table (``radiomics_baseline.extract_cohort``).
    Networks: ``training.train_fold(..., fold=None)`` on the processed slices of every
    patient (``preprocessing.study_dataset``: notebook 02's preprocessing, cached). Notebook 07 passes
    its run's settings (``StudyRun.study_settings``: ``selection_protocol``, ``alpha``, ``n_estimators`` as
    both forests' trees, ``inner_folds``, ``min_texture_voxels``); the defaults are the study's
    (``study_run.DEFAULT_SETTINGS``), those of notebooks 01 and 03-06 run with theirs. On the whole cohort the ``paper`` and ``strict`` selection
    protocols select on the same patients; ``strict`` skips single-level variables.

    Returns:
        the :class:`FinalModel`, not yet saved (:meth:`FinalModel.save`).
    """
    from hccer_lib import clinical as clinical_module
    from hccer_lib import cohort, dictionary, evaluation, preprocessing, training

    unknown = [m for m in models if m not in MODEL_NAMES]
    if unknown or not models:
        raise ValueError(f"unknown or no models {unknown}; choose from {MODEL_NAMES}")
    if selection_protocol not in ("paper", "strict"):
        raise ValueError(f"selection_protocol must be 'paper' or 'strict', got {selection_protocol!r}")
    work_dir = Path(work_dir)
    clinical = cohort.load_clinical(cohort_dir)
    labels = clinical[LABEL_COLUMN].to_numpy(dtype=int)
    levels = clinical_module.binarise(clinical)
    on_single_level = "raise" if selection_protocol == "paper" else "skip"
    variables = clinical_module.select_variables(levels, labels, alpha, on_single_level)
    if not variables:
        raise ValueError(f"no clinical variable has chi-squared p < {alpha} on this cohort")
    networks_wanted = [m for m in NETWORK_MODELS if m in models]
    dataset = None
    settings = preprocessing.study_settings(work_dir, profile)
    if networks_wanted:
        dataset = preprocessing.study_dataset(cohort_dir, work_dir, profile)
        settings = dataset.settings
    try:
        spec = dictionary.load_spec(cohort_dir)
    except dictionary.DictionaryError as err:
        raise CohortError(str(err), file=dictionary.DICTIONARY_FILE) from None
    final = new_final_model(Path(cohort_dir).name, clinical, profile, variables, seed, selection_protocol, alpha,
                            synthetic, settings, dictionary_spec=spec)  # fmt: skip

    if "clinical_rf" in models:  # imputed as the networks' folds impute (clinical.clinical_matrix on every patient)
        imputation = final.manifest["clinical"]["imputation"]
        bits, _ = clinical_module.apply_imputation(levels, variables, imputation["modes"], imputation["indicators"])
        logger.info("final model: clinical_rf on %d patients, %d clinical bits", len(clinical), bits.shape[1])
        forest = clinical_module.make_clinical_rf(seed, n_estimators=clinical_estimators).fit(bits, labels)
        add_clinical_rf(final, forest, rf_params={**clinical_module.RF_PARAMS, "n_estimators": clinical_estimators}, seed=int(seed), n_patients=len(clinical))

    if "radiomics_rf" in models:
        _refit_radiomics(final, cohort_dir, work_dir, profile, seed, radiomics_estimators, inner_folds,
                         radiomics_mode or profile.radiomics_mode, min_texture_voxels)  # fmt: skip

    if networks_wanted:
        final.manifest["cohort"]["n_slices"] = len(dataset)
        folds = evaluation.load_or_make_folds(work_dir, clinical, profile.n_folds, seed)
        logger.info("final model: training %s on %d slices of %d patients", ", ".join(networks_wanted), len(dataset),
                    len(clinical))
        # one fit per network: XLA's compilation would cost more than it saves (networks.compile_model);
        # side by side in worker processes pinned as the cross-validation's (training.training_workers)
        requests = [(name, dataset, clinical, folds, profile, None, seed, selection_protocol, imagenet, None)
                    for name in networks_wanted]
        trained = training.train_folds_isolated(requests, profile, xla=False, verbose=verbose)
        for name, (model, data) in zip(networks_wanted, trained, strict=True):
            fitted = data.train & ~data.validation
            if name != "deep_resnet50" and list(data.clinical_names) != final.bit_names:
                raise ValueError(f"{name} was trained on clinical bits {data.clinical_names}, the final model encodes {final.bit_names}")
            add_network(final, name, model, data.config, seed=int(seed), imagenet=imagenet if imagenet in ("auto", "none") else Path(imagenet).name,
                        n_training_slices=int(fitted.sum()), n_training_patients=len(set(data.patient_id[fitted])),
                        training={f: v for f, v in training.training_settings(profile, name).items() if f != "xla"})  # fmt: skip
    return final


def _refit_radiomics(final, cohort_dir, work_dir, profile, seed, n_estimators, inner_folds, mode, min_texture_voxels) -> None:
    from hccer_lib import radiomics_baseline as rb

    features, meta = rb.extract_cohort(
        cohort_dir, work_dir, mode=mode, feature_classes=profile.radiomics_feature_classes,
        min_texture_voxels=min_texture_voxels,
    )  # fmt: skip
    columns = rb.feature_columns(features)
    X = features[columns].to_numpy(dtype=float)
    y = features["y_true"].to_numpy(dtype=int)
    patients = features["patient_id"].astype(str).to_numpy()
    logger.info("final model: radiomics_rf on %d rows x %d features", *X.shape)
    pipeline = rb.make_pipeline(seed, rb.inner_splits(patients, y, inner_folds, seed), n_estimators).fit(X, y)
    extraction = {"params": meta["params"], "mode": mode, "reference_phase": meta["reference_phase"],
                  "tolerance_mm": meta["tolerance_mm"], "min_texture_voxels": min_texture_voxels}  # fmt: skip
    add_radiomics_rf(final, pipeline, columns, extraction, inner_folds=inner_folds, seed=int(seed), n_rows=len(X))
