"""The set-up that the network notebooks share (04 deep model, 05 fusion models, 06 joint loss).

Each of them starts from the same things, gathered here by one call, :func:`network_study`:
its run (:class:`study_run.StudyRun`: every path read from the project root whatever the
working folder), the profile, the cohort's work folder, the clinical table,
the shared patient-level folds (``<work_dir>/folds_<n>_seed<s>.csv``, made when absent or stale) and the
processed slice images of notebook 02 (read back from the cache, or built with the settings
notebook 02 recorded).
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from hccer_lib import evaluation
from hccer_lib.cohort import load_clinical
from hccer_lib.preprocessing import ProcessedDataset, study_dataset
from hccer_lib.profiles import Profile, get_profile
from hccer_lib.study_run import DEFAULT_SEED, StudyRun


@dataclass(frozen=True)
class NetworkStudy:
    """What a network notebook trains and evaluates on.

    Attributes:
        run: the run (:class:`study_run.StudyRun`) of the notebook's parameters.
        settings: the run's profile.
        cohort_dir, data_root: the parameters' folders, relative ones read from the project root.
        figures_dir: the run's tables and figures (``StudyRun.figures``: ``figures/<cohort>/<profile>``).
        work_dir: the cohort's work folder (``outputs.work_dir_for``): folds and caches.
        results_dir: the folder of the run's predictions (``StudyRun.results_dir``).
        cohort_label: ``"synthetic"``, or the cohort folder: the ``cohort`` column of the tables.
        clinical: one row per patient (``cohort.load_clinical``).
        folds: ``patient_id, y_true, fold`` (``evaluation.load_or_make_folds``).
        dataset: the ROI slice images ``[n_slices, H, W, 3]`` (NC, ART, PV) in ``[0, 1]``,
            with their patient ids.
    """

    run: StudyRun
    settings: Profile
    cohort_dir: Path
    data_root: Path
    figures_dir: Path
    work_dir: Path
    results_dir: Path
    cohort_label: str
    clinical: pd.DataFrame
    folds: pd.DataFrame
    dataset: ProcessedDataset

    def describe(self) -> str:
        """Four lines: the profile's training settings, the cohort and its work folder, the data, where the results go."""
        s = self.settings
        fold_sizes = self.folds.groupby("fold").size()
        return "\n".join([
            f"profile {s.name}: {s.n_folds} folds, image {s.image_size} px, ResNet blocks {s.resnet_blocks} width "
            f"{s.resnet_width}, {s.epochs} epochs, batch {s.batch_size}, lr {s.learning_rate} ({s.lr_schedule}), "
            f"weight decay {s.weight_decay}, validation share {s.validation_fraction}, augment {s.augment}, "
            f"{s.train_seeds} training seeds",
            f"cohort {self.cohort_dir} -> work folder {self.work_dir}",
            f"{len(self.clinical)} patients, {len(self.dataset)} slice images {self.dataset.images.shape}, "
            f"{s.n_folds} folds of {fold_sizes.min()}-{fold_sizes.max()} patients",
            f"predictions -> {self.results_dir / 'predictions'}; tables and figures -> {self.figures_dir}",
        ])


def network_study(
    profile: str | Profile,
    cohort_dir: str | os.PathLike | None,
    data_root: str | os.PathLike = "data",
    figures_dir: str | os.PathLike = "figures",
    seed: int = DEFAULT_SEED,
    synthetic: bool = True,
    n_jobs: int | None = None,
    **study_settings,
) -> NetworkStudy:
    """Read what notebooks 04-06 start from (their parameters as the runner injects them).

    Args:
        profile: a profile name (``smoke``, ``quick``, ``paper``) or a :class:`profiles.Profile`.
        cohort_dir: the cohort folder (``clinical.csv``, ``images/``); ``None``: the synthetic
            cohort of ``seed`` (``study_run.synthetic_cohort_dir``).
        data_root: where the cohorts' work folders are.
        figures_dir: the root of the runs' tables and figures (a run's go to ``<figures_dir>/<cohort>/<profile>``).
        seed: the folds' seed (``folds_<n>_seed<seed>.csv``).
        synthetic: whether the cohort is the generated one (only the tables' label).
        n_jobs: worker processes of the preprocessing when the images are not cached yet
            (default: one per core).
        study_settings: the study's settings the notebook declares (``selection_protocol=...``;
            ``None`` keeps the study's), carried by the run (``StudyRun.study_settings``).

    Returns:
        a :class:`NetworkStudy`; the folds are written to ``<work_dir>/folds_<n>_seed<s>.csv`` when absent
        or stale, the processed images to ``<work_dir>/processed/`` when not cached.
    """
    settings = get_profile(profile) if isinstance(profile, str) else profile
    run = StudyRun.from_parameters(settings.name, cohort_dir, synthetic, seed, data_root, figures_dir, **study_settings)
    cohort_dir, data_root, work_dir = run.cohort, run.data, run.work_dir
    clinical = load_clinical(cohort_dir)
    folds = evaluation.load_or_make_folds(work_dir, clinical, settings.n_folds, seed)
    dataset = study_dataset(cohort_dir, work_dir, settings, n_jobs=n_jobs)  # notebook 02's settings
    return NetworkStudy(run=run, settings=settings, cohort_dir=cohort_dir, data_root=data_root, figures_dir=run.figures,
                        work_dir=work_dir, results_dir=run.results_dir,
                        cohort_label="synthetic" if synthetic else str(cohort_dir),
                        clinical=clinical, folds=folds, dataset=dataset)


def versions_text() -> str:
    """Python, numpy, pandas, Keras and its backend (TensorFlow: its version and devices) in one or two lines."""
    import keras
    import numpy as np

    text = (f"python {platform.python_version()}, numpy {np.__version__}, pandas {pd.__version__}, "
            f"keras {keras.__version__}, backend {keras.backend.backend()}")
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        text += f"\ntensorflow {tf.__version__}, devices: {[d.device_type for d in tf.config.list_physical_devices()]}"
    return text
