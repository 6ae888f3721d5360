"""A fusion model can always use its inputs (issue: "the deep and fusion models learn").

Two small cohorts whose answer is known: in the first only the clinical vector carries the
label (the images are noise), in the second only the image does (the clinical variables are
noise). Each fusion model, trained with the ``quick`` profile's recipe on smaller images,
must reach the single-modality model's out-of-fold AUC within noise: a fused network that
cannot match its own clinical input (or its own image input) is a bug.
"""

import functools
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression

from hccer_lib import evaluation, training
from hccer_lib.clinical import clinical_matrix
from hccer_lib.profiles import get_profile

N_PATIENTS, SLICES, SIZE, N_FOLDS = 80, 8, 32, 2
FUSION_MODELS = ("fusion_a", "fusion_b", "fusion_c", "fusion_d", "fusion_d_joint")
#: How far below the single-modality model a fusion model may fall: the SD of a pooled AUC of
#: 80 patients at AUC ~0.85 is about 0.04; a fusion model that ignores the informative input
#: would sit near 0.5.
TOLERANCE = 0.08


def small_profile():
    """The quick profile's recipe (optimizer, schedule, epochs, augmentation, 3 training seeds) on tiny images.

    A network's result is its seed ensemble, as in the study's tables: with one seed, fusion C
    once fell 0.096 below the clinical reference (0.741 against 0.837), 2.4 SD of a pooled AUC
    of 80 patients, while the other models passed.
    """
    return replace(get_profile("quick"), image_size=SIZE, resnet_width=4, n_folds=N_FOLDS)


def cohort(informative: str, seed: int = 0) -> SimpleNamespace:
    """80 patients (40 ER), 8 slices each (a fold trains about as many steps as a study fold); only ``informative`` ("clinical" or "image") carries the label.

    Clinical: age >= 60 agrees with the label for 85 % of the patients (else noise), and
    tumour size >= 50 mm for 80 %; every other variable is drawn independently of the
    label. Image: the ART channel's mean is 0.45 or 0.55 by label, plus noise (else the
    same for both classes).
    """
    rng = np.random.default_rng(seed)
    y = np.array([0, 1] * (N_PATIENTS // 2))
    coin = lambda p: rng.random(N_PATIENTS) < p  # noqa: E731
    signal = informative == "clinical"
    older = np.where(coin(0.85), y, 1 - y) if signal else coin(0.4).astype(int)
    larger = np.where(coin(0.80), y, 1 - y) if signal else coin(0.4).astype(int)
    clinical = pd.DataFrame({
        "patient_id": [f"P{i:03d}" for i in range(N_PATIENTS)],
        "early_recurrence": y,
        "sex": np.where(coin(0.2), "F", "M"),
        "age": np.where(older == 1, 66, 52),
        "tumor_size_mm": np.where(larger == 1, 70, 30),
        "tumor_number": 1 + coin(0.3),
        "portal_vein_invasion": coin(0.15).astype(int),
        "cirrhosis": coin(0.5).astype(int),
        "hbv": coin(0.8).astype(int),
        "nlr": np.where(coin(0.4), 3.5, 2.0),
        "alt": np.where(coin(0.4), 60, 30),
        "ast": np.where(coin(0.4), 70, 30),
        "akp": np.where(coin(0.3), 150, 90),
        "ggt": np.where(coin(0.5), 80, 30),
        "alb": np.where(coin(0.3), 35, 44),
        "tb": np.where(coin(0.3), 25, 12),
        "afp": np.where(coin(0.6), 50, 4),
        "child_pugh": np.where(coin(0.15), "B", "A"),
        "bclc": rng.choice(["0", "A", "B", "C"], N_PATIENTS, p=[0.15, 0.6, 0.1, 0.15]),
    })  # fmt: skip
    pids = np.repeat(clinical["patient_id"].to_numpy(), SLICES)
    y_slices = np.repeat(y, SLICES)
    images = rng.normal(0.5, 0.08, (len(pids), SIZE, SIZE, 3)).astype(np.float32)
    if informative == "image":
        patient_shift = np.repeat(0.1 * (y - 0.5) + rng.normal(0, 0.03, N_PATIENTS), SLICES)
        images[..., 1] += patient_shift[:, None, None].astype(np.float32)
    dataset = SimpleNamespace(images=np.clip(images, 0, 1), patient_id=pids, slice=np.tile(np.arange(SLICES), N_PATIENTS),
                              y_true=y_slices, roi_area_mm2=np.full(len(pids), 100.0), settings={"margin": 0.0})
    folds = pd.DataFrame({"patient_id": clinical["patient_id"], "y_true": y, "fold": np.arange(N_PATIENTS) // 2 % N_FOLDS})
    return SimpleNamespace(clinical=clinical, dataset=dataset, folds=folds)


def pooled_auc(frame: pd.DataFrame) -> float:
    patients = evaluation.patient_level(frame)
    return evaluation.auc(patients["y_true"], patients["y_prob"])


def clinical_reference_auc(study) -> float:
    """Out-of-fold AUC of a logistic regression on the same clinical vector (the paper protocol)."""
    matrix, _ = clinical_matrix(study.clinical, protocol="paper")
    y = study.clinical["early_recurrence"].to_numpy()
    fold = study.folds.set_index("patient_id").loc[study.clinical["patient_id"], "fold"].to_numpy()
    probability = np.zeros(len(y))
    for k in range(N_FOLDS):
        model = LogisticRegression(max_iter=1000).fit(matrix[fold != k], y[fold != k])
        probability[fold == k] = model.predict_proba(matrix[fold == k])[:, 1]
    return evaluation.auc(y, probability)


def train(study, model_name: str, work_dir) -> float:
    """Pooled patient AUC of ``model_name``'s seed ensemble (the quick recipe on small images).

    Where only the image carries the label, the chi-squared selection keeps one or two noise
    bits, shorter than fusion C's kernel of 3: ``training.network_config`` shortens the
    kernel to the vector (tested in tests/test_training.py).
    """
    predictions = training.train_cross_validated(model_name, study.dataset, study.clinical, study.folds, small_profile(),
                                                 work_dir, seed=3, imagenet="none")
    return pooled_auc(predictions)


@functools.cache
def reference(informative: str, work_dir: str) -> tuple[SimpleNamespace, float]:
    """The cohort and its single-modality model's AUC (trained once per session)."""
    study = cohort(informative)
    if informative == "clinical":
        return study, clinical_reference_auc(study)
    return study, train(study, "deep_resnet50", work_dir)


#: Fusion A concatenates the scaled clinical bits with 128 image features (here) before one fully
#: connected layer. Its single seeds are unstable where only the clinical vector carries the label:
#: 0.639 +- 0.185 over the 3 seeds (one seed alone reached 0.63 before), their ensemble 0.782 against
#: the reference 0.837. The test judges the ensemble, as the study's tables do; the spread is
#: reported in the README as a weakness of fusion A, not hidden by this test.


@pytest.mark.slow
@pytest.mark.parametrize("model_name", FUSION_MODELS)
def test_fusion_models_use_the_clinical_vector_when_only_it_carries_the_label(model_name, tmp_path_factory):
    study, reference_auc = reference("clinical", str(tmp_path_factory.getbasetemp() / "clinical"))
    assert reference_auc > 0.8, f"the clinical vector should carry the label, reference AUC {reference_auc:.3f}"
    got = train(study, model_name, tmp_path_factory.mktemp(model_name))
    assert got >= reference_auc - TOLERANCE, f"{model_name}: AUC {got:.3f}, clinical reference {reference_auc:.3f}"


@pytest.mark.slow
@pytest.mark.parametrize("model_name", FUSION_MODELS)
def test_fusion_models_use_the_image_when_only_it_carries_the_label(model_name, tmp_path_factory):
    study, reference_auc = reference("image", str(tmp_path_factory.getbasetemp() / "image"))
    assert reference_auc > 0.8, f"the image should carry the label, deep model AUC {reference_auc:.3f}"
    got = train(study, model_name, tmp_path_factory.mktemp(model_name))
    assert got >= reference_auc - TOLERANCE, f"{model_name}: AUC {got:.3f}, deep model {reference_auc:.3f}"
