"""Reading new patients: a patient folder or a cohort folder, to be predicted by a final model.

A new patient is a folder (:func:`read_patient_folder`)::

    <patient>/clinical.csv            one row: patient_id, the 17 clinical columns of a cohort;
                                      early_recurrence may be absent or empty (unknown)
    <patient>/NC.nii.gz, ART.nii.gz, PV.nii.gz           phase volumes in HU
    <patient>/NC_roi.nii.gz, ART_roi.nii.gz, PV_roi.nii.gz   tumour labels, and/or
    <patient>/roi_boxes.csv           phase, slice, x_min, x_max, y_min, y_max (patient_id optional)

which is checked by the cohort loaders of :mod:`hccer_lib.cohort` (the same one-line
messages naming the patient and the file, here relative to the patient folder). The
patients of a cohort folder are read by :func:`iter_cohort_patients` and predicted by
``prediction.predict_cohort``.

The clinical table of a new patient or cohort is read as the training cohort's was:
``manifest["clinical"]["dictionary"]`` holds the training cohort's data dictionary (its
``data_dictionary.yaml`` as a mapping; None: the paper's), and a folder without its own
``data_dictionary.yaml`` is read with it (its table: the dictionary's ``table`` when the folder
has it, else ``clinical.csv`` / ``clinical.xlsx``). A folder with its own dictionary is read
with that one, which must define every variable the model reads as the model's does (units
may differ: they are converted). The outcome may be absent or empty (unknown); a patient a
time-to-event outcome would exclude (censored before the horizon) is predicted, with an
unknown label. ``manifest["clinical"]["imputation"]`` holds the rule fitted on the whole
training cohort (``clinical.fit_imputation``): a missing value of a selected variable becomes
its ``modes`` level, and each variable of ``indicators`` has its bit ``"<variable> missing"``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd

from hccer_lib.clinical import LABEL_COLUMN
from hccer_lib.cohort import CohortError


@dataclass
class PatientInputs:
    """One patient read from a patient folder or a cohort folder.

    Attributes:
        patient_id: from ``clinical.csv``.
        clinical: the validated one-row raw clinical frame.
        y_true: the known label (0/1), or ``None`` when ``early_recurrence`` was empty.
        images: phase → float32 SimpleITK image (HU).
        boxes: phase → ``cohort.SliceBox`` list.
    """

    patient_id: str
    clinical: pd.DataFrame
    y_true: int | None
    images: dict
    boxes: dict


def model_variables(spec: dict | None):
    """The candidate variables of a saved dictionary mapping (None: the paper's 17)."""
    from hccer_lib.clinical import CLINICAL_VARIABLES
    from hccer_lib.dictionary import parse_dictionary

    return CLINICAL_VARIABLES if spec is None else parse_dictionary(spec).variables


UNKNOWN_LABELS = {"", "na", "nan", "unknown"}


def read_patient_folder(patient_dir: str | os.PathLike, clinical_settings: dict | None = None) -> PatientInputs:
    """Read and validate one new patient's folder (module docstring); labels may be unknown.

    Checked by :mod:`hccer_lib.cohort` (the patient folder is presented to it as a
    one-patient cohort), so bad input raises the same :class:`CohortError` messages, with
    files named relative to the patient folder (``ART.nii.gz``, ``clinical.csv``).

    ``clinical_settings``: the model's ``manifest["clinical"]`` (:func:`peek_clinical_settings`):
    its data dictionary reads the clinical table (module docstring); None: the paper's.
    """
    from hccer_lib import cohort

    patient_dir = Path(patient_dir)
    if not patient_dir.is_dir():
        raise CohortError(f"patient folder {patient_dir} does not exist")
    reading = _reading(patient_dir, clinical_settings)
    if reading is None and not (patient_dir / cohort.CLINICAL_FILE).is_file():
        raise CohortError(f"missing: the patient folder {patient_dir} has no {cohort.CLINICAL_FILE}", file=cohort.CLINICAL_FILE)
    with tempfile.TemporaryDirectory(prefix="hccer-patient-") as view:
        view = Path(view)
        if reading is None:
            table = cohort.CLINICAL_FILE
            unknown = _write_labelled_clinical(patient_dir / cohort.CLINICAL_FILE, view / cohort.CLINICAL_FILE)
            clinical = cohort.load_clinical(view)
        else:
            table = reading.table
            unknown, _ = _write_dictionary_view(patient_dir, reading, view, link=False)
            clinical = _renamed(lambda: cohort.load_clinical(view, _view_dictionary(reading)), table)
        if len(clinical) != 1:
            raise CohortError(f"a patient folder's {table} holds one row, got {len(clinical)}", file=table)
        patient_id = clinical["patient_id"].iloc[0]
        (view / "images").mkdir()
        _link(patient_dir, view / "images" / patient_id)
        if (patient_dir / cohort.BOX_TABLE_FILE).is_file():
            _write_patient_boxes(patient_dir / cohort.BOX_TABLE_FILE, view / cohort.BOX_TABLE_FILE, patient_id)
        try:
            phases = cohort.load_patient(view, patient_id)
        except CohortError as err:
            prefix = f"images/{patient_id}/"
            file = err.file[len(prefix) :] if err.file and err.file.startswith(prefix) else err.file
            raise CohortError(err.problem.replace(prefix, ""), err.patient, file) from None
    y_true = None if unknown and unknown[0] else int(clinical[LABEL_COLUMN].iloc[0])
    return patient_inputs(clinical, 0, y_true, phases)


def iter_cohort_patients(cohort_dir: str | os.PathLike, patient_ids: list[str] | None = None,
                         clinical_settings: dict | None = None) -> Iterator[PatientInputs]:  # fmt: skip
    """The patients of a cohort folder (all, or ``patient_ids`` in that order), read and validated.

    Labels may be empty (unknown: ``y_true`` None). An id not in ``clinical.csv`` is a
    :class:`CohortError`. ``clinical_settings``: as for :func:`read_patient_folder`.
    """
    from hccer_lib import cohort

    cohort_dir = Path(cohort_dir)
    if not cohort_dir.is_dir():
        raise CohortError(f"cohort folder {cohort_dir} does not exist")
    with cohort_view(cohort_dir, clinical_settings) as (view, unknown, _, dictionary, table):
        clinical = _renamed(lambda: cohort.load_clinical(view, dictionary), table)
        rows = {pid: row for row, pid in enumerate(clinical["patient_id"])}
        for patient_id in clinical["patient_id"] if patient_ids is None else map(str, patient_ids):
            if patient_id not in rows:
                raise CohortError(f"no row in {cohort.CLINICAL_FILE}", patient_id, cohort.CLINICAL_FILE)
            row = rows[patient_id]
            phases = cohort.load_patient(view, patient_id)
            y_true = None if unknown and unknown[row] else int(clinical[LABEL_COLUMN].iloc[row])
            yield patient_inputs(clinical, row, y_true, phases)


def patient_inputs(clinical: pd.DataFrame, row: int, y_true, phases: dict) -> PatientInputs:
    one = clinical.iloc[[row]].reset_index(drop=True)
    return PatientInputs(
        patient_id=str(one["patient_id"].iloc[0]), clinical=one, y_true=y_true,
        images={p: image for p, (image, _) in phases.items()}, boxes={p: boxes for p, (_, boxes) in phases.items()},
    )  # fmt: skip


@dataclass(frozen=True)
class _Reading:
    """How a folder's clinical table is read: its dictionary (a ``DataDictionary``) and table file."""

    dictionary: object
    table: str


def _reading(folder: Path, clinical_settings: dict | None) -> _Reading | None:
    """How to read ``folder``'s clinical table; None: the paper's dictionary on ``clinical.csv`` (as always).

    The folder's own ``data_dictionary.yaml`` (checked against the model's variables), else the
    model's saved dictionary (its table when the folder has it, else ``clinical.csv`` / ``.xlsx``).
    """
    from hccer_lib import dictionary as dictionary_module

    spec = (clinical_settings or {}).get("dictionary")
    if (folder / dictionary_module.DICTIONARY_FILE).is_file():
        try:
            own = dictionary_module.load_dictionary(folder)
        except dictionary_module.DictionaryError as err:
            raise CohortError(str(err), file=dictionary_module.DICTIONARY_FILE) from None
        if clinical_settings is not None:
            _check_compatible(own, model_variables(spec), clinical_settings.get("variables", []))
        return _Reading(own, own.table)
    if spec is None:
        return None
    saved = dictionary_module.parse_dictionary(spec)
    if not (folder / saved.table).is_file():
        saved = replace(saved, table=dictionary_module.find_table(folder), sheet=None)
    return _Reading(saved, saved.table)


def _encoding(variable) -> tuple:
    return (variable.kind, variable.levels, variable.cutoff, variable.codes, variable.onehot, variable.high_first)


def _check_compatible(own, variables, columns) -> None:
    """A folder's own dictionary must define every variable the model reads as the model's dictionary does."""
    from hccer_lib.dictionary import DICTIONARY_FILE

    ours = {v.column: v for v in variables}
    theirs = {v.column: v for v in own.variables}
    for column in columns:
        if column not in theirs:
            raise CohortError(f"variable {column!r}: the model reads it, but this {DICTIONARY_FILE} does not define it", file=DICTIONARY_FILE)
        if column in ours and _encoding(theirs[column]) != _encoding(ours[column]):
            raise CohortError(
                f"variable {column!r}: defined otherwise than in the model's dictionary (type, levels, cut-off or "
                f"one-hot bits: {_encoding(theirs[column])[:3]} here, {_encoding(ours[column])[:3]} in the model)",
                file=DICTIONARY_FILE,
            )  # fmt: skip


def _view_dictionary(reading: _Reading):
    """The dictionary that reads the view's ``clinical.csv`` (:func:`_write_dictionary_view`)."""
    from hccer_lib import cohort

    return replace(reading.dictionary, table=cohort.CLINICAL_FILE, sheet=None)


def _renamed(read, table: str):
    """``read()``, its CohortErrors naming ``table`` instead of the view's ``clinical.csv``."""
    try:
        return read()
    except CohortError as err:
        raise _renamed_error(err, table) from None


def _renamed_error(err: CohortError, table: str) -> CohortError:
    from hccer_lib import cohort

    if err.file == cohort.CLINICAL_FILE and table != cohort.CLINICAL_FILE:
        return CohortError(err.problem.replace(cohort.CLINICAL_FILE, table), err.patient, table)
    return err


def _write_dictionary_view(folder: Path, reading: _Reading, view: Path, link: bool = True) -> tuple[list[bool], list[str]]:
    """Write ``folder``'s table as ``view/clinical.csv``, an unknown outcome made readable.

    An absent or empty outcome (``early_recurrence`` or the dictionary's column; a time or an
    event), and a time-to-event outcome that would exclude the patient (censored before the
    horizon), are written as known and NER (the time at the horizon, no event) and flagged
    unknown. With ``link``, the folder's ``images/`` and ``roi_boxes.csv`` are linked into the
    view. Returns the unknown flags and the patient ids, in table order.
    """
    from hccer_lib import cohort

    dictionary = reading.dictionary
    path = folder / reading.table
    if not path.is_file():
        raise CohortError(f"missing: the folder {folder} has no {reading.table}", file=reading.table)
    if reading.table.endswith(".xlsx"):
        frame = cohort._read_workbook(path, reading.table, dictionary.sheet, (), {}, dictionary.id_column)
        frame = frame.astype(object).where(frame.notna(), "")
    else:
        try:
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as err:
            raise CohortError(f"unreadable CSV ({str(err).strip().splitlines()[0]})", file=reading.table) from None
        frame.columns = [str(c).strip() for c in frame.columns]
    outcome = dictionary.outcome
    for column in outcome.source_columns:
        if column not in frame.columns:
            frame[column] = ""
    text = {c: frame[c].astype(str).str.strip() for c in outcome.source_columns}
    unknown = pd.Series(False, index=frame.index)
    for values in text.values():
        unknown |= values.str.lower().isin(UNKNOWN_LABELS)
    if outcome.is_time_to_event:
        time = pd.to_numeric(text[outcome.time], errors="coerce")
        event = pd.to_numeric(text[outcome.event], errors="coerce")
        unknown |= (event == 0) & (time < outcome.horizon)  # would be excluded: predicted, label unknown
        frame.loc[unknown, outcome.time] = f"{outcome.horizon:g}"
        frame.loc[unknown, outcome.event] = "0"
    else:
        frame.loc[unknown, outcome.column] = "0"
    frame.to_csv(view / cohort.CLINICAL_FILE, index=False)
    for name in (cohort.IMAGES_DIR, cohort.BOX_TABLE_FILE) if link else ():
        if (folder / name).exists():
            _link(folder / name, view / name)
    ids = frame[dictionary.id_column].astype(str).str.strip() if dictionary.id_column in frame.columns else pd.Series([], dtype=str)
    return unknown.tolist(), [pid for pid in ids if pid]


@contextlib.contextmanager
def cohort_view(cohort_dir: Path, clinical_settings: dict | None):
    """``(view, unknown, ids, dictionary, table)``: a folder whose clinical table the cohort loaders
    read with ``dictionary`` (None: the folder's own), the unknown-label flags and ids in table order."""
    from hccer_lib import cohort

    reading = _reading(cohort_dir, clinical_settings)
    if reading is None:
        if not (cohort_dir / cohort.CLINICAL_FILE).is_file():
            raise CohortError(f"missing: the cohort folder {cohort_dir} has no {cohort.CLINICAL_FILE}", file=cohort.CLINICAL_FILE)
        with _labelled_view(cohort_dir) as (view, unknown):
            yield view, unknown, None, None, cohort.CLINICAL_FILE
        return
    with tempfile.TemporaryDirectory(prefix="hccer-cohort-") as view:
        view = Path(view)
        unknown, ids = _write_dictionary_view(cohort_dir, reading, view)
        yield view, unknown, ids, _view_dictionary(reading), reading.table


@contextlib.contextmanager
def _labelled_view(cohort_dir: Path) -> Iterator[tuple[Path, list[bool] | None]]:
    """The cohort folder itself when every label is given, else a view whose empty labels read 0."""
    from hccer_lib import cohort

    with tempfile.TemporaryDirectory(prefix="hccer-cohort-") as view:
        view = Path(view)
        unknown = _write_labelled_clinical(cohort_dir / cohort.CLINICAL_FILE, view / cohort.CLINICAL_FILE)
        if not unknown or not any(unknown):
            yield cohort_dir, unknown
            return
        for name in ("images", cohort.BOX_TABLE_FILE):
            if (cohort_dir / name).exists():
                _link(cohort_dir / name, view / name)
        yield view, unknown


def _write_labelled_clinical(source: Path, target: Path) -> list[bool] | None:
    """Copy ``clinical.csv``, an absent or empty ``early_recurrence`` written as 0; which rows were unknown.

    A file pandas cannot read is copied unchanged (the cohort loader then names the problem).
    """
    from hccer_lib import cohort

    try:
        frame = pd.read_csv(source, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
        shutil.copyfile(source, target)
        return None
    except OSError as err:  # e.g. no permission to read it
        raise CohortError(f"unreadable CSV ({str(err).strip().splitlines()[0]})", file=cohort.CLINICAL_FILE) from None
    frame.columns = [str(c).strip() for c in frame.columns]
    if LABEL_COLUMN not in frame.columns:
        frame[LABEL_COLUMN] = ""
    unknown = frame[LABEL_COLUMN].str.strip().str.lower().isin(UNKNOWN_LABELS)
    frame.loc[unknown, LABEL_COLUMN] = "0"
    frame.to_csv(target, index=False)
    return unknown.tolist()


def _write_patient_boxes(source: Path, target: Path, patient_id: str) -> None:
    """A patient folder's ``roi_boxes.csv`` with its ``patient_id`` column filled in."""
    from hccer_lib import cohort

    try:
        frame = pd.read_csv(source, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as err:
        raise CohortError(f"unreadable CSV ({str(err).strip().splitlines()[0]})", patient_id, cohort.BOX_TABLE_FILE) from None
    frame.columns = [str(c).strip() for c in frame.columns]
    if "patient_id" in frame.columns:
        other = frame.loc[frame["patient_id"].str.strip().ne(patient_id), "patient_id"]
        if len(other):
            raise CohortError(f"rows of patient {other.iloc[0]!r}, expected only {patient_id!r}", patient_id, cohort.BOX_TABLE_FILE)
    frame["patient_id"] = patient_id
    frame.to_csv(target, index=False)


def _link(source: Path, target: Path) -> None:
    """A symbolic link to ``source`` (a copy where links are not allowed)."""
    try:
        target.symlink_to(source.resolve(), target_is_directory=source.is_dir())
    except OSError:
        if source.is_dir():
            shutil.copytree(source, target)
        else:
            shutil.copyfile(source, target)


def view_rows(cohort_dir: Path, view: Path, ids: list[str] | None, dictionary, table: str):
    """``(clinical, refused, order)`` of a :func:`cohort_view`: the rows without a problem, each refused
    patient's error (naming the folder's own table) and the patient ids in table order."""
    from hccer_lib import cohort

    clinical, refused = _renamed(lambda: cohort.load_clinical_rows(view, dictionary), table)
    refused = {pid: _renamed_error(err, table) for pid, err in refused.items()}
    return clinical, refused, (_table_ids(cohort_dir) if ids is None else ids)


def read_cohort_clinical(cohort_dir: str | os.PathLike, clinical_settings: dict | None = None,
                         ) -> tuple[pd.DataFrame, dict[str, CohortError]]:  # fmt: skip
    """A cohort folder's clinical table read exactly as :func:`predict_cohort` reads it.

    The folder's own ``data_dictionary.yaml`` (checked against the model's variables), else the
    model's saved dictionary (``clinical_settings``: the model's ``manifest["clinical"]``), else
    the paper's (module docstring). For tables beside the predictions, such as external
    validation's case-mix.

    Returns:
        ``(frame, refused)``: the patients with a known label whose row is not refused, in
        table order, as ``cohort.load_clinical`` gives them (the dictionary's variables in
        ``frame.attrs``); and, per refused patient, its error (naming the folder's table).
        Patients with an unknown label (empty outcome, or censored before a time-to-event
        horizon) are in neither.

    Raises:
        CohortError: a problem of the table itself, or a dictionary that does not fit the model.
    """
    cohort_dir = Path(cohort_dir)
    if not cohort_dir.is_dir():
        raise CohortError(f"cohort folder {cohort_dir} does not exist")
    with cohort_view(cohort_dir, clinical_settings) as (view, unknown, ids, dictionary, table):
        clinical, refused, order = view_rows(cohort_dir, view, ids, dictionary, table)
    unknown_ids = {pid for pid, flag in zip(order, unknown or [False] * len(order), strict=False) if flag}
    attrs = dict(clinical.attrs)
    known = clinical[~clinical["patient_id"].astype(str).isin(unknown_ids).to_numpy()].reset_index(drop=True)
    known.attrs = attrs
    return known, {pid: err for pid, err in refused.items() if pid not in unknown_ids}


def cohort_dictionary(folder: str | os.PathLike, clinical_settings: dict | None = None):
    """The ``DataDictionary`` that reads ``folder``'s clinical table with a model's settings (the
    folder's own, else the model's saved one, its table found in the folder), or None: the paper's."""
    reading = _reading(Path(folder), clinical_settings)
    return None if reading is None else reading.dictionary


def _table_ids(cohort_dir: Path) -> list[str]:
    """The patient ids of ``clinical.csv`` as written, in file order (empty ids left out)."""
    from hccer_lib import cohort

    ids = pd.read_csv(cohort_dir / cohort.CLINICAL_FILE, dtype=str, keep_default_na=False, skipinitialspace=True)
    ids.columns = [str(c).strip() for c in ids.columns]
    return [pid for pid in ids["patient_id"].str.strip() if pid]
