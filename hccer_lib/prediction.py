"""Predicting patients with a final model: one row per patient of a cohort folder.

:meth:`model_folder.FinalModel.predict_patient` predicts one patient (:class:`PatientPrediction`);
:func:`predict_cohort` predicts every patient of a cohort folder, a patient that cannot be
predicted getting a ``failed`` row with its reason; :func:`prediction_row` and
:func:`prediction_frame` make the CSV rows that the ``predict`` command writes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from hccer_lib.clinical import LABEL_COLUMN
from hccer_lib.cohort import CohortError
from hccer_lib.new_patients import cohort_view, patient_inputs, view_rows

if TYPE_CHECKING:
    from hccer_lib.model_folder import FinalModel


@dataclass
class PatientPrediction:
    """The prediction for one patient.

    Attributes:
        probabilities: output name (:func:`output_names`) → patient-level probability of
            early recurrence (for slice-level models the mean over the patient's slices, each
            weighted by the tumour's area in it, ``evaluation.area_weighted_mean``).
        slices: one row per matched tumour slice: ``patient_id``, ``slice``, ``z_mm``,
            ``roi_area_mm2`` and the slice-level probability of each image model.
        images: the processed slices ``[n, H, W, 3]`` (NC, ART, PV in ``[0, 1]``).
        clinical_bits: the patient's clinical vector ``[1, k]``.
    """

    patient_id: str
    y_true: int | None
    probabilities: dict
    slices: pd.DataFrame
    images: np.ndarray
    clinical_bits: np.ndarray


def prediction_row(prediction: PatientPrediction) -> dict:
    """``patient_id, y_true, n_slices`` and one probability per output, for a CSV row."""
    return {
        "patient_id": prediction.patient_id,
        "y_true": pd.NA if prediction.y_true is None else prediction.y_true,
        "n_slices": len(prediction.slices),
        **prediction.probabilities,
    }


def prediction_frame(predictions: list[PatientPrediction]) -> pd.DataFrame:
    """One row per patient: :func:`prediction_row`, ``y_true`` as a nullable integer."""
    frame = pd.DataFrame([prediction_row(p) for p in predictions])
    frame["y_true"] = frame["y_true"].astype("Int64")
    return frame


#: ``status`` of a row of ``predictions.csv``: predicted, or not (``reason`` says why).
STATUS_OK, STATUS_FAILED = "ok", "failed"


def predict_cohort(final: FinalModel, cohort_dir: str | os.PathLike, progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Predict every patient of a cohort folder; one patient that cannot be predicted stops no other.

    A patient whose clinical row, images or ROI are refused, or whose prediction fails, gets
    a row with ``status`` ``"failed"``, no probability and the one-line ``reason``; the others
    are predicted as :meth:`FinalModel.predict_patient` predicts them. A problem of the table
    itself (a missing column, an unreadable file) still ends the whole run (CohortError).

    Returns:
        ``(patients, slices)``: one row per patient of the table, in its order
        (:func:`prediction_row` plus ``status`` and ``reason``), and one row per matched
        tumour slice of the predicted patients (:attr:`PatientPrediction.slices`).
    """
    from tqdm import tqdm

    from hccer_lib import cohort

    cohort_dir = Path(cohort_dir)
    if not cohort_dir.is_dir():
        raise CohortError(f"cohort folder {cohort_dir} does not exist")
    rows, slices = [], []
    with cohort_view(cohort_dir, final.manifest["clinical"]) as (view, unknown, ids, dictionary, table):
        clinical, refused, order = view_rows(cohort_dir, view, ids, dictionary, table)
        good = {pid: row for row, pid in enumerate(clinical["patient_id"])}
        for position, patient_id in enumerate(tqdm(order, desc="predict patients", unit="patient", disable=not progress)):
            if patient_id in refused:
                rows.append(_failed_row(patient_id, None, str(refused[patient_id])))
                continue
            row = good[patient_id]
            y_true = None if unknown and unknown[position] else int(clinical[LABEL_COLUMN].iloc[row])
            try:
                patient = patient_inputs(clinical, row, y_true, cohort.load_patient(view, patient_id))
                prediction = final.predict_patient(patient)
            except Exception as err:  # noqa: BLE001  any failure of one patient is that patient's row
                reason = str(err) if isinstance(err, CohortError) else f"{type(err).__name__}: {_first_line_of(err)}"
                rows.append(_failed_row(patient_id, y_true, reason))
                continue
            prediction.images = prediction.images[:0]  # keep only the numbers: a cohort's images add up
            rows.append({**prediction_row(prediction), "status": STATUS_OK, "reason": ""})
            slices.append(prediction.slices)
    patients = pd.DataFrame(rows)
    patients["y_true"] = patients["y_true"].astype("Int64")
    patients = patients[[c for c in patients.columns if c not in ("status", "reason")] + ["status", "reason"]]
    return patients, (pd.concat(slices, ignore_index=True) if slices else pd.DataFrame(columns=["patient_id", "slice", "z_mm", "roi_area_mm2"]))


def _failed_row(patient_id: str, y_true: int | None, reason: str) -> dict:
    return {"patient_id": patient_id, "y_true": pd.NA if y_true is None else y_true, "n_slices": 0,
            "status": STATUS_FAILED, "reason": reason}  # fmt: skip


def _first_line_of(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
