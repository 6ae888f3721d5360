"""The run object (hccer_lib.study_run): every path of a run, resolved from the project root, and
runs that never touch each other's files (issue 17)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
import papermill as pm
import pytest
from test_clinical_only import write_clinical_only_cohort

from hccer_lib import outputs, study_run
from hccer_lib.runner import REPO_ROOT, notebook_parameters
from hccer_lib.study_run import StudyRun, synthetic_cohort_dir


def test_synthetic_cohort_of_a_seed_has_its_own_folder_and_the_runner_agrees():
    assert synthetic_cohort_dir() == Path("data") / "synthetic_seed2020"
    assert synthetic_cohort_dir(7, "elsewhere") == Path("elsewhere") / "synthetic_seed7"
    for seed in (2020, 7):
        assert notebook_parameters("smoke", None, seed)["cohort_dir"] == str(synthetic_cohort_dir(seed))
        assert StudyRun.from_parameters("smoke", None, True, seed).parameters() == notebook_parameters("smoke", None, seed)


@pytest.mark.parametrize("working_folder", ["root", "notebooks", "elsewhere"])
def test_paths_of_two_seeds_and_two_profiles_differ_and_lie_under_the_project_root(tmp_path, monkeypatch, working_folder):
    root = (tmp_path / "project").resolve()
    (root / "notebooks").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.setenv(outputs.ROOT_VARIABLE, str(root))
    monkeypatch.chdir({"root": root, "notebooks": root / "notebooks", "elsewhere": tmp_path / "elsewhere"}[working_folder])

    runs = [StudyRun.from_parameters(profile, None, True, seed) for profile in ("smoke", "quick") for seed in (2020, 7)]
    keys = ("cohort", "work_dir", "results_dir", "predictions_dir", "final_model_dir", "figures", "executed_dir",
            "run_record", "folds_path")
    for run in runs:
        for key in keys:
            path = (Path.cwd() / getattr(run, key)).resolve()
            assert path.is_relative_to(root), (run, key, path)
            assert not path.is_relative_to(root / "notebooks"), (run, key, path)
    smoke_2020 = runs[0]
    assert (Path.cwd() / smoke_2020.cohort).resolve() == root / "data" / "synthetic_seed2020"
    assert (Path.cwd() / smoke_2020.figures).resolve() == root / "figures" / "synthetic_seed2020" / "smoke"
    assert (Path.cwd() / smoke_2020.executed_dir).resolve() == root / "executed" / "synthetic_seed2020" / "smoke"
    assert (Path.cwd() / smoke_2020.predictions_dir).resolve() == \
        root / "data" / "synthetic_seed2020" / "results" / "smoke" / "predictions"
    assert smoke_2020.folds_path.name == "folds_2_seed2020.csv"
    # what a run writes differs between every two runs (folds too: count and seed); the work folder is the cohort's
    for key in ("results_dir", "predictions_dir", "final_model_dir", "figures", "executed_dir", "run_record", "folds_path"):
        paths = [(Path.cwd() / getattr(run, key)).resolve() for run in runs]
        assert len(set(paths)) == len(runs), (key, paths)
    assert smoke_2020.work_dir == runs[2].work_dir  # smoke and quick of seed 2020 share the cohort's caches


def test_a_cohort_of_your_own_keeps_its_folder_and_gets_a_work_folder_under_data(tmp_path, monkeypatch):
    monkeypatch.setenv(outputs.ROOT_VARIABLE, str(tmp_path))
    monkeypatch.chdir(tmp_path)
    run = StudyRun.from_parameters("smoke", str(tmp_path / "hospital_a"), False, 2020)
    assert run.cohort == tmp_path / "hospital_a" and run.cohort_name == "hospital_a" and run.cohort_label == "hospital_a"
    assert run.work_dir == (tmp_path / "data" / "hospital_a").resolve()
    assert Path(run.figures) == Path("figures") / "hospital_a" / "smoke" and run.run_name == "smoke"
    # another seed on the same cohort: its own run folders (the seed is not in the cohort's name)
    other = StudyRun.from_parameters("smoke", str(tmp_path / "hospital_a"), False, 7)
    assert other.run_name == "smoke_seed7" and other.work_dir == run.work_dir
    assert Path(other.figures) == Path("figures") / "hospital_a" / "smoke_seed7"
    assert other.results_dir == run.work_dir / "results" / "smoke_seed7" and other.folds_path.name == "folds_2_seed7.csv"
    assert StudyRun.from_parameters("smoke", None, True, 7).run_name == "smoke", "the synthetic cohort names its seed"
    with pytest.raises(ValueError, match="unknown profile 'fast'"):
        StudyRun.from_parameters("fast", None)


def test_run_record_holds_parameters_profile_versions_and_notebooks(tmp_path, monkeypatch):
    monkeypatch.setenv(outputs.ROOT_VARIABLE, str(tmp_path))
    run = StudyRun.from_parameters("smoke", None, True, 7)
    path = run.write_run_record([{"name": "00_x.ipynb", "status": "passed", "seconds": 1.5}])
    record = study_run.read_run_record(tmp_path / path if not Path(path).is_absolute() else path)
    assert record["parameters"]["seed"] == 7 and record["profile"]["name"] == "smoke"
    assert record["notebooks"] == [{"name": "00_x.ipynb", "status": "passed", "seconds": 1.5}]
    assert "numpy" in record["versions"]
    with pytest.raises(FileNotFoundError, match="no run record"):
        study_run.read_run_record(tmp_path / "nowhere.json")


# --- notebook 01 run twice: neither run changes the other's files ----------------------------------------

def _hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (hidden ones too), by relative path."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _run_notebook_01(root: Path, tmp_path: Path, profile: str, seed: int, cwd: Path) -> Path:
    executed = tmp_path / f"01_{profile}_{seed}.ipynb"
    pm.execute_notebook(str(REPO_ROOT / "notebooks" / "01_select_clinical.ipynb"), str(executed),
                        parameters={"profile": profile, "seed": seed}, cwd=str(cwd), kernel_name="python3",
                        progress_bar=False)  # fmt: skip
    return executed


@pytest.mark.slow
def test_runs_of_notebook_01_with_other_seeds_or_profiles_leave_each_others_files_byte_identical(tmp_path, monkeypatch):
    root = tmp_path / "project"
    for seed in (2020, 7):  # the "synthetic" cohorts of two generator seeds (clinical tables only: notebook 01 reads no image)
        write_clinical_only_cohort(root / "data" / f"synthetic_seed{seed}", n_er=30, n_ner=42)
    monkeypatch.setenv(outputs.ROOT_VARIABLE, str(root))
    (root / "notebooks").mkdir()

    _run_notebook_01(root, tmp_path, "smoke", 2020, root)
    first = _hashes(root)
    figures = root / "figures" / "synthetic_seed2020" / "smoke"
    predictions = root / "data" / "synthetic_seed2020" / "results" / "smoke" / "predictions"
    written = {p.relative_to(root).as_posix() for p in (*figures.rglob("*"), *predictions.rglob("*")) if p.is_file()}
    assert {"figures/synthetic_seed2020/smoke/table1_clinical.csv", "figures/synthetic_seed2020/smoke/table4_clinical.csv",
            "figures/synthetic_seed2020/smoke/model_comparisons_clinical.csv",
            "figures/synthetic_seed2020/smoke/fig5_roc_clinical.png",
            "data/synthetic_seed2020/results/smoke/predictions/clinical_rf.csv",
            "data/synthetic_seed2020/results/smoke/predictions/clinical_rf_strict.csv",
            "data/synthetic_seed2020/results/smoke/predictions/clinical_lr.csv"} <= written, sorted(written)
    assert (root / "data" / "synthetic_seed2020" / "folds_2_seed2020.csv").is_file()

    # another seed (another synthetic cohort), run from notebooks/ as JupyterLab does
    _run_notebook_01(root, tmp_path, "smoke", 7, root / "notebooks")
    second = _hashes(root)
    assert {k: second.get(k) for k in first} == first, "the seed-7 run changed or removed a file of the seed-2020 run"
    new = set(second) - set(first)
    assert "figures/synthetic_seed7/smoke/table4_clinical.csv" in new, sorted(new)
    assert "data/synthetic_seed7/results/smoke/predictions/clinical_rf.csv" in new, sorted(new)
    assert list((root / "notebooks").iterdir()) == [], "the notebook wrote beside the notebooks"

    # another profile on the first cohort
    _run_notebook_01(root, tmp_path, "quick", 2020, root)
    third = _hashes(root)
    assert {k: third.get(k) for k in second} == second, "the quick run changed or removed a file of the smoke runs"
    new = set(third) - set(second)
    assert {"figures/synthetic_seed2020/quick/table1_clinical.csv",
            "data/synthetic_seed2020/results/quick/predictions/clinical_rf.csv",
            "data/synthetic_seed2020/folds_10_seed2020.csv"} <= new, sorted(new)
    quick = pd.read_csv(root / "data/synthetic_seed2020/results/quick/predictions/clinical_rf.csv")
    smoke = pd.read_csv(root / "data/synthetic_seed2020/results/smoke/predictions/clinical_rf.csv")
    assert quick["fold"].nunique() == 10 and smoke["fold"].nunique() == 2
    assert not any(".tmp" in name for name in third), "a temporary file was left behind"


def test_the_development_cohort_of_a_runs_final_model_is_found_in_its_work_folder(tmp_path):
    from hccer_lib.external_validation import find_development_cohort

    work = tmp_path / "data" / "synthetic_seed2020"
    write_clinical_only_cohort(work)
    run_models = work / "results" / "smoke" / "final_model"  # StudyRun.final_model_dir
    run_models.mkdir(parents=True)
    assert find_development_cohort(run_models) == work.resolve()
    beside = tmp_path / "elsewhere" / "final_model"  # a folder copied beside its cohort's clinical table
    beside.mkdir(parents=True)
    assert find_development_cohort(beside) is None
    (tmp_path / "elsewhere" / "clinical.csv").write_bytes((work / "clinical.csv").read_bytes())
    assert find_development_cohort(beside) == (tmp_path / "elsewhere").resolve()
