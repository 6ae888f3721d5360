"""The command line: ``python -m hccer_lib`` lists its commands and, on bad input, prints
one line naming the patient and the file, with exit code 2 and no traceback."""

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
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


# %% predict: a new patient from a saved final model ---------------------------------------


@pytest.fixture(scope="module")
def model_and_cohort(tmp_path_factory):
    """A tiny cohort and a final model folder built from parts (see test_final_model)."""
    from test_final_model import build_final_model

    root = tmp_path_factory.mktemp("predict")
    cohort = write_cohort(root / "cohort")
    return build_final_model(cohort).save(root / "final_model"), cohort


def test_help_lists_predict():
    result = run_cli("predict", "--help")
    assert result.returncode == 0, result.stderr
    for option in ("--model", "--patient", "--cohort", "--out"):
        assert option in result.stdout, result.stdout


def test_predict_patient(model_and_cohort, tmp_path):
    from test_final_model import patient_folder

    folder, cohort = model_and_cohort
    patient = patient_folder(cohort, "P001", tmp_path / "P001", label="")
    result = run_cli("predict", "--model", str(folder), "--patient", str(patient), "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert "SYNTHETIC cohort 'tiny'" in lines[0], result.stdout
    assert "patient P001: 2 tumour slices, early_recurrence in clinical.csv: unknown" in result.stdout, result.stdout
    shown = [line.split()[1] for line in lines if line.strip().startswith("P(ER)")]
    assert shown == ["fusion_d_joint", "fusion_d_joint_image_head", "fusion_d_joint_clinical_head",
                     "clinical_rf", "radiomics_rf", "deep_resnet50"], result.stdout  # fmt: skip
    assert "SYNTHETIC" in lines[-1], lines[-1]
    written = pd.read_csv(tmp_path / "out" / "prediction.csv", dtype={"patient_id": str})
    assert written["patient_id"].tolist() == ["P001"] and written["y_true"].isna().all(), written
    assert written.filter(like="fusion_d_joint").iloc[0].between(0, 1).all(), written
    assert len(pd.read_csv(tmp_path / "out" / "slices.csv")) == 2
    assert (tmp_path / "out" / "gradcam.png").stat().st_size > 0


def test_predict_cohort(model_and_cohort, tmp_path):
    folder, cohort = model_and_cohort
    result = run_cli("predict", "--model", str(folder), "--cohort", str(cohort), "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr[-3000:]
    written = pd.read_csv(tmp_path / "out" / "predictions.csv", dtype={"patient_id": str})
    assert written["patient_id"].tolist() == ["P001", "P002", "P003"], written
    assert written["y_true"].tolist() == [1, 0, 0], written
    assert written["clinical_rf"].between(0, 1).all(), written


def test_predict_bad_patient_one_line(model_and_cohort, tmp_path):
    from test_final_model import patient_folder

    folder, cohort = model_and_cohort
    patient = patient_folder(cohort, "P002", tmp_path / "P002")
    (patient / "PV.nii.gz").unlink()
    result = run_cli("predict", "--model", str(folder), "--patient", str(patient))
    assert_one_line_error(result, "patient P002", "file PV.nii.gz", "missing phase PV")


def test_predict_refused_model_one_line(model_and_cohort, tmp_path):
    import json
    import shutil

    from test_final_model import patient_folder

    folder, cohort = model_and_cohort
    old = Path(shutil.copytree(folder, tmp_path / "old_model"))
    manifest = json.loads((old / "manifest.json").read_text())
    manifest["hccer_version"] = "0.0.1"
    (old / "manifest.json").write_text(json.dumps(manifest))
    patient = patient_folder(cohort, "P002", tmp_path / "P002")
    result = run_cli("predict", "--model", str(old), "--patient", str(patient))
    assert_one_line_error(result, f"model folder {old}, file manifest.json", "written by hccer 0.0.1")
