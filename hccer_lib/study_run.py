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
with ``--seed N``), so that runs of other seeds keep their own files there too.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path

from hccer_lib import outputs

#: Generator seed of the default synthetic cohort (``run_all.sh`` without ``--seed``).
DEFAULT_SEED = 2020
#: The synthetic cohort of seed N is ``<data_root>/synthetic_seed<N>``.
SYNTHETIC_PREFIX = "synthetic_seed"
#: The record of a run, in its figures folder.
RUN_RECORD = "run.json"
#: Folder (under the project root) of the executed notebooks, per cohort and profile.
EXECUTED_ROOT = "executed"
#: Folder (under the cohort's work folder) of what each profile derives from the cohort.
RESULTS_FOLDER = "results"


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
    """

    profile: str
    cohort_dir: str | os.PathLike | None = None
    synthetic: bool = True
    seed: int = DEFAULT_SEED
    data_root: str | os.PathLike = "data"
    figures_dir: str | os.PathLike = "figures"

    @classmethod
    def from_parameters(
        cls,
        profile: str,
        cohort_dir: str | os.PathLike | None = None,
        synthetic: bool = True,
        seed: int = DEFAULT_SEED,
        data_root: str | os.PathLike = "data",
        figures_dir: str | os.PathLike = "figures",
    ) -> StudyRun:
        """The run of a notebook's parameters (as the runner injects them); an unknown profile raises ``ValueError``."""
        from hccer_lib.profiles import get_profile

        get_profile(profile)
        return cls(str(profile), None if cohort_dir is None else str(cohort_dir), bool(synthetic), int(seed),
                   str(data_root), str(figures_dir))

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
        """The six parameters every notebook receives (``runner.notebook_parameters``)."""
        return {"profile": self.profile, "cohort_dir": self.cohort_parameter, "synthetic": self.synthetic,
                "seed": self.seed, "data_root": str(self.data_root), "figures_dir": str(self.figures_dir)}

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
        """
        if self.seed == DEFAULT_SEED or self.cohort_name == f"{SYNTHETIC_PREFIX}{self.seed}":
            return self.profile
        return f"{self.profile}_seed{self.seed}"

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
        """The content of ``run.json``: parameters, the profile's fields, versions, notebooks (name, status, seconds)."""
        from dataclasses import asdict

        from hccer_lib.report import software_versions

        return {
            "parameters": self.parameters(),
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
