"""Measure a training recipe of the networks on development cohorts (never a reported one).

Generates (once) the synthetic cohorts of the given generator seeds in ``data/dev_seed<N>/``,
preprocesses them with the study's defaults, and trains the chosen networks with a profile
whose fields are changed by ``--set``; prints each model's pooled patient-level AUC (mean ±
SD over training seeds, and the seed ensemble) beside the cohort's learned references (the
logistic regressions on the generator's true inputs, ``cv_auc`` of ``ground_truth.json``) and
the clinical random forest and logistic regression (``clinical_rf``, ``clinical_lr``). This is
how the ``quick`` profile's recipe was chosen (docs/cpu_recipe.md); seed
2020 and the other reported cohorts are refused.

    python scripts/develop_recipe.py --seeds 3 4 --models deep_resnet50 fusion_d_joint \\
        --set epochs=12 validation_fraction=0.2 augment=true
    python scripts/develop_recipe.py --seeds 4 --models fusion_d_joint --network clinical_units=64

``--models`` with no network prints each cohort's references and what its processed crops show
(:func:`crop_lines`), without training (docs/cpu_recipe.md, "Measured, not a lever: what the crops show of
each trait's own part"):

    python scripts/develop_recipe.py --seeds 5 8 12 13 --models

``--refit-grid`` measures the head refit's settings, which act after the training, on one training: each network
is trained once per fold and seed, its head refitted for every cell of the grid and its test patients predicted
(:func:`refit_grid`); a table per cohort, then the mean over the cohorts (docs/cpu_recipe.md, "Tried, not adopted: the
fused head refit's penalties from a grid"):

    python scripts/develop_recipe.py --seeds 5 8 12 13 14 15 16 17 --models fusion_d_joint \\
        --refit-grid fusion_head_refit=0.003,0.005,0.01,0.02 fusion_refit_image_scale=0.1,0.15,0.2,0.25,0.316,0.4
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import itertools
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from hccer_lib import evaluation, models, networks, outputs, preprocessing, synth, training
from hccer_lib.clinical import cross_validate_clinical
from hccer_lib.cohort import load_clinical
from hccer_lib.profiles import get_profile
from hccer_lib.simulation import STUDY_SEED

#: Generator seeds whose results the study reports: never used to choose a setting. Seeds 6 and 7 are
#: the README's cohorts that no setting was chosen on; seeds from 2020 on are the study's own cohort
#: and the seed simulation's (``simulation.simulation_seeds``: 2021, 2022, ...).
REPORTED_SEEDS = (6, 7)
FIRST_REPORTED_SEED = STUDY_SEED


def parse_settings(items: list[str]) -> dict:
    """``["epochs=12", "augment=true"]`` → ``{"epochs": 12, "augment": True}`` (Python literals)."""
    settings = {}
    for item in items:
        name, _, text = item.partition("=")
        text = {"true": "True", "false": "False"}.get(text.lower(), text)
        try:
            settings[name] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            settings[name] = text
    return settings


#: The profile fields that ``--refit-grid`` varies: the head refit's, which act after the training.
REFIT_FIELDS = ("head_refit", "fusion_head_refit", "fusion_refit_image_scale")


def parse_grid(items: list[str]) -> dict[str, list]:
    """``["fusion_head_refit=0.003,0.01"]`` → ``{"fusion_head_refit": [0.003, 0.01]}``; only :data:`REFIT_FIELDS`."""
    grid = {}
    for item in items:
        name, _, text = item.partition("=")
        if name not in REFIT_FIELDS:
            raise ValueError(f"--refit-grid varies the head refit's settings {', '.join(REFIT_FIELDS)}; got {name!r}")
        try:
            values = [float(ast.literal_eval(value)) for value in text.split(",")]
        except (ValueError, SyntaxError):
            raise ValueError(f"--refit-grid {name}: comma-separated numbers, got {text!r}") from None
        grid[name] = values
    return grid


def refit_grid(model_name: str, dataset, clinical, folds, profile, seed: int, grid: dict[str, list],
               network_overrides: dict | None = None, imagenet: str = "auto",
               predictions: dict | None = None) -> pd.DataFrame:
    """The pooled patient AUCs of ``model_name`` with its head refitted by every cell of ``grid`` (profile fields of
    :data:`REFIT_FIELDS` → values), all on the same trained networks: one row per cell, its values, then ``auc_mean``,
    ``auc_sd`` (over the training seeds), ``auc_ensemble`` (the seed ensemble) and ``n_seeds``.

    Each fold and training seed of ``seed``'s cross-validation is trained once (``training.train_folds_isolated``:
    the networks of ``train_cross_validated``'s folds, without the profile's own refit), then for each cell its head is
    refitted on the fold's training patients (``training.refit_head`` with the cell's ``training.head_refit_settings``,
    as ``train_fold`` refits) and its test slices predicted (``training.predict_probability``). A cell equal to the profile's own values gives
    the cross-validation's own predictions. The deep model reads ``head_refit``, a fusion model the two others.
    ``predictions``: a dict that receives each cell's out-of-fold predictions (``patient_id, slice, fold, y_true,
    y_prob, train_seed, roi_area_mm2``), keyed by the cell's values in the grid's order.
    """
    deep = model_name == "deep_resnet50"
    own = {"head_refit"} if deep else {"fusion_head_refit", "fusion_refit_image_scale"}
    if not grid or set(grid) - own:
        raise ValueError(f"{model_name}'s head refit reads {', '.join(sorted(own))}; the grid gives "
                         f"{', '.join(sorted(grid)) or 'nothing'}")
    cells = [dataclasses.replace(profile, **dict(zip(grid, values, strict=True)))
             for values in itertools.product(*grid.values())]  # a Profile checks each cell's values
    refits = [training.head_refit_settings(cell, model_name) for cell in cells]
    for cell, refit in zip(cells, refits, strict=True):
        if refit is None:
            raise ValueError(f"every cell needs a refit, C > 0; got the cell "
                             f"{ {name: getattr(cell, name) for name in sorted(own)} }")
    seeds = training.train_seeds(profile, seed)
    # trained without the profile's own refit: every cell refits the head, which is all a refit changes
    unrefitted = dataclasses.replace(profile, head_refit=0.0, fusion_head_refit=0.0, fusion_refit_clinical_bits=False)
    requests = [(model_name, dataset, clinical, folds, unrefitted, int(fold), train_seed,
                 training.DEFAULT_SETTINGS.selection_protocol, imagenet, network_overrides)
                for train_seed in seeds for fold in sorted(folds["fold"].unique())]
    trained = training.train_folds_isolated(requests, unrefitted)
    fitted = []  # per network: its training slices' head features, computed once
    for model, data in trained:
        fitted.append(training.head_features(model, data.subset(data.fit), symmetries=profile.test_symmetries))
    rows = []
    for cell, refit in zip(cells, refits, strict=True):
        frames = []
        for request, (model, data), features in zip(requests, trained, fitted, strict=True):
            fit, test = data.fit, data.test
            training.refit_head(model, data.subset(fit), data.y[fit], data.patient_id[fit], data.roi_area_mm2[fit],
                                features=features, **refit)
            frames.append(pd.DataFrame({
                "patient_id": data.patient_id[test], "slice": data.slice[test], "fold": request[5], "y_true": data.y[test],
                "y_prob": training.predict_probability(model, data.subset(test), symmetries=cell.test_symmetries),
                evaluation.SEED_COLUMN: request[6], evaluation.AREA_COLUMN: data.roi_area_mm2[test]}))
        cell_predictions = pd.concat(frames, ignore_index=True)
        if predictions is not None:
            predictions[tuple(getattr(cell, name) for name in grid)] = cell_predictions
        rows.append({**{name: getattr(cell, name) for name in grid}, **_seed_figures(cell_predictions)})
    return pd.DataFrame(rows)


def development_cohort(seed: int, data_root: Path) -> Path:
    """``data_root/dev_seed<seed>``, generated when missing."""
    if seed in REPORTED_SEEDS or seed >= FIRST_REPORTED_SEED:
        raise SystemExit(f"seed {seed} is a reported cohort: choose settings on development seeds only")
    folder = data_root / f"dev_seed{seed}"
    if not (folder / "clinical.csv").is_file():
        synth.generate_cohort(folder, synth.SynthConfig(seed=seed))
    return folder


#: Columns of ``synth.oracle_inputs(...)["image"]`` that a crop of the tumour's box, resized to a
#: fixed side, can show: the four latent traits, satellites and cirrhosis (liver texture, with a
#: margin); not the tumour's size (the resize removes it) nor the count of other nodules.
CROP_VISIBLE_COLUMNS = tuple(synth.IMAGE_INPUT_NAMES.index(name) for name in
                             ("necrosis", "heterogeneity", "margin", "rim", "satellites", "cirrhosis"))


def _truth_table(cohort_dir: Path):
    """``clinical.csv`` and the same rows beside ``ground_truth.csv``'s generator inputs (a synthetic cohort)."""
    clinical = load_clinical(cohort_dir)
    table = synth.truth_table(cohort_dir, clinical)
    if table is None:
        raise ValueError(f"{cohort_dir}: no ground_truth.csv (not a synthetic cohort)")
    return clinical, table


def crop_visible_reference(cohort_dir: Path, seed: int, with_clinical_vector: bool = False) -> float:
    """The learned image reference (``cv_auc``: logistic regression, C = 0.1, 10 stratified folds,
    as :func:`hccer_lib.synth.oracle_aucs`) on :data:`CROP_VISIBLE_COLUMNS` only.

    ``with_clinical_vector``: beside the binary clinical vector that the fusion networks receive
    (``clinical.clinical_matrix``, the paper's selection on the whole cohort): what a fusion
    model's two inputs can show, a reference for fusion_d_joint.
    """
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    from hccer_lib.clinical import clinical_matrix

    clinical, table = _truth_table(cohort_dir)
    x = synth.oracle_inputs(table)["image"][:, list(CROP_VISIBLE_COLUMNS)]
    if with_clinical_vector:
        x = np.column_stack([np.asarray(clinical_matrix(clinical, protocol="paper")[0], dtype=float), x])
    y = table["early_recurrence"].to_numpy()
    folds = StratifiedKFold(n_splits=10, shuffle=True, random_state=seed)
    learned = synth._oracle_model().set_params(logisticregression__C=0.1)
    return float(roc_auc_score(y, cross_val_predict(learned, x, y, cv=folds, method="predict_proba")[:, 1]))


def _patient_predictions(image_predictions, clinical):
    """The out-of-fold patient rows (seed ensemble, ``evaluation.patient_level``) in ``clinical``'s order;
    ``ValueError`` when a patient of ``clinical`` has none."""
    patients = evaluation.patient_level(image_predictions).set_index("patient_id")
    ids = clinical["patient_id"].astype(str)
    missing = sorted(set(ids) - set(patients.index.astype(str)))
    if missing:
        raise ValueError(f"no out-of-fold prediction for {len(missing)} patients, e.g. {missing[:3]}")
    return patients.loc[ids]


def stacked_reference(image_predictions, clinical) -> float:
    """What a trained image network's output and the clinical vector give together: the pooled
    AUC of a logistic regression on the network's out-of-fold patient logit (seed ensemble,
    ``evaluation.patient_level``) beside the binary clinical vector (as in
    :func:`crop_visible_reference`), each fold's regression fitted on the other folds' patients
    (the network's own folds: every input it sees is out-of-fold). A late fusion of the two
    inputs as this network sees the image: a reference for a fusion model whose image pathway
    learns what this one did (it can do better by learning other image features beside the
    clinical vector), where :func:`crop_visible_reference` is one for what the crop holds.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import LeaveOneGroupOut, cross_val_predict

    from hccer_lib.clinical import clinical_matrix

    patients = _patient_predictions(image_predictions, clinical)
    x = np.column_stack([evaluation.clipped_logit(patients["y_prob"]), np.asarray(clinical_matrix(clinical, protocol="paper")[0], dtype=float)])
    y = clinical["early_recurrence"].to_numpy(dtype=int)
    stacked = cross_val_predict(LogisticRegression(max_iter=1000), x, y, groups=patients["fold"].to_numpy(), cv=LeaveOneGroupOut(),
                                method="predict_proba")[:, 1]
    return evaluation.auc(y, stacked)


def trait_regression(image_predictions, cohort_dir: Path) -> dict:
    """What a trained image network's output follows on a synthetic cohort: a linear regression of
    its out-of-fold patient logit (seed ensemble, ``evaluation.patient_level``) on the generator's
    image inputs (``synth.oracle_inputs``), each standardised over the cohort's patients.

    A description of the network, fitted and read on the same patients (not a model). Returns
    ``r2_crop_visible`` (on :data:`CROP_VISIBLE_COLUMNS`), ``r2`` (those with the tumour's size in mm
    and its count of nodules) and ``coefficients`` (input name -> logit per SD, of the second fit).
    """
    clinical, table = _truth_table(cohort_dir)
    logit = evaluation.clipped_logit(_patient_predictions(image_predictions, clinical)["y_prob"])
    visible = [synth.IMAGE_INPUT_NAMES[c] for c in CROP_VISIBLE_COLUMNS]
    coefficients, r2 = synth.image_input_regression(logit, table, visible + ["size_mm", "nodules"])
    return {"r2_crop_visible": synth.image_input_regression(logit, table, visible)[1], "r2": r2,
            "coefficients": coefficients}


def readings_line(predictions, cohort_dir: Path, model: str) -> str:
    """:func:`hccer_lib.report.image_readings` of one network as one line: the SD of its out-of-fold logit
    (seed ensemble) per SD of each of the generator's image inputs, the generator's own in brackets."""
    from hccer_lib.report import image_readings

    readings = image_readings({model: predictions}, cohort_dir).set_index("reader")
    network, generator = readings.loc[model], readings.iloc[0]
    weights = ", ".join(f"{name} {network[name]:+.2f} ({generator[name]:+.2f})" for name in synth.IMAGE_INPUT_NAMES)
    return f"what it reads (report.image_readings; R² {network['r2']:.2f}; the generator's weight in brackets): {weights}"


#: The statistics :func:`crop_statistics` takes of each phase of a crop, in this order.
CROP_STATISTICS = ("mean", "sd", "p10", "p50", "p90", "centre_mean", "centre_sd", "border_mean", "border_sd",
                   *training.TEXTURE_STATISTICS)
#: The ones that describe texture (pixel-to-pixel change) rather than intensity.
TEXTURE_STATISTICS = training.TEXTURE_STATISTICS


def crop_statistics(images: np.ndarray, margin: float) -> np.ndarray:
    """Simple statistics of each phase of each processed crop: ``[n, H, W, 3]`` in ``[0, 1]`` →
    ``[n, 3 · len(CROP_STATISTICS)]`` (phase by phase, :data:`CROP_STATISTICS` within each).

    Intensity: mean, SD and the 10th, 50th and 90th percentiles of the crop; mean and SD of its centre
    (the tumour's box, which the crop's ``margin`` surrounds: ``margin / (1 + 2 margin)`` of the side on
    each side) and of the border around it (the whole crop when there is no margin). Texture
    (:func:`training.texture_statistics`, the texture target's): the mean absolute difference of neighbouring pixels
    (both axes) and the mean SD of the 3 × 3 neighbourhoods of the centre.
    """
    images = np.asarray(images, dtype=np.float64)
    n, height, width, phases = images.shape
    centre = training.tumour_box_mask(height, width, margin)
    texture = training.texture_statistics(images, margin).reshape(n, phases, len(training.TEXTURE_STATISTICS))
    columns = []
    for phase in range(phases):
        x = images[..., phase]
        flat = x.reshape(n, -1)
        border = x[:, ~centre] if (~centre).any() else flat
        columns += [flat.mean(1), flat.std(1), *np.percentile(flat, [10, 50, 90], axis=1), x[:, centre].mean(1),
                    x[:, centre].std(1), border.mean(1), border.std(1), *texture[:, phase].T]
    return np.stack(columns, axis=1)


def _patient_crop_statistics(dataset, folds, margin: float):
    """:func:`crop_statistics` of ``dataset.images``, each patient's averaged over its slices by the tumour's area
    (``[patients, statistics]``, indexed by patient id), and each patient's fold in the study's ``folds``."""
    patients = training.area_weighted_patient_means(crop_statistics(dataset.images, margin), dataset.patient_id,
                                                    dataset.roi_area_mm2)
    fold_of = folds.assign(patient_id=folds["patient_id"].astype(str)).set_index("patient_id")
    return patients, fold_of.loc[patients.index.astype(str), "fold"].to_numpy()


def crop_statistics_reference(dataset, folds, margin: float, texture_only: bool = False) -> float:
    """What simple statistics of the networks' own input give: the pooled patient AUC of a logistic
    regression (standardised, C = 0.01) on :func:`crop_statistics` of ``dataset.images``, each patient's
    statistics averaged over its slices weighted by the tumour's area (as a patient's probability is),
    each fold's regression fitted on the other folds' patients (the study's ``folds``). ``texture_only``:
    on :data:`TEXTURE_STATISTICS` only. A reference for the deep model: a network that does not reach it
    does not learn what summary statistics of its crops hold.
    """
    import pandas as pd
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    patients, fold = _patient_crop_statistics(dataset, folds, margin)
    if texture_only:
        names = np.tile(CROP_STATISTICS, patients.shape[1] // len(CROP_STATISTICS))  # phase by phase
        patients = patients.loc[:, np.isin(names, TEXTURE_STATISTICS)]
    y = pd.Series(np.asarray(dataset.y_true), index=np.asarray(dataset.patient_id)).groupby(level=0).first()
    y = y.loc[patients.index].to_numpy(dtype=int)
    probability = np.zeros(len(patients))
    for held_out in np.unique(fold):
        test = fold == held_out
        model = make_pipeline(StandardScaler(), LogisticRegression(C=0.01, max_iter=5000))
        probability[test] = model.fit(patients.to_numpy()[~test], y[~test]).predict_proba(patients.to_numpy()[test])[:, 1]
    return evaluation.auc(y, probability)


#: The generator's image inputs whose visibility in the processed crops :func:`crop_visibility` measures.
VISIBILITY_INPUTS = ("necrosis", "heterogeneity", "margin", "rim", "size_mm")


def crop_visibility(dataset, folds, cohort_dir: Path, margin: float, own: bool = False) -> dict[str, float]:
    """How much of each of the generator's image inputs (:data:`VISIBILITY_INPUTS`, on the latent scale of
    ``synth.oracle_inputs``) the networks' own input holds in a linear, learnable form: the cross-validated R² of
    a ridge regression (standardised, penalty chosen by ``RidgeCV``) of the input on :func:`crop_statistics` of
    ``dataset.images``, each patient's statistics averaged over its slices by the tumour's area, each fold's
    regression fitted on the other folds' patients (the study's ``folds``). Near 1: the crops show it plainly;
    near 0 or below: not in these statistics (a network may still find it elsewhere).

    ``own``: of each input's own part, what the other inputs do not tell of it: the input less its least-squares
    line on the others (with an intercept, over the cohort's patients). The generator draws the four traits from
    one shared score (``synth``), so a crop that shows one of them shows some of each: the R² of an input counts
    that shared part, the R² of its own part does not.
    """
    from sklearn.linear_model import RidgeCV
    from sklearn.model_selection import LeaveOneGroupOut, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    patients, fold = _patient_crop_statistics(dataset, folds, margin)
    _, table = _truth_table(cohort_dir)
    table = table.set_index(table["patient_id"].astype(str)).loc[patients.index.astype(str)].reset_index(drop=True)
    inputs = synth.oracle_inputs(table)["image"]
    inputs = inputs[:, [synth.IMAGE_INPUT_NAMES.index(name) for name in VISIBILITY_INPUTS]].astype(float)
    model = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-2, 3, 12)))
    visibility = {}
    for column, name in enumerate(VISIBILITY_INPUTS):
        y = inputs[:, column]
        if own:
            others = np.column_stack([np.ones(len(y)), np.delete(inputs, column, axis=1)])
            y = y - others @ np.linalg.lstsq(others, y, rcond=None)[0]
        predicted = cross_val_predict(model, patients.to_numpy(), y, groups=fold, cv=LeaveOneGroupOut())
        visibility[name] = float(1.0 - ((y - predicted) ** 2).sum() / ((y - y.mean()) ** 2).sum())
    return visibility


def crop_lines(dataset, folds, cohort_dir: Path, margin: float) -> list[str]:
    """What simple statistics of the processed crops give, three lines: the label's AUC from them
    (:func:`crop_statistics_reference`) and what they show of each image input and of its own part
    (:func:`crop_visibility`)."""
    def shown(own: bool) -> str:
        return ", ".join(f"{name} {r2:.2f}" for name, r2 in crop_visibility(dataset, folds, cohort_dir, margin, own).items())

    return [f"    a logistic regression on simple statistics of the same crops (develop_recipe.crop_statistics): "
            f"{crop_statistics_reference(dataset, folds, margin):.3f}, on their texture alone "
            f"{crop_statistics_reference(dataset, folds, margin, texture_only=True):.3f}",
            f"    what its crops show (develop_recipe.crop_visibility: cross-validated R² of each input from the crops' "
            f"statistics): {shown(False)}",
            f"    of each input's own part, what the other inputs do not tell of it (crop_visibility(own=True)): "
            f"{shown(True)}"]


def _seed_figures(predictions) -> dict:
    """``auc_mean``, ``auc_sd`` (over training seeds; 0 with one), ``auc_ensemble`` and ``n_seeds``: the pooled patient
    AUCs of ``predictions``."""
    per_seed = np.array(list(evaluation.seed_aucs(predictions).values()))
    ensemble = evaluation.patient_level(predictions)
    return {"auc_mean": per_seed.mean(), "auc_sd": per_seed.std(ddof=1) if len(per_seed) > 1 else 0.0,
            "auc_ensemble": evaluation.auc(ensemble["y_true"], ensemble["y_prob"]), "n_seeds": len(per_seed)}


def _seed_summary(predictions) -> str:
    """``"<mean> ± <SD> over <n> seeds, ensemble <AUC>"``: pooled patient AUCs of ``predictions``."""
    figures = _seed_figures(predictions)
    return (f"{figures['auc_mean']:.3f} ± {figures['auc_sd']:.3f} over {figures['n_seeds']} seeds, "
            f"ensemble {figures['auc_ensemble']:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[3, 4], help="development generator seeds")
    parser.add_argument("--models", nargs="*", default=["deep_resnet50", "fusion_d_joint"], choices=models.NETWORK_MODELS,
                        help="networks to train; none: the cohort's references and what its crops show (as printed "
                             "beside deep_resnet50), without training")
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE", help="profile fields to change")
    parser.add_argument("--preprocess", nargs="*", default=[], metavar="FIELD=VALUE",
                        help="preprocessing settings to change (margin, window_level, window_width, ...)")
    parser.add_argument("--network", nargs="*", default=[], metavar="FIELD=VALUE",
                        help="network settings to change (networks.NetworkConfig: image_units, clinical_units, ...)")
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--refit-grid", nargs="*", default=[], metavar="FIELD=V1,V2,...",
                        help=f"refit each network's head by every combination of these values ({', '.join(REFIT_FIELDS)}), "
                             f"on one training: prints each cell's AUC in place of the learned references' lines")
    args = parser.parse_args()
    try:
        grid = parse_grid(args.refit_grid)
    except ValueError as error:
        parser.error(str(error))
    network = parse_settings(args.network)
    unknown = sorted(set(network) - {f.name for f in dataclasses.fields(networks.NetworkConfig)})
    if unknown:
        parser.error(f"--network: not a field of networks.NetworkConfig: {', '.join(unknown)}")

    profile = dataclasses.replace(get_profile(args.profile), **parse_settings(args.set))
    print(f"recipe: {json.dumps({**training.training_settings(profile), 'train_seeds': profile.train_seeds})}"
          f"; preprocessing changes: {parse_settings(args.preprocess) or 'none'}; network changes: {network or 'none'}")
    grids = []
    for seed in args.seeds:
        cohort_dir = development_cohort(seed, Path(args.data_root))
        work_dir = outputs.work_dir_for(cohort_dir, args.data_root)
        clinical = load_clinical(cohort_dir)
        folds = evaluation.load_or_make_folds(work_dir, clinical, profile.n_folds, seed)
        chosen = dataclasses.replace(preprocessing.study_settings(work_dir, profile), **parse_settings(args.preprocess))
        dataset = preprocessing.dataset_with(cohort_dir, work_dir, chosen, progress=False)
        if grid:
            for model in args.models:
                table = refit_grid(model, dataset, clinical, folds, profile, seed, grid, network or None)
                print(f"cohort seed {seed}, {model}, pooled patient AUC over {profile.train_seeds} training seeds with "
                      f"its head refitted by each cell:\n{table.round(4).to_string(index=False)}", flush=True)
                grids.append(table.assign(model=model, cohort=seed))
            continue
        references = json.loads((cohort_dir / "ground_truth.json").read_text())["oracle_auc"]
        clinical_aucs = []
        for name, classifier in (("clinical_rf", "rf"), ("clinical_lr", "lr")):
            patients = evaluation.patient_level(cross_validate_clinical(clinical, folds, protocol="paper", seed=seed,
                                                                        classifier=classifier)[0])
            clinical_aucs.append(f"{name} {evaluation.auc(patients['y_true'], patients['y_prob']):.3f}")
        line = [f"cohort seed {seed}: learned references image {references['image']['cv_auc']:.3f}, "
                f"(what a resized crop can show: {crop_visible_reference(cohort_dir, seed):.3f}; with the binary "
                f"clinical vector, what a fusion model's inputs can show: "
                f"{crop_visible_reference(cohort_dir, seed, with_clinical_vector=True):.3f}), "
                f"clinical {references['clinical']['cv_auc']:.3f}, both {references['both']['cv_auc']:.3f}; "
                + ", ".join(clinical_aucs)]
        if not args.models:
            line += crop_lines(dataset, folds, cohort_dir, chosen.margin)
        for model in args.models:
            start = time.perf_counter()
            predictions = training.train_cross_validated(model, dataset, clinical, folds, profile, work_dir, seed=seed,
                                                         network_overrides=network or None)
            line.append(f"  {model}: AUC {_seed_summary(predictions)}, {time.perf_counter() - start:.0f} s")
            line.append(f"    with every slice counted alike (not weighted by the tumour's area): "
                        f"{_seed_summary(predictions.drop(columns=evaluation.AREA_COLUMN))}")
            line.append(f"    {readings_line(predictions, cohort_dir, model)}")
            if model == "deep_resnet50":
                line += crop_lines(dataset, folds, cohort_dir, chosen.margin)
                line.append(f"    its out-of-fold logit beside the binary clinical vector (logistic regression, "
                            f"a late fusion of the two): {stacked_reference(predictions, clinical):.3f}")
                traits = trait_regression(predictions, cohort_dir)
                weights = ", ".join(f"{name} {value:+.2f}" for name, value in traits["coefficients"].items())
                line.append(f"    its out-of-fold logit regressed on the generator's image inputs (R² over the cohort's "
                            f"patients): {traits['r2_crop_visible']:.2f} on what a crop can show, {traits['r2']:.2f} with "
                            f"the tumour's size and nodules; logit per SD: {weights}")
        print("\n".join(line), flush=True)
    if grid and len(args.seeds) > 1:
        means = pd.concat(grids).groupby(["model", *grid])[["auc_mean", "auc_ensemble"]].mean()
        print(f"mean over cohorts {', '.join(map(str, args.seeds))}:\n{means.round(4).to_string()}", flush=True)


if __name__ == "__main__":
    main()
