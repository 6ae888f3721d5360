"""The set-up shared by the network notebooks (04-06), on a tiny cohort whose answer is known."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from volumes import Box, make_image

from hccer_lib import clinical, outputs, study
from hccer_lib import preprocessing as pp


@pytest.fixture
def tiny_cohort(tmp_path, monkeypatch):
    """Project folder ``tmp_path`` with ``hospital/``: 8 patients (4 ER) of two ROI slices each, at 75 HU.

    The phases come from a stand-in for ``preprocessing.load_patient_inputs`` (no image file).
    """
    frame = clinical.paper_clinical_frame(seed=1)
    patients = pd.concat([frame[frame["early_recurrence"] == 1].head(4), frame[frame["early_recurrence"] == 0].head(4)])
    (tmp_path / "hospital" / "images").mkdir(parents=True)
    patients.to_csv(tmp_path / "hospital" / "clinical.csv", index=False)

    def fake_inputs(folder, patient_id):
        images = {p: make_image(np.full((4, 12, 12), 75.0)) for p in pp.PHASES}
        boxes = {p: [Box(k, 3, 8, 3, 8) for k in (1, 2)] for p in pp.PHASES}
        return images, boxes

    monkeypatch.setattr(pp, "load_patient_inputs", fake_inputs)
    monkeypatch.setenv(outputs.ROOT_VARIABLE, str(tmp_path))
    return patients


def test_network_study_reads_the_cohort_folds_and_images_from_the_project_root(tiny_cohort, tmp_path, monkeypatch):
    elsewhere = tmp_path / "notebooks"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # as a kernel started in notebooks/ (JupyterLab)
    setup = study.network_study("smoke", "hospital", "data", "figures", seed=7, synthetic=False, n_jobs=1)

    assert setup.settings.name == "smoke" and setup.settings.n_folds == 2
    assert setup.cohort_dir == (tmp_path / "hospital").resolve(), setup.cohort_dir
    # seed 7 on a cohort of your own: the run's folders name the seed (StudyRun.run_name)
    assert setup.figures_dir == (tmp_path / "figures" / "hospital" / "smoke_seed7").resolve(), setup.figures_dir
    assert setup.results_dir == (tmp_path / "data" / "hospital" / "results" / "smoke_seed7").resolve(), setup.results_dir
    assert setup.run.seed == 7 and setup.run.figures == setup.figures_dir
    assert setup.work_dir == (tmp_path / "data" / "hospital").resolve(), "a cohort outside data/ is never written to"
    assert setup.cohort_label == str(setup.cohort_dir)
    assert list(setup.clinical["patient_id"]) == list(tiny_cohort["patient_id"])
    # folds: every patient once, 2 folds of 2 ER + 2 NER (stratified), saved for the other notebooks
    assert sorted(setup.folds["patient_id"]) == sorted(tiny_cohort["patient_id"])
    assert setup.folds.groupby("fold")["y_true"].agg(["size", "sum"]).values.tolist() == [[4, 2], [4, 2]]
    assert (setup.work_dir / "folds_2_seed7.csv").is_file()
    # images: 2 slices per patient at the smoke profile's 32 px; 75 HU in the default window
    assert setup.dataset.images.shape == (16, 32, 32, 3), setup.dataset.images.shape
    expected = (75.0 - (setup.dataset.settings["window_level"] - setup.dataset.settings["window_width"] / 2)) \
        / setup.dataset.settings["window_width"]
    assert np.allclose(setup.dataset.images, expected), (setup.dataset.images.min(), setup.dataset.images.max(), expected)
    assert list(elsewhere.iterdir()) == [], "nothing written in the working folder"
    lines = setup.describe().splitlines()
    assert lines[0].startswith("profile smoke: 2 folds, image 32 px") and "training seeds" in lines[0], lines[0]
    assert lines[1] == f"cohort {setup.cohort_dir} -> work folder {setup.work_dir}", lines[1]
    assert lines[2] == "8 patients, 16 slice images (16, 32, 32, 3), 2 folds of 4-4 patients", lines[2]
    assert lines[3] == f"predictions -> {setup.results_dir / 'predictions'}; tables and figures -> {setup.figures_dir}", lines[3]


def test_network_study_of_the_synthetic_cohort_is_its_own_work_folder_and_reads_the_cache(tiny_cohort, tmp_path,
                                                                                              monkeypatch):
    (tmp_path / "data").mkdir()
    (tmp_path / "hospital").rename(tmp_path / "data" / "synthetic")
    first = study.network_study("smoke", "data/synthetic", seed=7, n_jobs=1)
    assert first.work_dir == first.cohort_dir == (tmp_path / "data" / "synthetic").resolve()
    assert first.cohort_label == "synthetic"

    monkeypatch.setattr(pp, "load_patient_inputs", lambda folder, patient_id: pytest.fail("images read again"))
    again = study.network_study("smoke", "data/synthetic", seed=7, n_jobs=1)
    assert np.array_equal(again.dataset.images, first.dataset.images)
    pd.testing.assert_frame_equal(again.folds, first.folds)


def test_versions_text_names_the_backend():
    import keras

    text = study.versions_text()
    assert text.startswith("python ") and f"keras {keras.__version__}, backend {keras.backend.backend()}" in text, text
