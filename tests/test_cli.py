"""The command line: ``python -m hccer_lib`` lists its commands and, on bad input, prints
one line naming the patient and the file, with exit code 2 and no traceback."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_cohort import corrupt_unreadable, corrupt_zero_spacing, write_cohort
from test_dicom_import import write_series

REPO_ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), MPLBACKEND="Agg", TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run(
        [sys.executable, "-m", "hccer_lib", *args],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def assert_one_line_error(result: subprocess.CompletedProcess, *words: str) -> None:
    shown = f"exit {result.returncode}\nstdout: {result.stdout!r}\nstderr: {result.stderr!r}"
    assert result.returncode == 2, shown
    assert "Traceback" not in result.stderr, shown
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), shown
    for word in words:
        assert word in lines[0], shown


def test_help_lists_commands():
    result = run_cli("--help")
    assert result.returncode == 0, result.stderr
    for command in ("synth", "validate", "import-dicom", "run"):
        assert command in result.stdout, result.stdout


def test_validate_good_cohort(tmp_path):
    cohort = write_cohort(tmp_path / "cohort")
    result = run_cli("validate", str(cohort))
    assert result.returncode == 0, result.stderr
    assert "3 patients (ER 1, NER 2)" in result.stdout, result.stdout


@pytest.mark.parametrize(
    ("corrupt", "file"),
    [
        (lambda c: (c / "images" / "P002" / "ART.nii.gz").unlink(), "images/P002/ART.nii.gz"),
        (corrupt_unreadable, "images/P001/NC.nii.gz"),
        (corrupt_zero_spacing, "images/P001/NC.nii.gz"),  # ITK would warn on stderr
    ],
    ids=["missing_phase", "unreadable", "zero_spacing"],
)
def test_validate_bad_cohort_one_line(tmp_path, corrupt, file):
    cohort = write_cohort(tmp_path / "cohort")
    corrupt(cohort)
    result = run_cli("validate", str(cohort))
    patient = file.split("/")[1]
    assert_one_line_error(result, f"patient {patient}", f"file {file}")


def test_validate_missing_folder(tmp_path):
    assert_one_line_error(run_cli("validate", str(tmp_path / "nowhere")), "does not exist")


def test_import_dicom(tmp_path):
    series = write_series(tmp_path / "series", n_slices=3)
    cohort = tmp_path / "cohort"
    result = run_cli("import-dicom", str(series), "--cohort", str(cohort), "--patient", "P1", "--phase", "PV")
    assert result.returncode == 0, result.stderr
    assert (cohort / "images" / "P1" / "PV.nii.gz").is_file(), result.stdout
    again = run_cli("import-dicom", str(series), "--cohort", str(cohort), "--patient", "P1", "--phase", "PV")
    assert_one_line_error(again, "patient P1", "file images/P1/PV.nii.gz", "already exists")


def test_import_dicom_bad_series(tmp_path):
    series = write_series(tmp_path / "series", n_slices=2, modality="MR")
    result = run_cli("import-dicom", str(series), "--cohort", str(tmp_path / "c"), "--patient", "P1", "--phase", "NC")
    assert_one_line_error(result, "patient P1", "modality 'MR'")
