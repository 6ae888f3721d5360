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


def test_crop_statistics_are_what_they_say_on_a_crop_worked_out_by_hand():
    image = np.zeros((1, 6, 6, 3))
    image[0, 2:4, 2:4, 1] = 1.0  # the ART phase: the 2 × 2 centre bright, the rest 0
    image[0, :, :, 2] = np.arange(6)[None, :] / 10  # the PV phase: a ramp along x
    stats = develop_recipe.crop_statistics(image, margin=0.5)  # the centre: 6 · 0.5 / 2 = 1.5, rounded to 2 px
    by_name = {name: stats[0, len(develop_recipe.CROP_STATISTICS) * phase + i] for phase in range(3)
               for i, name in enumerate(develop_recipe.CROP_STATISTICS) if phase == 1}
    assert stats.shape == (1, 3 * len(develop_recipe.CROP_STATISTICS))
    assert by_name["mean"] == pytest.approx(4 / 36) and by_name["centre_mean"] == pytest.approx(1.0)
    assert by_name["border_mean"] == pytest.approx(0.0) and by_name["centre_sd"] == pytest.approx(0.0)
    # 32 of the 36 sorted pixels are 0: the 90th percentile lies halfway between the 32nd (0) and the 33rd (1)
    assert by_name["p90"] == pytest.approx(0.5) and by_name["p50"] == pytest.approx(0.0)
    # the bright square's edges: 2 columns × 2 rows of changes of 1 along each axis, over 5 × 6 differences each
    assert by_name["gradient"] == pytest.approx(2 * 4 / 30)
    ramp = stats[0, 2 * len(develop_recipe.CROP_STATISTICS):]
    assert ramp[develop_recipe.CROP_STATISTICS.index("gradient")] == pytest.approx(0.1)  # 0.1 per column, 0 per row
    np.testing.assert_allclose(stats[0, :len(develop_recipe.CROP_STATISTICS)], 0.0)  # the empty NC phase


def _statistics_cohort(n_patients: int, carrier: str, seed: int = 0):
    """Slices of ``n_patients`` patients (3 each) whose label is carried by the centre's brightness
    (``"mean"``) or by pixel noise (``"texture"``), and folds; ``SimpleNamespace`` as ``ProcessedDataset``."""
    from types import SimpleNamespace

    import pandas as pd

    rng = np.random.default_rng(seed)
    label = np.arange(n_patients) % 2
    images, ids, area = [], [], []
    for patient, y in enumerate(label):
        for _ in range(3):
            image = np.full((12, 12, 3), 0.4) + rng.normal(0, 0.02, (12, 12, 3))
            if carrier == "mean":
                image[3:9, 3:9, 1] += 0.1 * y + rng.normal(0, 0.03)  # a constant per slice: no texture
            else:
                image += rng.normal(0, 0.05 * y + 0.01, (12, 12, 3))
            images.append(image)
            ids.append(f"P{patient:03d}")
            area.append(rng.uniform(50, 150))
    dataset = SimpleNamespace(images=np.array(images), patient_id=np.array(ids), y_true=np.repeat(label, 3),
                              roi_area_mm2=np.array(area))
    folds = pd.DataFrame({"patient_id": [f"P{p:03d}" for p in range(n_patients)], "fold": np.arange(n_patients) % 5})
    return dataset, folds


def test_the_crop_statistics_reference_finds_a_label_in_the_crops_statistics_and_not_where_there_is_none():
    bright, folds = _statistics_cohort(40, "mean")
    assert develop_recipe.crop_statistics_reference(bright, folds, margin=0.25) > 0.95
    noisy, folds = _statistics_cohort(40, "texture")
    assert develop_recipe.crop_statistics_reference(noisy, folds, margin=0.25, texture_only=True) > 0.95
    shuffled = bright.__class__(**{**vars(bright), "y_true": np.repeat(np.random.default_rng(1).permutation(np.arange(40) % 2), 3)})
    assert 0.2 < develop_recipe.crop_statistics_reference(shuffled, folds, margin=0.25) < 0.8, "a label the crops do not carry"


def test_the_readings_line_gives_each_input_beside_the_generators_weight(tmp_path):
    """A network whose logit is the tumour's standardised size: weight 1 on size_mm, 0 elsewhere, R² 1."""
    import pandas as pd

    folder = _cohort(tmp_path / "cohort", 5, traits_from_label=False)
    truth = pd.read_csv(folder / "ground_truth.csv", dtype={"patient_id": str})
    outputs.write_csv(folder / "ground_truth.csv", truth.assign(oracle_image=0.2 + 0.6 * (truth["n_satellites"] >= 0)))
    clinical = pd.read_csv(folder / "clinical.csv", dtype={"patient_id": str})
    size = clinical["tumor_size_mm"].to_numpy(dtype=float)
    logit = (size - size.mean()) / size.std()
    predictions = pd.DataFrame({"patient_id": clinical["patient_id"], "slice": 0, "fold": np.arange(len(clinical)) % 5,
                                "y_true": clinical["early_recurrence"], "y_prob": 1 / (1 + np.exp(-logit)), "train_seed": 1})
    line = develop_recipe.readings_line(predictions, folder, "deep_resnet50")
    assert "R² 1.00" in line and "size_mm +1.00 (+0.00)" in line and "necrosis +0.00 (+0.00)" in line, line


def _crops_showing_heterogeneity(tmp_path, margin_follows_heterogeneity: bool = False):
    """A 5-fold cohort of 12 px crops whose centre is brighter with the tumour's heterogeneity and nothing else, its
    traits drawn independently of each other (or the margin's irregularity from the heterogeneity's draw, a little
    noise added); returns the dataset, the folds and the cohort folder for :func:`develop_recipe.crop_visibility`."""
    from types import SimpleNamespace

    import pandas as pd

    folder = _cohort(tmp_path / "cohort", 5, traits_from_label=False)
    truth = pd.read_csv(folder / "ground_truth.csv", dtype={"patient_id": str})
    rng = np.random.default_rng(0)
    draws = {}
    for trait, (low, high) in {"necrosis_fraction": (0.0, 0.30), "heterogeneity_hu": (4.0, 16.0),
                               "margin_irregularity": (0.02, 0.25), "rim_enhancement_hu": (0.0, 45.0)}.items():
        draws[trait] = rng.uniform(0.05, 0.95, len(truth))  # independent draws
        if trait == "margin_irregularity" and margin_follows_heterogeneity:
            draws[trait] = np.clip(draws["heterogeneity_hu"] + rng.normal(0, 0.03, len(truth)), 0.02, 0.98)
        truth[trait] = low + (high - low) * draws[trait]
    outputs.write_csv(folder / "ground_truth.csv", truth)
    table = develop_recipe._truth_table(folder)[1]
    heterogeneity = synth.oracle_inputs(table)["image"][:, synth.IMAGE_INPUT_NAMES.index("heterogeneity")]
    images, ids, areas = [], [], []
    for patient, value in zip(table["patient_id"].astype(str), heterogeneity, strict=True):
        for area in (100.0, 300.0):  # two slices per patient
            image = np.full((12, 12, 3), 0.4) + rng.normal(0, 0.01, (12, 12, 3))
            image[3:9, 3:9, 1] += 0.05 * value
            images.append(image)
            ids.append(patient)
            areas.append(area)
    dataset = SimpleNamespace(images=np.stack(images), patient_id=np.array(ids), roi_area_mm2=np.array(areas))
    folds = pd.DataFrame({"patient_id": table["patient_id"].astype(str), "fold": np.arange(len(table)) % 5})
    return dataset, folds, folder


def test_crop_visibility_finds_the_input_that_the_crops_show_and_not_the_others(tmp_path):
    """Crops that show the heterogeneity and nothing else, the traits drawn independently: R² near 1 for the
    heterogeneity, near 0 or below for the other inputs; the same for their own parts, which here are the inputs
    themselves less a line on independent others."""
    dataset, folds, folder = _crops_showing_heterogeneity(tmp_path)
    for own in (False, True):
        visibility = develop_recipe.crop_visibility(dataset, folds, folder, margin=0.25, own=own)
        assert list(visibility) == list(develop_recipe.VISIBILITY_INPUTS)
        assert visibility["heterogeneity"] > 0.95, (own, visibility)
        assert max(v for k, v in visibility.items() if k != "heterogeneity") < 0.1, (own, visibility)


def test_crop_visibility_of_an_input_s_own_part_leaves_out_what_another_input_tells(tmp_path):
    """The margin's irregularity drawn from the heterogeneity's draw (a little noise added), the crops showing the
    heterogeneity alone: the crops tell both inputs (R² near 1), but the own part of neither, for what they show of
    one is what the other tells: the margin's own part is the noise, which no crop shows."""
    dataset, folds, folder = _crops_showing_heterogeneity(tmp_path, margin_follows_heterogeneity=True)
    visibility = develop_recipe.crop_visibility(dataset, folds, folder, margin=0.25)
    assert visibility["heterogeneity"] > 0.95 and visibility["margin"] > 0.9, visibility
    own = develop_recipe.crop_visibility(dataset, folds, folder, margin=0.25, own=True)
    assert max(own["heterogeneity"], own["margin"]) < 0.2, own
    assert max(own["necrosis"], own["rim"]) < 0.1, own


@pytest.mark.slow
def test_the_refit_grid_gives_each_cell_what_a_cross_validation_with_its_values_gives(tmp_path):
    """One training, many refits: the cell of the profile's own values and another cell each give the out-of-fold
    predictions of ``train_cross_validated`` run with their values (the same networks, their heads refitted)."""
    from dataclasses import replace

    from test_training import TINY_PROFILE, tiny_clinical, tiny_dataset, tiny_folds

    from hccer_lib import evaluation, training

    profile = replace(TINY_PROFILE, train_seeds=2, fusion_head_refit=0.01, fusion_refit_image_scale=0.5)
    clinical = tiny_clinical()
    dataset, folds = tiny_dataset(clinical), tiny_folds(clinical)
    kept = {}
    table = develop_recipe.refit_grid("fusion_d", dataset, clinical, folds, profile, 3,
                                      {"fusion_head_refit": [0.01, 1.0], "fusion_refit_image_scale": [0.5]},
                                      imagenet="none", predictions=kept)
    assert list(table.columns) == ["fusion_head_refit", "fusion_refit_image_scale", "auc_mean", "auc_sd", "auc_ensemble",
                                   "n_seeds"]
    assert table[["fusion_head_refit", "fusion_refit_image_scale"]].values.tolist() == [[0.01, 0.5], [1.0, 0.5]]
    assert (table["n_seeds"] == 2).all() and set(kept) == {(0.01, 0.5), (1.0, 0.5)}
    order = [evaluation.SEED_COLUMN, "patient_id", "slice"]
    for C in (0.01, 1.0):
        stored = training.train_cross_validated("fusion_d", dataset, clinical, folds, replace(profile, fusion_head_refit=C),
                                                tmp_path / f"C{C}", seed=3, imagenet="none").sort_values(order)
        got = kept[(C, 0.5)].sort_values(order)
        assert len(got) == len(stored) == 2 * len(dataset.patient_id)
        assert (got[order].to_numpy() == stored[order].to_numpy()).all()
        assert abs(got["y_prob"].to_numpy() - stored["y_prob"].to_numpy()).max() < 1e-5, C
        aucs = list(evaluation.seed_aucs(stored).values())
        assert abs(table.loc[table["fusion_head_refit"] == C, "auc_mean"].item() - sum(aucs) / 2) < 1e-9
    differ = kept[(0.01, 0.5)].sort_values(order)["y_prob"].to_numpy() - kept[(1.0, 0.5)].sort_values(order)["y_prob"].to_numpy()
    assert abs(differ).max() > 1e-3, "another C refits another head"


def test_the_refit_grid_refuses_settings_a_model_does_not_read_and_cells_without_a_refit():
    from dataclasses import replace

    from test_training import TINY_PROFILE, tiny_clinical, tiny_dataset, tiny_folds

    assert develop_recipe.parse_grid(["fusion_head_refit=0.003,0.01", "fusion_refit_image_scale=0.25"]) == {
        "fusion_head_refit": [0.003, 0.01], "fusion_refit_image_scale": [0.25]}
    with pytest.raises(ValueError, match="varies the head refit's settings"):
        develop_recipe.parse_grid(["epochs=3,4"])
    with pytest.raises(ValueError, match="comma-separated numbers"):
        develop_recipe.parse_grid(["head_refit=0.1,a b"])
    clinical = tiny_clinical()
    dataset, folds = tiny_dataset(clinical), tiny_folds(clinical)
    with pytest.raises(ValueError, match="deep_resnet50's head refit reads head_refit"):
        develop_recipe.refit_grid("deep_resnet50", dataset, clinical, folds, TINY_PROFILE, 3,
                                  {"fusion_head_refit": [0.01]}, imagenet="none")
    with pytest.raises(ValueError, match="every cell needs a refit"):
        develop_recipe.refit_grid("fusion_a", dataset, clinical, folds, replace(TINY_PROFILE, fusion_refit_clinical_bits=False),
                                  3, {"fusion_head_refit": [0.0, 0.01]}, imagenet="none")
