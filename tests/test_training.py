"""Cross-validated training: seeded, resumable, keyed by its settings (tiny networks, tiny data)."""

import itertools
from dataclasses import replace
from types import SimpleNamespace

import keras
import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression

from hccer_lib import evaluation, networks, training
from hccer_lib.clinical import clinical_matrix
from hccer_lib.profiles import get_profile

N_PATIENTS, SLICES_PER_PATIENT, SIZE = 12, 2, 32
TINY_PROFILE = replace(get_profile("smoke"), image_size=SIZE, epochs=1, batch_size=8, resnet_blocks=(1, 1, 1, 1), resnet_width=4)


def tiny_clinical() -> pd.DataFrame:
    """12 patients; age and tumour size follow the label, the other variables cycle."""
    y = np.array([0, 1] * 6)
    i = np.arange(N_PATIENTS)
    cycle = (i % 3 == 0).astype(int)
    return pd.DataFrame(
        {
            "patient_id": [f"P{k:02d}" for k in i],
            "early_recurrence": y,
            "sex": np.where(cycle, "F", "M"),
            "age": np.where(y == 1, 50, 70),
            "tumor_size_mm": np.where(y == 1, 60, 30),
            "tumor_number": 1 + cycle,
            "portal_vein_invasion": cycle,
            "cirrhosis": 1 - cycle,
            "hbv": cycle,
            "nlr": 2 + cycle,
            "alt": 30 + 20 * cycle,
            "ast": 40 + 20 * cycle,
            "akp": 100 + 50 * cycle,
            "ggt": 40 + 10 * cycle,
            "alb": 45 - 10 * cycle,
            "tb": 15 + 10 * cycle,
            "afp": 5 + 10 * cycle,
            "child_pugh": np.where(cycle, "B", "A"),
            "bclc": np.where(cycle, "C", "A"),
        }
    )


def tiny_dataset(clinical: pd.DataFrame) -> SimpleNamespace:
    rng = np.random.default_rng(0)
    pids = np.repeat(clinical["patient_id"].to_numpy(), SLICES_PER_PATIENT)
    y = np.repeat(clinical["early_recurrence"].to_numpy(), SLICES_PER_PATIENT)
    images = rng.random((len(pids), SIZE, SIZE, 3), dtype=np.float32) * 0.5 + 0.5 * y[:, None, None, None]
    return SimpleNamespace(images=images, patient_id=pids, slice=np.tile(np.arange(SLICES_PER_PATIENT), N_PATIENTS), y_true=y,
                           roi_area_mm2=100.0 + 10.0 * np.tile(np.arange(SLICES_PER_PATIENT), N_PATIENTS),
                           settings={"margin": 0.0})  # a processed dataset's settings: its crops' margin (texture target)


def tiny_folds(clinical: pd.DataFrame, n_folds: int = 2) -> pd.DataFrame:
    return pd.DataFrame(
        {"patient_id": clinical["patient_id"], "y_true": clinical["early_recurrence"], "fold": np.arange(N_PATIENTS) // 2 % n_folds}
    )


@pytest.fixture
def study(tmp_path):
    clinical = tiny_clinical()
    return SimpleNamespace(clinical=clinical, dataset=tiny_dataset(clinical), folds=tiny_folds(clinical), work_dir=tmp_path)


def run(study, model_name="fusion_d", seed=1, profile=TINY_PROFILE, **kwargs):
    return training.train_cross_validated(
        model_name, study.dataset, study.clinical, study.folds, profile, study.work_dir, seed=seed, imagenet="none", **kwargs
    )


def _run_record(study, model_name: str, profile) -> dict:
    """The run record (``key``, ``profile_deep``, ...) that ``training.run_folder`` gives ``model_name`` under
    ``profile`` on the study (seed 1, no ImageNet)."""
    return training.run_folder(model_name, study.dataset, study.clinical, study.folds, profile, study.work_dir,
                               seed=1, imagenet="none")[1]


def test_tiny_clinical_gives_a_clinical_vector():
    matrix, names = clinical_matrix(tiny_clinical(), protocol="paper")
    assert matrix.shape[0] == N_PATIENTS and matrix.shape[1] >= 2, (matrix.shape, names)


def test_slice_clinical_vectors_follow_patient_ids():
    rows = np.array([[1.0, 0.0], [0.0, 1.0]])
    got = training.slice_clinical_vectors(rows, ["A", "B"], ["B", "B", "A"])
    np.testing.assert_array_equal(got, [[0, 1], [0, 1], [1, 0]])
    with pytest.raises(ValueError, match="patient C"):
        training.slice_clinical_vectors(rows, ["A", "B"], ["C"])


@pytest.mark.slow
def test_same_seed_same_predictions_and_resume(study, capsys):
    first = run(study)
    assert list(first.columns) == ["patient_id", "slice", "fold", "y_true", "y_prob", "train_seed", "roi_area_mm2"]
    assert (first["roi_area_mm2"] == 100.0 + 10.0 * first["slice"]).all(), "each slice keeps its tumour area"
    assert len(first) == N_PATIENTS * SLICES_PER_PATIENT and first["y_prob"].between(0, 1).all()
    saved = pd.read_csv(study.work_dir / "predictions" / "fusion_d.csv", dtype={"patient_id": str})
    np.testing.assert_allclose(saved.sort_values(["patient_id", "slice"])["y_prob"], first.sort_values(["patient_id", "slice"])["y_prob"], rtol=1e-6)

    # a rerun with the same settings reads every fold back
    capsys.readouterr()
    again = run(study)
    assert capsys.readouterr().out.count("done before") == 2
    pd.testing.assert_frame_equal(again, first, check_dtype=False)

    # delete one finished fold: only that one is retrained, and it comes out the same
    run_dirs = list((study.work_dir / "runs" / "fusion_d").iterdir())
    assert len(run_dirs) == 1, run_dirs
    (run_dirs[0] / "seed_1" / "fold_1.csv").unlink()
    resumed = run(study)
    out = capsys.readouterr().out
    assert out.count("done before") == 1, out
    np.testing.assert_array_equal(resumed["y_prob"].to_numpy(), first["y_prob"].to_numpy())


@pytest.mark.slow
def test_other_settings_get_their_own_run_folder(study):
    run(study, model_name="deep_resnet50", seed=1)
    other = run(study, model_name="deep_resnet50", seed=2)
    run_dirs = sorted((study.work_dir / "runs" / "deep_resnet50").iterdir())
    assert len(run_dirs) == 2, run_dirs
    assert sorted(len(list(d.glob("seed_*/fold_*.csv"))) for d in run_dirs) == [2, 2]
    first = pd.read_csv(next(run_dirs[0].glob("seed_*/fold_0.csv")))
    second = pd.read_csv(next(run_dirs[1].glob("seed_*/fold_0.csv")))
    assert not np.allclose(first["y_prob"], second["y_prob"]), "different seeds should give different networks"
    assert len(other) == N_PATIENTS * SLICES_PER_PATIENT


def test_run_settings_record_the_network_that_is_built(study):
    """Fusion C's Conv1D kernel (3) spans at most the clinical vector: the run's record says what was built."""
    for n_bits in (2, 9):  # a vector shorter than the kernel, and the paper's
        clinical = study.clinical
        if n_bits == 9:  # nine bits that the chi-squared selection keeps: each follows the label
            clinical = study.clinical.assign(portal_vein_invasion=clinical["early_recurrence"], nlr=2 + 2 * clinical["early_recurrence"],
                                             tb=15 + 10 * clinical["early_recurrence"], afp=5 + 10 * clinical["early_recurrence"],
                                             bclc=np.where(clinical["early_recurrence"] == 1, "C", "0"))
        built = training.fold_data("fusion_c", study.dataset, clinical, study.folds, TINY_PROFILE, None, imagenet="none").config
        assert built.n_clinical == n_bits, (built.n_clinical, n_bits)
        _, settings = training.run_folder("fusion_c", study.dataset, clinical, study.folds, TINY_PROFILE, study.work_dir,
                                          imagenet="none")
        assert settings["network"]["clinical_kernel"] == built.clinical_kernel == min(3, n_bits), (settings["network"], built)
    _, deep = training.run_folder("deep_resnet50", study.dataset, study.clinical, study.folds, TINY_PROFILE, study.work_dir,
                                  imagenet="none")
    assert deep["network"]["clinical_kernel"] == 3, deep["network"]  # no clinical input: the default, not shortened


@pytest.mark.slow
def test_joint_model_trains_and_predicts_fused_head(study):
    predictions = run(study, model_name="fusion_d_joint", profile=replace(TINY_PROFILE, epochs=1))
    assert predictions["y_prob"].between(0, 1).all() and predictions["fold"].nunique() == 2


def test_bad_inputs_are_refused(study):
    with pytest.raises(ValueError, match="profile"):
        run(study, profile=replace(TINY_PROFILE, image_size=48))
    with pytest.raises(ValueError, match="unknown model"):
        run(study, model_name="resnet")
    with pytest.raises(ValueError, match="selection_protocol"):
        run(study, selection_protocol="loose")
    missing = SimpleNamespace(**vars(study))
    missing.folds = study.folds.iloc[1:]
    with pytest.raises(ValueError, match="P00"):
        run(missing)


def test_network_config_follows_profile():
    config = training.network_config(get_profile("paper"), n_clinical=9, imagenet="none")
    assert config.is_resnet50 and config.image_size == 224
    assert networks.NetworkConfig(**{**config.as_dict(), "resnet_width": 8}).is_resnet50 is False


def test_network_config_shortens_fusion_c_kernel_to_a_short_clinical_vector():
    quick = get_profile("smoke")
    assert training.network_config(quick, n_clinical=9, imagenet="none").clinical_kernel == 3
    assert training.network_config(quick, n_clinical=3, imagenet="none").clinical_kernel == 3
    short = training.network_config(quick, n_clinical=2, imagenet="none")
    assert short.clinical_kernel == 2
    model = networks.build_model("fusion_c", short)  # the whole 2-bit vector in one window: 1 position
    assert model.get_layer("clinical_conv").output.shape[1:] == (1, short.clinical_filters)
    assert training.network_config(quick, n_clinical=1, imagenet="none").clinical_kernel == 1
    # an explicit kernel is the user's: kept, and refused by build_model when too long
    explicit = training.network_config(quick, n_clinical=2, imagenet="none", clinical_kernel=3)
    assert explicit.clinical_kernel == 3
    with pytest.raises(ValueError, match="clinical_kernel 3 is longer"):
        networks.build_model("fusion_c", explicit)


def test_dihedral_gives_the_eight_symmetries_of_the_square():
    image = np.arange(2 * 2 * 3, dtype=np.float32).reshape(1, 2, 2, 3)  # [[a, b], [c, d]] per channel
    results = [training.dihedral(image, [t])[0, :, :, 0] for t in range(8)]
    a, b, c, d = image[0, 0, 0, 0], image[0, 0, 1, 0], image[0, 1, 0, 0], image[0, 1, 1, 0]
    np.testing.assert_array_equal(results[0], [[a, b], [c, d]])
    np.testing.assert_array_equal(results[1], [[b, d], [a, c]])  # a quarter turn anticlockwise
    np.testing.assert_array_equal(results[4], [[b, a], [d, c]])  # left-right flip
    distinct = {tuple(r.ravel()) for r in results}
    assert len(distinct) == 8, f"{len(distinct)} distinct results: {sorted(distinct)}"
    # the three phases turn together
    turned = training.dihedral(image, [5])[0]
    for channel in range(3):
        np.testing.assert_array_equal(turned[..., channel], np.fliplr(np.rot90(image[0, ..., channel], 1)))
    with pytest.raises(ValueError, match="2 transforms"):
        training.dihedral(image, [0, 1])


def test_augmented_batches_are_seeded_and_keep_labels():
    rng = np.random.default_rng(3)
    images = rng.random((10, 4, 4, 3), dtype=np.float32)
    y = np.arange(10) % 2

    def epoch(seed):
        batches = training.SliceBatches({"image": images}, y, 5, seed, augment=True)
        return [batches[i] for i in range(len(batches))]

    first, again = epoch(7), epoch(7)
    for (x1, y1), (x2, y2) in zip(first, again, strict=True):
        np.testing.assert_array_equal(x1["image"], x2["image"])
        np.testing.assert_array_equal(y1, y2)
    x, labels = first[0]
    # each augmented image is one of the symmetries of an original image with the same label
    for image, label in zip(x["image"], labels, strict=True):
        matches = [i for i in range(10) for t in range(8) if np.array_equal(training.dihedral(images[i : i + 1], [t])[0], image)]
        assert matches and all(y[i] == label for i in matches), (matches, label)
    plain = training.SliceBatches({"image": images}, y, 5, 7)
    assert not any(np.array_equal(plain[i][0]["image"], first[i][0]["image"]) for i in range(2)), "augment changed nothing"


def test_shifted_moves_each_image_and_mirrors_its_border_into_the_gap():
    image = np.arange(5 * 5 * 3, dtype=np.float32).reshape(1, 5, 5, 3)
    down_one = training.shifted(image, [[1, 0]], max_shift=2)[0]
    # moved down by one row: row r shows the original row r - 1, and row 0 the mirror of row 1
    np.testing.assert_array_equal(down_one[1:], image[0, :-1])
    np.testing.assert_array_equal(down_one[0], image[0, 1])
    left_two = training.shifted(image, [[0, -2]], max_shift=2)[0]
    # moved left by two columns: column c shows column c + 2; the last two mirror columns 3 and 2
    np.testing.assert_array_equal(left_two[:, :3], image[0, :, 2:])
    np.testing.assert_array_equal(left_two[:, 3], image[0, :, 3])
    np.testing.assert_array_equal(left_two[:, 4], image[0, :, 2])
    two = np.concatenate([image, image + 100])
    np.testing.assert_array_equal(training.shifted(two, [[0, 0], [0, 0]], 2), two)  # no offset: the images
    with pytest.raises(ValueError, match="larger than max_shift"):
        training.shifted(image, [[3, 0]], max_shift=2)
    with pytest.raises(ValueError, match="offsets must be"):
        training.shifted(two, [[1, 0]], max_shift=2)
    with pytest.raises(ValueError, match="smaller than the image side"):
        training.shifted(image, [[0, 0]], max_shift=5)


def test_shifted_batches_are_seeded_keep_labels_and_leave_unshifted_batches_as_they_were():
    rng = np.random.default_rng(4)
    images = rng.random((10, 6, 6, 3), dtype=np.float32)
    y = np.arange(10) % 2

    def first_epoch(seed, shift):
        batches = training.SliceBatches({"image": images}, y, 5, seed, augment=True, shift=shift)
        return [batches[i] for i in range(len(batches))]

    first, again, unshifted = first_epoch(7, 2), first_epoch(7, 2), first_epoch(7, 0)
    for (x1, y1), (x2, y2), (_, y0) in zip(first, again, unshifted, strict=True):
        np.testing.assert_array_equal(x1["image"], x2["image"])
        np.testing.assert_array_equal(y1, y2)
        np.testing.assert_array_equal(y1, y0)  # the first epoch's rows in the same order: the shift draws after them
    # each image is a symmetry of an original image of the same label, moved by at most 2 pixels
    x, labels = first[0]
    for image, label in zip(x["image"], labels, strict=True):
        matches = [i for i in range(10) for t in range(8) for dy in range(-2, 3) for dx in range(-2, 3)
                   if np.array_equal(training.shifted(training.dihedral(images[i:i + 1], [t]), [[dy, dx]], 2)[0], image)]
        assert matches and all(y[i] == label for i in matches), (matches, label)
    assert any(not np.array_equal(a[0]["image"], b[0]["image"]) for a, b in zip(first, unshifted, strict=True))
    # without a shift the batches are those of a SliceBatches that never had one
    plain = training.SliceBatches({"image": images}, y, 5, 7, augment=True)
    for i, (x0, _) in enumerate(unshifted):
        np.testing.assert_array_equal(x0["image"], plain[i][0]["image"])
    with pytest.raises(ValueError, match="needs augment"):
        training.SliceBatches({"image": images}, y, 5, 7, augment=False, shift=2)


def test_augment_shift_is_keyed_only_when_set_and_needs_augment():
    plain = training.training_settings(TINY_PROFILE, "deep_resnet50")
    assert "augment_shift" not in plain, "the trainings keyed before the setting keep their keys"
    moved = replace(TINY_PROFILE, augment=True, augment_shift=4)
    assert training.training_settings(moved, "deep_resnet50") == {**plain, "augment": True, "augment_shift": 4}
    with pytest.raises(ValueError, match="needs augment"):
        replace(TINY_PROFILE, augment=False, augment_shift=4)


def test_fold_data_splits_by_patient(study):
    data = training.fold_data("fusion_d", study.dataset, study.clinical, study.folds, TINY_PROFILE, 1)
    test_patients = set(study.folds.loc[study.folds["fold"] == 1, "patient_id"])
    assert set(data.patient_id[data.test]) == test_patients
    assert not set(data.patient_id[data.train]) & test_patients
    assert data.inputs["clinical"].shape == (N_PATIENTS * SLICES_PER_PATIENT, len(data.clinical_names))
    whole = training.fold_data("deep_resnet50", study.dataset, study.clinical, study.folds, TINY_PROFILE, None)
    assert whole.train.all() and not whole.test.any() and set(whole.inputs) == {"image"}
    with pytest.raises(ValueError, match="fold 5"):
        training.fold_data("fusion_d", study.dataset, study.clinical, study.folds, TINY_PROFILE, 5)


@pytest.mark.slow
def test_train_fold_reproduces_the_out_of_fold_predictions(study):
    profile = replace(TINY_PROFILE, augment=True)
    predictions = run(study, model_name="fusion_b", profile=profile)
    model, data = training.train_fold("fusion_b", study.dataset, study.clinical, study.folds, profile, 1, seed=1, imagenet="none")
    again = training.predict_probability(model, data.subset(data.test), symmetries=profile.test_symmetries)
    assert profile.test_symmetries, "the smoke profile predicts over the symmetries, as quick does"
    stored = predictions[predictions["fold"] == 1].sort_values(["patient_id", "slice"])
    order = np.lexsort((data.slice[data.test], data.patient_id[data.test]))
    np.testing.assert_allclose(again[order], stored["y_prob"].to_numpy(), rtol=1e-5, atol=1e-6)


def test_train_seeds_are_spaced_beyond_the_folds():
    assert training.train_seeds(replace(TINY_PROFILE, train_seeds=3), 7) == [7, 1007, 2007]
    with pytest.raises(ValueError, match="train_seeds"):
        training.train_seeds(replace(TINY_PROFILE, train_seeds=0), 7)


def test_validation_patients_are_a_seeded_stratified_share_of_the_training_patients():
    ids = np.array([f"P{i:02d}" for i in range(20)])
    labels = np.array([0] * 12 + [1] * 8)
    held = training.validation_patients(ids, labels, 0.25, seed=3)
    assert set(held) <= set(ids) and len(held) == 3 + 2, held  # 25 % of 12 and of 8
    assert (labels[np.isin(ids, held)] == 1).sum() == 2
    np.testing.assert_array_equal(held, training.validation_patients(ids, labels, 0.25, seed=3))
    assert not np.array_equal(held, training.validation_patients(ids, labels, 0.25, seed=4))
    assert len(training.validation_patients(ids, labels, 0.0, seed=3)) == 0
    with pytest.raises(ValueError, match="validation_fraction"):
        training.validation_patients(ids, labels, 1.0, seed=3)
    with pytest.raises(ValueError, match="class 1"):
        training.validation_patients(ids[:13], labels[:13], 0.2, seed=3)


def test_cosine_learning_rate_falls_from_the_base_rate_by_hand():
    rates = [training.cosine_learning_rate(1e-3, epoch, 4) for epoch in range(4)]
    np.testing.assert_allclose(rates, [1e-3, 1e-3 * (1 + np.cos(np.pi / 4)) / 2, 5e-4, 1e-3 * (1 + np.cos(3 * np.pi / 4)) / 2])


def test_best_epoch_keeps_the_weights_of_the_best_validation_auc():
    """A one-weight model whose validation AUC is best at epoch 2 (of 3): those weights come back."""
    import keras

    inputs = keras.Input((1,), name="image")
    model = keras.Model({"image": inputs}, keras.layers.Dense(2, activation="softmax", name="fused")(inputs))
    x = {"image": np.array([[0.0], [1.0], [2.0], [3.0]], dtype="float32")}
    best = training.BestEpoch(x, np.array([0, 0, 1, 1]), np.array(["A", "B", "C", "D"]))
    best.set_model(model)
    signs = {0: -1.0, 1: 1.0, 2: -0.5}  # epoch 1 (0-based) ranks C, D above A, B: AUC 1
    for epoch, sign in signs.items():
        model.get_layer("fused").set_weights([np.array([[-sign, sign]], dtype="float32"), np.zeros(2, "float32")])
        best.on_epoch_end(epoch)
    assert best.best_epoch == 2 and best.aucs == [0.0, 1.0, 0.0], best.aucs
    best.restore()
    np.testing.assert_allclose(model.get_layer("fused").get_weights()[0], [[-1.0, 1.0]])
    with pytest.raises(ValueError, match="both classes"):
        training.BestEpoch(x, np.array([0, 0, 0, 0]), np.array(["A", "B", "C", "D"]))


def test_best_epoch_weights_slices_by_the_tumour_area_as_the_test_fold_does():
    """Two patients of two slices; p = sigmoid(2 w x). With w = 1 the slice means rank NER patient A
    (x 0, 3) below ER patient B (x 1, 2): AUC 1. Weighted by areas A (1, 9) and B (9, 1), A's
    probability is 0.948 and B's 0.891: AUC 0. With w = -1 it is the other way round."""
    import keras

    inputs = keras.Input((1,), name="image")
    model = keras.Model({"image": inputs}, keras.layers.Dense(2, activation="softmax", name="fused")(inputs))
    x = {"image": np.array([[0.0], [3.0], [1.0], [2.0]], dtype="float32")}
    y, patients = np.array([0, 0, 1, 1]), np.array(["A", "A", "B", "B"])
    for areas, expected_aucs, expected_epoch in ((None, [1.0, 0.0], 1), (np.array([1.0, 9.0, 9.0, 1.0]), [0.0, 1.0], 2)):
        best = training.BestEpoch(x, y, patients, areas)
        best.set_model(model)
        for epoch, sign in enumerate((1.0, -1.0)):
            model.get_layer("fused").set_weights([np.array([[-sign, sign]], dtype="float32"), np.zeros(2, "float32")])
            best.on_epoch_end(epoch)
        assert best.aucs == expected_aucs and best.best_epoch == expected_epoch, (areas, best.aucs, best.best_epoch)


@pytest.mark.slow
def test_several_training_seeds_with_validation_split_resume_and_differ(study, capsys):
    profile = replace(TINY_PROFILE, train_seeds=2, validation_fraction=0.34, epochs=2, lr_schedule="cosine", weight_decay=1e-4)
    first = run(study, model_name="deep_resnet50", seed=5, profile=profile)
    assert sorted(first["train_seed"].unique()) == [5, 1005] and len(first) == 2 * N_PATIENTS * SLICES_PER_PATIENT
    a, b = (part.sort_values(["patient_id", "slice"])["y_prob"].to_numpy() for _, part in first.groupby("train_seed"))
    assert not np.allclose(a, b), "two training seeds should give two networks"
    run_dir = next((study.work_dir / "runs" / "deep_resnet50").iterdir())
    record = __import__("json").loads((run_dir / "seed_1005" / "fold_1.json").read_text())
    assert record["n_validation_slices"] > 0 and 1 <= record["best_epoch"] <= 2, record
    # a third seed reuses the two trained ones
    capsys.readouterr()
    more = run(study, model_name="deep_resnet50", seed=5, profile=replace(profile, train_seeds=3))
    assert capsys.readouterr().out.count("done before") == 4
    pd.testing.assert_frame_equal(more[more["train_seed"] < 2000].reset_index(drop=True), first, check_dtype=False)


def test_patient_sampling_weighs_every_patient_alike_and_its_slices_by_area_by_hand():
    # A has slices of 30 and 10 mm², B one of 50 mm², C two of 20: each patient 1/3, shared by area
    weights = training.sampling_weights(["A", "A", "B", "C", "C"], [30.0, 10.0, 50.0, 20.0, 20.0])
    np.testing.assert_allclose(weights, [0.25, 1 / 12, 1 / 3, 1 / 6, 1 / 6], err_msg=str(weights))
    # drawn with those weights, an epoch of many rows takes B's one slice about as often as A's two together
    rows = np.arange(5)
    batches = training.SliceBatches({"image": rows[:, None].astype("float32")}, rows, 5, seed=0, weights=weights)
    drawn = []
    for _ in range(2000):
        drawn.extend(batches[0][1])
        batches.on_epoch_end()
    counts = np.bincount(drawn, minlength=5) / len(drawn)
    np.testing.assert_allclose(counts, weights, atol=0.01, err_msg=f"drawn shares {counts}")
    with pytest.raises(ValueError, match="train_sampling"):
        replace(TINY_PROFILE, train_sampling="patients")


@pytest.mark.parametrize("sampling", ["patient", "class"])
def test_weighted_sampling_reaches_the_training_and_the_run_key(study, sampling):
    weighted = replace(TINY_PROFILE, train_sampling=sampling)
    plain = run(study, model_name="deep_resnet50", seed=3, profile=TINY_PROFILE)
    drawn = run(study, model_name="deep_resnet50", seed=3, profile=weighted)
    assert len(drawn) == len(plain) == N_PATIENTS * SLICES_PER_PATIENT, "every slice is predicted"
    assert not np.allclose(drawn["y_prob"], plain["y_prob"]), "other batches must give another network"
    assert training.training_settings(weighted)["train_sampling"] == sampling, "the sampling keys the run"
    assert _run_record(study, "deep_resnet50", weighted)["key"] != _run_record(study, "deep_resnet50", TINY_PROFILE)["key"]


def test_class_sampling_weighs_each_class_one_half_by_hand():
    # three rows without early recurrence, one with: each class 1/2, shared alike by its rows
    weights = training.class_balanced_weights([0, 1, 0, 0])
    np.testing.assert_allclose(weights, [1 / 6, 1 / 2, 1 / 6, 1 / 6], err_msg=str(weights))
    with pytest.raises(ValueError, match=r"both classes.*\[3, 0\]"):
        training.class_balanced_weights([0, 0, 0])


def test_area_shares_are_each_slices_area_over_its_patients_largest_by_hand():
    dataset = SimpleNamespace(patient_id=np.array(["A", "A", "B", "B", "B"]), roi_area_mm2=np.array([50.0, 100.0, 30.0, 60.0, 60.0]))
    assert training.area_shares(dataset).tolist() == [0.5, 1.0, 0.5, 1.0, 1.0]


def test_area_weighted_patient_means_weigh_each_slice_by_its_area_by_hand():
    values = np.array([[1.0, 10.0], [4.0, 40.0], [2.0, 0.0]])
    means = training.area_weighted_patient_means(values, ["B", "B", "A"], [100.0, 50.0, 30.0])
    assert means.index.tolist() == ["A", "B"], means.index.tolist()
    np.testing.assert_allclose(means.to_numpy(), [[2.0, 0.0], [2.0, 20.0]], err_msg="B: (100 * 1 + 50 * 4) / 150 = 2")


def test_slices_below_the_training_area_share_are_predicted_but_not_trained_on(study):
    # the tiny dataset's two slices per patient have areas 100 and 110 mm²: a share of 1 trains the larger one only
    predictions = run(study, model_name="deep_resnet50", seed=3, profile=replace(TINY_PROFILE, train_min_area=1.0))
    assert len(predictions) == N_PATIENTS * SLICES_PER_PATIENT, "every slice is still predicted"
    run_dir = next((study.work_dir / "runs" / "deep_resnet50").iterdir())
    for fold in (0, 1):
        record = __import__("json").loads((run_dir / "seed_3" / f"fold_{fold}.json").read_text())
        training_patients = N_PATIENTS - record["n_test_slices"] // SLICES_PER_PATIENT
        assert record["n_train_slices"] == training_patients, record
        # the fold's record gives its patients' AUC as the tables do: slices weighted by the tumour's area
        weighted = evaluation.patient_level(predictions[predictions["fold"] == fold])
        expected = evaluation.auc(weighted["y_true"], weighted["y_prob"]) if weighted["y_true"].nunique() == 2 else np.nan
        assert record["patient_auc"] == pytest.approx(expected, nan_ok=True), (record["patient_auc"], expected)
    with pytest.raises(ValueError, match="train_min_area"):
        replace(TINY_PROFILE, train_min_area=1.5)


def test_fast_cpu_graphs_is_scoped_and_a_training_leaves_the_process_as_it_was(study):
    """Grappler is off inside a training only; the process's own setting is the same after it."""
    if keras.backend.backend() != "tensorflow":
        pytest.skip("a TensorFlow option")
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        pytest.skip("the option is for CPUs only")

    def grappler_off() -> bool:
        return bool(tf.config.optimizer.get_experimental_options().get("disable_meta_optimizer", False))

    assert not grappler_off(), "something switched TensorFlow's graph optimiser off for the whole process"
    with training.fast_cpu_graphs() as fast:
        assert fast and grappler_off()
        with training.fast_cpu_graphs():
            assert grappler_off()
        assert grappler_off(), "an inner block ended the outer one"
    assert not grappler_off()
    model, data = training.train_fold("deep_resnet50", study.dataset, study.clinical, study.folds, TINY_PROFILE, 1,
                                      seed=1, imagenet="none")
    assert not grappler_off()
    assert training.predict_probability(model, data.subset(data.test)).shape == (int(data.test.sum()),)
    assert not grappler_off()
    tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})  # a user's own choice is kept
    try:
        with training.fast_cpu_graphs():
            pass
        assert grappler_off()
    finally:
        tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": False})


def test_first_training_step_creates_no_variable_and_trains_as_before(monkeypatch):
    """``build_training_state`` creates the optimizer's and the joint loss's variables before the first
    step, so that step is traced once (no variable created inside it), and the weights after training
    are those Keras gives when it creates them itself (the same training without it). The joint
    loss's model: an optimizer and three loss heads."""
    config = networks.NetworkConfig(image_size=SIZE, n_clinical=4, resnet_blocks=(1, 1, 1, 1), resnet_width=4, imagenet="none")
    rng = np.random.default_rng(3)
    inputs = {"image": rng.random((16, SIZE, SIZE, 3), dtype=np.float32), "clinical": rng.integers(0, 2, (16, 4)).astype("float32")}
    y = np.array([0, 1] * 8, dtype="int32")

    def trained(build_first: bool) -> list:
        keras.utils.set_random_seed(5)
        model = networks.compile_model(networks.build_model("fusion_d_joint", config), 1e-3)
        targets = training.model_targets(model, y)
        if build_first:
            training.build_training_state(model, inputs, targets, 8)
            counts = (len(model.optimizer.variables), len(model.metrics_variables))
            assert counts[0] > 1, "the optimizer's moments exist before any step"
        else:
            monkeypatch.setattr(training, "build_training_state", lambda *args: None)
        training.fit_model(model, inputs, y, epochs=2, batch_size=8, seed=1, augment=True)
        if build_first:
            assert (len(model.optimizer.variables), len(model.metrics_variables)) == counts, "a training step created variables"
        monkeypatch.undo()
        return model.get_weights()

    for built, plain in zip(trained(True), trained(False), strict=True):
        np.testing.assert_array_equal(built, plain)


def corner_model(size: int = 4) -> keras.Model:
    """A network whose P(ER) is the softmax of (pixel [0, 0] of channel 0, 0): not turn-invariant."""
    image = keras.Input((size, size, 3), name="image")
    corner = keras.layers.Lambda(lambda x: x[:, 0, 0, 0:1])(image)
    logits = keras.layers.Concatenate()([keras.ops.zeros_like(corner), corner])
    return keras.Model({"image": image}, keras.layers.Softmax()(logits))


def test_predicting_over_the_symmetries_averages_the_eight_turned_images_by_hand():
    size = 4
    images = np.zeros((3, size, size, 3), dtype=np.float32)
    images[0, 0, 0, 0] = 2.0  # one corner: 2 of the 8 symmetries bring a corner pixel to [0, 0]
    images[1, :, :, 0] = 1.0  # every pixel: every symmetry sees 1
    images[2, 1, 2, 0] = 5.0  # not a corner: no symmetry brings it to [0, 0]
    model = corner_model(size)
    inputs = {"image": images}
    plain = training.predict_probability(model, inputs, batch_size=2)
    turned = training.predict_probability(model, inputs, batch_size=2, symmetries=True)
    sigmoid = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    np.testing.assert_allclose(plain, [sigmoid(2.0), sigmoid(1.0), 0.5], rtol=1e-6)
    # image 0: the identity and the flip that keeps [0, 0] see 2 there, the other six see 0
    expected = [(2 * sigmoid(2.0) + 6 * 0.5) / 8, sigmoid(1.0), 0.5]
    np.testing.assert_allclose(turned, expected, rtol=1e-6, err_msg=f"got {turned}")
    by_hand = np.mean([training.predict_probability(model, {"image": training.dihedral(images, [t] * 3)}) for t in range(8)], axis=0)
    np.testing.assert_allclose(turned, by_hand, rtol=1e-6)


def test_a_saved_network_predicts_over_the_symmetries_as_the_folds_were_predicted(study):
    from hccer_lib.model_folder import network_probabilities

    data = training.fold_data("fusion_d_joint", study.dataset, study.clinical, study.folds, TINY_PROFILE, 1)
    keras.utils.set_random_seed(3)
    # an untrained network with random heads: zero heads would predict 1/2 for every image, turned or not
    model = networks.build_model("fusion_d_joint", replace(data.config, fusion_head_init="glorot_uniform"))
    inputs = data.subset(data.test)
    for symmetries in (False, True):
        heads = network_probabilities(model, inputs, "fusion_d_joint", symmetries=symmetries)
        folds = training.predict_probability(model, inputs, symmetries=symmetries)
        np.testing.assert_allclose(heads["fusion_d_joint"], folds, rtol=1e-5, atol=1e-6, err_msg=f"symmetries={symmetries}")
    plain = network_probabilities(model, inputs, "fusion_d_joint")
    turned = network_probabilities(model, inputs, "fusion_d_joint", symmetries=True)
    assert set(turned) == set(plain) and not np.allclose(turned["fusion_d_joint_image_head"], plain["fusion_d_joint_image_head"])


def test_clinical_warm_start_sees_the_training_patients_only_and_keys_fusion_runs(study, monkeypatch):
    """``Profile.clinical_warm_start``: each fold's warm start gets one clinical vector per *training* patient
    (never the test fold's) with its label and the penalty of the profile's C; it changes the fusion models' run key,
    not the deep model's, and at 0 (the default) the keys are those of before the setting existed."""
    calls = []
    real = networks.warm_start_clinical

    def recording(model, vectors, y, penalty, **kwargs):
        calls.append((np.asarray(vectors).copy(), np.asarray(y).copy(), penalty))
        return real(model, vectors, y, penalty, **kwargs)

    monkeypatch.setattr(networks, "warm_start_clinical", recording)
    warm = replace(TINY_PROFILE, clinical_warm_start=0.1)
    data = training.fold_data("fusion_b", study.dataset, study.clinical, study.folds, warm, 0)
    training.train_fold("fusion_b", study.dataset, study.clinical, study.folds, warm, 0, seed=1, imagenet="none")
    assert len(calls) == 1, len(calls)
    vectors, labels, penalty = calls[0]
    training_patients = sorted(set(data.patient_id[data.train]))
    assert len(vectors) == len(labels) == len(training_patients), (len(vectors), len(training_patients))
    expected = study.clinical.set_index("patient_id").loc[training_patients, "early_recurrence"].to_numpy()
    np.testing.assert_array_equal(labels, expected)
    assert penalty == pytest.approx(1 / (0.1 * len(training_patients))), "scikit-learn's C = 0.1 on these patients"

    def key(model_name, profile):
        return _run_record(study, model_name, profile)

    assert "clinical_warm_start" not in key("fusion_b", TINY_PROFILE)["profile_deep"], "the default keeps the earlier keys"
    assert training.training_settings(warm, "fusion_b")["clinical_warm_start"] == 0.1
    assert "clinical_warm_start" in training.training_settings(warm), "any network: the seed simulation's key"
    assert "clinical_warm_start" not in training.training_settings(warm, "deep_resnet50")
    assert key("fusion_b", warm)["key"] != key("fusion_b", TINY_PROFILE)["key"]
    assert key("deep_resnet50", warm)["key"] == key("deep_resnet50", TINY_PROFILE)["key"], "no clinical pathway to start"
    with pytest.raises(ValueError, match="clinical_warm_start"):
        replace(TINY_PROFILE, clinical_warm_start=-1.0)


def test_refit_head_makes_the_network_the_regression_on_its_patients_pooled_features_by_hand(study):
    """``training.refit_head``: each patient's pooled features averaged over its slices by the tumour's area, a
    standardised logistic regression of C fitted on one row per patient (scikit-learn, here by hand), and the network's
    probability for a slice then equal to that regression's on the slice's own features."""
    model = networks.build_model("deep_resnet50", training.network_config(TINY_PROFILE, imagenet="none"))
    images, y = study.dataset.images, study.dataset.y_true
    patient_id, areas = study.dataset.patient_id, study.dataset.roi_area_mm2
    fitted = training.refit_head(model, {"image": images}, y, patient_id, areas, C=0.5)

    features = training.head_features(model, {"image": images})
    assert features.shape == (len(images), model.get_layer("fused").get_weights()[0].shape[0]), features.shape
    first, second = features[0::2], features[1::2]  # the tiny dataset: two slices per patient, areas 100 and 110 mm²
    patient_features = (100.0 * first + 110.0 * second) / 210.0
    spread = np.where(patient_features.std(0) > 0, patient_features.std(0), 1.0)  # a feature dead in every image: 1
    standardised = (patient_features - patient_features.mean(0)) / spread
    by_hand = LogisticRegression(C=0.5, max_iter=10_000).fit(standardised, y[0::2])
    np.testing.assert_allclose(fitted[-1].coef_, by_hand.coef_, rtol=1e-4, atol=1e-6)

    slice_logit = by_hand.intercept_[0] + ((features - patient_features.mean(0)) / spread) @ by_hand.coef_[0]
    network = training.predict_probability(model, {"image": images})
    np.testing.assert_allclose(network, 1 / (1 + np.exp(-slice_logit)), atol=2e-5, err_msg="the network is the regression")

    turned = training.head_features(model, {"image": images[:3]}, symmetries=True)
    each = [training.head_features(model, {"image": training.dihedral(images[:3], np.full(3, t))}) for t in range(8)]
    np.testing.assert_allclose(turned, np.mean(each, axis=0), rtol=1e-5, atol=1e-6)


def test_refit_head_makes_a_fusion_model_the_regression_on_both_branches(study):
    """A joint-loss fusion model: the fused head sees the image branch beside the clinical branch, whose rows are
    each patient's alone (the same in every slice and symmetry); after the refit the network's probability is the
    regression's on them, and the training-only image and clinical heads are untouched."""
    data = training.fold_data("fusion_d_joint", study.dataset, study.clinical, study.folds, TINY_PROFILE, None,
                              imagenet="none")
    model = networks.build_model("fusion_d_joint", data.config)
    networks.set_clinical_scaling(model, data.inputs["clinical"])
    heads = {name: [w.copy() for w in model.get_layer(name).get_weights()] for name in ("image_head", "clinical_head")}
    fitted = training.refit_head(model, data.inputs, data.y, data.patient_id, data.roi_area_mm2, C=0.5, symmetries=True,
                                 image_scale=0.3)

    features = training.head_features(model, data.inputs, symmetries=True)
    n_image = model.get_layer("image_fc").output.shape[-1]
    n_clinical = model.get_layer("clinical_fc").output.shape[-1]
    assert features.shape == (len(data.y), n_image + n_clinical), features.shape
    clinical_part = pd.DataFrame(features[:, n_image:]).groupby(data.patient_id).agg(["min", "max"])
    np.testing.assert_allclose(clinical_part.xs("min", axis=1, level=1), clinical_part.xs("max", axis=1, level=1),
                               atol=1e-6, err_msg="the clinical branch is the patient's, in every slice and symmetry")
    assert np.ptp(features[:, n_image:], axis=0).max() > 0, "patients differ in their clinical branch"

    patient_features = training.area_weighted_patient_means(features, data.patient_id, data.roi_area_mm2).to_numpy()
    patient_y = pd.Series(data.y).groupby(data.patient_id).first().to_numpy()
    # standardised, the image branch's columns times 0.3: penalised 1 / 0.3² times as much as the clinical ones
    spread = np.where(patient_features.std(0) > 0, patient_features.std(0), 1.0) / np.r_[np.full(n_image, 0.3),
                                                                                         np.ones(n_clinical)]
    by_hand = LogisticRegression(C=0.5, max_iter=10_000).fit((patient_features - patient_features.mean(0)) / spread,
                                                             patient_y)
    np.testing.assert_allclose(fitted[-1].coef_, by_hand.coef_, rtol=1e-4, atol=1e-6)
    assert np.abs(by_hand.coef_[0, n_image:]).max() > 0, "the clinical branch has weight"

    def regression(turned_features):
        return 1 / (1 + np.exp(-by_hand.intercept_[0] - ((turned_features - patient_features.mean(0)) / spread) @ by_hand.coef_[0]))

    # predicted in the 8 symmetries, the network's probability is the mean of the regression's on each turn's features
    each_turn = [regression(training.head_features(model, training.turned_inputs(data.inputs, t))) for t in range(8)]
    network = training.predict_probability(model, data.inputs, symmetries=True)
    np.testing.assert_allclose(network, np.mean(each_turn, axis=0), atol=5e-5, err_msg="the network is the regression")
    for name, weights in heads.items():
        for before, after in zip(weights, model.get_layer(name).get_weights(), strict=True):
            np.testing.assert_array_equal(before, after, err_msg=f"{name} is the joint loss's, left as trained")


@pytest.mark.parametrize("model_name", ["fusion_c", "fusion_d_joint"])
def test_refit_head_on_the_clinical_bits_reads_them_through_the_linear_branch(study, model_name):
    """``clinical_bits``: the regression reads the image branch beside the clinical vector's own bits (standardised, as
    ``clinical_lr`` reads them), and after the refit the network's probability is that regression's: the bits'
    coefficients pass exactly through fusion C's Conv1D and D's FC layer, which are affine. A ReLU branch, or a network
    without a clinical branch, is refused; the setting is keyed for the fusion models alone."""
    data = training.fold_data(model_name, study.dataset, study.clinical, study.folds, TINY_PROFILE, None, imagenet="none")
    assert data.config.clinical_activation == "linear", data.config.clinical_activation
    model = networks.build_model(model_name, data.config)
    networks.set_clinical_scaling(model, data.inputs["clinical"])
    fitted = training.refit_head(model, data.inputs, data.y, data.patient_id, data.roi_area_mm2, C=0.5, image_scale=0.3,
                                 clinical_bits=True)

    features = training.head_features(model, data.inputs)
    n_image = model.get_layer("image_fc").output.shape[-1]
    bits = np.asarray(data.inputs["clinical"], dtype=np.float64)
    rows = np.column_stack([features[:, :n_image], bits])
    patient_rows = training.area_weighted_patient_means(rows, data.patient_id, data.roi_area_mm2).to_numpy()
    patient_y = pd.Series(data.y).groupby(data.patient_id).first().to_numpy()
    spread = np.where(patient_rows.std(0) > 0, patient_rows.std(0), 1.0) / np.r_[np.full(n_image, 0.3),
                                                                               np.ones(bits.shape[1])]
    by_hand = LogisticRegression(C=0.5, max_iter=10_000).fit((patient_rows - patient_rows.mean(0)) / spread, patient_y)
    np.testing.assert_allclose(fitted[-1].coef_, by_hand.coef_, rtol=1e-4, atol=1e-6)
    assert np.abs(by_hand.coef_[0, n_image:]).max() > 0.01, "the bits have weight"
    regression = 1 / (1 + np.exp(-by_hand.intercept_[0] - ((rows - patient_rows.mean(0)) / spread) @ by_hand.coef_[0]))
    network = training.predict_probability(model, data.inputs)
    np.testing.assert_allclose(network, regression, atol=5e-5, err_msg="the network is the regression on the bits")

    every_vector = np.array(list(itertools.product([0.0, 1.0], repeat=bits.shape[1])))  # the tiny cohort's are 2
    kernel, offset = training.clinical_branch_map(model, every_vector)
    branch = keras.Model(model.inputs, model.get_layer("concat").input[1])
    some_images = np.repeat(data.inputs["image"][:1], len(every_vector), axis=0)
    np.testing.assert_allclose(branch.predict({"image": some_images, "clinical": every_vector}, verbose=0),
                               every_vector @ kernel + offset, atol=1e-5, err_msg="the map is the branch")
    relu = networks.build_model(model_name, replace(data.config, clinical_activation="relu"))
    networks.set_clinical_scaling(relu, data.inputs["clinical"])
    with pytest.raises(ValueError, match="not affine"):
        training.clinical_branch_map(relu, every_vector)
    deep = networks.build_model("deep_resnet50", training.network_config(TINY_PROFILE, imagenet="none"))
    with pytest.raises(ValueError, match="clinical_bits"):
        training.refit_head(deep, {"image": data.inputs["image"]}, data.y, data.patient_id, data.roi_area_mm2, C=0.5,
                            clinical_bits=True)

    on, off = (replace(TINY_PROFILE, fusion_refit_clinical_bits=value) for value in (True, False))
    assert training.training_settings(on, model_name)["fusion_refit_clinical_bits"] is True
    assert "fusion_refit_clinical_bits" not in training.training_settings(on, "deep_resnet50")
    assert "fusion_refit_clinical_bits" not in training.training_settings(off, model_name), "off: the keys of before"
    with pytest.raises(ValueError, match="fusion_refit_clinical_bits"):
        replace(on, clinical_activation="relu")
    with pytest.raises(ValueError, match="fusion_refit_clinical_bits"):
        replace(on, fusion_head_refit=0.0)


def test_refit_head_refuses_bad_input(study):
    model = networks.build_model("deep_resnet50", training.network_config(TINY_PROFILE, imagenet="none"))
    data = study.dataset
    images = {"image": data.images}
    with pytest.raises(ValueError, match="C must be positive"):
        training.refit_head(model, images, data.y_true, data.patient_id, data.roi_area_mm2, C=0.0)
    with pytest.raises(ValueError, match="one row per slice"):
        training.refit_head(model, images, data.y_true[:-1], data.patient_id, data.roi_area_mm2, C=1.0)
    with pytest.raises(ValueError, match="one row per slice"):
        training.refit_head(model, {"image": data.images[:-1]}, data.y_true, data.patient_id, data.roi_area_mm2, C=1.0)
    mixed = data.y_true.copy()
    mixed[0] = 1 - mixed[0]
    with pytest.raises(ValueError, match="one label"):
        training.refit_head(model, images, mixed, data.patient_id, data.roi_area_mm2, C=1.0)
    with pytest.raises(ValueError, match="area above 0"):
        training.refit_head(model, images, data.y_true, data.patient_id, np.zeros(len(data.y_true)), C=1.0)
    with pytest.raises(ValueError, match="image_scale"):
        training.refit_head(model, images, data.y_true, data.patient_id, data.roi_area_mm2, C=1.0, image_scale=0.5)
    for field in ("head_refit", "fusion_head_refit", "fusion_refit_image_scale", "area_target"):
        with pytest.raises(ValueError, match=field):
            replace(TINY_PROFILE, **{field: -0.1})


def test_head_refit_settings_give_each_network_its_own_fields():
    """``head_refit_settings``: the deep model reads ``head_refit`` at image scale 1 without clinical bits, a fusion
    model the three fusion fields; a profile without the network's refit gives ``None``."""
    quick = get_profile("quick")
    assert training.head_refit_settings(quick, "deep_resnet50") == {
        "C": quick.head_refit, "symmetries": quick.test_symmetries, "image_scale": 1.0, "clinical_bits": False}
    other = replace(quick, fusion_head_refit=0.05, fusion_refit_image_scale=0.5)
    for name in networks.FUSION_KINDS:
        assert training.head_refit_settings(other, name) == {
            "C": 0.05, "symmetries": quick.test_symmetries, "image_scale": 0.5,
            "clinical_bits": quick.fusion_refit_clinical_bits}, name
    assert training.head_refit_settings(replace(quick, head_refit=0.0), "deep_resnet50") is None
    no_fusion_refit = replace(quick, fusion_head_refit=0.0, fusion_refit_clinical_bits=False)
    assert training.head_refit_settings(no_fusion_refit, "fusion_d_joint") is None
    assert training.head_refit_settings(no_fusion_refit, "deep_resnet50")["C"] == quick.head_refit


def test_head_refit_fits_the_training_patients_only_and_keys_deep_runs(study, monkeypatch):
    """``Profile.head_refit``: in ``train_fold`` the deep model's head is refitted on the fold's training slices (never
    the test fold's) with the profile's C; the setting changes the deep model's run key, not a fusion model's, and at 0
    (the default) the keys are those of before the setting existed. ``fusion_head_refit`` does the same for the fusion
    models alone, with their clinical input."""
    calls = []
    real = training.refit_head

    def recording(model, inputs, y, patient_id, roi_area_mm2, C, symmetries=False, image_scale=1.0, clinical_bits=False):
        calls.append((np.asarray(patient_id).copy(), C, symmetries, sorted(inputs), image_scale, clinical_bits))
        return real(model, inputs, y, patient_id, roi_area_mm2, C, symmetries=symmetries, image_scale=image_scale,
                    clinical_bits=clinical_bits)

    monkeypatch.setattr(training, "refit_head", recording)
    as_trained = replace(TINY_PROFILE, head_refit=0.0, fusion_head_refit=0.0, fusion_refit_image_scale=1.0,
                         fusion_refit_clinical_bits=False)
    refit = replace(as_trained, head_refit=0.01)
    model, data = training.train_fold("deep_resnet50", study.dataset, study.clinical, study.folds, refit, 0, seed=1,
                                      imagenet="none")
    assert len(calls) == 1, len(calls)
    patients, C, symmetries, inputs, image_scale, clinical_bits = calls[0]
    assert sorted(set(patients)) == sorted(set(data.patient_id[data.train])), "the training patients, all of them"
    assert not set(patients) & set(data.patient_id[data.test]), "never the test fold"
    assert C == 0.01 and symmetries == TINY_PROFILE.test_symmetries and inputs == ["image"], (C, symmetries, inputs)
    assert image_scale == 1.0 and not clinical_bits, (image_scale, clinical_bits)
    training.train_fold("fusion_d", study.dataset, study.clinical, study.folds, refit, 0, seed=1, imagenet="none")
    assert len(calls) == 1, "a fusion model's head is not refitted by head_refit"
    fusion_refit = replace(as_trained, fusion_head_refit=0.1, fusion_refit_image_scale=0.2)
    _, fusion_data = training.train_fold("fusion_d", study.dataset, study.clinical, study.folds, fusion_refit, 1, seed=1,
                                         imagenet="none")
    assert len(calls) == 2, len(calls)
    patients, C, _, inputs, image_scale, clinical_bits = calls[1]
    assert sorted(set(patients)) == sorted(set(fusion_data.patient_id[fusion_data.train])), "the training patients"
    assert C == 0.1 and inputs == ["clinical", "image"] and image_scale == 0.2, (C, inputs, image_scale)
    training.train_fold("deep_resnet50", study.dataset, study.clinical, study.folds, fusion_refit, 0, seed=1,
                        imagenet="none")
    assert len(calls) == 2, "fusion_head_refit leaves the deep model's head as trained"
    assert not clinical_bits, "the clinical branch's features by default"
    on_bits = replace(fusion_refit, fusion_refit_clinical_bits=True)
    training.train_fold("fusion_d", study.dataset, study.clinical, study.folds, on_bits, 1, seed=1, imagenet="none")
    assert len(calls) == 3 and calls[2][5] is True, "fusion_refit_clinical_bits reaches the fusion model's refit"

    def key(model_name, profile):
        return _run_record(study, model_name, profile)

    assert "head_refit" not in key("deep_resnet50", as_trained)["profile_deep"], "0 keeps the keys of before the setting"
    assert key("deep_resnet50", refit)["key"] != key("deep_resnet50", as_trained)["key"]
    assert key("fusion_d", refit)["key"] == key("fusion_d", as_trained)["key"], "only the deep model's head"
    assert "fusion_head_refit" not in key("fusion_d", as_trained)["profile_deep"], "0 keeps the keys"
    assert key("fusion_d", fusion_refit)["key"] != key("fusion_d", as_trained)["key"]
    other_scale = replace(fusion_refit, fusion_refit_image_scale=0.5)
    assert key("fusion_d", other_scale)["key"] != key("fusion_d", fusion_refit)["key"], "the scale is keyed"
    assert key("deep_resnet50", fusion_refit)["key"] == key("deep_resnet50", as_trained)["key"], "the fusion heads only"
    assert key("fusion_d", on_bits)["key"] != key("fusion_d", fusion_refit)["key"], "the clinical bits are keyed"


def _recorded_fits(monkeypatch) -> list:
    """Record each ``training.fit_model`` call (it still trains): ``(trainer, the area head's targets, rows)``, the
    targets ``None`` without the area head."""
    calls = []
    real = training.fit_model

    def recording(model, inputs, y, *args, trainer=None, extra_targets=None, **kwargs):
        calls.append((trainer, None if extra_targets is None else extra_targets[networks.AREA_HEAD], len(y)))
        return real(model, inputs, y, *args, trainer=trainer, extra_targets=extra_targets, **kwargs)

    monkeypatch.setattr(training, "fit_model", recording)
    return calls


def test_area_targets_are_the_standardised_log_areas_by_hand():
    """Areas 100, 400 and 1600 mm² are equally spaced logs: standardised, -√1.5, 0 and √1.5."""
    np.testing.assert_allclose(training.area_targets([100.0, 400.0, 1600.0]), [-np.sqrt(1.5), 0.0, np.sqrt(1.5)])
    np.testing.assert_array_equal(training.area_targets([50.0, 50.0]), [0.0, 0.0])
    with pytest.raises(ValueError, match="above 0 mm²"):
        training.area_targets([100.0, 0.0])


def test_the_area_head_trains_the_shared_network_to_read_the_size_its_images_show():
    """``networks.with_area_head``: a training model on the deep model's own layers. Trained by ``fit_model`` on images
    whose brightness grows with the (log) area, its area neuron comes to predict the area (correlation above 0.9, from
    below 0.9 before, and its squared error at least ten times smaller; after 60 epochs 0.98 on both TensorFlow and JAX,
    where after 30 JAX had only 0.90), and the deep model, which shares the layers, has changed with it: its
    image features and its prediction are those of the training model, and it still has one output."""
    config = networks.NetworkConfig(image_size=SIZE, resnet_blocks=(1, 1, 1, 1), resnet_width=4, imagenet="none")
    rng = np.random.default_rng(4)
    n = 64
    log_area = rng.uniform(np.log(50.0), np.log(2000.0), n)
    brightness = (log_area - log_area.min()) / np.ptp(log_area)
    images = (0.2 * rng.random((n, SIZE, SIZE, 3)) + 0.8 * brightness[:, None, None, None]).astype(np.float32)
    y = (rng.random(n) < 0.5).astype("int32")
    keras.utils.set_random_seed(2)
    model = networks.compile_model(networks.build_model("deep_resnet50", config), 1e-2)
    trainer = networks.compile_model(networks.with_area_head(model), 1e-2, area_weight=1.0)
    z = training.area_targets(np.exp(log_area))

    def area_fit() -> tuple[float, float]:
        """(squared error, correlation) of the area neuron against the standardised log areas."""
        predicted = trainer.predict({"image": images}, verbose=0)[networks.AREA_HEAD][:, 0]
        return float(np.mean((predicted - z) ** 2)), float(np.corrcoef(predicted, z)[0, 1])

    before = area_fit()
    weights_before = [w.copy() for w in model.get_weights()]
    training.fit_model(model, {"image": images}, y, epochs=60, batch_size=16, seed=1, trainer=trainer,
                       extra_targets={networks.AREA_HEAD: z})
    after = area_fit()
    assert abs(before[1]) < 0.9 and after[1] > 0.9 and after[0] < before[0] / 10, \
        f"(squared error, correlation) before {before}, after {after}"
    assert not isinstance(model.output, dict), "the deep model keeps its single output"
    assert any(not np.array_equal(a, b) for a, b in zip(weights_before, model.get_weights(), strict=True))
    np.testing.assert_allclose(model.predict({"image": images}, verbose=0),
                               trainer.predict({"image": images}, verbose=0)["fused"], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="area_weight"):
        networks.compile_model(networks.with_area_head(model), 1e-2, area_weight=0.0)


def test_area_target_reaches_every_network_is_seeded_and_keyed_only_when_set(study, monkeypatch):
    """``Profile.area_target``: ``train_fold`` trains the network with the area head, on the standardised log areas of
    the fit slices (never the test fold's), for the deep model and a joint-loss fusion model alike; the same seed gives
    the same predictions; the setting changes the run key, and at 0 (the default) the keys are those of before it."""
    calls = _recorded_fits(monkeypatch)
    no_area = replace(TINY_PROFILE, area_target=0.0, texture_target=False)
    with_area = replace(no_area, area_target=0.5)
    predictions = []
    for model_name in ("deep_resnet50", "deep_resnet50", "fusion_d_joint"):
        model, data = training.train_fold(model_name, study.dataset, study.clinical, study.folds, with_area, 0, seed=1,
                                          imagenet="none")
        trainer, targets, n_rows = calls[-1]
        assert trainer is not None and networks.AREA_HEAD in trainer.output, model_name
        np.testing.assert_allclose(targets, training.area_targets(data.roi_area_mm2[data.fit]))
        assert n_rows == data.fit.sum() and not (data.fit & data.test).any()
        predictions.append(training.predict_probability(model, data.subset(data.test)))
    np.testing.assert_array_equal(predictions[0], predictions[1])
    training.train_fold("deep_resnet50", study.dataset, study.clinical, study.folds, no_area, 0, seed=1,
                        imagenet="none")
    assert calls[-1][0] is None and calls[-1][1] is None, "0: no area head"

    def key(model_name, profile):
        return _run_record(study, model_name, profile)

    assert "area_target" not in key("deep_resnet50", no_area)["profile_deep"], "0 keeps the keys of before"
    for model_name in ("deep_resnet50", "fusion_d_joint"):
        assert key(model_name, with_area)["key"] != key(model_name, no_area)["key"], model_name


def test_texture_statistics_by_hand():
    """``training.texture_statistics``, phase by phase. Columns alternating 0 and 1 in the second phase: each pixel
    differs from its row neighbours by 1 and from its column neighbours by 0 (gradient 1), and every 3 × 3
    neighbourhood (edges mirrored) holds three columns 0, 1, 0 or 1, 0, 1 (SD √2 / 3); the constant phases give 0.
    One bright corner pixel in a constant crop: the gradient counts it over the whole crop, the local SD only inside
    the tumour's box, which a margin of 0.25 starts 2 pixels in (12 / 6), out of the corner's reach; without a margin
    the box is the whole crop."""
    stripes = np.zeros((1, 12, 12, 3))
    stripes[..., 1] = np.arange(12) % 2
    np.testing.assert_allclose(training.texture_statistics(stripes, 0.25), [[0, 0, 1, np.sqrt(2) / 3, 0, 0]], atol=1e-12)
    corner = np.full((1, 12, 12, 1), 0.5)
    corner[0, 0, 0, 0] = 1.0
    gradient = 0.5 / (11 * 12) * 2  # one difference of 0.5 on each axis, over 11 × 12 pairs each
    with_margin, without = training.texture_statistics(corner, 0.25)[0], training.texture_statistics(corner, 0.0)[0]
    assert with_margin[0] == pytest.approx(gradient) and with_margin[1] == pytest.approx(0.0, abs=1e-12), with_margin
    # Without a margin: the corner (0.5 above the rest) is k of the 9 pixels of 4 neighbourhoods, k = 4 at the corner
    # (mirrored twice), 2 beside it on each axis, 1 diagonally; SD 0.5 √(p (1 - p)) with p = k / 9; over 144 pixels.
    by_hand = sum(0.5 * np.sqrt(k / 9 * (1 - k / 9)) for k in (4, 2, 2, 1)) / 144
    assert without[0] == pytest.approx(gradient) and without[1] == pytest.approx(by_hand), without
    assert training.TEXTURE_STATISTICS == ("gradient", "centre_local_sd")
    with pytest.raises(ValueError, match=r"\[n, H, W, phases\]"):
        training.texture_statistics(np.zeros((12, 12, 3)), 0.25)
    with pytest.raises(ValueError, match="margin"):
        training.texture_statistics(stripes, -0.1)


def test_area_targets_with_crops_are_the_standardised_texture_statistics_then_the_log_area():
    """With the slices' crops (``Profile.texture_target``), the targets are ``[n, 2·phases + 1]``: the crops' texture
    statistics, then the log area as without them, each column standardised (mean 0, SD 1)."""
    rng = np.random.default_rng(3)
    crops = rng.random((6, 12, 12, 3)) * np.linspace(0.2, 1.0, 6)[:, None, None, None]
    areas = [100.0, 150.0, 400.0, 90.0, 1600.0, 700.0]
    targets = training.area_targets(areas, crops, 0.25)
    assert targets.shape == (6, 7), targets.shape
    np.testing.assert_allclose(targets[:, -1], training.area_targets(areas))
    texture = training.texture_statistics(crops, 0.25)
    np.testing.assert_allclose(targets[:, :-1], (texture - texture.mean(0)) / texture.std(0))
    np.testing.assert_allclose(targets.mean(0), 0.0, atol=1e-12)
    np.testing.assert_allclose(targets.std(0), 1.0)
    with pytest.raises(ValueError, match="one crop per slice"):
        training.area_targets(areas, crops[:5], 0.25)


def test_size_free_texture_targets_keep_what_the_area_does_not_tell():
    """``size_free`` (``Profile.texture_size_free``): crops of vertical stripes 0 / a have the gradient a and the local
    SD a √2 / 3 in every phase. With a = √area · h, the resize's squeeze of a textured tumour, each statistic's log is
    ½ log area + log h (+ a constant): its residual on the log area is log h's, so with h uncorrelated with the log
    area every texture column is log h standardised, where without ``size_free`` the first follows the log area. The
    last column is the log area as without it. A flat crop (statistics 0, no log) counts as the smallest statistics
    above 0; crops all flat give texture targets of 0."""
    rng = np.random.default_rng(5)
    areas = np.array([100.0, 150.0, 400.0, 90.0, 1600.0, 700.0, 250.0])
    log_h = rng.standard_normal(len(areas))
    design = np.column_stack([np.ones(len(areas)), np.log(areas)])
    log_h -= design @ np.linalg.lstsq(design, log_h, rcond=None)[0]  # uncorrelated with the log area

    def striped(amplitude):
        crops = np.zeros((len(areas), 12, 12, 3))
        crops[:, :, 1::2, :] = np.asarray(amplitude)[:, None, None, None]
        return crops

    targets = training.area_targets(areas, striped(np.sqrt(areas) * np.exp(log_h)), 0.25, size_free=True)
    assert targets.shape == (len(areas), 7), targets.shape
    expected = (log_h - log_h.mean()) / log_h.std()
    for column in range(6):
        np.testing.assert_allclose(targets[:, column], expected, atol=1e-9)
    np.testing.assert_allclose(targets[:, -1], training.area_targets(areas))
    as_they_are = training.area_targets(areas, striped(np.sqrt(areas) * np.exp(log_h)), 0.25)
    assert abs(np.corrcoef(as_they_are[:, 0], np.log(areas))[0, 1]) > 0.5, "without it the size is in the texture"
    amplitude = np.sqrt(areas) * np.exp(log_h)
    flat = striped(amplitude)
    flat[2] = 0.0  # a flat crop: its statistics are 0, which have no log
    at_smallest = amplitude.copy()
    at_smallest[2] = np.delete(amplitude, 2).min()  # the smallest statistics above 0 of every column: its stripes
    got = training.area_targets(areas, flat, 0.25, size_free=True)
    assert np.all(np.isfinite(got)), got
    np.testing.assert_allclose(got, training.area_targets(areas, striped(at_smallest), 0.25, size_free=True), atol=1e-9)
    assert np.all(np.isfinite(training.area_targets(areas, flat, 0.25))), "as they are, a flat crop is a target"
    np.testing.assert_array_equal(training.area_targets(areas, np.zeros_like(flat), 0.25, size_free=True)[:, :6], 0.0)


def test_size_free_texture_target_is_keyed_and_needs_the_texture_target(study, monkeypatch):
    """``Profile.texture_size_free`` reaches the targets ``train_fold`` trains on, changes the run key (off: the keys
    of before) and needs ``texture_target``."""
    calls = _recorded_fits(monkeypatch)
    study.dataset.settings = {"margin": 0.25}
    texture = replace(TINY_PROFILE, area_target=0.5, texture_target=True, texture_size_free=False)
    size_free = replace(texture, texture_size_free=True)
    _, data = training.train_fold("fusion_d_joint", study.dataset, study.clinical, study.folds, size_free, 0, seed=1,
                                  imagenet="none")
    np.testing.assert_allclose(calls[-1][1], training.area_targets(data.roi_area_mm2[data.fit],
                                                                   data.inputs["image"][data.fit], 0.25, size_free=True))
    with pytest.raises(ValueError, match="needs texture_target"):
        replace(texture, texture_target=False, texture_size_free=True)

    def key(profile):
        return _run_record(study, "deep_resnet50", profile)

    assert "texture_size_free" not in key(texture)["profile_deep"], "off keeps the keys of before"
    assert key(size_free)["key"] != key(texture)["key"]


def test_fusion_size_free_texture_target_reaches_the_fusion_models_alone(study, monkeypatch):
    """``Profile.fusion_texture_size_free``: a fusion model trains on the size-free texture targets, the deep model on
    the statistics as they are; only the fusion model's run key changes; without ``texture_target`` it does nothing."""
    calls = _recorded_fits(monkeypatch)
    study.dataset.settings = {"margin": 0.25}
    texture = replace(TINY_PROFILE, area_target=0.5, texture_target=True, fusion_texture_size_free=False)
    fusion_free = replace(texture, fusion_texture_size_free=True)
    for model, size_free in (("fusion_d_joint", True), ("fusion_a", True), ("deep_resnet50", False)):
        _, data = training.train_fold(model, study.dataset, study.clinical, study.folds, fusion_free, 0, seed=1,
                                      imagenet="none")
        expected = training.area_targets(data.roi_area_mm2[data.fit], data.inputs["image"][data.fit], 0.25,
                                         size_free=size_free)
        np.testing.assert_allclose(calls[-1][1], expected, err_msg=model)
    assert not np.allclose(training.area_targets(data.roi_area_mm2[data.fit], data.inputs["image"][data.fit], 0.25),
                           training.area_targets(data.roi_area_mm2[data.fit], data.inputs["image"][data.fit], 0.25,
                                                 size_free=True)), "the two kinds of target differ here"
    area_only = replace(texture, texture_target=False)
    assert not training.texture_size_free_for(replace(area_only, fusion_texture_size_free=True), "fusion_d_joint")
    assert (_run_record(study, "fusion_d_joint", replace(area_only, fusion_texture_size_free=True))["key"]
            == _run_record(study, "fusion_d_joint", area_only)["key"]), "no texture targets: nothing changes, nor the key"
    assert _run_record(study, "deep_resnet50", fusion_free)["key"] == _run_record(study, "deep_resnet50", texture)["key"]
    assert _run_record(study, "fusion_d_joint", fusion_free)["key"] != _run_record(study, "fusion_d_joint", texture)["key"]


def test_texture_target_trains_on_the_fit_crops_is_keyed_and_needs_the_area_target(study, monkeypatch):
    """``Profile.texture_target``: ``train_fold`` trains the network with an area head of 7 units (3 phases × 2
    texture statistics and the area) on :func:`training.area_targets` of the fit slices' crops, at the margin of the
    dataset's settings; the setting changes the run key and needs ``area_target``; a dataset without settings is a
    clear error."""
    calls = _recorded_fits(monkeypatch)
    area_only = replace(TINY_PROFILE, area_target=0.5, texture_target=False, fusion_texture_size_free=False)
    with_texture = replace(area_only, texture_target=True)
    del study.dataset.settings
    with pytest.raises(ValueError, match="texture target needs the processed dataset's settings"):
        training.train_fold("deep_resnet50", study.dataset, study.clinical, study.folds, with_texture, 0, seed=1,
                            imagenet="none")
    study.dataset.settings = {"margin": 0.25}
    for model_name in ("deep_resnet50", "fusion_d_joint"):
        _, data = training.train_fold(model_name, study.dataset, study.clinical, study.folds, with_texture, 0, seed=1,
                                      imagenet="none")
        trainer, targets, _ = calls[-1]
        assert tuple(trainer.output[networks.AREA_HEAD].shape) == (None, 7), model_name
        expected = training.area_targets(data.roi_area_mm2[data.fit], data.inputs["image"][data.fit], 0.25)
        np.testing.assert_allclose(targets, expected)
        assert not np.allclose(expected, training.area_targets(data.roi_area_mm2[data.fit], data.inputs["image"][data.fit],
                                                               0.0)), "the margin is the dataset's"
    with pytest.raises(ValueError, match="needs area_target > 0"):
        replace(TINY_PROFILE, area_target=0.0, texture_target=True)
    with pytest.raises(ValueError, match="at least one unit"):
        networks.with_area_head(networks.build_model("deep_resnet50", training.network_config(TINY_PROFILE, 9, imagenet="none")), 0)

    def key(profile):
        return _run_record(study, "deep_resnet50", profile)

    assert "texture_target" not in key(area_only)["profile_deep"], "off keeps the keys of before"
    assert key(with_texture)["key"] != key(area_only)["key"]


def test_clinical_activation_reaches_c_and_d_and_keys_only_their_runs(study):
    """``Profile.clinical_activation`` builds fusion C and D's clinical layer with it and changes their run keys (the
    profile's and the network's records); the deep model and fusion A and B, which have no such layer, keep their keys,
    and ReLU (the default) keeps the keys of before the setting existed."""
    # the smoke profile inherits the quick profile's linear layer, and its refit through it on the clinical bits
    relu = replace(TINY_PROFILE, clinical_activation="relu", fusion_refit_clinical_bits=False)
    linear = replace(relu, clinical_activation="linear")
    built = training.fold_data("fusion_d_joint", study.dataset, study.clinical, study.folds, linear, None,
                               imagenet="none").config
    assert built.clinical_activation == "linear"

    def key(model_name, profile):
        return _run_record(study, model_name, profile)

    assert "clinical_activation" not in key("fusion_d", relu)["profile_deep"], "ReLU keeps the keys of before"
    for model_name in ("fusion_c", "fusion_d", "fusion_d_joint"):
        assert key(model_name, linear)["key"] != key(model_name, relu)["key"], model_name
    for model_name in ("deep_resnet50", "fusion_a", "fusion_b"):
        assert key(model_name, linear)["key"] == key(model_name, relu)["key"], model_name
    with pytest.raises(ValueError, match="clinical_activation"):
        replace(TINY_PROFILE, clinical_activation="tanh")


def test_image_activation_reaches_b_c_and_d_and_keys_only_their_runs(study):
    """``Profile.image_activation`` builds fusion B, C and D's image FC layer with it and changes their run keys; the
    deep model and fusion A, which have no such layer, keep their keys, and ReLU (the default) keeps the keys of before
    the setting existed."""
    relu = replace(TINY_PROFILE, image_activation="relu")  # the smoke profile inherits the quick profile's linear
    linear = replace(TINY_PROFILE, image_activation="linear")
    model = training.fold_data("fusion_b", study.dataset, study.clinical, study.folds, linear, None, imagenet="none")
    assert model.config.image_activation == "linear"

    def key(model_name, profile):
        return _run_record(study, model_name, profile)

    assert "image_activation" not in key("fusion_d", relu)["profile_deep"], "ReLU keeps the keys of before"
    assert "image_activation" not in key("fusion_d", relu)["network"], "ReLU keeps the keys of before"
    for model_name in ("fusion_b", "fusion_c", "fusion_d", "fusion_d_joint"):
        assert key(model_name, linear)["key"] != key(model_name, relu)["key"], model_name
        assert key(model_name, linear)["network"]["image_activation"] == "linear", model_name
    for model_name in ("deep_resnet50", "fusion_a"):
        assert key(model_name, linear)["key"] == key(model_name, relu)["key"], model_name
    with pytest.raises(ValueError, match="image_activation"):
        replace(TINY_PROFILE, image_activation="tanh")


def test_image_warm_start_trains_the_image_pathway_alone_first_and_keys_joint_runs_only(study, monkeypatch):
    """``Profile.image_warm_start``: a joint-loss model's fold is trained in two stages. The first fits the image
    pathway with its own head (and the area regression) on the image alone, for the profile's number of epochs, on
    the same training rows; it moves the image pathway's and the image head's weights and not one weight of the
    clinical pathway or the fused head. Then the whole network is trained as before. Networks without the joint loss
    train as without the setting, and only the joint-loss models' run keys change."""
    calls, at_stage = [], []
    real_fit, real_stage = training.fit_model, training.FoldModel.image_stage

    def weights_of(model, names):
        return {name: [w.copy() for w in model.get_layer(name).get_weights()] for name in names}

    def recording_fit(model, inputs, y, epochs, *args, **kwargs):
        names = [layer.name for layer in model.layers if layer.get_weights()]
        before = weights_of(model, names)
        history = real_fit(model, inputs, y, epochs, *args, **kwargs)
        calls.append(SimpleNamespace(model=model, inputs=sorted(inputs), rows=len(y), epochs=epochs,
                                     trainer=kwargs.get("trainer"), before=before, after=weights_of(model, names)))
        return history

    def recording_stage(self, *args, **kwargs):
        at_stage.append(weights_of(self.model, ["clinical_fc", "clinical_head", "fused"]))
        return real_stage(self, *args, **kwargs)

    monkeypatch.setattr(training, "fit_model", recording_fit)
    monkeypatch.setattr(training.FoldModel, "image_stage", recording_stage)
    plain = replace(TINY_PROFILE, epochs=2, area_target=0.5, texture_target=False)
    warm = replace(plain, image_warm_start=3)
    model, data = training.train_fold("fusion_d_joint", study.dataset, study.clinical, study.folds, warm, 0, seed=1,
                                      imagenet="none")
    assert len(calls) == 2 and len(at_stage) == 1, [c.model.name for c in calls]
    stage, joint = calls
    assert stage.model.name == "fusion_d_joint_image_stage" and stage.inputs == ["image"] and stage.epochs == 3
    assert stage.rows == joint.rows == data.fit.sum() and joint.epochs == 2 and joint.model is model
    assert networks.AREA_HEAD in stage.trainer.output, "the area regression trains the pathway in the first stage too"
    pathway = next(layer.name for layer in model.layers if isinstance(layer, keras.Model))
    for name in (pathway, "image_fc", "image_head"):
        assert any(not np.array_equal(a, b) for a, b in zip(stage.before[name], stage.after[name], strict=True)), name
    for name in ("clinical_fc", "clinical_head", "fused"):
        for start, after_stage in zip(at_stage[0][name], joint.before[name], strict=True):
            np.testing.assert_array_equal(start, after_stage, err_msg=f"{name} moved in the image stage")
    assert any(not np.array_equal(a, b) for a, b in zip(joint.before["fused"], joint.after["fused"], strict=True))
    calls.clear()
    predictions = {}
    for profile in (plain, warm):
        model, data = training.train_fold("fusion_d", study.dataset, study.clinical, study.folds, profile, 0, seed=1,
                                          imagenet="none")
        predictions[profile.image_warm_start] = training.predict_probability(model, data.subset(data.test))
    assert len(calls) == 2 and len(at_stage) == 1, "one stage each: fusion D has no image head of its own"
    np.testing.assert_array_equal(predictions[0], predictions[3])
    assert "image_warm_start" not in _run_record(study, "fusion_d_joint", plain)["profile_deep"], "0 keeps the keys"
    assert _run_record(study, "fusion_d_joint", warm)["key"] != _run_record(study, "fusion_d_joint", plain)["key"]
    for model_name in ("deep_resnet50", "fusion_d"):
        assert _run_record(study, model_name, warm)["key"] == _run_record(study, model_name, plain)["key"], model_name
    with pytest.raises(ValueError, match="image_warm_start"):
        replace(TINY_PROFILE, image_warm_start=-1)
    fold_model = training.FoldModel("fusion_d", 1e-3)
    fold_model.fresh(data.config, 1)
    with pytest.raises(ValueError, match="joint loss"):
        real_stage(fold_model, 0.0, 1)
