"""Folds, prediction files, metrics (AUC, DeLong, bootstrap, calibration, net benefit), tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import mannwhitneyu, norm
from sklearn.calibration import calibration_curve
from sklearn.metrics import brier_score_loss, roc_auc_score

from hccer_lib import evaluation as ev


def paper_labels() -> pd.Series:
    """65 ER and 102 NER patients, as in the paper."""
    ids = [f"P{i:03d}" for i in range(167)]
    return pd.Series([1] * 65 + [0] * 102, index=ids)


def predictions(n_patients: int = 40, slices: int = 0, seed: int = 0, n_folds: int = 4) -> pd.DataFrame:
    """Random predictions with signal; ``slices`` > 0 gives that many slices per patient."""
    rng = np.random.default_rng(seed)
    y = np.tile([0, 1], n_patients // 2)
    fold = np.arange(n_patients) // 2 % n_folds
    rows = []
    for i in range(n_patients):
        for s in range(max(slices, 1)):
            prob = float(np.clip(0.5 + 0.3 * (y[i] - 0.5) + rng.normal(0, 0.25), 0, 1))
            rows.append({"patient_id": f"P{i:03d}", "slice": s if slices else pd.NA, "fold": fold[i],
                         "y_true": y[i], "y_prob": prob})
    return pd.DataFrame(rows)


# --- folds -------------------------------------------------------------------------------


def test_make_folds_reproduces_table2_composition():
    folds = ev.make_folds(paper_labels(), n_folds=10, seed=2020)
    counts = folds.groupby("fold")["y_true"].agg(er="sum", n="count")
    counts["ner"] = counts["n"] - counts["er"]
    assert len(counts) == 10
    assert counts["er"].isin([6, 7]).all(), f"ER per fold {counts['er'].tolist()}"
    assert counts["ner"].isin([10, 11]).all(), f"NER per fold {counts['ner'].tolist()}"
    assert folds["patient_id"].is_unique and len(folds) == 167


def test_make_folds_is_seeded_and_ignores_row_order():
    labels = paper_labels()
    a = ev.make_folds(labels, 10, seed=7)
    b = ev.make_folds(labels.sample(frac=1, random_state=3), 10, seed=7)
    c = ev.make_folds(labels, 10, seed=8)
    pd.testing.assert_frame_equal(a, b)
    assert not a["fold"].equals(c["fold"]), "another seed gave the same folds"


def test_make_folds_refuses_too_few_patients_of_a_class():
    labels = pd.Series([1] * 3 + [0] * 20, index=[f"P{i}" for i in range(23)])
    with pytest.raises(ValueError, match="only 3 ER patients"):
        ev.make_folds(labels, n_folds=4, seed=0)


def test_load_or_make_folds_saves_reuses_and_rebuilds(tmp_path):
    labels = paper_labels()
    clinical = pd.DataFrame({"patient_id": labels.index, "early_recurrence": labels.to_numpy()})
    first = ev.load_or_make_folds(tmp_path, clinical, 10, 2020)
    path = tmp_path / "folds_10_seed2020.csv"
    assert ev.folds_path(tmp_path, 10, 2020) == path
    saved = pd.read_csv(path, dtype={"patient_id": str})
    assert set(saved.columns) >= {"patient_id", "y_true", "fold", "n_folds", "seed"}
    mtime = path.stat().st_mtime_ns
    again = ev.load_or_make_folds(tmp_path, clinical, 10, 2020)
    pd.testing.assert_frame_equal(first, again)
    assert path.stat().st_mtime_ns == mtime, "folds rewritten although unchanged"
    # another fold count or seed (another profile, --seed) gets its own file; the first stays as it was
    before = path.read_bytes()
    other = ev.load_or_make_folds(tmp_path, clinical, 5, 2020)
    assert other["fold"].nunique() == 5
    assert (pd.read_csv(tmp_path / "folds_5_seed2020.csv")["n_folds"] == 5).all()
    reseeded = ev.load_or_make_folds(tmp_path, clinical, 10, 7)
    assert (pd.read_csv(tmp_path / "folds_10_seed7.csv")["seed"] == 7).all() and not reseeded.equals(first)
    assert path.read_bytes() == before and path.stat().st_mtime_ns == mtime, "other folds changed the first file"
    # a changed cohort (a patient fewer) rebuilds the file of its key
    fewer = clinical.iloc[1:]
    rebuilt = ev.load_or_make_folds(tmp_path, fewer, 10, 2020)
    assert len(rebuilt) == len(clinical) - 1 and len(pd.read_csv(path)) == len(clinical) - 1


# --- prediction files ----------------------------------------------------------------


def test_predictions_round_trip(tmp_path):
    frame = predictions(slices=3)
    path = ev.write_predictions(tmp_path, "deep_resnet50", frame)
    assert path == tmp_path / "predictions" / "deep_resnet50.csv"
    back = ev.read_predictions(tmp_path, "deep_resnet50")
    assert list(back.columns) == ev.PREDICTION_COLUMNS
    assert np.allclose(back["y_prob"], frame["y_prob"])
    patient_model = predictions()
    ev.write_predictions(tmp_path, "clinical_rf", patient_model)
    assert ev.read_predictions(tmp_path, "clinical_rf")["slice"].isna().all()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f: f.drop(columns="fold"), "missing columns"),
        (lambda f: f.assign(y_prob=f["y_prob"].where(f.index != 3, 1.5)), "y_prob must be in"),
        (lambda f: f.assign(y_true=f["y_true"].where(f.index != 0, 2)), "y_true must be 0/1"),
        (lambda f: f.assign(fold=f["fold"].where(f.index != 1, 3)), "more than one fold"),
        (lambda f: pd.concat([f, f.iloc[[0]]]), "duplicate row"),
    ],
)
def test_write_predictions_rejects_bad_frames(tmp_path, change, message):
    with pytest.raises(ValueError, match=message):
        ev.write_predictions(tmp_path, "m", change(predictions(slices=2)))
    assert not (tmp_path / "predictions" / "m.csv").exists(), "a bad frame was written"


def test_read_missing_predictions_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="fusion_a"):
        ev.read_predictions(tmp_path, "fusion_a")


def test_patient_level_averages_slices_by_hand():
    frame = pd.DataFrame({"patient_id": ["A", "A", "B", "B", "B"], "slice": [1, 2, 1, 2, 3], "fold": 0,
                          "y_true": [1, 1, 0, 0, 0], "y_prob": [0.2, 0.6, 0.1, 0.4, 0.7]})
    patients = ev.patient_level(frame)
    assert patients["patient_id"].tolist() == ["A", "B"]
    assert np.allclose(patients["y_prob"], [0.4, 0.4]), f"got {patients['y_prob'].tolist()}"
    assert np.allclose(ev.patient_level(frame, "max")["y_prob"], [0.6, 0.7])


def test_patient_level_weights_slices_by_the_tumours_area_by_hand():
    frame = pd.DataFrame({"patient_id": ["A", "A", "B", "B", "B"], "slice": [1, 2, 1, 2, 3], "fold": 0,
                          "y_true": [1, 1, 0, 0, 0], "y_prob": [0.2, 0.6, 0.1, 0.4, 0.7],
                          "roi_area_mm2": [100.0, 300.0, 50.0, 50.0, 100.0]})
    patients = ev.patient_level(frame)
    # A: (0.2 * 100 + 0.6 * 300) / 400 = 0.5; B: (0.1 * 50 + 0.4 * 50 + 0.7 * 100) / 200 = 0.475
    assert np.allclose(patients["y_prob"], [0.5, 0.475]), f"got {patients['y_prob'].tolist()}"
    assert np.allclose(ev.patient_level(frame, "median")["y_prob"], [0.4, 0.4]), "median ignores the areas"
    assert ev.area_weighted_mean([0.2, 0.6], [1, 3]) == pytest.approx(0.5)


def test_area_column_is_checked_naming_the_patient_and_slice_and_an_empty_one_is_dropped():
    frame = pd.DataFrame({"patient_id": ["A", "A", "B"], "slice": [1, 2, 1], "fold": 0, "y_true": [1, 1, 0],
                          "y_prob": [0.2, 0.6, 0.1], "roi_area_mm2": [100.0, 0.0, 80.0]})
    with pytest.raises(ValueError, match="roi_area_mm2 must be > 0; patient A, slice 2"):
        ev.validate_predictions(frame, "deep_resnet50")
    with pytest.raises(ValueError, match="patient B, slice 1"):
        ev.validate_predictions(frame.assign(roi_area_mm2=[100.0, 50.0, np.nan]), "deep_resnet50")
    empty = ev.validate_predictions(frame.assign(roi_area_mm2=np.nan))  # rows of a patient-level model in a mixed table
    assert "roi_area_mm2" not in empty and ev.patient_level(empty)["y_prob"].tolist() == pytest.approx([0.4, 0.1])


# --- metrics -------------------------------------------------------------------------


def test_fold_metrics_by_hand():
    frame = pd.DataFrame({"patient_id": list("abcdefgh"), "slice": pd.NA, "fold": [0] * 4 + [1] * 4,
                          "y_true": [0, 0, 1, 1, 0, 1, 0, 1],
                          "y_prob": [0.1, 0.6, 0.4, 0.9, 0.2, 0.3, 0.7, 0.8]})
    metrics = ev.fold_metrics(frame)
    # fold 0: calls 0,1,0,1 -> 2/4 right; pairs (pos > neg): 0.4>0.1, 0.9>both -> 3/4
    # fold 1: calls 0,0,1,1 -> 2/4 right; pairs: 0.3>0.2, 0.8>both -> 3/4
    assert np.allclose(metrics["accuracy"], [0.5, 0.5]), f"accuracy {metrics['accuracy'].tolist()}"
    assert np.allclose(metrics["auc"], [0.75, 0.75]), f"AUC {metrics['auc'].tolist()}"


def test_fold_without_er_names_the_fold():
    frame = predictions()
    frame.loc[frame["fold"] == 2, "y_true"] = 0
    with pytest.raises(ValueError, match="fold 2: no ER"):
        ev.fold_metrics(frame)


def test_auc_matches_mann_whitney_and_sklearn_with_ties():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 60)
    prob = np.round(rng.random(60) + 0.3 * y, 1)  # rounded: many ties
    u = mannwhitneyu(prob[y == 1], prob[y == 0]).statistic
    expected = u / (np.sum(y == 1) * np.sum(y == 0))
    assert ev.auc(y, prob) == pytest.approx(expected), f"AUC {ev.auc(y, prob)} vs U/(m n) {expected}"
    assert ev.auc(y, prob) == pytest.approx(roc_auc_score(y, prob))


def test_delong_variance_by_hand():
    # positives 0.8, 0.4; negatives 0.6, 0.2. V10 = [1, 0.5], V01 = [0.5, 1]:
    # AUC = 0.75, Var = var(V10)/2 + var(V01)/2 = 0.125/2 + 0.125/2 = 0.125
    aucs, cov = ev.delong_covariance([1, 1, 0, 0], np.array([[0.8, 0.4, 0.6, 0.2]]))
    assert aucs[0] == pytest.approx(0.75)
    assert cov[0, 0] == pytest.approx(0.125), f"variance {cov[0, 0]}"


def slow_delong(y, probs):
    """DeLong et al. (1988) structural components by the O(m n) double loop."""
    y = np.asarray(y)
    k = len(probs)
    m, n = int(np.sum(y == 1)), int(np.sum(y == 0))
    v10, v01, aucs = np.zeros((k, m)), np.zeros((k, n)), np.zeros(k)
    for r, p in enumerate(probs):
        pos, neg = p[y == 1], p[y == 0]
        psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
        aucs[r] = psi.mean()
        v10[r], v01[r] = psi.mean(axis=1), psi.mean(axis=0)
    return aucs, np.cov(v10) / m + np.cov(v01) / n


def test_fast_delong_equals_the_slow_structural_components():
    rng = np.random.default_rng(11)
    y = rng.integers(0, 2, 80)
    a = np.round(rng.random(80) + 0.4 * y, 2)
    b = np.round(0.5 * a + 0.5 * rng.random(80), 1)  # correlated with a, with ties
    fast_auc, fast_cov = ev.delong_covariance(y, np.vstack([a, b]))
    slow_auc, slow_cov = slow_delong(y, np.vstack([a, b]))
    assert np.allclose(fast_auc, slow_auc), f"{fast_auc} vs {slow_auc}"
    assert np.allclose(fast_cov, slow_cov), f"{fast_cov} vs {slow_cov}"
    auc_a, auc_b, p = ev.delong_test(y, a, b)
    z = (slow_auc[0] - slow_auc[1]) / np.sqrt(slow_cov[0, 0] + slow_cov[1, 1] - 2 * slow_cov[0, 1])
    assert p == pytest.approx(2 * norm.sf(abs(z))), f"p {p}"
    assert 0 < p < 1


def test_delong_identical_predictions_give_p_one():
    rng = np.random.default_rng(2)
    y, prob = rng.integers(0, 2, 30), rng.random(30)
    auc_a, auc_b, p = ev.delong_test(y, prob, prob)
    assert auc_a == auc_b and p == 1.0, f"p = {p}"


def test_delong_clearly_different_models_are_significant():
    rng = np.random.default_rng(5)
    y = np.repeat([0, 1], 100)
    good, noise = y + rng.normal(0, 0.5, 200), rng.random(200)
    assert ev.delong_test(y, good, noise)[2] < 1e-6


def test_bootstrap_ci_is_seeded_and_contains_the_auc():
    y = np.repeat([0, 1], 50)
    prob = np.random.default_rng(0).random(100) + 0.3 * y
    low, high = ev.bootstrap_auc_ci(y, prob, n_bootstrap=300, seed=1)
    assert low < ev.auc(y, prob) < high, f"CI ({low}, {high})"
    assert (low, high) == ev.bootstrap_auc_ci(y, prob, n_bootstrap=300, seed=1)
    # roughly the DeLong interval
    _, cov = ev.delong_covariance(y, prob[None, :])
    assert high - low == pytest.approx(2 * 1.96 * np.sqrt(cov[0, 0]), rel=0.3)


def test_brier_and_reliability_match_sklearn():
    rng = np.random.default_rng(9)
    prob = rng.random(200)
    y = (rng.random(200) < prob).astype(int)
    assert ev.brier_score(y, prob) == pytest.approx(brier_score_loss(y, prob))
    curve = ev.reliability_curve(y, prob, n_bins=8)
    true_frac, mean_pred = calibration_curve(y, prob, n_bins=8, strategy="uniform")
    assert np.allclose(curve["fraction_positive"], true_frac)
    assert np.allclose(curve["mean_predicted"], mean_pred)
    assert curve["n"].sum() == 200


def test_net_benefit_by_hand():
    y = np.array([1, 1, 0, 0, 0])
    prob = np.array([0.9, 0.3, 0.6, 0.2, 0.1])
    curve = ev.net_benefit(y, prob, thresholds=[0.25, 0.5])
    # pt 0.25: treated 0.9, 0.3, 0.6 -> TP 2, FP 1 -> 2/5 - 1/5 * (1/3)
    # pt 0.5: treated 0.9, 0.6 -> TP 1, FP 1 -> 1/5 - 1/5 * 1
    assert np.allclose(curve["net_benefit"], [0.4 - 0.2 / 3, 0.0]), f"got {curve['net_benefit'].tolist()}"
    assert np.allclose(curve["treat_all"], [0.4 - 0.6 / 3, 0.4 - 0.6])


def test_summarise_model_reports_the_papers_form():
    summary = ev.summarise_model(predictions(slices=3), n_bootstrap=100, seed=0)
    assert summary["level"] == "slice" and summary["n_patients"] == 40 and summary["n_rows"] == 120
    assert 0 <= summary["accuracy_mean"] <= 100
    assert summary["pooled_auc_ci_low"] <= summary["pooled_auc"] <= summary["pooled_auc_ci_high"]


def levels_case() -> pd.DataFrame:
    """Two folds of one ER and one NER patient each, whose slice and patient results differ by hand.

    Fold 0: ER patient A, slices 0.9, 0.1, 0.1 (mean 0.367); NER patient B, slices 0.3, 0.3 (mean 0.3).
    Fold 1: ER patient C, slices 0.6, 0.6 (mean 0.6); NER patient D, slices 0.2, 0.7 (mean 0.45).
    Patient level: A above B and C above D, so both fold AUCs are 1; accuracy 1/2 (A called NER) and 2/2.
    Slice level: fold 0 has 2 of 6 (ER, NER) slice pairs right (AUC 1/3), fold 1 2 of 4 (AUC 1/2); accuracy
    3/5 and 3/4. Pooled patient AUC: ER 0.367, 0.6 against NER 0.3, 0.45: 3 of 4 pairs, 0.75.
    """
    rows = [("A", 0, 1, [0.9, 0.1, 0.1]), ("B", 0, 0, [0.3, 0.3]), ("C", 1, 1, [0.6, 0.6]), ("D", 1, 0, [0.2, 0.7])]
    return pd.DataFrame([{"patient_id": pid, "slice": s, "fold": fold, "y_true": y, "y_prob": prob}
                         for pid, fold, y, probs in rows for s, prob in enumerate(probs)])


def test_fold_metrics_are_patient_level_with_the_slice_level_beside_by_hand():
    frame = levels_case()
    table = ev.fold_table(frame).set_index("fold")
    assert table["auc"].tolist() == pytest.approx([1.0, 1.0]) and table["accuracy"].tolist() == pytest.approx([0.5, 1.0])
    assert table["slice_auc"].tolist() == pytest.approx([1 / 3, 1 / 2]), table
    assert table["slice_accuracy"].tolist() == pytest.approx([3 / 5, 3 / 4]), table
    assert table["n_patients"].tolist() == [2, 2] and table["n_slices"].tolist() == [5, 4]

    summary = ev.summarise_model(frame, n_bootstrap=20)
    assert summary["level"] == "slice"
    assert summary["auc_mean"] == pytest.approx(1.0) and summary["auc_sd"] == pytest.approx(0.0)
    assert summary["accuracy_mean"] == pytest.approx(75.0)
    assert summary["slice_auc_mean"] == pytest.approx(5 / 12) and summary["slice_auc_sd"] == pytest.approx((1 / 6) / np.sqrt(2))
    assert summary["slice_accuracy_mean"] == pytest.approx(67.5)
    assert summary["pooled_auc"] == pytest.approx(0.75)

    # A patient-level model has no slice-level metrics: nothing to set beside another model's slices.
    patients = ev.patient_level(frame).assign(slice=pd.NA, y_prob=[0.2, 0.8, 0.7, 0.1])
    clinical = ev.summarise_model(patients, n_bootstrap=20)
    assert clinical["level"] == "patient" and clinical["auc_mean"] == pytest.approx(0.5)
    assert np.isnan(clinical["slice_auc_mean"]) and np.isnan(clinical["slice_accuracy_mean"])


def test_fold_metrics_of_seeded_slices_use_the_seed_ensemble_per_patient():
    base = levels_case()
    # two seeds whose mean is the case's probabilities: the patient-level fold AUCs stay 1, slices 1/3 and 1/2
    seeded = pd.concat([base.assign(train_seed=0, y_prob=base["y_prob"] - 0.05),
                        base.assign(train_seed=1, y_prob=base["y_prob"] + 0.05)], ignore_index=True)
    table = ev.fold_table(seeded).set_index("fold")
    assert table["auc"].tolist() == pytest.approx([1.0, 1.0]) and table["slice_auc"].tolist() == pytest.approx([1 / 3, 1 / 2])


# --- tables and comparisons ----------------------------------------------------------


def test_results_table_lists_existing_models_beside_the_paper(tmp_path):
    ev.write_predictions(tmp_path, "clinical_rf", predictions(seed=1))
    ev.write_predictions(tmp_path, "clinical_rf_strict", predictions(seed=2))
    ev.write_predictions(tmp_path, "clinical_lr", predictions(seed=3))  # a registered variant of another name
    ev.write_predictions(tmp_path, "fusion_d_strict", predictions(seed=4))  # an unregistered <model>_<suffix> one
    table = ev.results_table(tmp_path, table="table4", n_bootstrap=50, cohort="synthetic")
    assert table["model"].tolist() == ["clinical_rf", "clinical_rf_strict", "clinical_lr", "fusion_d_strict"], table["model"].tolist()
    assert table.loc[0, "paper_accuracy"] == "76.03±10.0" and table.loc[0, "paper_auc"] == "0.7532±0.13"
    assert table.loc[1, "paper_auc"] == ""
    csv_path, md_path = ev.write_results_table(tmp_path / "figures", "table4", table, synthetic=True)
    assert csv_path.name == "table4_fusion.csv" and "Synthetic cohort" in md_path.read_text()


def test_record_comparison_replaces_the_same_pair_and_keeps_others(tmp_path):
    for seed, model in enumerate(["clinical_rf", "fusion_d", "deep_resnet50"]):
        ev.write_predictions(tmp_path, model, predictions(seed=seed))
    figures = tmp_path / "figures"
    ev.record_comparison(figures, tmp_path, "clinical_rf", "fusion_d", 1000, 2020)
    ev.record_comparison(figures, tmp_path, "deep_resnet50", "fusion_d", 1000, 2020)
    ev.write_predictions(tmp_path, "fusion_d", predictions(seed=7))  # fusion_d re-run
    table = ev.record_comparison(figures, tmp_path, "fusion_d", "clinical_rf", 1000, 2020)
    on_disk = pd.read_csv(figures / ev.COMPARISONS_FILE)
    assert list(on_disk.columns) == ev.COMPARISON_COLUMNS
    assert len(on_disk) == 2, f"rows:\n{on_disk}"
    row = on_disk[on_disk["model_a"] == "fusion_d"].iloc[0]
    new_d = ev.patient_level(ev.read_predictions(tmp_path, "fusion_d"))
    clinical = ev.patient_level(ev.read_predictions(tmp_path, "clinical_rf"))
    expected = ev.delong_test(new_d["y_true"], new_d["y_prob"], clinical["y_prob"])
    assert row["auc_a"] == pytest.approx(expected[0]) and row["p_value"] == pytest.approx(expected[2])
    assert len(table) == 2


def test_comparison_needs_the_same_patients(tmp_path):
    ev.write_predictions(tmp_path, "a", predictions(n_patients=40))
    ev.write_predictions(tmp_path, "b", predictions(n_patients=38))
    with pytest.raises(ValueError, match="different patients"):
        ev.compare_models(tmp_path, "a", "b")


def test_plots_draw_one_line_per_model():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frames = {"m1": predictions(seed=1), "m2": predictions(slices=2, seed=2)}
    fig, axes = plt.subplots(1, 3)
    ev.plot_roc(frames, axes[0])
    ev.plot_reliability(frames, axes[1])
    ev.plot_decision_curve(frames, axes[2])
    labels = [line.get_label() for line in axes[0].get_lines()]
    assert labels[0].startswith("m1 (AUC") and labels[1].startswith("m2 (AUC"), f"labels {labels}"
    assert len(axes[2].get_lines()) == 4  # two models, treat all, treat none
    plt.close(fig)


def test_results_table_without_predictions_is_empty(tmp_path):
    table = ev.results_table(tmp_path, table="table5")
    assert table.empty and "paper_auc" in table.columns
    with pytest.raises(ValueError, match="table must be"):
        ev.results_table(tmp_path, table="table9")


def test_fold_of_looks_up_each_patient_and_names_one_without_a_fold():
    folds = pd.DataFrame({"patient_id": ["P1", "P2", "P3"], "y_true": [0, 1, 0], "fold": [1, 0, 1]})
    got = ev.fold_of(folds, ["P3", "P1", "P1", "P2"])
    assert got.tolist() == [1, 1, 1, 0], got
    with pytest.raises(ValueError, match=r"patient P9 has no fold \(1 such patients\)"):
        ev.fold_of(folds, ["P1", "P9"])


# --- paired bootstrap of the AUC difference --------------------------------------------


def test_bootstrap_difference_of_a_model_with_itself_is_zero():
    y = np.repeat([0, 1], 30)
    prob = np.random.default_rng(3).random(60) + 0.2 * y
    low, high = ev.bootstrap_auc_difference_ci(y, prob, prob, n_bootstrap=200, seed=0)
    assert (low, high) == (0.0, 0.0), f"CI ({low}, {high})"
    # the same ranking (a monotone transform) has the same AUC on every resample: paired, not two samples
    low, high = ev.bootstrap_auc_difference_ci(y, prob, prob**3 + 1, n_bootstrap=200, seed=0)
    assert abs(low) < 1e-12 and abs(high) < 1e-12, f"CI ({low}, {high})"


def test_bootstrap_difference_of_perfect_and_reversed_models_is_one():
    y = np.repeat([0, 1], 20)
    perfect = y + 0.01 * np.arange(40)
    low, high = ev.bootstrap_auc_difference_ci(y, perfect, -perfect, n_bootstrap=100, seed=0)
    assert low == pytest.approx(1.0) and high == pytest.approx(1.0), f"CI ({low}, {high})"


def test_bootstrap_difference_is_seeded_contains_the_difference_and_matches_delong():
    rng = np.random.default_rng(5)
    y = np.repeat([0, 1], 100)
    signal = rng.normal(0, 1, 200)
    prob_a = y + signal + rng.normal(0, 1.0, 200)
    prob_b = y + signal + rng.normal(0, 2.0, 200)
    auc_a, auc_b, _ = ev.delong_test(y, prob_a, prob_b)
    low, high = ev.bootstrap_auc_difference_ci(y, prob_a, prob_b, n_bootstrap=800, seed=1)
    assert low < auc_a - auc_b < high, f"difference {auc_a - auc_b:.3f} outside ({low:.3f}, {high:.3f})"
    assert (low, high) == ev.bootstrap_auc_difference_ci(y, prob_a, prob_b, n_bootstrap=800, seed=1)
    assert (low, high) != ev.bootstrap_auc_difference_ci(y, prob_a, prob_b, n_bootstrap=800, seed=2)
    # width close to the DeLong interval of the difference
    _, cov = ev.delong_covariance(y, np.vstack([prob_a, prob_b]))
    delong_width = 2 * 1.96 * np.sqrt(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    assert high - low == pytest.approx(delong_width, rel=0.25), f"bootstrap {high - low:.4f}, DeLong {delong_width:.4f}"


def test_bootstrap_difference_refuses_mismatched_lengths():
    with pytest.raises(ValueError, match="y_true has 4 patients but the predictions 3"):
        ev.bootstrap_auc_difference_ci([0, 1, 0, 1], [0.1, 0.2, 0.3], [0.1, 0.2, 0.3])


def test_record_comparison_adds_the_difference_interval_and_upgrades_an_old_file(tmp_path):
    for seed, model in enumerate(["clinical_rf", "fusion_d", "deep_resnet50"]):
        ev.write_predictions(tmp_path, model, predictions(n_patients=60, slices=2, seed=seed))
    figures = tmp_path / "figures"
    figures.mkdir()
    old = pd.DataFrame([{"model_a": "deep_resnet50", "model_b": "clinical_rf", "auc_a": 0.6, "auc_b": 0.7, "p_value": 0.3}])
    old.to_csv(figures / ev.COMPARISONS_FILE, index=False)  # written before the interval columns existed
    table = ev.record_comparison(figures, tmp_path, "fusion_d", "clinical_rf", n_bootstrap=200, seed=4)
    on_disk = pd.read_csv(figures / ev.COMPARISONS_FILE)
    assert list(on_disk.columns[:5]) == ["model_a", "model_b", "auc_a", "auc_b", "p_value"], list(on_disk.columns)
    assert list(on_disk.columns) == ev.COMPARISON_COLUMNS and len(table) == 2
    old_row, new_row = on_disk.iloc[0], on_disk.iloc[1]
    assert old_row["p_value"] == 0.3 and pd.isna(old_row["difference_ci_low"]), f"old row {old_row.to_dict()}"
    pairs = ev.paired_patients(tmp_path, "fusion_d", "clinical_rf")
    expected = ev.bootstrap_auc_difference_ci(pairs["y_true"], pairs["prob_a"], pairs["prob_b"], 200, 4)
    assert (new_row["difference_ci_low"], new_row["difference_ci_high"]) == pytest.approx(expected)
    assert new_row["auc_difference"] == pytest.approx(new_row["auc_a"] - new_row["auc_b"])
    assert new_row["difference_ci_low"] <= new_row["auc_difference"] <= new_row["difference_ci_high"], new_row.to_dict()
    assert (new_row["n_patients"], new_row["n_bootstrap"], new_row["bootstrap_seed"]) == (60, 200, 4)


def test_bootstrap_difference_equals_the_resamples_computed_one_by_one_with_ties():
    rng = np.random.default_rng(11)
    y = (rng.random(30) < 0.4).astype(int)
    prob_a, prob_b = np.round(rng.random(30), 1), np.round(0.3 * y + rng.random(30), 1)  # many ties
    low, high = ev.bootstrap_auc_difference_ci(y, prob_a, prob_b, n_bootstrap=40, seed=5, level=0.9)
    index = np.random.default_rng(5).integers(0, 30, (40, 30))  # the function's first batch of resamples
    by_hand = [ev.auc(y[i], prob_a[i]) - ev.auc(y[i], prob_b[i]) for i in index if 0 < y[i].sum() < 30]
    assert len(by_hand) == 40, "with 30 patients every resample holds both classes"
    assert (low, high) == pytest.approx(tuple(np.percentile(by_hand, [5, 95]))), (low, high)


# --- training seeds -------------------------------------------------------------------------


def seeded(frame: pd.DataFrame, seeds=(11, 12, 13)) -> pd.DataFrame:
    """The same rows once per training seed, each seed's probabilities shifted by its own amount."""
    parts = []
    for k, seed in enumerate(seeds):
        part = frame.copy()
        part["y_prob"] = np.clip(part["y_prob"] + 0.05 * (k - 1), 0, 1)
        parts.append(part.assign(train_seed=seed))
    return pd.concat(parts, ignore_index=True)


def test_seed_ensemble_and_patient_level_average_over_seeds_by_hand():
    frame = pd.DataFrame({"patient_id": ["A", "A", "B", "B"], "slice": [0, 0, 0, 0], "fold": 0, "y_true": [1, 1, 0, 0],
                          "y_prob": [0.2, 0.6, 0.1, 0.3], "train_seed": [1, 2, 1, 2]})
    ensemble = ev.seed_ensemble(frame).set_index("patient_id")
    assert list(ensemble.columns) == ["slice", "fold", "y_true", "y_prob"] and ensemble.loc["A", "y_prob"] == pytest.approx(0.4)
    patients = ev.patient_level(frame).set_index("patient_id")
    assert patients.loc["B", "y_prob"] == pytest.approx(0.2), patients
    with_areas = ev.seed_ensemble(frame.assign(roi_area_mm2=[10.0, 10.0, 20.0, 20.0]))
    assert list(with_areas.columns) == ["patient_id", "slice", "fold", "y_true", "y_prob", "roi_area_mm2"], with_areas.columns
    assert with_areas["roi_area_mm2"].tolist() == [10.0, 20.0], with_areas


def test_seed_aucs_are_each_seeds_pooled_patient_auc():
    base = predictions(slices=2, seed=3)
    frame = seeded(base)
    aucs = ev.seed_aucs(frame)
    for seed, part in frame.groupby("train_seed"):
        patients = part.groupby("patient_id").agg(y=("y_true", "first"), p=("y_prob", "mean"))
        assert aucs[seed] == pytest.approx(roc_auc_score(patients["y"], patients["p"])), seed
    assert set(ev.seed_aucs(base)) == {None}


def test_summary_of_seeded_predictions_gives_the_spread_over_seeds():
    frame = seeded(predictions(slices=2, seed=4))
    summary = ev.summarise_model(frame, n_bootstrap=50)
    aucs = list(ev.seed_aucs(frame).values())
    assert summary["n_train_seeds"] == 3
    assert summary["seed_auc_mean"] == pytest.approx(np.mean(aucs)) and summary["seed_auc_sd"] == pytest.approx(np.std(aucs, ddof=1))
    ensemble = ev.patient_level(frame)
    assert summary["pooled_auc"] == pytest.approx(roc_auc_score(ensemble["y_true"], ensemble["y_prob"]))
    assert summary["n_rows"] == len(frame) // 3 and summary["n_patients"] == 40  # rows of the seed ensemble


def test_seeded_predictions_round_trip_and_refuse_duplicates_or_uneven_seeds(tmp_path):
    frame = seeded(predictions(slices=2, seed=5))
    ev.write_predictions(tmp_path, "deep_resnet50", frame)
    back = ev.read_predictions(tmp_path, "deep_resnet50")
    assert list(back.columns) == [*ev.PREDICTION_COLUMNS, "train_seed"] and len(back) == len(frame)
    with pytest.raises(ValueError, match="train seed 11"):
        ev.validate_predictions(pd.concat([frame, frame.iloc[:1]]))
    with pytest.raises(ValueError, match="different numbers of rows"):
        ev.validate_predictions(frame.iloc[1:])


def test_comparison_over_seeds_pairs_the_same_seeds(tmp_path):
    base = predictions(slices=2, seed=6)
    ev.write_predictions(tmp_path, "fusion_d", seeded(base))
    better = base.assign(y_prob=np.clip(base["y_prob"] + 0.3 * (base["y_true"] - 0.5), 0, 1))
    ev.write_predictions(tmp_path, "fusion_d_joint", seeded(better))
    ev.write_predictions(tmp_path, "clinical_rf", ev.patient_level(base).assign(slice=pd.NA))
    row = ev.comparison_row(tmp_path, "fusion_d_joint", "fusion_d", n_bootstrap=50)
    a, b = ev.seed_aucs(seeded(better)), ev.seed_aucs(seeded(base))
    expected = [a[s] - b[s] for s in (11, 12, 13)]
    assert row["n_seed_pairs"] == 3 and row["seed_difference_mean"] == pytest.approx(np.mean(expected))
    assert row["seed_difference_sd"] == pytest.approx(np.std(expected, ddof=1)) and row["seed_fraction_a_better"] == 1.0
    # a model without seeds is one seed: each seed of the other model against it
    against_forest = ev.comparison_row(tmp_path, "fusion_d", "clinical_rf", n_bootstrap=50)
    assert against_forest["n_seed_pairs"] == 3 and np.isfinite(against_forest["seed_difference_sd"])
    table = ev.record_comparison(tmp_path, tmp_path, "fusion_d_joint", "fusion_d", n_bootstrap=50, seed=2020)
    assert list(table.columns) == ev.COMPARISON_COLUMNS
