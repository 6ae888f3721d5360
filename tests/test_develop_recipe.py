"""scripts/develop_recipe.py: the development seeds only, its settings parser and its learned references."""

import sys
from pathlib import Path

import numpy as np
import pytest

from hccer_lib import outputs, synth

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import develop_recipe  # noqa: E402


def test_a_reported_seed_is_refused_and_settings_are_python_literals(tmp_path):
    for seed in (2020, 6, 7, 2021):  # the study's cohort, the README's untouched ones, the simulation's first
        with pytest.raises(SystemExit, match=f"seed {seed} is a reported cohort"):
            develop_recipe.development_cohort(seed, tmp_path)
    assert not list(tmp_path.iterdir()), "nothing is generated for a reported seed"
    assert develop_recipe.parse_settings(["epochs=9", "augment=true", "lr_schedule=cosine", "resnet_blocks=(1, 2)"]) == {
        "epochs": 9, "augment": True, "lr_schedule": "cosine", "resnet_blocks": (1, 2)}


def _cohort(folder: Path, seed: int, traits_from_label: bool, size_from_label: bool = False) -> Path:
    """clinical.csv and ground_truth.csv of the generator's plan for ``seed`` (no images), with the
    crop-visible traits (or the tumour's size) made a copy of the label, or left as drawn."""
    plan = synth.plan_cohort(synth.SynthConfig(seed=seed))
    clinical, truth = plan.clinical.copy(), plan.truth.copy()
    label = clinical["early_recurrence"].to_numpy(dtype=float)
    noise = np.random.default_rng(seed).permutation(label)  # independent of the label
    for trait, (low, high) in {"necrosis_fraction": (0.0, 0.30), "heterogeneity_hu": (4.0, 16.0),
                               "margin_irregularity": (0.02, 0.25), "rim_enhancement_hu": (0.0, 45.0)}.items():
        source = label if traits_from_label else noise
        truth[trait] = low + (high - low) * (0.25 + 0.5 * source)
    truth["n_satellites"] = 0
    if size_from_label:
        clinical["tumor_size_mm"] = 20.0 + 30.0 * label
    outputs.write_csv(folder / "clinical.csv", clinical)
    outputs.write_csv(folder / "ground_truth.csv", truth)
    return folder


def test_the_crop_visible_reference_sees_the_traits_and_not_the_tumour_size(tmp_path):
    seen = _cohort(tmp_path / "traits", 5, traits_from_label=True)
    assert develop_recipe.crop_visible_reference(seen, 5) > 0.99
    hidden = _cohort(tmp_path / "size", 5, traits_from_label=False, size_from_label=True)
    assert develop_recipe.crop_visible_reference(hidden, 5) < 0.7  # the label is in the size only: not in a resized crop
    # the fusion models' clinical vector holds "tumour size >= 50 mm": with it, the size is seen again
    assert develop_recipe.crop_visible_reference(hidden, 5, with_clinical_vector=True) > 0.9


def test_the_stacked_reference_adds_the_clinical_vector_to_the_image_network_output():
    """Out-of-fold image predictions that carry half the label, beside a clinical vector that carries
    the other half: the stacked regression sees both (AUC 1); the network's output alone does not."""
    import pandas as pd

    from hccer_lib import evaluation
    from hccer_lib.clinical import clinical_matrix

    clinical = synth.plan_cohort(synth.SynthConfig(seed=6)).clinical
    bits, names = clinical_matrix(clinical, protocol="paper")
    column = np.asarray(bits, dtype=float)[:, names.index(next(n for n in names if n.startswith("tumor_size")))]
    clinical = clinical.assign(early_recurrence=(column + np.arange(len(clinical)) % 2 > 0).astype(int))
    bits_now, _ = clinical_matrix(clinical, protocol="paper")  # the selection sees the new label
    assert np.asarray(bits_now).shape[1] >= 1
    image_half = (np.arange(len(clinical)) % 2).astype(float)
    rows = []
    for train_seed in (1, 2):  # two seeds and two slices per patient: the seed ensemble is their mean
        for slice_index in (0, 1):
            rows.append(pd.DataFrame({"patient_id": clinical["patient_id"].astype(str), "slice": slice_index,
                                      "fold": np.arange(len(clinical)) % 5, "y_true": clinical["early_recurrence"],
                                      "y_prob": 0.3 + 0.4 * image_half, "train_seed": train_seed}))
    predictions = pd.concat(rows, ignore_index=True)
    alone = evaluation.patient_level(predictions)
    assert evaluation.auc(alone["y_true"], alone["y_prob"]) < 0.9
    assert develop_recipe.stacked_reference(predictions, clinical) > 0.99
    with pytest.raises(ValueError, match="no out-of-fold prediction for 1 patients"):
        develop_recipe.stacked_reference(predictions[predictions["patient_id"] != clinical["patient_id"].iloc[0]], clinical)


def test_the_trait_regression_finds_what_an_image_output_follows(tmp_path):
    """Out-of-fold predictions whose logit is twice the tumour's standardised size: the regression gives
    R² 1 with the size, little without it, and the size's coefficient 2 (logit per SD)."""
    import pandas as pd

    folder = _cohort(tmp_path / "cohort", 5, traits_from_label=False)
    clinical = pd.read_csv(folder / "clinical.csv", dtype={"patient_id": str})
    size = clinical["tumor_size_mm"].to_numpy(dtype=float)
    logit = 2.0 * (size - size.mean()) / size.std()
    predictions = pd.DataFrame({"patient_id": clinical["patient_id"], "slice": 0, "fold": np.arange(len(clinical)) % 5,
                                "y_true": clinical["early_recurrence"], "y_prob": 1 / (1 + np.exp(-logit)), "train_seed": 1})
    traits = develop_recipe.trait_regression(predictions, folder)
    assert traits["r2"] > 0.999 and traits["r2_crop_visible"] < 0.2, traits
    assert abs(traits["coefficients"]["size_mm"] - 2.0) < 1e-3, traits["coefficients"]
    assert max(abs(v) for k, v in traits["coefficients"].items() if k != "size_mm") < 1e-3, traits["coefficients"]
    with pytest.raises(ValueError, match="no out-of-fold prediction for 1 patients"):
        develop_recipe.trait_regression(predictions.iloc[1:], folder)


def test_seed_summary_gives_the_mean_sd_and_ensemble_of_the_area_weighted_patient_aucs():
    import pandas as pd

    # two patients of each class, two slices each; the small edge slice of P1 (ER) says "no", its large one "yes"
    rows = []
    for seed in (1, 2):
        for pid, y, probs in (("P1", 1, (0.1, 0.9)), ("P2", 1, (0.6, 0.6)), ("N1", 0, (0.5, 0.5)), ("N2", 0, (0.2, 0.4))):
            rows += [{"patient_id": pid, "slice": k, "fold": 0, "y_true": y, "y_prob": p + 0.01 * seed, "train_seed": seed,
                      "roi_area_mm2": (10.0, 90.0)[k]} for k, p in enumerate(probs)]
    frame = pd.DataFrame(rows)
    # weighted: P1 0.82, P2 0.6, N1 0.5, N2 0.38 -> AUC 1; counted alike: P1 0.5 ties N1 -> AUC 0.875
    assert develop_recipe._seed_summary(frame) == "1.000 ± 0.000 over 2 seeds, ensemble 1.000"
    assert develop_recipe._seed_summary(frame.drop(columns="roi_area_mm2")) == "0.875 ± 0.000 over 2 seeds, ensemble 0.875"
