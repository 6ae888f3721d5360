"""Run the study's notebooks in order with papermill (the engine behind ``run_all.sh``).

Every ``notebooks/NN_*.ipynb`` is executed in numeric order with the same injected
parameters (``profile``, ``cohort_dir``, ``synthetic``, ``seed``, ``data_root``,
``figures_dir``); the executed copies go to ``executed/<profile>/``. The run stops at the
first failing notebook, names it, and ends with "N of M notebooks passed".
"""

from __future__ import annotations

import os
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
SYNTHETIC_COHORT = "data/synthetic"


def list_notebooks(notebooks_dir: str | os.PathLike = REPO_ROOT / "notebooks") -> list[Path]:
    """The study notebooks ``NN_*.ipynb``, in order."""
    return sorted(p for p in Path(notebooks_dir).glob("[0-9][0-9]_*.ipynb"))


def notebook_parameters(
    profile: str,
    cohort: str | None,
    seed: int,
    data_root: str = "data",
    figures_dir: str = "figures",
) -> dict:
    """The parameters every notebook receives from papermill."""
    from hccer_lib.profiles import get_profile

    get_profile(profile)  # fail early on an unknown profile
    synthetic = cohort is None
    return {
        "profile": profile,
        "cohort_dir": str(Path(data_root) / "synthetic") if synthetic else str(cohort),
        "synthetic": synthetic,
        "seed": int(seed),
        "data_root": str(data_root),
        "figures_dir": str(figures_dir),
    }


def run_notebooks(
    profile: str = "quick",
    cohort: str | None = None,
    seed: int = 2020,
    data_root: str = "data",
    figures_dir: str = "figures",
    executed_dir: str | os.PathLike | None = None,
    notebooks: list[Path] | None = None,
    cwd: str | os.PathLike = REPO_ROOT,
) -> int:
    """Execute the notebooks in order; return 0 when all passed, 1 otherwise.

    Relative paths in the parameters are relative to ``cwd`` (the repository root by
    default), where the notebooks run.
    """
    import papermill as pm

    params = notebook_parameters(profile, cohort, seed, data_root, figures_dir)
    notebooks = list_notebooks() if notebooks is None else list(notebooks)
    executed_dir = Path(executed_dir) if executed_dir else Path(cwd) / "executed" / profile
    executed_dir.mkdir(parents=True, exist_ok=True)
    total = len(notebooks)
    print(f"hccer: {total} notebooks, profile={profile}, cohort={params['cohort_dir']}, seed={seed}", flush=True)
    passed = 0
    for i, nb in enumerate(notebooks, start=1):
        print(f"[{i}/{total}] {nb.name} ...", flush=True)
        start = time.perf_counter()
        try:
            pm.execute_notebook(
                str(nb),
                str(executed_dir / nb.name),
                parameters=params,
                cwd=str(cwd),
                kernel_name="python3",
                progress_bar=False,
                log_output=True,
            )
        except Exception as err:  # papermill raises PapermillExecutionError with the cell's error
            print(f"[{i}/{total}] {nb.name} FAILED after {time.perf_counter() - start:.0f} s: {err}", flush=True)
            break
        passed += 1
        print(f"[{i}/{total}] {nb.name} passed in {time.perf_counter() - start:.0f} s", flush=True)
    print(f"{passed} of {total} notebooks passed", flush=True)
    return 0 if passed == total else 1
