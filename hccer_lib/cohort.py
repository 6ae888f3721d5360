"""The cohort folder: load it, check it, and turn its ROIs into per-slice boxes.

A cohort folder (docs/DESIGN.md, "The cohort folder") holds::

    clinical.csv                              one row per patient
    images/<patient_id>/{NC,ART,PV}.nii.gz    phase volumes in HU, each with its own geometry
    images/<patient_id>/<phase>_roi.nii.gz    label image, tumour voxels > 0 (optional)
    roi_boxes.csv                             per-slice boxes (optional):
                                              patient_id, phase, slice, x_min, x_max, y_min, y_max

Every loader here validates what it reads and raises :class:`CohortError`, whose message
names the patient, the file (relative to the cohort folder) and the problem. Nothing in
this module writes to the cohort folder.

Decisions (tested in ``tests/test_cohort.py``):

- Image formats: ``<phase>.nii.gz`` is the primary name; ``<phase>.nii``, ``<phase>.nrrd``
  and ``<phase>.mha`` are accepted too (the same for ``<phase>_roi``). Two candidates for
  the same phase is an error (which one is meant?).
- A phase image must be a 3-D scalar image (a single slice is a 3-D image with one slice;
  2-D and 4-D are refused) with finite voxels, spacing > 0 and <= 20 mm on every axis,
  and CT intensities in Hounsfield units: the rule is ``min < 0`` (a whole-body-section
  CT always holds air or fat; raw stored values, 0-255 and 0-1 exports have none),
  ``min >= -3100`` (-3024 is the lowest padding value in use), ``max <= 32767`` and
  ``max - min >= 100`` (a normalised or constant image is not HU).
- Hostile or damaged files are refused from their header before any voxel is read: a
  declared size above ``MAX_IMAGE_VOXELS``, and in NIfTI an unknown ``datatype``, a size
  < 1, a non-finite ``vox_offset``; a NIfTI file is then streamed to check that it holds
  every voxel its ``datatype`` needs and that float voxels are finite (ITK's NIfTI reader
  silently reads NaN and infinity as 0 HU).
- ``clinical.csv``: comma-separated, each column once; ``patient_id`` read as written
  (``NA`` is an id); infinite numbers refused; both classes present (``validate_cohort``;
  at least ``n_folds`` of each for a run of that many folds).
- ROI sources: the label image (voxels > 0, integer values >= 0, exactly the geometry of
  its phase image) and/or the rows of ``roi_boxes.csv``. When both exist for a phase, the
  table gives the box bounds (it is the explicit annotation) and the two must agree:
  the same slices, and on each slice the table box must overlap the label's box. A phase
  with neither source, an empty label, or no row is an error.
- A patient folder under ``images/`` that has no row in ``clinical.csv`` is a warning
  (listed in the report), not an error: excluded patients may keep their images.
- A cohort folder without an ``images/`` folder is a clinical-only cohort
  (:func:`is_clinical_only`): its clinical table is validated, no image is looked for, and
  the runner skips the notebooks that read images. A cohort with an ``images/`` folder
  needs every patient's three phases: patients without a folder ``images/<patient_id>/``
  (:func:`patients_without_images`) are refused in one message naming every one of them.
  Such a cohort runs the clinical study on every patient when asked explicitly
  (``validate_cohort(..., clinical_only=True)``, ``run --clinical-only``): the images are
  then not read, and the report lists the patients without images. The image models are
  not fitted on the imaged patients alone: the study compares every model with every other
  on the same patients and folds (paired tests), which a mixed cohort would break
  (docs/real_cohorts.md).
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import logging
import os
import re
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from hccer_lib.clinical import EXCLUDED_ATTR, LABEL_COLUMN, VARIABLES_ATTR, binarise
from hccer_lib.dictionary import DICTIONARY_FILE, DictionaryError, load_dictionary, raw_to_level

logger = logging.getLogger("hccer")

#: The three CT phases (non-contrast, arterial, portal venous), in channel order: the one definition, read everywhere.
PHASES = ("NC", "ART", "PV")
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")
CLINICAL_FILE = "clinical.csv"
IMAGES_DIR = "images"
BOX_TABLE_FILE = "roi_boxes.csv"
BOX_COLUMNS = ("patient_id", "phase", "slice", "x_min", "x_max", "y_min", "y_max")
REFERENCE_PHASE = "PV"  # the phase whose ROI slices ValidationReport.n_slices counts

SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
ID_COLUMN = "patient_id"
OTHER_DELIMITERS = (";", "\t", "|")  # a header holding one of these and no comma was written with another delimiter

# Hounsfield-unit rule for phase images (see the module docstring).
HU_MIN, HU_MAX, HU_MIN_RANGE = -3100.0, 32767.0, 100.0
MAX_SPACING_MM = 20.0
ORIGIN_TOLERANCE_MM, SPACING_TOLERANCE, DIRECTION_TOLERANCE = 1e-3, 1e-4, 1e-4
#: Largest image read, in voxel values (size x components), checked from the header before any
#: voxel is read: 2**28 (1 GiB as float32) holds a 512 x 512 x 1024 CT; a larger declared size
#: is a damaged or hostile header, which would otherwise take several GB of memory.
MAX_IMAGE_VOXELS = 2**28
NIFTI_HEADER_BYTES = 348
MAX_NIFTI_VOX_OFFSET = 1 << 24  # header extensions beyond 16 MiB: a damaged header
NIFTI_CHUNK_BYTES = 1 << 22  # voxel bytes streamed at a time by the NIfTI checks
#: NIfTI-1 datatype code -> (name, bytes per voxel, numpy float kind of its values or None).
#: The datatype, not the header's bitpix, says how many bytes the voxels take (ITK reads it so).
NIFTI_DATATYPES: dict[int, tuple[str, int, str | None]] = {
    2: ("uint8", 1, None), 4: ("int16", 2, None), 8: ("int32", 4, None), 16: ("float32", 4, "f4"),
    32: ("complex64", 8, "f4"), 64: ("float64", 8, "f8"), 128: ("rgb24", 3, None), 256: ("int8", 1, None),
    512: ("uint16", 2, None), 768: ("uint32", 4, None), 1024: ("int64", 8, None), 1280: ("uint64", 8, None),
    1792: ("complex128", 16, "f8"), 2304: ("rgba32", 4, None),
}  # fmt: skip


class CohortError(ValueError):
    """Bad input in a cohort folder: ``patient X, file F: problem``.

    Args:
        problem: what is wrong, in words.
        patient: the patient id, when the problem belongs to one patient.
        file: the file, relative to the cohort folder (e.g. ``images/HCC007/ART.nii.gz``).
    """

    def __init__(self, problem: str, patient: str | None = None, file: str | None = None):
        self.problem = problem
        self.patient = patient
        self.file = file
        super().__init__(str(self))

    def __str__(self) -> str:
        where = []
        if self.patient is not None:
            where.append(f"patient {self.patient}")
        if self.file is not None:
            where.append(f"file {self.file}")
        return f"{', '.join(where)}: {self.problem}" if where else self.problem

    def __reduce__(self):  # keep the three arguments when pickled (multiprocessing)
        return (type(self), (self.problem, self.patient, self.file))


# %% Clinical table ---------------------------------------------------------------------


def load_clinical(cohort_dir: str | os.PathLike, dictionary=None) -> pd.DataFrame:
    """Read and validate ``clinical.csv`` (or the table the cohort's data dictionary names).

    ``dictionary``: a ``dictionary.DataDictionary`` to read the table with, instead of the
    cohort folder's own (``data_dictionary.yaml``, else the paper's).

    Returns:
        One row per patient, in file order: ``patient_id`` as ``str`` (leading zeros
        kept), the 0/1 columns as ``int``, the numeric columns as ``float``, the
        categories as ``str`` (``bclc`` one of ``"0"``, ``"A"``, ``"B"``, ``"C"``). Extra
        columns are kept unchanged.

    Raises:
        CohortError: the first problem found (missing column or value, duplicate or unsafe
            id, a value outside its range, an unknown category), with the count of the
            further problems.
    """
    frame, problems = _check_clinical(Path(cohort_dir), dictionary)
    _raise_first(problems)
    return frame


def list_patients(cohort_dir: str | os.PathLike) -> list[str]:
    """The patient ids of ``clinical.csv``, in file order (validated)."""
    return load_clinical(cohort_dir)["patient_id"].tolist()


def _check_clinical(cohort_dir: Path, dictionary=None) -> tuple[pd.DataFrame, list[CohortError]]:
    """Read the clinical table through the cohort's data dictionary.

    Returns the frame in the library's terms (``patient_id``, ``early_recurrence`` and one
    column per variable, named and in the unit of the dictionary's variable; categories as
    their codes, binary variables as 0/1, a missing value of a variable that is not required
    as NaN) and every problem found. The dictionary's variables are in
    ``frame.attrs[clinical.VARIABLES_ATTR]``; patients excluded by a time-to-event outcome
    (censored before the horizon) in ``frame.attrs[clinical.EXCLUDED_ATTR]`` as
    ``(patient_id, reason, group)`` triples (``clinical.excluded_of``).
    """
    if dictionary is None:
        try:
            dictionary = load_dictionary(cohort_dir)
        except DictionaryError as err:
            raise CohortError(str(err), file=DICTIONARY_FILE) from None
    rel = dictionary.table
    path = cohort_dir / rel
    if not path.is_file():
        raise CohortError(f"missing: the cohort folder {cohort_dir} has no {rel}", file=rel)
    named = {v.source_column: v.column for v in dictionary.variables if v.source_column != v.column}
    text_columns = {dictionary.id_column: str, **{v.source_column: str for v in dictionary.variables if v.kind == "category"}}
    required = tuple(dictionary.source_columns())
    if rel.endswith(".xlsx"):
        raw = _read_workbook(path, rel, dictionary.sheet, required, named, dictionary.id_column)
    else:
        raw = _read_table(path, rel, text_columns, required, named, dictionary.id_column)
    if raw.empty:
        raise CohortError("no patient rows", file=rel)

    problems: list[CohortError] = []
    ids = raw[dictionary.id_column].astype(object).where(raw[dictionary.id_column].notna())

    def problem(row: int, text: str) -> None:
        pid = ids[row]
        patient = None if pd.isna(pid) else str(pid)
        line = f"line {row + 2}: " if patient is None else ""
        problems.append(CohortError(line + text, patient=patient, file=rel))

    def name(source: str, column: str) -> str:
        return f"column {source!r}" + (f" (variable {column})" if source != column else "")

    for row, pid in ids.items():
        if pd.isna(pid) or str(pid).strip() == "":
            problem(row, f"empty {ID_COLUMN}")
        elif not SAFE_ID.match(str(pid)):
            problem(row, f"{ID_COLUMN} {pid!r} is not a safe folder name (letters, digits, '.', '_', '-')")
    duplicated = ids[ids.duplicated(keep="first") & ids.notna()]
    for row, pid in duplicated.items():
        problem(row, f"duplicate {ID_COLUMN} {pid!r} (line {row + 2})")

    unused = [c for c in raw.columns if c not in required]
    frame = raw.drop(columns=[c for c in unused if c in {ID_COLUMN, LABEL_COLUMN, *named.values()}])
    frame = frame.rename(columns={dictionary.id_column: ID_COLUMN, **named})
    frame[ID_COLUMN] = ids.to_numpy()

    def numbers(source: str, column: str, required_value: bool) -> pd.Series:
        """The column as floats; missing, non-numeric and infinite values reported (NaN)."""
        values = raw[source]
        numeric = pd.to_numeric(values, errors="coerce")
        if required_value:
            for row in raw.index[values.isna()]:
                problem(row, f"missing value in {name(source, column)}")
        for row in raw.index[numeric.isna() & values.notna()]:
            problem(row, f"{name(source, column)} has non-numeric value {values[row]!r}")
        infinite = np.isinf(numeric.to_numpy(dtype=float))
        for row in raw.index[infinite]:
            problem(row, f"{name(source, column)} has non-finite value {_show(numeric[row])}, expected a finite number")
        return numeric.mask(infinite).astype(float)

    def zero_one(values: pd.Series, source: str, column: str) -> None:
        for row in raw.index[values.notna() & ~values.isin([0, 1])]:
            problem(row, f"{name(source, column)} has value {_show(values[row])}, expected 0 or 1")

    excluded: list[tuple[str, str, str]] = []
    outcome = dictionary.outcome
    if outcome.is_time_to_event:
        time = numbers(outcome.time, outcome.time, True)
        for row in raw.index[time < 0]:
            problem(row, f"{name(outcome.time, outcome.time)} has negative time {_show(time[row])}")
        event = numbers(outcome.event, outcome.event, True)
        zero_one(event, outcome.event, outcome.event)
        label = pd.Series(np.where((event == 1) & (time <= outcome.horizon), 1.0, 0.0), index=raw.index)
        censored = (event == 0) & (time < outcome.horizon)
        horizon = f"the {outcome.horizon:g}-{outcome.time_unit} horizon"
        for row in raw.index[censored]:
            excluded.append((str(ids[row]), f"censored at {time[row]:g} {outcome.time_unit}, before {horizon}",
                             f"censored before {horizon}"))  # fmt: skip
        frame.insert(1, LABEL_COLUMN, label.mask(time.isna() | event.isna()))
    else:
        label = numbers(outcome.column, LABEL_COLUMN, True)
        zero_one(label, outcome.column, LABEL_COLUMN)
        censored = pd.Series(False, index=raw.index)
        frame[LABEL_COLUMN] = label

    for var in dictionary.variables:
        source, column = var.source_column, var.column
        if var.kind in ("threshold", "count"):
            values = numbers(source, column, var.required) * dictionary.factor(column)
            low, high = var.value_range
            bad = values.notna() & ((values < low if low is not None else False) | (values > high if high is not None else False))
            if var.positive:
                bad |= values.notna() & (values <= 0)
            if var.kind == "count":
                bad |= values.notna() & ((values < 1) | (values != np.round(values)))
            unit = f" {var.unit}" if var.unit else ""
            if var.kind == "count":
                expected = "a whole number >= 1"
            elif var.positive:
                expected = f"> 0 and <= {high:g}{unit}"
            elif low is not None and high is not None:
                expected = f"between {low:g} and {high:g}"
            elif low is not None or high is not None:
                expected = f">= {low:g}" if low is not None else f"<= {high:g}"
            else:
                expected = "a finite number"
            for row in raw.index[bad]:
                shown = _show(raw[source][row]) if dictionary.factor(column) != 1 else _show(values[row])
                problem(row, f"{name(source, column)} has implausible value {shown}, expected {expected}"
                             + (f" (after conversion to {var.unit})" if dictionary.factor(column) != 1 else ""))  # fmt: skip
            frame[column] = values
        else:
            lookup = raw_to_level(var)
            text = raw[source].astype(object).where(raw[source].notna())
            text = text.map(lambda v: v if pd.isna(v) else re.sub(r"\.0$", "", str(v).strip()))
            if var.required:
                for row in raw.index[text.isna()]:
                    problem(row, f"missing value in {name(source, column)}")
            levels = text.map(lookup).astype(object)  # NaN: missing or unknown
            unknown = (text.notna() & levels.isna()).to_numpy()
            if var.kind == "binary" and not var.aliases:
                numeric = pd.to_numeric(text, errors="coerce")
                for row in raw.index[numeric.isna() & text.notna()]:
                    problem(row, f"{name(source, column)} has non-numeric value {raw[source][row]!r}")
                zero_one(numeric, source, column)
            else:
                what = "category" if var.kind == "category" else "value"
                for row in raw.index[unknown]:
                    problem(row, f"{name(source, column)} has unknown {what} {text[row]!r}, expected one of {', '.join(lookup)}")
            if var.kind == "binary":
                frame[column] = levels.map({level: float(i) for i, level in enumerate(var.levels)})
            else:
                codes = dict(zip(var.levels, var.codes or var.levels, strict=True))
                frame[column] = levels.map(codes)

    frame = frame[~censored.to_numpy()].reset_index(drop=True)
    frame.attrs[VARIABLES_ATTR] = dictionary.variables
    frame.attrs[EXCLUDED_ATTR] = tuple(excluded)
    if not problems:
        problems += _typed(frame, rel)
    return frame, problems


def _typed(frame: pd.DataFrame, rel: str) -> list[CohortError]:
    """Give a checked frame its types (in place); a row binarise refuses is a problem."""
    frame[ID_COLUMN] = frame[ID_COLUMN].astype(str)
    frame[LABEL_COLUMN] = frame[LABEL_COLUMN].astype(int)
    for var in frame.attrs[VARIABLES_ATTR]:
        if var.kind == "binary" and var.required:
            frame[var.column] = frame[var.column].astype(int)
    try:  # the library's own binarisation must accept every row
        binarise(frame)
    except ValueError as err:
        return [CohortError(str(err), file=rel)]
    return []


def load_clinical_rows(cohort_dir: str | os.PathLike, dictionary=None) -> tuple[pd.DataFrame, dict[str, CohortError]]:
    """The clinical table with each patient's problems kept apart, for per-patient work (``predict``).

    Returns:
        The rows without a problem (as :func:`load_clinical` gives them) and, per patient id
        with a problem, the first one.

    Raises:
        CohortError: a problem of the table itself (a missing column, an empty id, ...).
    """
    frame, problems = _check_clinical(Path(cohort_dir), dictionary)
    whole = [p for p in problems if p.patient is None]
    _raise_first(whole)
    per_patient: dict[str, CohortError] = {}
    for err in problems:
        per_patient.setdefault(str(err.patient), err)
    good = frame[~frame[ID_COLUMN].astype(str).isin(per_patient).to_numpy()].reset_index(drop=True)
    good.attrs = dict(frame.attrs)
    if not good.empty:
        _raise_first(_typed(good, CLINICAL_FILE))
    return good, per_patient


def _read_workbook(path: Path, rel: str, sheet: str | None, required: tuple[str, ...], named: dict[str, str],
                   id_column: str) -> pd.DataFrame:  # fmt: skip
    """Read the clinical table from an Excel workbook (``.xlsx``): the first sheet or ``sheet``.

    Cells are read as written (an id ``007`` stays ``007``; whole numbers stored as floats
    lose their ``.0``); an empty cell is missing. Errors are CohortErrors naming the file.
    """
    try:
        import openpyxl

        book = openpyxl.load_workbook(path, read_only=True, data_only=True)
        try:
            names = book.sheetnames
            if sheet is not None and sheet not in names:
                raise CohortError(f"no sheet {sheet!r}; the workbook has {', '.join(map(repr, names))}", file=rel)
            rows = list(book[sheet or names[0]].iter_rows(values_only=True))
        finally:
            book.close()
    except CohortError:
        raise
    except Exception as err:  # openpyxl raises many kinds (zip, XML, key) for a damaged file
        raise CohortError(f"unreadable Excel workbook ({_first_line(err)})", file=rel) from None
    rows = [r for r in rows if r is not None and any(c is not None and str(c).strip() != "" for c in r)]
    if not rows:
        raise CohortError("empty sheet: no header row", file=rel)
    header = [("" if c is None else str(c).strip()) for c in rows[0]]
    width = len(header)
    cells = [[_cell(c) for c in (list(r) + [None] * width)[:width]] for r in rows[1:]]
    frame = pd.DataFrame(cells, columns=[f"column {i + 1}" for i in range(width)], dtype=object)
    return _named_columns(frame, header, rel, required, named)


def _cell(value):
    """An Excel cell as the CSV reader would give it: text stripped, empty as missing, whole floats as ints."""
    if value is None:
        return np.nan
    if isinstance(value, str):
        return value.strip() if value.strip() else np.nan
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


# %% Images -----------------------------------------------------------------------------


def _read_table(path: Path, rel: str, dtype: dict, required: tuple[str, ...], named: dict[str, str] | None = None,
                id_column: str = ID_COLUMN) -> pd.DataFrame:  # fmt: skip
    """Read one of the cohort's CSV tables (comma-separated, one header line).

    ``id_column`` is read as written: an id such as ``NA`` or ``None`` is an id, not a
    missing value (only an empty cell is missing). Unreadable files, a duplicated column
    name, a file that looks separated by another delimiter and a missing column are
    CohortErrors naming the file (and, through ``named``, the variable a column holds).
    """
    try:
        frame = pd.read_csv(path, dtype=dtype, skipinitialspace=True)
        header = pd.read_csv(path, header=None, nrows=1, dtype=str, keep_default_na=False, skipinitialspace=True)
        names = [str(c).strip() for c in header.iloc[0]]
        if id_column in names:  # again, every value as written: "NA" is an id; only an empty cell is missing
            ids = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True, usecols=[names.index(id_column)]).iloc[:, 0]
            frame[frame.columns[names.index(id_column)]] = ids.where(ids.str.strip() != "").to_numpy()
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as err:
        raise CohortError(f"unreadable CSV ({_first_line(err)})", file=rel) from err
    return _named_columns(frame, names, rel, required, named or {})


def _named_columns(frame: pd.DataFrame, names: list[str], rel: str, required: tuple[str, ...],
                   named: dict[str, str]) -> pd.DataFrame:  # fmt: skip
    """``frame`` with the header ``names``; a duplicated or missing column is a CohortError."""
    seen: dict[str, int] = {}
    for position, name in enumerate(names, start=1):
        if name in seen:
            raise CohortError(f"column {name!r} appears twice (columns {seen[name]} and {position}); keep one", file=rel)
        seen[name] = position
    frame.columns = names
    missing = [c for c in required if c not in frame.columns]
    if missing:
        wrong = [d for d in OTHER_DELIMITERS if any(d in name for name in names)]
        if len(names) <= 2 and wrong:
            raise CohortError(
                f"the delimiter looks wrong: the header holds {wrong[0]!r} and {len(names)} column(s); "
                "write a comma-separated file",
                file=rel,
            )  # fmt: skip
        shown = [c + (f" (variable {named[c]})" if c in named else "") for c in missing]
        raise CohortError(f"missing column(s) {', '.join(shown)}", file=rel)
    return frame


def phase_path(cohort_dir: str | os.PathLike, patient_id: str, phase: str) -> Path:
    """The file of a phase image: the existing one, else the primary ``<phase>.nii.gz``.

    Raises:
        CohortError: an unknown phase, or two candidate files for the same phase.
    """
    if phase not in PHASES:
        raise CohortError(f"unknown phase {phase!r}, expected one of {', '.join(PHASES)}", patient=patient_id)
    found = _find_image(Path(cohort_dir), patient_id, phase)
    return found if found is not None else _patient_dir(cohort_dir, patient_id) / f"{phase}{IMAGE_SUFFIXES[0]}"


def roi_path(cohort_dir: str | os.PathLike, patient_id: str, phase: str) -> Path | None:
    """The label image ``<phase>_roi.nii.gz`` (or ``.nii``, ``.nrrd``, ``.mha``), or None."""
    if phase not in PHASES:
        raise CohortError(f"unknown phase {phase!r}, expected one of {', '.join(PHASES)}", patient=patient_id)
    return _find_image(Path(cohort_dir), patient_id, f"{phase}_roi")


def read_phase(cohort_dir: str | os.PathLike, patient_id: str, phase: str) -> sitk.Image:
    """Read one phase volume and check that it is a 3-D CT in Hounsfield units.

    Returns:
        A ``float32`` SimpleITK image (array view ``[z, y, x]``, HU; spacing in mm), with the
        file's own origin and direction.

    Raises:
        CohortError: missing or unreadable file, not 3-D, not scalar, bad spacing, non-finite
            voxels, or intensities that are not HU (see the module docstring).
    """
    cohort_dir = Path(cohort_dir)
    path = phase_path(cohort_dir, patient_id, phase)
    rel = _relative(path, cohort_dir)
    if not path.is_file():
        if not _patient_dir(cohort_dir, patient_id).is_dir():
            raise CohortError(f"missing patient folder {_relative(path.parent, cohort_dir)}", patient_id, rel)
        raise CohortError(f"missing phase {phase}", patient_id, rel)
    image = _read_image(path, patient_id, rel)
    _check_geometry(image, patient_id, rel)
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise CohortError(
            f"not a scalar image ({image.GetNumberOfComponentsPerPixel()} components per voxel, e.g. RGB)",
            patient_id, rel,
        )  # fmt: skip
    image = sitk.Cast(image, sitk.sitkFloat32)
    values = sitk.GetArrayViewFromImage(image)
    if not np.all(np.isfinite(values)):
        raise CohortError("voxels that are NaN or infinite", patient_id, rel)
    low, high = float(values.min()), float(values.max())
    shown = f"(min {low:g}, max {high:g})"
    if low >= 0:
        raise CohortError(
            f"not CT in Hounsfield units {shown}: no voxel below 0 HU (no air or fat); "
            "raw stored values, a 0-255 or 0-1 export?",
            patient_id, rel,
        )  # fmt: skip
    if low < HU_MIN or high > HU_MAX:
        raise CohortError(f"not CT in Hounsfield units {shown}: outside {HU_MIN:g}..{HU_MAX:g} HU", patient_id, rel)
    if high - low < HU_MIN_RANGE:
        raise CohortError(
            f"not CT in Hounsfield units {shown}: intensities span less than {HU_MIN_RANGE:g} HU "
            "(a normalised image?)",
            patient_id, rel,
        )  # fmt: skip
    return image


def _check_geometry(image: sitk.Image, patient_id: str, rel: str) -> None:
    """A 3-D image with spacing in (0, MAX_SPACING_MM] on every axis."""
    if image.GetDimension() != 3:
        raise CohortError(f"not a 3-D image ({image.GetDimension()}-D, size {image.GetSize()})", patient_id, rel)
    spacing = image.GetSpacing()
    if not all(0 < s <= MAX_SPACING_MM for s in spacing):
        raise CohortError(f"implausible voxel spacing {spacing} mm, expected > 0 and <= {MAX_SPACING_MM:g}", patient_id, rel)


def _read_image(path: Path, patient_id: str, rel: str) -> sitk.Image:
    """Read an image with SimpleITK after the checks ITK skips; any problem is a CohortError.

    NIfTI files are checked by :func:`_check_nifti_header` first. Every format's declared
    size is checked against :data:`MAX_IMAGE_VOXELS` from its header alone, before a voxel is read.
    """
    if path.name.endswith((".nii", ".nii.gz")):
        _check_nifti_header(path, patient_id, rel)
    try:
        with _quiet_itk():
            reader = sitk.ImageFileReader()
            reader.SetFileName(str(path))
            reader.ReadImageInformation()
            _check_declared_size(reader.GetSize(), reader.GetNumberOfComponents(), patient_id, rel)
            return reader.Execute()
    except RuntimeError as err:
        raise CohortError(f"unreadable image ({_itk_reason(err)})", patient_id, rel) from err


def _check_declared_size(size: tuple[int, ...], components: int, patient_id: str, rel: str) -> None:
    """Refuse an image whose header declares more than :data:`MAX_IMAGE_VOXELS` voxel values."""
    n_values = int(np.prod([max(int(s), 1) for s in size], dtype=np.float64)) * max(int(components), 1)
    if n_values > MAX_IMAGE_VOXELS:
        raise CohortError(
            f"implausible image size {tuple(int(s) for s in size)}"
            + (f" x {components} components" if components > 1 else "")
            + f" declared in the header: {n_values:,} voxels, at most {MAX_IMAGE_VOXELS:,} are read",
            patient_id, rel,
        )  # fmt: skip


def _check_nifti_header(path: Path, patient_id: str, rel: str) -> None:
    """NIfTI-1 checks that ITK skips, from the header before any voxel is read, then on the voxels.

    From the header: a known ``datatype`` (it, not ``bitpix``, sizes the voxels, as in ITK),
    ``dim[0]`` in 1..7 and every used ``dim`` >= 1, a declared size within
    :data:`MAX_IMAGE_VOXELS`, a finite ``vox_offset`` after the 348-byte header, and
    ``pixdim[1..3]`` > 0 (ITK silently puts 1 mm for a zero spacing). Then, streaming the
    voxels (memory bounded by :data:`NIFTI_CHUNK_BYTES`): the file holds every voxel (ITK
    reads a truncated ``.nii.gz`` without error) and float voxels are finite (ITK's NIfTI
    reader turns NaN and infinity into 0).
    """
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as handle:
            header = handle.read(NIFTI_HEADER_BYTES)
            order, datatype, n_voxels, vox_offset = _parse_nifti_header(header, patient_id, rel)
            _, voxel_bytes, float_kind = NIFTI_DATATYPES[datatype]
            expected = vox_offset + n_voxels * voxel_bytes
            length = len(header) + len(handle.read(vox_offset - len(header)))  # header extensions, skipped
            dtype = np.dtype(order + float_kind) if float_kind else None
            finite, rest = True, b""  # rest: the bytes of a value split between two chunks
            while length < expected:
                chunk = handle.read(min(NIFTI_CHUNK_BYTES, expected - length))
                if not chunk:
                    break
                length += len(chunk)
                if dtype is not None and finite:
                    values = rest + chunk
                    usable = len(values) - len(values) % dtype.itemsize
                    finite = bool(np.isfinite(np.frombuffer(values[:usable], dtype=dtype)).all())
                    rest = values[usable:]
    except (OSError, EOFError, zlib.error) as err:
        raise CohortError(f"unreadable image ({_first_line(err)})", patient_id, rel) from err
    if length < expected:
        raise CohortError(f"unreadable image (truncated: {length} bytes, expected {expected})", patient_id, rel)
    if not finite:
        raise CohortError("voxels that are NaN or infinite", patient_id, rel)


def _parse_nifti_header(header: bytes, patient_id: str, rel: str) -> tuple[str, int, int, int]:
    """``(byte order '<' or '>', datatype, number of voxels, vox_offset in bytes)`` of a NIfTI-1 header."""
    if len(header) < NIFTI_HEADER_BYTES:
        raise CohortError(f"unreadable image (NIfTI header is {len(header)} bytes, expected {NIFTI_HEADER_BYTES})", patient_id, rel)
    for order in "<>":
        if struct.unpack(order + "i", header[:4])[0] == NIFTI_HEADER_BYTES:
            break
    else:
        raise CohortError("unreadable image (not a NIfTI-1 header)", patient_id, rel)
    dim = struct.unpack(order + "8h", header[40:56])
    datatype = struct.unpack(order + "h", header[70:72])[0]
    pixdim = struct.unpack(order + "8f", header[76:108])
    vox_offset = struct.unpack(order + "f", header[108:112])[0]
    if datatype not in NIFTI_DATATYPES:
        raise CohortError(f"unreadable image (unknown or unsupported NIfTI datatype {datatype})", patient_id, rel)
    if not 1 <= dim[0] <= 7:
        raise CohortError(f"unreadable image (NIfTI dim[0] is {dim[0]}, expected 1..7 dimensions)", patient_id, rel)
    sizes = dim[1 : 1 + dim[0]]
    if min(sizes) < 1:
        raise CohortError(f"unreadable image (NIfTI image size {sizes} has a size < 1)", patient_id, rel)
    _check_declared_size(sizes, 1, patient_id, rel)
    if not (np.isfinite(vox_offset) and NIFTI_HEADER_BYTES <= vox_offset <= MAX_NIFTI_VOX_OFFSET):
        raise CohortError(
            f"unreadable image (NIfTI vox_offset {vox_offset:g}: the voxels must start after the "
            f"{NIFTI_HEADER_BYTES}-byte header, within {MAX_NIFTI_VOX_OFFSET:,} bytes)",
            patient_id, rel,
        )  # fmt: skip
    spatial = pixdim[1 : 1 + min(dim[0], 3)]
    if not all(np.isfinite(s) and s > 0 for s in spatial):
        raise CohortError(f"missing or zero voxel spacing in the NIfTI header (pixdim {spatial})", patient_id, rel)
    return order, datatype, int(np.prod(sizes, dtype=np.int64)), int(vox_offset)


# %% ROI ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SliceBox:
    """The tumour box on one axial slice of one phase.

    Attributes:
        phase: ``"NC"``, ``"ART"`` or ``"PV"``.
        slice: slice index ``k`` (the ``z`` of the array view ``[z, y, x]``).
        z_mm: physical z of the slice centre, mm (patient coordinates of the image).
        x_min, x_max, y_min, y_max: voxel indices, inclusive (x = column, y = row).
        centre_mm: physical (x, y) of the box centre, mm.
    """

    phase: str
    slice: int
    z_mm: float
    x_min: int
    x_max: int
    y_min: int
    y_max: int
    centre_mm: tuple[float, float]


def roi_boxes(
    cohort_dir: str | os.PathLike,
    patient_id: str,
    phase: str,
    image: sitk.Image | None = None,
) -> list[SliceBox]:
    """The per-slice tumour boxes of one phase, sorted by ``z_mm``.

    From ``roi_boxes.csv`` when it has rows for this patient and phase, otherwise from the
    label image ``<phase>_roi.nii.gz`` (on every slice with a voxel > 0, the 2-D bounding
    box of those voxels). When both exist they must agree (module docstring).

    Args:
        image: the phase image, when already read (its geometry places the boxes).

    Raises:
        CohortError: no ROI, an empty ROI, a label whose geometry differs from the phase,
            a box outside the image or with min > max, or table and label that disagree.
    """
    cohort_dir = Path(cohort_dir)
    if image is None:
        image = read_phase(cohort_dir, patient_id, phase)
    table = _read_box_table(cohort_dir)
    return _phase_boxes(cohort_dir, patient_id, phase, image, table)


def load_patient(
    cohort_dir: str | os.PathLike, patient_id: str
) -> dict[str, tuple[sitk.Image, list[SliceBox]]]:
    """Every phase of one patient: ``{phase: (float32 HU image, boxes sorted by z)}``."""
    cohort_dir = Path(cohort_dir)
    table = _read_box_table(cohort_dir)
    out = {}
    for phase in PHASES:
        image = read_phase(cohort_dir, patient_id, phase)
        out[phase] = (image, _phase_boxes(cohort_dir, patient_id, phase, image, table))
    return out


def _phase_boxes(
    cohort_dir: Path, patient_id: str, phase: str, image: sitk.Image, table: pd.DataFrame | None
) -> list[SliceBox]:
    label_file = roi_path(cohort_dir, patient_id, phase)
    rows = None
    if table is not None:
        rows = table[(table["patient_id"] == patient_id) & (table["phase"] == phase)]
        rows = rows if len(rows) else None
    if label_file is None and rows is None:
        rel = _relative(_patient_dir(cohort_dir, patient_id) / f"{phase}_roi{IMAGE_SUFFIXES[0]}", cohort_dir)
        raise CohortError(f"no ROI for phase {phase}: neither this label image nor rows in {BOX_TABLE_FILE}", patient_id, rel)
    label_boxes = None
    if label_file is not None:
        label_boxes = _label_boxes(label_file, _relative(label_file, cohort_dir), patient_id, image)
    if rows is None:
        raw = label_boxes
    else:
        raw = _table_boxes(rows, patient_id, phase, image)
        if label_boxes is not None:
            _check_agreement(raw, label_boxes, patient_id, _relative(label_file, cohort_dir))
    return sorted((_make_box(image, phase, *b) for b in raw), key=lambda box: box.z_mm)


def _label_boxes(path: Path, rel: str, patient_id: str, image: sitk.Image) -> list[tuple[int, int, int, int, int]]:
    """``(k, x_min, x_max, y_min, y_max)`` per slice holding label voxels > 0."""
    label = _read_image(path, patient_id, rel)
    if label.GetDimension() != 3:
        raise CohortError(f"ROI is not a 3-D image ({label.GetDimension()}-D)", patient_id, rel)
    _check_same_geometry(label, image, patient_id, rel)
    values = sitk.GetArrayViewFromImage(label)
    if values.dtype.kind == "f":
        if not np.all(np.isfinite(values)) or np.any(values != np.round(values)):
            raise CohortError("ROI holds non-integer values: a label image must hold whole numbers (0 = background)", patient_id, rel)
    if values.min() < 0:
        raise CohortError(f"ROI holds negative label {values.min()}", patient_id, rel)
    mask = values > 0
    slices = np.flatnonzero(mask.any(axis=(1, 2)))
    if slices.size == 0:
        raise CohortError("empty ROI: no voxel > 0", patient_id, rel)
    boxes = []
    for k in slices:
        ys = np.flatnonzero(mask[k].any(axis=1))
        xs = np.flatnonzero(mask[k].any(axis=0))
        boxes.append((int(k), int(xs[0]), int(xs[-1]), int(ys[0]), int(ys[-1])))
    return boxes


def _check_same_geometry(label: sitk.Image, image: sitk.Image, patient_id: str, rel: str) -> None:
    checks = (
        ("size", label.GetSize(), image.GetSize(), 0.0),
        ("spacing", label.GetSpacing(), image.GetSpacing(), SPACING_TOLERANCE),
        ("origin", label.GetOrigin(), image.GetOrigin(), ORIGIN_TOLERANCE_MM),
        ("direction", label.GetDirection(), image.GetDirection(), DIRECTION_TOLERANCE),
    )
    for name, got, expected, tolerance in checks:
        if not np.allclose(got, expected, rtol=0, atol=tolerance):
            raise CohortError(
                f"ROI geometry differs from its phase image: {name} {_fmt(got)} vs {_fmt(expected)}",
                patient_id, rel,
            )  # fmt: skip


def _table_boxes(rows: pd.DataFrame, patient_id: str, phase: str, image: sitk.Image) -> list[tuple[int, ...]]:
    """Check the table rows of one patient and phase against the image size."""
    size_x, size_y, size_z = image.GetSize()
    boxes = []
    for row, r in rows.iterrows():
        where = f"line {row + 2} ({phase}, slice {r['slice']}): "
        if not 0 <= r["slice"] < size_z:
            raise CohortError(where + f"slice outside the image (slices 0..{size_z - 1})", patient_id, BOX_TABLE_FILE)
        if r["x_max"] >= size_x or r["y_max"] >= size_y:
            raise CohortError(
                where + f"ROI outside the image: box x {r['x_min']}..{r['x_max']}, y {r['y_min']}..{r['y_max']} "
                f"but the image is {size_x} x {size_y} voxels",
                patient_id, BOX_TABLE_FILE,
            )  # fmt: skip
        boxes.append(tuple(int(r[c]) for c in ("slice", "x_min", "x_max", "y_min", "y_max")))
    return boxes


def _check_agreement(table_boxes, label_boxes, patient_id: str, label_rel: str) -> None:
    """Table and label image of the same phase: same slices, overlapping boxes."""
    by_slice = {b[0]: b for b in label_boxes}
    table_slices, label_slices = sorted(b[0] for b in table_boxes), sorted(by_slice)
    if table_slices != label_slices:
        raise CohortError(
            f"{BOX_TABLE_FILE} and {label_rel} disagree on the ROI slices: "
            f"table {_fmt_slices(table_slices)}, label {_fmt_slices(label_slices)}",
            patient_id, BOX_TABLE_FILE,
        )  # fmt: skip
    for k, x0, x1, y0, y1 in table_boxes:
        _, lx0, lx1, ly0, ly1 = by_slice[k]
        if x0 > lx1 or lx0 > x1 or y0 > ly1 or ly0 > y1:
            raise CohortError(
                f"slice {k}: table box x {x0}..{x1}, y {y0}..{y1} does not overlap the label "
                f"box x {lx0}..{lx1}, y {ly0}..{ly1} of {label_rel}",
                patient_id, BOX_TABLE_FILE,
            )  # fmt: skip


def _make_box(image: sitk.Image, phase: str, k: int, x0: int, x1: int, y0: int, y1: int) -> SliceBox:
    size_x, size_y, _ = image.GetSize()
    slice_centre = image.TransformContinuousIndexToPhysicalPoint(((size_x - 1) / 2, (size_y - 1) / 2, float(k)))
    box_centre = image.TransformContinuousIndexToPhysicalPoint(((x0 + x1) / 2, (y0 + y1) / 2, float(k)))
    return SliceBox(phase, k, float(slice_centre[2]), x0, x1, y0, y1, (float(box_centre[0]), float(box_centre[1])))


def _read_box_table(cohort_dir: Path, known_patients: set[str] | None = None) -> pd.DataFrame | None:
    """``roi_boxes.csv`` checked row by row (not against images), or None when absent."""
    path = cohort_dir / BOX_TABLE_FILE
    if not path.is_file():
        return None
    stat = path.stat()
    table = _read_box_table_cached(str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    if known_patients is not None:
        unknown = ~table["patient_id"].isin(known_patients)
        if unknown.any():
            row = int(np.flatnonzero(unknown)[0])
            pid = table["patient_id"].iloc[row]
            raise CohortError(f"line {row + 2}: patient not in {CLINICAL_FILE}", pid, BOX_TABLE_FILE)
    return table


@functools.lru_cache(maxsize=4)
def _read_box_table_cached(path: str, mtime_ns: int, size: int) -> pd.DataFrame:
    """Read and check ``roi_boxes.csv`` once per file version (every phase of every patient
    asks for it). Callers filter the frame and never change it."""
    table = _read_table(path, BOX_TABLE_FILE, {"patient_id": str, "phase": str}, BOX_COLUMNS)

    def fail(mask: pd.Series, text) -> None:
        if mask.any():
            row = int(np.flatnonzero(mask.to_numpy())[0])
            r = table.iloc[row]
            pid = None if pd.isna(r["patient_id"]) else str(r["patient_id"])
            raise CohortError(f"line {row + 2}: {text(r)}", pid, BOX_TABLE_FILE)

    fail(table["patient_id"].isna(), lambda r: "empty patient_id")
    fail(~table["phase"].isin(PHASES), lambda r: f"unknown phase {r['phase']!r}, expected one of {', '.join(PHASES)}")
    index_columns = list(BOX_COLUMNS[2:])
    numbers = table[index_columns].apply(pd.to_numeric, errors="coerce")
    bad = numbers.isna() | (numbers != numbers.round()) | (numbers < 0)

    def describe_bad(r) -> str:
        columns = [c for c in index_columns if bad.at[r.name, c]]
        values = ", ".join(str(r[c]) for c in columns)
        return f"{', '.join(columns)} must be whole numbers >= 0 (got {values})"

    fail(bad.any(axis=1), describe_bad)
    table[index_columns] = numbers.astype(int)
    fail(
        (table["x_min"] > table["x_max"]) | (table["y_min"] > table["y_max"]),
        lambda r: f"box with min > max (x {r['x_min']}..{r['x_max']}, y {r['y_min']}..{r['y_max']})",
    )
    fail(
        table.duplicated(["patient_id", "phase", "slice"]),
        lambda r: f"second box for {r['phase']} slice {r['slice']}",
    )
    return table


# %% Whole-cohort validation --------------------------------------------------------------


@dataclass
class ValidationReport:
    """What :func:`validate_cohort` found in a valid cohort.

    Attributes:
        cohort_dir: the folder checked.
        patients: patient ids in ``clinical.csv`` order.
        n_er, n_ner: patients with and without early recurrence.
        slices_per_phase: ROI slices over all patients, per phase.
        spacing_range: per phase, ``((min, max) per axis x, y, z)`` in mm.
        size_range: per phase, ``((min, max) per axis x, y, z)`` in voxels.
        warnings: problems that do not stop the study (e.g. a folder with no clinical row).
        clinical_only: only the clinical table was checked and the per-phase fields are
            empty: the folder has no ``images/`` folder (:func:`is_clinical_only`), or the
            clinical study alone was asked for (``requested_clinical_only``).
        without_images: the patients without a folder ``images/<patient_id>/`` (every patient
            of a folder without ``images/``), in table order.
        requested_clinical_only: ``validate_cohort(..., clinical_only=True)`` on a folder that
            has ``images/``: its images were not read.
    """

    cohort_dir: Path
    patients: list[str]
    n_er: int
    n_ner: int
    slices_per_phase: dict[str, int]
    spacing_range: dict[str, tuple[tuple[float, float], ...]]
    size_range: dict[str, tuple[tuple[int, int], ...]]
    warnings: list[str] = field(default_factory=list)
    clinical_only: bool = False
    without_images: list[str] = field(default_factory=list)
    requested_clinical_only: bool = False

    @property
    def n_patients(self) -> int:
        return len(self.patients)

    @property
    def n_slices(self) -> int:
        """ROI slices of the reference phase (``REFERENCE_PHASE``) over all patients."""
        return self.slices_per_phase[REFERENCE_PHASE]

    def summary(self) -> str:
        lines = [
            f"cohort {self.cohort_dir}: {self.n_patients} patients (ER {self.n_er}, NER {self.n_ner}), valid",
        ]
        if self.requested_clinical_only:
            lacking = (f"{len(self.without_images)} of {self.n_patients} patients have no images "
                       f"({_some(self.without_images)})" if self.without_images else "every patient has images")
            lines.append(f"clinical study only (asked for): {IMAGES_DIR}/ is not read; {lacking}; "
                         "the notebooks that read images are skipped")  # fmt: skip
        elif self.clinical_only:
            lines.append(f"clinical-only cohort: no {IMAGES_DIR}/ folder; the notebooks that read images are skipped")
        else:
            lines.append("ROI slices: " + ", ".join(f"{p} {n}" for p, n in self.slices_per_phase.items()))
        for phase in self.spacing_range:
            spacing = " x ".join(f"{lo:.3g}-{hi:.3g}" for lo, hi in self.spacing_range[phase])
            size = " x ".join(f"{lo}-{hi}" for lo, hi in self.size_range[phase])
            lines.append(f"{phase}: spacing (x, y, z) {spacing} mm, size {size} voxels")
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def validate_cohort(cohort_dir: str | os.PathLike, progress: bool | None = None, n_folds: int | None = None,
                    clinical_only: bool = False) -> ValidationReport:  # fmt: skip
    """Check every file of a cohort folder; never writes to it.

    Checks ``clinical.csv`` (including that both classes, ER and NER, have patients: at
    least ``n_folds`` each when given, as the study's stratified cross-validation needs one
    of each in every test fold), ``roi_boxes.csv`` when present, then per patient every
    phase image and its ROI. Problems are collected; the first is raised with the count of
    the others.

    A folder without ``images/`` is a clinical-only cohort: the clinical table is checked
    and the report says ``clinical_only``. In a folder with ``images/``, patients without a
    folder ``images/<patient_id>/`` are one problem naming them all, unless ``clinical_only``
    asks for the clinical study alone: then no image is read and the report lists them
    (``without_images``).

    Args:
        progress: show a tqdm bar over patients; None shows it for 20 patients or more
            when stderr is a terminal.
        n_folds: the folds of the run that will use the cohort (its profile's ``n_folds``);
            None asks for one patient of each class.
        clinical_only: check the clinical table only, as for a folder without ``images/``
            (``run --clinical-only``).

    Raises:
        CohortError: the first problem, e.g. ``patient HCC007, file images/HCC007/ART.nii.gz:
            missing phase ART (and 3 further problems)``.
    """
    from tqdm import tqdm

    cohort_dir = Path(cohort_dir)
    if not cohort_dir.is_dir():
        raise CohortError(f"cohort folder {cohort_dir} does not exist")
    logger.info("validating cohort %s", cohort_dir)
    clinical, problems = _check_clinical(cohort_dir)
    _raise_first(problems)
    problems += _check_classes(clinical["early_recurrence"], n_folds)
    patients = clinical["patient_id"].tolist()
    no_images_folder = is_clinical_only(cohort_dir)
    without = list(patients) if no_images_folder else patients_without_images(cohort_dir, patients)
    if no_images_folder or clinical_only:
        _raise_first(problems)
        n_er = int(clinical["early_recurrence"].sum())
        return ValidationReport(cohort_dir=cohort_dir, patients=patients, n_er=n_er, n_ner=len(patients) - n_er,
                                slices_per_phase=dict.fromkeys(PHASES, 0), spacing_range={}, size_range={},
                                clinical_only=True, without_images=without,
                                requested_clinical_only=not no_images_folder)  # fmt: skip
    if without:
        first = without[0]
        problems.insert(0, CohortError(
            f"missing patient folder {IMAGES_DIR}/{first}: {len(without)} of {len(patients)} patients have no "
            f"images ({_some(without)}); the image models need every patient's three phases: add their images, "
            "remove their rows from the clinical table to study the imaged patients, or run the clinical study "
            "on every patient with --clinical-only",
            first, _relative(phase_path(cohort_dir, first, PHASES[0]), cohort_dir),
        ))  # fmt: skip
    table = _read_box_table(cohort_dir, known_patients=set(patients))

    slices = dict.fromkeys(PHASES, 0)
    spacings: dict[str, list] = {p: [] for p in PHASES}
    sizes: dict[str, list] = {p: [] for p in PHASES}
    # tqdm: disable=None hides the bar when stderr is not a terminal
    disable = (True if len(patients) < 20 else None) if progress is None else not progress
    imaged = [pid for pid in patients if pid not in set(without)]
    for pid in tqdm(imaged, desc="validate", unit="patient", disable=disable, leave=False):
        for phase in PHASES:
            try:
                image = read_phase(cohort_dir, pid, phase)
                boxes = _phase_boxes(cohort_dir, pid, phase, image, table)
            except CohortError as err:
                problems.append(err)
                continue
            slices[phase] += len(boxes)
            spacings[phase].append(image.GetSpacing())
            sizes[phase].append(image.GetSize())
    _raise_first(problems)

    warnings = []
    images_dir = cohort_dir / "images"
    if images_dir.is_dir():
        for folder in sorted(p for p in images_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if folder.name not in set(patients):
                warnings.append(f"folder images/{folder.name} has no row in {CLINICAL_FILE}; ignored")
    n_er = int(clinical["early_recurrence"].sum())
    return ValidationReport(
        cohort_dir=cohort_dir,
        patients=patients,
        n_er=n_er,
        n_ner=len(patients) - n_er,
        slices_per_phase=slices,
        spacing_range={p: _ranges(spacings[p], float) for p in PHASES},
        size_range={p: _ranges(sizes[p], int) for p in PHASES},
        warnings=warnings,
    )


def is_clinical_only(cohort_dir: str | os.PathLike) -> bool:
    """Whether a cohort folder is clinical-only: it has no ``images/`` folder."""
    return not (Path(cohort_dir) / IMAGES_DIR).is_dir()


def patients_without_images(cohort_dir: str | os.PathLike, patients: list[str]) -> list[str]:
    """The ``patients`` (in their order) that have no folder ``images/<patient_id>/``.

    A patient whose folder exists but lacks a phase is not listed: that folder is incomplete
    (``validate_cohort`` names the missing phase).
    """
    return [str(pid) for pid in patients if not _patient_dir(cohort_dir, str(pid)).is_dir()]


def _check_classes(labels: pd.Series, n_folds: int | None) -> list[CohortError]:
    """A problem unless each class (ER = 1, NER = 0) has at least ``n_folds`` patients (one when None)."""
    needed = 1 if n_folds is None else max(int(n_folds), 1)
    counts = {name: int((labels == value).sum()) for value, name in ((1, "ER"), (0, "NER"))}
    short = [f"{counts[name]} {name}" for name in counts if counts[name] < needed]
    if not short:
        return []
    why = ("the study needs patients of both classes" if n_folds is None else
           f"a {needed}-fold cross-validation needs at least {needed} patients of each class")  # fmt: skip
    n = len(labels)
    return [CohortError(
        f"{n} patient{'s' if n != 1 else ''}, {' and '.join(short)} (column early_recurrence): {why}, ER (1) and NER (0)",
        file=CLINICAL_FILE,
    )]  # fmt: skip


# %% Helpers ------------------------------------------------------------------------------


def _raise_first(problems: list[CohortError]) -> None:
    if not problems:
        return
    first = problems[0]
    more = len(problems) - 1
    suffix = f" (and {more} further problem{'s' if more > 1 else ''})" if more else ""
    raise CohortError(first.problem + suffix, first.patient, first.file)


def _patient_dir(cohort_dir: str | os.PathLike, patient_id: str) -> Path:
    return Path(cohort_dir) / "images" / str(patient_id)


def _find_image(cohort_dir: Path, patient_id: str, stem: str) -> Path | None:
    folder = _patient_dir(cohort_dir, patient_id)
    found = [folder / f"{stem}{suffix}" for suffix in IMAGE_SUFFIXES if (folder / f"{stem}{suffix}").is_file()]
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise CohortError(f"several files for {stem}: {names}; keep one", patient_id, _relative(found[0], cohort_dir))
    return found[0] if found else None


def _relative(path: Path, cohort_dir: Path) -> str:
    try:
        return Path(path).relative_to(cohort_dir).as_posix()
    except ValueError:
        return str(path)


def _ranges(values: list, cast) -> tuple:
    if not values:
        return ()
    array = np.asarray(values)
    return tuple((cast(array[:, i].min()), cast(array[:, i].max())) for i in range(array.shape[1]))


def _show(value) -> str:
    """A value for a message: numbers as ``150`` or ``2.5``, text quoted."""
    if isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
        return f"{float(value):g}"
    return repr(value)


def _some(ids: list[str], shown: int = 20) -> str:
    """Patient ids for a message: all of them, or the first ``shown`` and how many more."""
    more = len(ids) - shown
    return ", ".join(ids[:shown]) + (f" and {more} more" if more > 0 else "")


def _fmt(values) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in values) + ")"


def _fmt_slices(slices: list[int]) -> str:
    return "[" + ", ".join(map(str, slices)) + "]" if slices else "none"


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _itk_reason(err: RuntimeError) -> str:
    """The useful line of a SimpleITK error (they span many lines)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    for line in lines:
        if "Unable to determine ImageIO" in line or "ImageIO" in line or "Could not" in line:
            return line.split(": ", 1)[-1][:200]
    return (lines[-1] if lines else "SimpleITK error")[:200]


@contextlib.contextmanager
def _quiet_itk() -> Iterator[None]:
    """Silence ITK warnings on stderr (the CLI promises one line on bad input)."""
    previous = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(previous)
