"""Tiny test volumes and cohorts shared by the preprocessing and radiomics tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk


@dataclass
class Box:
    """Stand-in for ``cohort.SliceBox`` (only the fields the library reads)."""

    slice: int
    x_min: int
    x_max: int
    y_min: int
    y_max: int


def make_image(array_zyx, spacing=(1.0, 1.0, 5.0), origin=(0.0, 0.0, 0.0)) -> sitk.Image:
    """A float32 SimpleITK image of ``array_zyx`` (``[z, y, x]``) with the given geometry (mm)."""
    image = sitk.GetImageFromArray(np.asarray(array_zyx, dtype=np.float32))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    return image


def two_patient_cohort(tmp_path: Path, monkeypatch, fake_inputs) -> Path:
    """A cohort folder of patients P1 (NER) and P2 (ER) whose phases come from ``fake_inputs``.

    ``fake_inputs(folder, patient_id) -> (images, boxes)`` replaces
    ``preprocessing.load_patient_inputs``, so no image file is read or written.
    """
    from hccer_lib import cohort
    from hccer_lib import preprocessing as pp

    cohort_dir = tmp_path / "cohort"
    (cohort_dir / "images").mkdir(parents=True)
    (cohort_dir / "clinical.csv").write_text("patient_id,early_recurrence\nP1,0\nP2,1\n")
    clinical = pd.DataFrame({"patient_id": ["P1", "P2"], "early_recurrence": [0, 1]})
    monkeypatch.setattr(cohort, "load_clinical", lambda folder: clinical)
    monkeypatch.setattr(pp, "load_patient_inputs", fake_inputs)
    return cohort_dir
