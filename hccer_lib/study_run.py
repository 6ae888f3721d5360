"""One run of the study: its parameters, and every path it reads and writes.

A run is what ``run_all.sh`` (``hccer_lib.runner``) executes: the notebooks in order, with the
same parameters (``profile``, ``cohort_dir``, ``synthetic``, ``seed``, ``data_root``,
``figures_dir``). Each notebook makes its :class:`StudyRun` from those parameters with one
call (:meth:`StudyRun.from_parameters`), and reads every path from it: relative paths are
resolved from the project root (``outputs.project_path``), whatever the working folder, so
that a notebook opened in JupyterLab (kernel in ``notebooks/``) reads and writes the same
files as the runner.

The layout keeps runs apart: a run never changes another run's files (docs/DESIGN.md,
"The run object and the outputs layout").

- ``data/synthetic_seed<N>/``: the synthetic cohort of generator seed N (:func:`synthetic_cohort_dir`),
  which is also its work folder; another cohort folder ``<dir>`` gets the work folder
  ``data/<dir name>/`` (``outputs.work_dir_for``).
- ``<work_dir>/folds_<n>_seed<s>.csv``: the folds (``evaluation.folds_path``); caches keyed by
  their settings (``processed/``, ``runs/``) are shared by the runs that share the settings.
- ``<work_dir>/results/<profile>/``: what a profile derives from the cohort: ``predictions/<model>.csv``
  and ``final_model/`` (:attr:`StudyRun.results_dir`).
- ``figures/<cohort name>/<profile>/``: the run's tables and figures, and ``run.json``.
- ``executed/<cohort name>/<profile>/``: the executed notebooks.

``<profile>`` is :attr:`StudyRun.run_name`: the profile's name, or ``<profile>_seed<N>`` for a run
whose seed N is neither the default (2020) nor named by the cohort folder (a cohort of your own run
with ``--seed N``), so that runs of other seeds keep their own files there too; a run whose
hyper-parameters differ from the study's adds them (``quick_alpha0.01``).

The study's settings (:class:`StudySettings`: the clinical selection protocol and the models'
hyper-parameters) are defined here once, with the study's values as defaults. A run carries them
(:attr:`StudyRun.study_settings`); the runner injects each into the notebooks that declare it
(``run --set alpha=0.01``) and records them in ``run.json``; the notebooks pass them on to the
library (``final_model.refit_final_model``, ``simulation.run_simulation``), whose defaults are
these same values (:data:`DEFAULT_SETTINGS`).
"""

from __future__ import annotations

import os
import platform
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path

from hccer_lib import outputs

#: Generator seed of the default synthetic cohort (``run_all.sh`` without ``--seed``).
DEFAULT_SEED = 2020
#: The synthetic cohort of seed N is ``<data_root>/synthetic_seed<N>``.
SYNTHETIC_PREFIX = "synthetic_seed"
#: The parameters every notebook receives (``StudyRun.parameters`` adds the study's settings).
RUN_PARAMETERS = ("profile", "cohort_dir", "synthetic", "seed", "data_root", "figures_dir")
#: The record of a run, in its figures folder.
RUN_RECORD = "run.json"
#: Folder (under the project root) of the executed notebooks, per cohort and profile.
EXECUTED_ROOT = "executed"
#: Folder (under the cohort's work folder) of what each profile derives from the cohort.
RESULTS_FOLDER = "results"


#: Clinical selection protocols: ``paper`` (variables selected on all patients, as published) or
#: ``strict`` (selected in each training fold).
SELECTION_PROTOCOLS = ("paper", "strict")


@dataclass(frozen=True)
class StudySettings:
    """The study's settings that notebooks and modules share: the one place of their values.

    Attributes:
        selection_protocol: the clinical vector of the deep and fusion models (notebooks 04-08):
            ``"paper"`` (selected on all patients, as published) or ``"strict"`` (in each training fold).
        alpha: selection threshold on the chi-squared p-value (section II.A; notebooks 01, 07, 08).
        n_estimators: trees of the clinical and radiomics random forests (notebooks 01, 03, 07, 08).
        inner_folds: inner cross-validation (by patient) choosing the LASSO penalty (notebooks 03, 07, 08).
        min_texture_voxels: ROIs smaller than this get texture features imputed (small-ROI rule;
            notebooks 03, 07, 08).
    """

    selection_protocol: str = "paper"
    alpha: float = 0.05
    n_estimators: int = 500
    inner_folds: int = 5
    min_texture_voxels: int = 16

    def __post_init__(self) -> None:
        check_settings(asdict(self), "StudySettings")

    def changed(self) -> dict:
        """The settings whose value differs from the study's (:data:`DEFAULT_SETTINGS`), in field order."""
        return {k: v for k, v in asdict(self).items() if v != getattr(DEFAULT_SETTINGS, k)}


#: The names of the settings, in order.
SETTING_NAMES = tuple(f.name for f in fields(StudySettings))
_SETTING_TYPES = {"selection_protocol": str, "alpha": float, "n_estimators": int, "inner_folds": int,
                  "min_texture_voxels": int}


def check_settings(values: Mapping, source: str) -> dict:
    """``values`` as the settings' types; ``ValueError`` names the setting, the value and ``source``.

    An unknown name, a value of the wrong type (``True`` is no number; an int is a valid ``alpha``)
    or out of range (``alpha`` in (0, 1), counts >= 1 (``inner_folds`` >= 2, ``min_texture_voxels``
    >= 0), a protocol of :data:`SELECTION_PROTOCOLS`) raises.
    """
    unknown = [k for k in values if k not in _SETTING_TYPES]
    if unknown:
        raise ValueError(f"{source}: unknown setting {', '.join(map(repr, unknown))}; the settings are {', '.join(_SETTING_TYPES)}")
    checked = {}
    for name, value in values.items():
        kind = _SETTING_TYPES[name]
        ok = isinstance(value, str) if kind is str else (
            not isinstance(value, bool) and (isinstance(value, int) if kind is int else isinstance(value, int | float)))
        if not ok:
            raise ValueError(f"{source}: setting {name} must be {kind.__name__}, got {value!r} ({type(value).__name__})")
        value = kind(value)
        if name == "selection_protocol":
            bad = value not in SELECTION_PROTOCOLS
            need = f"one of {', '.join(SELECTION_PROTOCOLS)}"
        elif name == "alpha":
            bad, need = not 0 < value < 1, "in (0, 1)"
        else:
            low = {"inner_folds": 2, "min_texture_voxels": 0}.get(name, 1)
            bad, need = value < low, f">= {low}"
        if bad:
            raise ValueError(f"{source}: setting {name} must be {need}, got {value!r}")
        checked[name] = value
    return checked


#: The study's settings: the defaults of every run, notebook and library call.
DEFAULT_SETTINGS = StudySettings()


def study_settings(values: Mapping | None = None, source: str = "the run's settings") -> StudySettings:
    """The study's settings with ``values`` in place of the defaults; a ``None`` value keeps the default.

    ``source`` (e.g. ``"--set"``, ``"notebook parameters"``) names where the values came from in the
    ``ValueError`` of an unknown setting or a bad value (:func:`check_settings`).
    """
    given = {k: v for k, v in dict(values or {}).items() if v is not None}
    return replace(DEFAULT_SETTINGS, **check_settings(given, source))


def parse_settings(items: list[str] | tuple[str, ...], source: str = "--set") -> dict:
    """``["alpha=0.01", "selection_protocol=strict"]`` -> ``{"alpha": 0.01, "selection_protocol": "strict"}``.

    Each value is read as its setting's type (``n_estimators=200`` an int, ``alpha=0.01`` a float);
    ``ValueError`` names the item and ``source`` when it is not ``NAME=VALUE``, names an unknown
    setting or holds a bad value.
    """
    values = {}
    for item in items:
        name, sep, text = str(item).partition("=")
        name, text = name.strip(), text.strip()
        if not sep or not name:
            raise ValueError(f"{source} {item!r}: expected NAME=VALUE, e.g. alpha=0.01")
        kind = _SETTING_TYPES.get(name)
        if kind is None:
            check_settings({name: None}, f"{source} {item!r}")
        try:
            values[name] = kind(text)
        except ValueError:
            raise ValueError(f"{source} {item!r}: setting {name} must be {kind.__name__}, got {text!r}") from None
    check_settings(values, source)
    return values


def synthetic_cohort_dir(seed: int = DEFAULT_SEED, data_root: str | os.PathLike = "data") -> Path:
    """``<data_root>/synthetic_seed<seed>``: the folder of the synthetic cohort of generator ``seed`` (as given, not resolved)."""
    return Path(data_root) / f"{SYNTHETIC_PREFIX}{int(seed)}"


@dataclass(frozen=True)
class StudyRun:
    """The parameters of one run and the paths derived from them.

    Attributes:
        profile: the profile's name (``smoke``, ``quick``, ``paper``).
        cohort_dir: the cohort folder as given; ``None`` means the synthetic cohort of ``seed``.
        synthetic: whether the cohort is the generated one.
        seed: the run's seed (the synthetic cohort's generator seed, the folds, the models).
        data_root: where the cohorts' work folders are.
        figures_dir: the root of every run's tables and figures (``figures``).
        study_settings: the study's settings of this run (:class:`StudySettings`; the study's by default).
    """

    profile: str
    cohort_dir: str | os.PathLike | None = None
    synthetic: bool = True
    seed: int = DEFAULT_SEED
    data_root: str | os.PathLike = "data"
    figures_dir: str | os.PathLike = "figures"
    study_settings: StudySettings = field(default=DEFAULT_SETTINGS)

    @classmethod
    def from_parameters(
        cls,
        profile: str,
        cohort_dir: str | os.PathLike | None = None,
        synthetic: bool = True,
        seed: int = DEFAULT_SEED,
        data_root: str | os.PathLike = "data",
        figures_dir: str | os.PathLike = "figures",
        **settings,
    ) -> StudyRun:
        """The run of a notebook's parameters (as the runner injects them).

        ``settings``: the study's settings the notebook declares (``alpha=alpha``, ...); ``None``
        keeps the study's value (:data:`DEFAULT_SETTINGS`). An unknown profile, an unknown
        setting or a bad value raises ``ValueError``.
        """
        from hccer_lib.profiles import get_profile

        get_profile(profile)
        return cls(str(profile), None if cohort_dir is None else str(cohort_dir), bool(synthetic), int(seed),
                   str(data_root), str(figures_dir), study_settings(settings, "notebook parameters"))

    # --- parameters -------------------------------------------------------------------

    @cached_property
    def settings(self):
        """The profile (``profiles.Profile``)."""
        from hccer_lib.profiles import get_profile

        return get_profile(self.profile)

    @property
    def cohort_parameter(self) -> str:
        """The cohort folder as the notebooks receive it (relative to the project root where it was given so)."""
        if self.cohort_dir is None:
            return str(synthetic_cohort_dir(self.seed, self.data_root))
        return str(self.cohort_dir)

    def parameters(self) -> dict:
        """The run's parameters (``runner.notebook_parameters``): the six every notebook receives
        (:data:`RUN_PARAMETERS`), then the study's settings (:data:`SETTING_NAMES`), which a notebook
        receives when it declares them."""
        return {"profile": self.profile, "cohort_dir": self.cohort_parameter, "synthetic": self.synthetic,
                "seed": self.seed, "data_root": str(self.data_root), "figures_dir": str(self.figures_dir),
                **asdict(self.study_settings)}

    # --- paths ------------------------------------------------------------------------

    @property
    def cohort(self) -> Path:
        """The cohort folder (relative paths from the project root)."""
        return outputs.project_path(self.cohort_parameter)

    @property
    def cohort_name(self) -> str:
        """The cohort folder's name (``synthetic_seed2020``): the key of its figures and executed notebooks."""
        return outputs.project_path(self.cohort_parameter).resolve().name

    @property
    def data(self) -> Path:
        """``data_root`` read from the project root."""
        return outputs.project_path(self.data_root)

    @property
    def work_dir(self) -> Path:
        """The cohort's work folder (``outputs.work_dir_for``): folds and caches keyed by their settings."""
        return outputs.work_dir_for(self.cohort_parameter, self.data_root)

    @property
    def run_name(self) -> str:
        """The run's folder name under its cohort: the profile, with ``_seed<N>`` when the seed is not in the cohort's name.

        ``smoke`` for seed 2020 (the default) or for the synthetic cohort of the seed
        (``synthetic_seed7``); ``smoke_seed7`` for a cohort of your own run with seed 7.

        Hyper-parameters changed from the study's (:meth:`StudySettings.changed`) are added as
        ``_<name><value>`` (``quick_alpha0.01``), so that such a run keeps the study's tables and
        predictions. ``selection_protocol`` is not: a ``strict`` run writes ``<model>_strict``
        predictions beside the ``paper`` ones, which notebook 08 compares.
        """
        name = self.profile
        if not (self.seed == DEFAULT_SEED or self.cohort_name == f"{SYNTHETIC_PREFIX}{self.seed}"):
            name += f"_seed{self.seed}"
        changed = {k: v for k, v in self.study_settings.changed().items() if k != "selection_protocol"}
        return name + "".join(f"_{k}{v}" for k, v in changed.items())

    @property
    def results_dir(self) -> Path:
        """``<work_dir>/results/<run_name>``: what this profile derives from the cohort (``predictions/``, ``final_model/``).

        Pass it where the library asks for the folder of the predictions (``evaluation.read_predictions``,
        ``training.train_cross_validated(predictions_dir=...)``, ``report.results_vs_paper``).
        """
        return self.work_dir / RESULTS_FOLDER / self.run_name

    @property
    def predictions_dir(self) -> Path:
        """``<results_dir>/predictions``: one ``<model>.csv`` per model (``evaluation.predictions_path``)."""
        return self.results_dir / "predictions"

    @property
    def final_model_dir(self) -> Path:
        """``<results_dir>/final_model``: the models refitted on every patient (notebook 07)."""
        return self.results_dir / "final_model"

    @property
    def figures(self) -> Path:
        """``<figures_dir>/<cohort name>/<run_name>``: the run's tables and figures."""
        return outputs.project_path(self.figures_dir) / self.cohort_name / self.run_name

    @property
    def executed_dir(self) -> Path:
        """``executed/<cohort name>/<run_name>`` under the project root: the executed notebooks."""
        return outputs.project_path(EXECUTED_ROOT) / self.cohort_name / self.run_name

    @property
    def run_record(self) -> Path:
        """``<figures>/run.json``: parameters, profile, versions and each notebook's status (:func:`write_run_record`)."""
        return self.figures / RUN_RECORD

    @property
    def folds_path(self) -> Path:
        """``<work_dir>/folds_<n>_seed<s>.csv``: the folds of this profile's fold count and this seed."""
        from hccer_lib.evaluation import folds_path

        return folds_path(self.work_dir, self.settings.n_folds, self.seed)

    @property
    def cohort_label(self) -> str:
        """``"synthetic"``, or the cohort folder's name."""
        return "synthetic" if self.synthetic else self.cohort_name

    def describe(self) -> str:
        """Two lines: the profile and seed; the cohort, its work folder and the run's figures folder."""
        return (f"profile {self.profile}, seed {self.seed}; cohort {self.cohort} "
                f"({'synthetic' if self.synthetic else 'your own'})\n"
                f"work folder {self.work_dir}; results {self.results_dir}; tables and figures {self.figures}")

    # --- the record -------------------------------------------------------------------

    def record(self, notebooks: list[dict] | None = None, **extra) -> dict:
        """The content of ``run.json``: parameters (with the study's settings), the settings changed from the
        study's, the profile's fields, versions, notebooks (name, status, seconds)."""
        from hccer_lib.report import software_versions

        return {
            "parameters": self.parameters(),
            "settings_changed": self.study_settings.changed(),
            "profile": asdict(self.settings),
            "paths": {"cohort": str(self.cohort), "work_dir": str(self.work_dir), "results": str(self.results_dir),
                      "figures": str(self.figures), "executed": str(self.executed_dir)},
            "versions": software_versions(),
            "platform": platform.platform(),
            "updated": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "notebooks": list(notebooks or []),
            **extra,
        }

    def write_run_record(self, notebooks: list[dict] | None = None, target: str | os.PathLike | None = None, **extra) -> Path:
        """Write ``run.json`` (:meth:`record`) whole or not at all (``outputs.write_json``); returns its path."""
        return outputs.write_json(target or self.run_record, self.record(notebooks, **extra))


def read_run_record(path: str | os.PathLike) -> dict:
    """A ``run.json``; ``FileNotFoundError`` / ``ValueError`` name the file."""
    import json

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no run record {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise ValueError(f"{path}: not a run record ({err})") from None
