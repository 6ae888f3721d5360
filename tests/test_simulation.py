"""The seed simulation: seeds, the detectable-difference formula, summaries, metrics that
match evaluation's, the clinical table of a seed, determinism and the per-seed cache."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hccer_lib import clinical, evaluation, models, outputs, simulation, synth
from hccer_lib.profiles import get_profile
from hccer_lib.simulation import SeedCounts


@pytest.fixture(scope="module")
def cheap_oracles() -> dict:
    """Oracle rules fitted on a small population (the real ones take ~10 s to fit)."""
    population = synth.sample_population(synth.SynthConfig(), 4, np.random.SeedSequence(11))
    inputs = synth.oracle_inputs(population)
    y = population["early_recurrence"].to_numpy()
    return {name: synth._oracle_model().fit(inputs[name], y) for name in simulation.ORACLE_MODELS.values()}


@pytest.fixture
def cheap(monkeypatch, cheap_oracles):
    """Small forests and cheap oracle rules, so that a clinical seed takes about a second."""
    monkeypatch.setattr(simulation, "DEFAULT_SETTINGS", replace(simulation.DEFAULT_SETTINGS, n_estimators=20))
    monkeypatch.setattr(simulation, "ORACLE_CHUNK", 10)
    monkeypatch.setattr(simulation, "fixed_oracles", lambda: cheap_oracles)
    return cheap_oracles


def frame_of(values: dict[str, list[float]], fold_values: dict[str, list[float]] | None = None) -> pd.DataFrame:
    """A hand-made results frame: model -> AUC per cohort (NaN: not run on that cohort)."""
    rows = []
    for model, aucs in values.items():
        folds = (fold_values or values)[model]
        for c, (value, fold_mean) in enumerate(zip(aucs, folds, strict=True)):
            if np.isnan(value):
                continue
            rows.append({"design": "study", "cohort": f"seed {c}", "seed": c, "model": model, "level": "patient",
                         "n_patients": 167, "auc": value, "auc_se": 0.04, "auc_fold_mean": fold_mean,
                         "auc_fold_sd": 0.08, "accuracy_fold_mean": 0.7})  # fmt: skip
    return pd.DataFrame(rows)


# %% Seeds and counts ---------------------------------------------------------------------


def test_seeds_are_deterministic_and_skip_the_study_seed():
    seeds = simulation.simulation_seeds(4, base_seed=2018)
    assert seeds == [2019, 2021, 2022, 2023], f"got {seeds}"
    assert simulation.simulation_seeds(4, 2018) == seeds
    assert simulation.STUDY_SEED not in simulation.simulation_seeds(50), "the study's own seed was simulated"


def test_seed_counts_from_profile_int_and_tuple():
    assert simulation.seed_counts("smoke") == simulation.SIMULATION_SEEDS["smoke"]
    capped = simulation.seed_counts("paper", 3)
    assert capped == SeedCounts(3, 3, 0, simulation.SIMULATION_SEEDS["paper"].oracle_cohorts), f"got {capped}"
    assert simulation.seed_counts("quick", (4, 1, 0, 10)) == SeedCounts(4, 1, 0, 10)
    with pytest.raises(ValueError, match="image and deep seeds"):
        simulation.seed_counts("quick", (2, 3, 0, 0))
    with pytest.raises(ValueError, match="unknown profile"):
        simulation.seed_counts("nonesuch")


# %% Formulas on hand-made frames --------------------------------------------------------------


def test_detectable_difference_formula_on_a_known_frame():
    a = [0.70, 0.72, 0.74, 0.76]
    difference = np.array([0.01, 0.03, 0.01, 0.03])
    b = list(np.array(a) - difference)
    results = frame_of({"clinical_rf": a, "clinical_rf_strict": b, "radiomics_rf": [0.6, np.nan, np.nan, np.nan]})
    table = simulation.detectable_differences(results, alpha=0.05, power=0.8)

    factor = simulation.z_factor(0.05, 0.8)
    assert factor == pytest.approx(1.959964 + 0.841621, abs=1e-5), f"z factor {factor}"
    assert len(table) == 1, f"only one pair shares two cohorts, got\n{table}"
    row = table.iloc[0]
    sd = np.std(difference, ddof=1)  # 0.011547
    assert (row["model_a"], row["model_b"], row["n_seeds"]) == ("clinical_rf", "clinical_rf_strict", 4)
    assert row["mean_difference"] == pytest.approx(0.02)
    assert row["sd_difference"] == pytest.approx(sd)
    assert row["min_detectable_difference"] == pytest.approx(factor * sd), f"got {row['min_detectable_difference']}"
    unpaired = factor * np.sqrt(np.var(a, ddof=1) + np.var(b, ddof=1))
    assert row["min_detectable_difference_unpaired"] == pytest.approx(unpaired)
    assert row["min_detectable_difference_fold_mean"] == pytest.approx(factor * sd)
    assert row["significance_threshold"] == pytest.approx(1.959964 * sd, abs=1e-7)
    assert row["significance_threshold_fold_mean"] == pytest.approx(1.959964 * sd, abs=1e-7)
    assert np.isnan(row["delong_power"]), "no pairs file: DeLong columns must be NaN"


def test_summarise_gives_the_spread_and_quantiles():
    values = list(np.linspace(0.5, 0.9, 101))
    summary = simulation.summarise(frame_of({"clinical_rf": values})).iloc[0]
    assert summary["n_seeds"] == 101
    assert summary["auc_mean"] == pytest.approx(0.7)
    assert summary["auc_sd"] == pytest.approx(np.std(values, ddof=1))
    assert summary["auc_q025"] == pytest.approx(0.51), f"2.5% quantile {summary['auc_q025']}"
    assert summary["auc_q975"] == pytest.approx(0.89), f"97.5% quantile {summary['auc_q975']}"
    assert summary["paper_auc_mean"] == models.paper_auc("clinical_rf") == 0.7532


def _with_sd(sd: float, n: int = 8) -> np.ndarray:
    """``n`` differences with mean 0 and sample SD exactly ``sd``."""
    base = np.array([1.0, -1.0] * (n // 2))
    return base * sd / np.std(base, ddof=1)


def test_paper_differences_give_the_significance_threshold_and_the_detectable_difference():
    # Three simulated pairs whose SD of the fold-mean difference is set by hand (pooled AUCs shifted by 0.01):
    # joint loss 0.8331 - 0.8248 = 0.0083 with SE 0.0035: 1.96 SE = 0.0069 < 0.0083 < 2.80 SE = 0.0098;
    # clinical vs deep 0.7532 - 0.7233 = 0.0299 with SE 0.02: below 1.96 SE = 0.0392;
    # fusion D vs clinical 0.8248 - 0.7532 = 0.0716 with SE 0.01: above 2.80 SE = 0.028.
    a = np.full(8, 0.7)
    other = _with_sd(0.02) * np.array([1, 1, -1, -1] * 2)  # SD 0.02, uncorrelated with _with_sd(0.01)
    results = frame_of(
        {"fusion_d_joint": list(a), "fusion_d": list(a - 0.01), "clinical_rf": list(a - 0.02),
         "deep_resnet50": list(a - 0.03)},
        {"fusion_d_joint": list(a + _with_sd(0.0035)), "fusion_d": list(a),
         "clinical_rf": list(a - _with_sd(0.01)), "deep_resnet50": list(a - _with_sd(0.01) - other)},
    )
    table = simulation.paper_differences(results).set_index("comparison")
    z_sig, factor = 1.959964, 1.959964 + 0.841621
    assert simulation.z_significance() == pytest.approx(z_sig, abs=1e-5)

    joint = table.loc["Table 5: joint loss"]
    assert joint["measured"] and joint["n_seeds"] == 8
    assert joint["se_difference"] == pytest.approx(0.0035)
    assert joint["significance_threshold"] == pytest.approx(z_sig * 0.0035, abs=1e-6)
    assert joint["detectable_difference"] == pytest.approx(factor * 0.0035, abs=1e-6)
    assert joint["verdict"].startswith("above the significance threshold, below the detectable"), joint.to_dict()

    fusion_clinical = table.loc["Table 4: fusion D vs clinical model"]
    assert fusion_clinical["se_difference"] == pytest.approx(0.01)
    assert fusion_clinical["verdict"] == "above the detectable difference", fusion_clinical.to_dict()

    clinical_deep = table.loc["Table 4: clinical model vs deep model"]
    assert clinical_deep["se_difference"] == pytest.approx(0.02)
    assert clinical_deep["verdict"].startswith("below the significance threshold"), clinical_deep.to_dict()

    # fusion_b and radiomics_rf were not simulated: not measured, whatever the other pairs' noise
    for comparison in ("Table 4: fusion D vs fusion B", "Table 3: deep vs radiomics model"):
        row = table.loc[comparison]
        assert not row["measured"] and row["verdict"] == "not measured" and np.isnan(row["significance_threshold"])
        assert "not simulated" in row["reason"], row.to_dict()


def test_paper_differences_are_not_measured_by_another_pairs_noise():
    # Only the two clinical forests were simulated (no network: deep cohorts = 0): their paired noise must not
    # stand in for the joint loss or fusion D vs B, as it once did.
    rng = np.random.default_rng(0)
    a = 0.7 + 0.05 * rng.standard_normal(8)
    results = frame_of({"clinical_rf": list(a), "clinical_rf_strict": list(a - 0.01)})
    table = simulation.paper_differences(results).set_index("comparison")
    assert (~table["measured"]).all() and (table["verdict"] == "not measured").all(), table
    assert table.loc["Table 5: joint loss", "reason"] == "fusion_d_joint and fusion_d not simulated"
    assert table.loc["Table 4: fusion D vs clinical model", "reason"] == "fusion_d not simulated"


def test_paper_differences_need_enough_cohorts():
    results = frame_of({"fusion_d_joint": [0.7, 0.72, 0.69], "fusion_d": [0.68, 0.7, 0.7]})
    joint = simulation.paper_differences(results).set_index("comparison").loc["Table 5: joint loss"]
    assert not joint["measured"] and joint["verdict"] == "not measured", joint.to_dict()
    assert joint["reason"] == f"the pair ran on 3 cohorts, fewer than {simulation.MIN_PAIR_COHORTS}"


def test_plot_spread_is_labelled_synthetic():
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(1)
    results = frame_of({m: list(0.7 + 0.03 * rng.standard_normal(6)) for m in ("clinical_rf", "clinical_rf_strict",
                                                                                "oracle_clinical")})  # fmt: skip
    results["oracle_clinical_auc"] = 0.78
    fig = simulation.plot_spread(results)
    try:
        assert "SYNTHETIC" in fig._suptitle.get_text(), f"title {fig._suptitle.get_text()!r}"
        assert len(fig.axes) == 2
    finally:
        plt.close(fig)


# %% Metrics equal evaluation's -----------------------------------------------------------------


def test_cohort_metrics_compare_fold_means_at_patient_level_by_hand():
    # evaluation's levels case (see tests/test_evaluation.py): the slice model's patient-level fold AUCs are
    # 1 and 1, its slice-level ones 1/3 and 1/2. The clinical model scores A 0.2, B 0.8 (fold 0: AUC 0) and
    # C 0.7, D 0.1 (fold 1: AUC 1), fold mean 0.5. At one level the clinical model is 0.5 below the slice model;
    # its fold mean set against the slice-level one (5/12) would be 1/12 above it: the sign flips.
    rows = [("A", 0, 1, [0.9, 0.1, 0.1]), ("B", 0, 0, [0.3, 0.3]), ("C", 1, 1, [0.6, 0.6]), ("D", 1, 0, [0.2, 0.7])]
    slices = pd.DataFrame([{"patient_id": pid, "slice": s, "fold": fold, "y_true": y, "y_prob": prob}
                           for pid, fold, y, probs in rows for s, prob in enumerate(probs)])
    patients = pd.DataFrame({"patient_id": list("ABCD"), "slice": pd.array([pd.NA] * 4, dtype="Int64"),
                             "fold": [0, 0, 1, 1], "y_true": [1, 0, 1, 0], "y_prob": [0.2, 0.8, 0.7, 0.1]})
    predictions = pd.concat([patients.assign(model="clinical_rf"), slices.assign(model="radiomics_rf")],
                            ignore_index=True)
    rows_out, pairs = simulation.cohort_metrics(predictions)
    by_model = {r["model"]: r for r in rows_out}
    assert by_model["radiomics_rf"]["auc_fold_mean"] == pytest.approx(1.0)
    assert by_model["radiomics_rf"]["auc_fold_mean_slice"] == pytest.approx(5 / 12)
    assert by_model["radiomics_rf"]["accuracy_fold_mean"] == pytest.approx(0.75)
    assert by_model["radiomics_rf"]["accuracy_fold_mean_slice"] == pytest.approx(0.675)
    assert by_model["clinical_rf"]["auc_fold_mean"] == pytest.approx(0.5)
    assert np.isnan(by_model["clinical_rf"]["auc_fold_mean_slice"])
    assert len(pairs) == 1 and pairs[0]["model_a"] == "clinical_rf"
    assert pairs[0]["fold_mean_difference"] == pytest.approx(-0.5), pairs


def test_cohort_metrics_match_evaluation_for_patient_and_slice_models():
    rng = np.random.default_rng(3)
    ids = [f"P{i:02d}" for i in range(40)]
    y = np.array([1] * 16 + [0] * 24)
    folds = evaluation.make_folds(pd.Series(y, index=ids), 4, seed=5)
    fold = folds["fold"].to_numpy()
    patient = pd.DataFrame({"patient_id": ids, "slice": pd.array([pd.NA] * 40, dtype="Int64"), "fold": fold,
                            "y_true": y, "y_prob": np.round(rng.uniform(size=40) * 0.5 + 0.4 * y, 2)})  # ties on purpose
    slices = patient.loc[patient.index.repeat(3)].reset_index(drop=True)
    slices["slice"] = pd.array(np.tile([0, 1, 2], 40), dtype="Int64")
    slices["y_prob"] = rng.uniform(size=len(slices)) * 0.6 + 0.3 * slices["y_true"]
    predictions = pd.concat([patient.assign(model="clinical_rf"), slices.assign(model="radiomics_rf")], ignore_index=True)

    rows, pairs = simulation.cohort_metrics(predictions)
    by_model = {r["model"]: r for r in rows}
    for model, frame in (("clinical_rf", patient), ("radiomics_rf", slices)):
        summary = evaluation.summarise_model(frame, n_bootstrap=10)
        got = by_model[model]
        assert got["level"] == summary["level"]
        assert got["auc"] == pytest.approx(summary["pooled_auc"], abs=1e-12), f"{model} pooled AUC"
        assert got["auc_fold_mean"] == pytest.approx(summary["auc_mean"], abs=1e-12), f"{model} fold mean"
        assert got["auc_fold_sd"] == pytest.approx(summary["auc_sd"], abs=1e-12), f"{model} fold SD"
        assert 100 * got["accuracy_fold_mean"] == pytest.approx(summary["accuracy_mean"], abs=1e-9)
    auc_a, auc_b, p_value = evaluation.delong_test(y, patient["y_prob"], evaluation.patient_level(slices)["y_prob"])
    assert len(pairs) == 1 and pairs[0]["p_delong"] == pytest.approx(p_value, abs=1e-12), f"{pairs}"
    assert pairs[0]["difference"] == pytest.approx(auc_a - auc_b, abs=1e-12)


def test_replicates_of_the_population_have_table1_counts(cheap):
    """oracle_chunk reads replicate r of sample_population as NER rows [102 r, 102 (r+1)) and ER rows
    102 R + [65 r, 65 (r+1)); every such replicate must have the paper's exact counts."""
    population = synth.sample_population(synth.SynthConfig(), 3, np.random.SeedSequence([2020, 6, 0]))
    levels = clinical.binarise(population)
    n_ner, n_er = clinical.PAPER_N_NER, clinical.PAPER_N_ER
    for r in range(3):
        for cls, rows in ((0, slice(n_ner * r, n_ner * (r + 1))), (1, slice(3 * n_ner + n_er * r, 3 * n_ner + n_er * (r + 1)))):
            part = levels.iloc[rows]
            assert (population["early_recurrence"].iloc[rows] == cls).all()
            for column, (table, _) in clinical.PAPER_TABLE1.items():
                counts = {level: int((part[column] == level).sum()) for level, *_ in table}
                expected = {level: count[cls] for level, *count in table}
                assert counts == expected, f"replicate {r}, class {cls}, {column}: {counts} != {expected}"
    rows, pairs = simulation.oracle_chunk(0, 2020, n_folds=2, oracles=cheap)
    assert len(rows) == 3 * simulation.ORACLE_CHUNK and set(rows["n_patients"]) == {167}
    assert len(pairs) == 3 * simulation.ORACLE_CHUNK and rows["auc"].between(0.5, 1).all(), rows["auc"].describe()


# %% One clinical seed: the cohort's table, determinism ------------------------------------------


def test_clinical_table_of_a_seed_is_what_generate_cohort_writes(tmp_path):
    from hccer_lib import cohort

    planned = synth.plan_cohort(synth.SynthConfig(seed=31)).clinical
    assert planned.equals(synth.synthesize_clinical(synth.SynthConfig(seed=31)))
    written = synth.generate_cohort(tmp_path / "c", synth.SynthConfig(seed=31, n_patients=2), n_jobs=1, progress=False)
    head = cohort.load_clinical(written)
    pd.testing.assert_frame_equal(head, planned.head(2), check_dtype=False)
    outputs.write_csv(tmp_path / "all" / "clinical.csv", planned)  # the whole table through the same writer
    pd.testing.assert_frame_equal(cohort.load_clinical(tmp_path / "all"), planned, check_dtype=False)


def test_one_clinical_seed_is_deterministic(cheap):
    first = simulation.clinical_part(2021, n_folds=2)
    second = simulation.clinical_part(2021, n_folds=2)
    pd.testing.assert_frame_equal(first, second)
    assert set(first["model"]) == {*simulation.CLINICAL_MODELS, *simulation.ORACLE_MODELS}
    assert first.groupby("model").size().eq(167).all(), first.groupby("model").size()
    table = synth.synthesize_clinical(synth.SynthConfig(seed=2021))
    folds = simulation.cohort_folds(table, 2, 2021)
    expected, _ = clinical.cross_validate_clinical(table, folds, "paper", seed=2021, n_estimators=20)
    got = first[first["model"] == "clinical_rf"].drop(columns="model").reset_index(drop=True)
    pd.testing.assert_frame_equal(got, expected, check_dtype=False)


# %% The run: cache, resume ---------------------------------------------------------------------


def test_run_simulation_caches_each_seed(tmp_path, cheap, monkeypatch, capsys):
    calls = {"clinical": 0, "oracle": 0}
    clinical_part, oracle_chunk = simulation.clinical_part, simulation.oracle_chunk

    def counted_clinical(*args, **kwargs):
        calls["clinical"] += 1
        return clinical_part(*args, **kwargs)

    def counted_oracle(*args, **kwargs):
        calls["oracle"] += 1
        return oracle_chunk(*args, **kwargs)

    monkeypatch.setattr(simulation, "clinical_part", counted_clinical)
    monkeypatch.setattr(simulation, "oracle_chunk", counted_oracle)
    counts = SeedCounts(clinical=2, image=0, deep=0, oracle_cohorts=15)
    first = simulation.run_simulation("smoke", tmp_path, n_seeds=counts, n_jobs=1)
    assert calls == {"clinical": 2, "oracle": 2}, f"first run: {calls}"
    assert "seed 2021 clinical" in capsys.readouterr().out, "no progress line per seed"
    assert sorted(first.loc[first["design"] == "study", "seed"].unique()) == [2021, 2022]
    assert first.loc[first["design"] == "oracle_replicate", "cohort"].nunique() == 15
    assert set(first.columns) >= {"seed", "model", "auc", "auc_fold_mean", "auc_fold_sd", "oracle_both_auc"}

    again = simulation.run_simulation("smoke", tmp_path, n_seeds=counts, n_jobs=1)
    assert calls == {"clinical": 2, "oracle": 2}, f"the second run recomputed: {calls}"
    pd.testing.assert_frame_equal(first, again)

    more = simulation.run_simulation("smoke", tmp_path, n_seeds=SeedCounts(3, 0, 0, 15), n_jobs=1)
    assert calls["clinical"] == 3, f"raising the count must compute only the new seed: {calls}"
    shared = more[more["seed"].isin([2021, 2022])].reset_index(drop=True)
    pd.testing.assert_frame_equal(shared, first[first["design"] == "study"].reset_index(drop=True))

    folder = tmp_path / more.attrs["simulation_dir"]
    assert folder.is_dir() and (folder / "settings.json").exists(), f"no cache folder {folder}"
    assert not list(folder.glob(".*tmp*")), "temporary files left behind"
    tests = simulation.paired_tests(more)
    assert tests is not None and set(tests["cohort"]) == set(more["cohort"])
    table = simulation.detectable_differences(more)
    pair = table[(table["model_a"] == "clinical_rf") & (table["model_b"] == "clinical_rf_strict")].iloc[0]
    assert pair["n_seeds"] == 3 and 0 <= pair["delong_power"] <= 1, pair.to_dict()


def test_settings_key_changes_with_the_folds(tmp_path):
    assert simulation.simulation_dir("smoke", tmp_path) != simulation.simulation_dir("quick", tmp_path)
    assert simulation.simulation_dir("smoke", tmp_path) == simulation.simulation_dir("smoke", tmp_path)
    assert Path(tmp_path) in simulation.simulation_dir("smoke", tmp_path).parents


@pytest.mark.slow
def test_an_image_seed_runs_radiomics_and_cleans_up(tmp_path, cheap, capsys):
    """One cohort with images (~35 s), first-order radiomics features only, 2 folds; then the same
    with two workers, where the image seed runs beside the clinical seeds: the same results."""
    from dataclasses import replace

    from hccer_lib.profiles import get_profile

    profile = replace(get_profile("smoke"), radiomics_feature_classes=("firstorder",))
    results = simulation.run_simulation(profile, tmp_path, n_seeds=SeedCounts(1, 1, 0, 0), n_jobs=1)
    radiomics = results[results["model"] == simulation.RADIOMICS_MODEL]
    assert len(radiomics) == 1 and radiomics["level"].iloc[0] == "slice", results
    assert 0 < radiomics["auc"].iloc[0] < 1
    folder = tmp_path / results.attrs["simulation_dir"]
    assert not (folder / "scratch").exists(), "the temporary cohort was not deleted"
    tests = simulation.paired_tests(results)
    assert ((tests["model_a"] == "clinical_rf") & (tests["model_b"] == simulation.RADIOMICS_MODEL)).any()
    capsys.readouterr()
    side_by_side = simulation.run_simulation(profile, tmp_path / "pool", n_seeds=SeedCounts(2, 1, 0, 0), n_jobs=2)
    assert "generating the cohort with images for radiomics, beside the clinical seeds" in capsys.readouterr().out
    first_seed = side_by_side[side_by_side["seed"] == 2021].reset_index(drop=True)
    pd.testing.assert_frame_equal(first_seed, results.reset_index(drop=True), check_exact=True)
    assert not (tmp_path / "pool" / side_by_side.attrs["simulation_dir"] / "scratch").exists()


def test_the_deep_part_is_keyed_by_the_crops_the_networks_see():
    """The simulation's networks train on the study's crops (``preprocessing.study_dataset``: the
    profile's ``roi_margin``), so a cached deep part of one margin is never read for another."""
    quick = get_profile("quick")
    assert simulation._deep_key(quick) != simulation._deep_key(replace(quick, roi_margin=0.0))
    assert simulation._deep_key(quick) == simulation._deep_key(replace(quick, n_bootstrap=7)), "a setting the networks never see"


def test_a_deep_seed_trains_the_networks_on_its_cohort_and_caches_them(tmp_path, cheap, capsys):
    """One cohort with images (~35 s) and the simulation's three networks at the smoke profile (2 folds,
    1 epoch, 32 px): a row per network on the generated cohort's 167 patients, its part cached under the
    deep key, the temporary cohort deleted; a second run reads the cached part and trains nothing."""
    profile = get_profile("smoke")
    counts = SeedCounts(clinical=1, image=0, deep=1, oracle_cohorts=0)
    results = simulation.run_simulation(profile, tmp_path, n_seeds=counts, n_jobs=1)
    seed = simulation.simulation_seeds(1)[0]
    deep = results[results["model"].isin(simulation.DEEP_MODELS)]
    assert sorted(deep["model"]) == sorted(simulation.DEEP_MODELS), results["model"].tolist()
    assert (deep["n_patients"] == 167).all() and deep["auc"].between(0, 1).all(), deep.to_dict("records")
    assert (deep["level"] == "slice").all(), deep["level"].tolist()
    folder = tmp_path / results.attrs["simulation_dir"]
    part = simulation._read_part(simulation._part_path(folder, seed, f"deep_{simulation._deep_key(profile)}"))
    clinical_rows = simulation._read_part(simulation._part_path(folder, seed, "clinical"))
    for model in simulation.DEEP_MODELS:
        rows = part[part["model"] == model]
        assert set(rows["patient_id"]) == set(clinical_rows["patient_id"]), f"{model}: not every patient predicted"
        assert rows["fold"].nunique() == profile.n_folds and rows["y_prob"].between(0, 1).all(), model
        assert not rows.duplicated(["patient_id", "slice"]).any(), f"{model}: a slice predicted twice"
    assert not (folder / "scratch").exists(), "the temporary cohort was not deleted"
    capsys.readouterr()
    again = simulation.run_simulation(profile, tmp_path, n_seeds=counts, n_jobs=1)
    assert "generating the cohort with images" not in capsys.readouterr().out, "the cached deep part was not reused"
    pd.testing.assert_frame_equal(again, results, check_exact=True)
