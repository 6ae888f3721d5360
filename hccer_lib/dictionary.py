"""The cohort's data dictionary: which column holds which variable, in which unit, and the outcome.

A cohort folder may hold ``data_dictionary.yaml`` (a commented example is
``docs/data_dictionary_example.yaml``). Without it the dictionary is the paper's: the 17
variables of Table 1 (``clinical.CLINICAL_VARIABLES``) under their own column names, all
required, and the 0/1 column ``early_recurrence``; today's cohort folders need no file.

The file says, for each candidate variable, its source column, type (``binary``,
``numeric``, ``categorical``), unit, and how the paper's method binarises or encodes it
(cut-off and which side is coded 1, or levels and their one-hot bits); and the outcome,
either a 0/1 column or a time column, an event column and a horizon (ER = event within
the horizon; a patient censored before the horizon is excluded and counted).

A variable named like one of the paper's 17 (``age``, ``tb``, ...) keeps the paper's type,
cut-off and levels: only its ``source``, ``unit`` (converted to the paper's unit with
:data:`CONVERSIONS`), ``codes`` and ``required`` may be given. Any other name is a new
variable, described in full. Unknown keys, types, units and levels are
:class:`DictionaryError` naming the variable.

This module only reads the dictionary; ``cohort.load_clinical`` applies it to the table.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from pathlib import Path

from hccer_lib.clinical import (
    CLINICAL_VARIABLES,
    LABEL_COLUMN,
    VARIABLES_BY_COLUMN,
    ClinicalVariable,
)

DICTIONARY_FILE = "data_dictionary.yaml"
DEFAULT_TABLE = "clinical.csv"
TABLE_SUFFIXES = (".csv", ".xlsx")
ID_COLUMN = "patient_id"
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]*$")

#: Unit conversions to the unit of each of the paper's variables (the key): value in the
#: paper's unit = value x factor. Bilirubin's mg/dL -> umol/L (x 17.1) is bilirubin's own
#: molar mass; AFP's IU/mL -> ug/L (x 1.21) is the WHO standard 72/225.
CONVERSIONS: dict[str, dict[str, float]] = {
    "years": {"years": 1.0, "months": 1 / 12, "days": 1 / 365.25},
    "mm": {"mm": 1.0, "cm": 10.0, "m": 1000.0},
    "U/L": {"U/L": 1.0, "IU/L": 1.0, "ukat/L": 60.0},
    "g/L": {"g/L": 1.0, "g/dL": 10.0},
    "umol/L": {"umol/L": 1.0, "mg/dL": 17.1},
    "ug/L": {"ug/L": 1.0, "ng/mL": 1.0, "IU/mL": 1.21},
    "": {"": 1.0},
}
#: Units a new (non-paper) variable may be given in; its values are used as they are.
OTHER_UNITS = ("%", "10^9/L", "mmol/L", "mg/L", "s", "kg", "kg/m^2", "mL", "ratio", "score")
KNOWN_UNITS = tuple(dict.fromkeys([u for table in CONVERSIONS.values() for u in table] + list(OTHER_UNITS)))
#: Time units of a time-to-event outcome, in days.
TIME_UNITS: dict[str, float] = {"days": 1.0, "weeks": 7.0, "months": 365.25 / 12, "years": 365.25}

TYPES = {"binary": "binary", "numeric": "threshold", "categorical": "category"}
PAPER_KEYS = ("source", "unit", "codes", "required")
NEW_KEYS = (*PAPER_KEYS, "type", "name", "cutoff", "coded_1", "levels", "onehot", "range")
TOP_KEYS = ("table", "sheet", "id", "outcome", "variables")


class DictionaryError(ValueError):
    """A data dictionary that cannot be used; the message names the variable or key."""


@dataclass(frozen=True)
class Outcome:
    """How early recurrence is read.

    Either ``column`` (0/1), or ``time`` and ``event`` columns with ``horizon`` in
    ``time_unit``: ER = 1 when the event (1) happened at a time <= horizon, 0 when the
    patient was followed beyond the horizon (or to it) without it, excluded when censored
    (event 0) before the horizon.
    """

    column: str | None = LABEL_COLUMN
    time: str | None = None
    event: str | None = None
    horizon: float | None = None
    time_unit: str = "months"

    @property
    def is_time_to_event(self) -> bool:
        return self.time is not None

    @property
    def source_columns(self) -> tuple[str, ...]:
        return (self.time, self.event) if self.is_time_to_event else (self.column,)


@dataclass(frozen=True)
class DataDictionary:
    """Where a cohort's clinical table is and what its columns mean.

    Attributes:
        variables: the candidate variables, in Table 1 order (paper's first, then new ones).
        outcome: how the label is read.
        table: the table's file name in the cohort folder (``.csv`` or ``.xlsx``).
        sheet: the workbook's sheet (None: the first).
        id_column: the column holding the patient id.
        source: the dictionary file, or None for the paper's default.
        unit_factors: per variable column, the factor from the table's unit to ``unit``.
    """

    variables: tuple[ClinicalVariable, ...] = CLINICAL_VARIABLES
    outcome: Outcome = Outcome()
    table: str = DEFAULT_TABLE
    sheet: str | None = None
    id_column: str = ID_COLUMN
    source: str | None = None
    unit_factors: tuple[tuple[str, float], ...] = ()

    @property
    def is_default(self) -> bool:
        return self.source is None

    def factor(self, column: str) -> float:
        """The factor from the table's unit of ``column`` to the variable's unit (1 if none)."""
        return dict(self.unit_factors).get(column, 1.0)

    def source_columns(self) -> list[str]:
        """Every column of the table that the dictionary reads."""
        return [self.id_column, *self.outcome.source_columns, *(v.source_column for v in self.variables)]


PAPER_DICTIONARY = DataDictionary()


def find_table(cohort_dir: Path) -> str:
    """The default table name: ``clinical.csv``, else ``clinical.xlsx`` when only that exists."""
    if not (cohort_dir / DEFAULT_TABLE).is_file() and (cohort_dir / "clinical.xlsx").is_file():
        return "clinical.xlsx"
    return DEFAULT_TABLE


def load_dictionary(cohort_dir: str | os.PathLike) -> DataDictionary:
    """The cohort's ``data_dictionary.yaml``, or the paper's dictionary when there is none.

    Raises:
        DictionaryError: unreadable YAML, an unknown key, type, unit or level, a missing
            cut-off or level list; the message names the variable.
    """
    import yaml

    cohort_dir = Path(cohort_dir)
    path = cohort_dir / DICTIONARY_FILE
    if not path.is_file():
        return replace(PAPER_DICTIONARY, table=find_table(cohort_dir))
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError, OSError) as err:
        raise DictionaryError(f"unreadable YAML ({str(err).strip().splitlines()[0]})") from None
    return parse_dictionary(spec or {}, default_table=find_table(cohort_dir))


def load_spec(cohort_dir: str | os.PathLike) -> dict | None:
    """The cohort's ``data_dictionary.yaml`` as a JSON mapping (None without the file), for saving.

    The final model keeps it (``model_folder``) and reads a new cohort with it; the mapping
    must parse to the same dictionary as the file.

    Raises:
        DictionaryError: as :func:`load_dictionary`.
    """
    import json

    import yaml

    cohort_dir = Path(cohort_dir)
    path = cohort_dir / DICTIONARY_FILE
    if not path.is_file():
        return None
    dictionary = load_dictionary(cohort_dir)
    spec = json.loads(json.dumps(yaml.safe_load(path.read_text(encoding="utf-8")) or {}, default=str))
    if parse_dictionary(spec, default_table=find_table(cohort_dir)) != dictionary:
        raise DictionaryError("the dictionary does not survive its conversion to JSON (a value YAML reads as a date or "
                              "another type?); quote such values")  # fmt: skip
    spec.setdefault("table", dictionary.table)
    return spec


def parse_dictionary(spec: dict, default_table: str = DEFAULT_TABLE) -> DataDictionary:
    """A :class:`DataDictionary` from the parsed YAML mapping (see the module docstring)."""
    if not isinstance(spec, dict):
        raise DictionaryError("the file must be a mapping (keys table, sheet, id, outcome, variables)")
    _unknown_keys(spec, TOP_KEYS, "the dictionary")
    table = str(spec.get("table", default_table))
    if not table.endswith(TABLE_SUFFIXES) or "/" in table or "\\" in table:
        raise DictionaryError(f"table {table!r}: expected a .csv or .xlsx file name in the cohort folder")
    sheet = spec.get("sheet")
    if sheet is not None and not table.endswith(".xlsx"):
        raise DictionaryError(f"sheet {sheet!r} is given but table {table!r} is not an .xlsx workbook")
    outcome = _parse_outcome(spec.get("outcome", {"column": LABEL_COLUMN}))
    raw_variables = spec.get("variables")
    if raw_variables is None:
        variables, factors = CLINICAL_VARIABLES, ()
    else:
        if not isinstance(raw_variables, dict) or not raw_variables:
            raise DictionaryError("variables: expected a mapping of variable name -> its description")
        parsed = [_parse_variable(str(name), entry or {}) for name, entry in raw_variables.items()]
        order = {v.column: i for i, v in enumerate(CLINICAL_VARIABLES)}
        parsed.sort(key=lambda item: order.get(item[0].column, len(order)))  # Table 1's order, then new ones
        variables = tuple(v for v, _ in parsed)
        factors = tuple((v.column, f) for v, f in parsed if f != 1.0)
    dictionary = DataDictionary(
        variables=variables, outcome=outcome, table=table, sheet=None if sheet is None else str(sheet),
        id_column=str(spec.get("id", ID_COLUMN)), source=DICTIONARY_FILE, unit_factors=factors,
    )  # fmt: skip
    columns = dictionary.source_columns()
    twice = sorted({c for c in columns if columns.count(c) > 1})
    if twice:
        raise DictionaryError(f"column {twice[0]!r} is the source of more than one variable (or of the id/outcome)")
    return dictionary


def _parse_outcome(spec) -> Outcome:
    if not isinstance(spec, dict):
        raise DictionaryError("outcome: expected a mapping (column, or time, event, unit and horizon)")
    _unknown_keys(spec, ("column", "time", "event", "unit", "horizon"), "outcome")
    if "time" in spec or "event" in spec:
        missing = [k for k in ("time", "event", "unit", "horizon") if k not in spec]
        if missing:
            raise DictionaryError(f"outcome: a time-to-event outcome needs time, event, unit and horizon; missing {', '.join(missing)}")
        if "column" in spec:
            raise DictionaryError("outcome: give either column (0/1) or time + event + horizon, not both")
        unit = str(spec["unit"])
        if unit not in TIME_UNITS:
            raise DictionaryError(f"outcome: unknown time unit {unit!r}, expected one of {', '.join(TIME_UNITS)}")
        horizon = _number(spec["horizon"], "outcome: horizon")
        if horizon <= 0:
            raise DictionaryError(f"outcome: horizon must be > 0, got {horizon:g}")
        return Outcome(column=None, time=str(spec["time"]), event=str(spec["event"]), horizon=horizon, time_unit=unit)
    return Outcome(column=str(spec.get("column", LABEL_COLUMN)))


def _parse_variable(name: str, spec) -> tuple[ClinicalVariable, float]:
    """One variable and the factor from its table unit to its unit."""
    where = f"variable {name!r}"
    if not isinstance(spec, dict):
        raise DictionaryError(f"{where}: expected a mapping (source, type, unit, ...)")
    if not NAME_PATTERN.match(name) or name in (ID_COLUMN, LABEL_COLUMN):
        raise DictionaryError(f"{where}: a name is lower-case letters, digits and '_' (not {ID_COLUMN} or {LABEL_COLUMN})")
    paper = VARIABLES_BY_COLUMN.get(name)
    if paper is not None:
        extra = [k for k in spec if k not in PAPER_KEYS]
        if extra:
            raise DictionaryError(
                f"{where} is one of the paper's variables: its type, cut-off and levels are the paper's; "
                f"only {', '.join(PAPER_KEYS)} may be given (got {', '.join(map(str, extra))}); "
                "describe a variable of your own under another name"
            )  # fmt: skip
        base = paper
    else:
        _unknown_keys(spec, NEW_KEYS, where)
        base = _new_variable(name, spec, where)
    unit = str(spec.get("unit", base.unit))
    factor = _unit_factor(base, unit, where, is_paper=paper is not None)
    source = spec.get("source")
    variable = replace(base, source=None if source is None else str(source), required=bool(spec.get("required", False)))
    if "codes" in spec:
        variable = replace(variable, aliases=tuple(_parse_codes(variable, spec["codes"], where).items()))
    return variable, factor


def _new_variable(name: str, spec: dict, where: str) -> ClinicalVariable:
    kind_name = spec.get("type")
    if kind_name not in TYPES:
        raise DictionaryError(f"{where}: type {kind_name!r} is unknown, expected one of {', '.join(TYPES)}")
    kind = TYPES[kind_name]
    label = str(spec.get("name", name))
    unit = str(spec.get("unit", ""))
    if kind == "binary":
        levels = tuple(str(x) for x in spec.get("levels", ("no", "yes")))
        if len(levels) != 2:
            raise DictionaryError(f"{where}: a binary variable has two levels (coded 0 and 1), got {list(levels)}")
        return ClinicalVariable(label, name, "binary", levels, unit=unit)
    if kind == "threshold":
        if "cutoff" not in spec:
            raise DictionaryError(f"{where}: a numeric variable needs a cutoff (in its unit)")
        cutoff = _number(spec["cutoff"], f"{where}: cutoff")
        coded_1 = str(spec.get("coded_1", "high"))
        if coded_1 not in ("high", "low"):
            raise DictionaryError(f"{where}: coded_1 must be 'high' (>= cutoff coded 1) or 'low' (< cutoff coded 1), got {coded_1!r}")
        low, high = f"<{cutoff:g}", f">={cutoff:g}"
        levels = (high, low) if coded_1 == "low" else (low, high)
        value_range = spec.get("range", [None, None])
        if not isinstance(value_range, list) or len(value_range) != 2:
            raise DictionaryError(f"{where}: range must be [low, high] (null for unbounded)")
        bounds = tuple(None if b is None else _number(b, f"{where}: range") for b in value_range)
        return ClinicalVariable(label, name, "threshold", levels, cutoff=cutoff, unit=unit,
                                high_first=coded_1 == "low", value_range=bounds)  # fmt: skip
    levels = spec.get("levels")
    if not isinstance(levels, list) or len(levels) < 2:
        raise DictionaryError(f"{where}: a categorical variable needs levels: a list of at least two")
    levels = tuple(str(x) for x in levels)
    onehot = spec.get("onehot")
    if onehot is not None:
        onehot = tuple(str(x) for x in onehot)
        unknown = [x for x in onehot if x not in levels]
        if unknown or not onehot:
            raise DictionaryError(f"{where}: onehot level {unknown[0] if unknown else None!r} is not one of its levels {list(levels)}")
    return ClinicalVariable(label, name, "category", levels, codes=levels, unit=unit, onehot=onehot)


def _unit_factor(variable: ClinicalVariable, unit: str, where: str, is_paper: bool) -> float:
    if is_paper:
        table = CONVERSIONS.get(variable.unit, {variable.unit: 1.0})
        if unit not in table:
            raise DictionaryError(
                f"{where}: unit {unit!r} cannot be converted to the paper's {variable.unit or 'unitless'} "
                f"values; known: {', '.join(repr(u) for u in table)}"
            )  # fmt: skip
        return table[unit]
    if unit not in KNOWN_UNITS:
        raise DictionaryError(f"{where}: unknown unit {unit!r}, expected one of {', '.join(repr(u) for u in KNOWN_UNITS)}")
    return 1.0


def _parse_codes(variable: ClinicalVariable, codes, where: str) -> dict[str, str]:
    """``codes``: raw value in the table -> level label."""
    if variable.kind not in ("binary", "category"):
        raise DictionaryError(f"{where}: codes apply to binary and categorical variables only")
    if not isinstance(codes, dict) or not codes:
        raise DictionaryError(f"{where}: codes must map raw values to levels, e.g. {{1: {variable.levels[0]}}}")
    aliases = {}
    for raw, level in codes.items():
        if isinstance(level, bool):  # YAML 1.1 reads an unquoted yes / no as true / false
            level = "yes" if level else "no"
        if str(level) not in variable.levels:
            raise DictionaryError(f"{where}: code {raw!r} maps to unknown level {level!r}, expected one of {list(variable.levels)}")
        aliases[_text(raw)] = str(level)
    return aliases


def raw_to_level(variable: ClinicalVariable) -> dict[str, str]:
    """For a binary or categorical variable: raw text in the table -> level label.

    A dictionary's ``codes`` (``variable.aliases``) when given; else a category's codes
    (``"M"`` -> ``"male"``) and a binary variable's ``"0"`` and ``"1"``.
    """
    if variable.aliases:
        return dict(variable.aliases)
    if variable.kind == "binary":
        return {"0": variable.levels[0], "1": variable.levels[1]}
    return dict(zip(variable.codes or variable.levels, variable.levels, strict=True))


def _text(value) -> str:
    """Raw cell text as compared with codes: stripped, ``1.0`` read as ``1``."""
    text = str(value).strip()
    return re.sub(r"\.0$", "", text)


def _number(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DictionaryError(f"{where} must be a number, got {value!r}")
    return float(value)


def _unknown_keys(spec: dict, allowed: tuple[str, ...], where: str) -> None:
    unknown = [str(k) for k in spec if k not in allowed]
    if unknown:
        raise DictionaryError(f"{where}: unknown key {unknown[0]!r}, expected {', '.join(allowed)}")
