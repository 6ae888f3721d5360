"""Outputs are written whole or not at all; tables get CSV and Markdown twins."""

from pathlib import Path

import pandas as pd
import pytest

from hccer_lib import outputs


def test_atomic_path_replaces_target_only_on_success(tmp_path):
    target = tmp_path / "table.csv"
    target.write_text("last good\n")
    with pytest.raises(RuntimeError):
        with outputs.atomic_path(target) as tmp:
            tmp.write_text("half-written")
            raise RuntimeError("the run failed here")
    assert target.read_text() == "last good\n", "a failed write must leave the last good file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table.csv"], "no temporary file is left behind"

    with outputs.atomic_path(target) as tmp:
        tmp.write_text("new\n")
    assert target.read_text() == "new\n"


def test_write_table_writes_csv_and_markdown(tmp_path):
    frame = pd.DataFrame({"model": ["clinical_rf", "a|b"], "auc": [0.75321, float("nan")]})
    csv_path, md_path = outputs.write_table(tmp_path / "t", frame, title="Table", note="synthetic")
    assert pd.read_csv(csv_path)["model"].tolist() == ["clinical_rf", "a|b"]
    md = md_path.read_text()
    assert md.splitlines()[0] == "# Table"
    assert "| model | auc |" in md
    assert "| clinical_rf | 0.7532 |" in md, md
    assert "a\\|b" in md, "a pipe inside a cell is escaped"


def test_work_dir_for_keeps_foreign_cohorts_read_only(tmp_path):
    data_root = tmp_path / "data"
    inside = data_root / "synthetic"
    assert outputs.work_dir_for(inside, data_root) == inside.resolve()
    foreign = tmp_path / "hospital" / "cohort_2019"
    assert outputs.work_dir_for(foreign, data_root) == (data_root / "cohort_2019").resolve()
    assert Path(outputs.work_dir_for(foreign, data_root)).parent == data_root.resolve()


def test_written_files_get_the_usual_permissions_not_mkstemps_private_ones(tmp_path):
    import os
    import stat

    path = outputs.write_text(tmp_path / "table.md", "x")
    mask = os.umask(0)
    os.umask(mask)
    mode = stat.S_IMODE(path.stat().st_mode)
    assert mode == 0o666 & ~mask, f"mode {oct(mode)}, umask {oct(mask)}"


# %% The project root: the study's relative paths, whatever the working folder (issue 17) ---------

PACKAGE_PARENT = Path(outputs.__file__).resolve().parent.parent


def test_project_root_is_the_checkout_above_the_package_unless_named(tmp_path, monkeypatch):
    monkeypatch.delenv(outputs.ROOT_VARIABLE, raising=False)
    monkeypatch.chdir(tmp_path)
    assert outputs.project_root() == PACKAGE_PARENT, "the folder holding the project's pyproject.toml"
    monkeypatch.setenv(outputs.ROOT_VARIABLE, str(tmp_path / "elsewhere"))
    assert outputs.project_root() == (tmp_path / "elsewhere").resolve()


def test_relative_study_paths_are_read_from_the_project_root(tmp_path, monkeypatch):
    root = tmp_path / "project"
    (root / "notebooks").mkdir(parents=True)
    monkeypatch.setenv(outputs.ROOT_VARIABLE, str(root))
    # A kernel started in notebooks/ (JupyterLab): relative paths from the root, absolute ones as given.
    monkeypatch.chdir(root / "notebooks")
    assert outputs.project_path("data/synthetic") == root.resolve() / "data" / "synthetic"
    assert outputs.project_path(tmp_path / "cohort") == tmp_path / "cohort"
    assert outputs.project_paths("figures", None) == (root.resolve() / "figures", None)
    assert outputs.work_dir_for("data/synthetic") == root.resolve() / "data" / "synthetic"
    assert outputs.work_dir_for(tmp_path / "hospital" / "c1") == root.resolve() / "data" / "c1"
    # A command-line path is relative to the working folder: made absolute, so the notebooks read the same folder.
    assert outputs.from_working_folder("../my_cohort") == str(root.resolve() / "my_cohort")
    assert outputs.from_working_folder(None) is None
    # In the project root (run_all.sh, the runner's kernels) relative paths are kept as given.
    monkeypatch.chdir(root)
    assert outputs.project_path("data/synthetic") == Path("data/synthetic")
    assert outputs.from_working_folder("my_cohort") == "my_cohort"
