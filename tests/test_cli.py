"""The command line: ``python -m hccer_lib`` lists its commands and, on bad input, prints
one line naming the patient and the file, with exit code 2 and no traceback."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from test_cohort import (
    corrupt_huge_declared_size,
    corrupt_nan_nifti,
    corrupt_negative_dim,
    corrupt_semicolons,
    corrupt_single_class,
    corrupt_unreadable,
    corrupt_vox_offset_inf,
    corrupt_vox_offset_nan,
    corrupt_zero_spacing,
    folder_hashes,
    patch_nifti,
    write_cohort,
)
from test_dicom_import import write_series

REPO_ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args: str, tf_log_level: str | None = "2") -> subprocess.CompletedProcess:
    """``python -m hccer_lib ARGS``; ``tf_log_level=None`` leaves TF_CPP_MIN_LOG_LEVEL unset, as in a plain shell."""
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), MPLBACKEND="Agg", TF_CPP_MIN_LOG_LEVEL=tf_log_level or "")
    if tf_log_level is None:
        del env["TF_CPP_MIN_LOG_LEVEL"]
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


@pytest.mark.parametrize(
    ("corrupt", "patient", "file"),
    [
        (corrupt_nan_nifti, "P001", "images/P001/ART.nii.gz"),
        (corrupt_vox_offset_nan, "P001", "images/P001/PV.nii.gz"),
        (corrupt_vox_offset_inf, "P002", "images/P002/ART.nii.gz"),
        (corrupt_huge_declared_size, "P003", "images/P003/PV.nii.gz"),
        (corrupt_negative_dim, "P002", "images/P002/NC.nii.gz"),
        (corrupt_single_class, None, "clinical.csv"),
        (corrupt_semicolons, None, "clinical.csv"),
    ],
    ids=["nan_voxels", "vox_offset_nan", "vox_offset_inf", "huge_declared_size", "negative_dim", "single_class", "semicolons"],
)
def test_validate_hostile_input_one_line(tmp_path, corrupt, patient, file):
    """Issue 15: each refused with one line naming the patient and the file, exit 2, folder untouched."""
    cohort = write_cohort(tmp_path / "cohort")
    corrupt(cohort)
    before = folder_hashes(cohort)
    result = run_cli("validate", str(cohort))
    where = ", ".join(([f"patient {patient}"] if patient else []) + [f"file {file}"])
    assert_one_line_error(result, where)
    assert folder_hashes(cohort) == before, "validate changed the cohort folder"


def test_validate_unreadable_clinical_one_line(tmp_path, monkeypatch, capsys):
    """An OSError reading clinical.csv (no permission; the tests may run as root, so simulated)."""
    import pandas

    from hccer_lib.__main__ import main

    cohort = write_cohort(tmp_path / "cohort")

    def refuse(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(pandas, "read_csv", refuse)
    assert main(["validate", str(cohort)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [f"error: file clinical.csv: unreadable CSV ([Errno 13] Permission denied: '{cohort / 'clinical.csv'}')"], err


def test_run_validates_the_cohort_before_any_notebook(tmp_path, monkeypatch, capsys):
    """`run_all.sh --cohort BAD` (python -m hccer_lib run): one line, exit 2, no notebook started."""
    import papermill

    from hccer_lib.__main__ import main

    def must_not_run(*args, **kwargs):
        raise AssertionError("a notebook was started on a bad cohort")

    monkeypatch.setattr(papermill, "execute_notebook", must_not_run)
    monkeypatch.chdir(tmp_path)
    cohort = write_cohort(tmp_path / "cohort")  # 1 ER patient: too few for the smoke profile's 2 folds
    before = folder_hashes(cohort)
    assert main(["run", "--profile", "smoke", "--cohort", str(cohort)]) == 2
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [
        "error: file clinical.csv: 3 patients, 1 ER (column early_recurrence): a 2-fold cross-validation needs "
        "at least 2 patients of each class, ER (1) and NER (0)"
    ], captured.err
    assert "[1/" not in captured.out and not (tmp_path / "executed").exists(), captured.out
    assert folder_hashes(cohort) == before
    # A relative --cohort is the working folder's, not the project root's (where the notebooks run).
    assert main(["run", "--profile", "smoke", "--cohort", "cohort"]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: file clinical.csv: 3 patients, 1 ER"), captured.err
    assert f"validating the cohort {cohort.resolve()}" in captured.out, captured.out
    corrupt_nan_nifti(cohort)
    assert main(["run", "--profile", "quick", "--cohort", str(cohort)]) == 2
    assert capsys.readouterr().err.startswith("error: file clinical.csv: 3 patients, 1 ER"), "the first problem is named"


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


def test_predict_cohort_with_an_unpredictable_patient_exits_1(model_and_cohort, tmp_path):
    import shutil

    folder, cohort = model_and_cohort
    broken = tmp_path / "cohort"
    shutil.copytree(cohort, broken)
    (broken / "images" / "P001" / "ART.nii.gz").write_bytes(b"not an image")
    result = run_cli("predict", "--model", str(folder), "--cohort", str(broken), "--out", str(tmp_path / "out"))
    assert result.returncode == 1, result.stderr[-3000:]
    assert "2 of 3 patients predicted" in result.stdout, result.stdout
    assert "not predicted: patient P001: patient P001, file images/P001/ART.nii.gz: unreadable image" in result.stderr, result.stderr[-2000:]
    written = pd.read_csv(tmp_path / "out" / "predictions.csv", dtype={"patient_id": str}, keep_default_na=False)
    assert written["status"].tolist() == ["failed", "ok", "ok"], written
    assert written.loc[0, "clinical_rf"] == "" and written.loc[1:, "clinical_rf"].astype(float).between(0, 1).all(), written


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


# %% predict: hostile inputs (issue 15) ------------------------------------------------------------


def test_predict_nan_tumour_refused_one_line(model_and_cohort, tmp_path):
    """A NaN in the arterial tumour was read as 0 HU and changed the probabilities; now exit 2."""
    from test_final_model import patient_folder

    folder, cohort = model_and_cohort
    patient = patient_folder(cohort, "P001", tmp_path / "P001")
    image = sitk.ReadImage(str(patient / "ART.nii.gz"))
    array = sitk.GetArrayFromImage(image)
    array[2, 8, 7] = np.nan
    nan_image = sitk.GetImageFromArray(array)
    nan_image.CopyInformation(image)
    sitk.WriteImage(nan_image, str(patient / "ART.nii.gz"))
    result = run_cli("predict", "--model", str(folder), "--patient", str(patient), "--out", str(tmp_path / "out"))
    assert_one_line_error(result, "patient P001", "file ART.nii.gz", "NaN or infinite")
    assert not (tmp_path / "out").exists()


def test_predict_vox_offset_nan_refused_one_line(model_and_cohort, tmp_path):
    from test_final_model import patient_folder

    folder, cohort = model_and_cohort
    patient = patient_folder(cohort, "P002", tmp_path / "P002")
    patch_nifti(patient / "PV.nii.gz", 108, "f", float("nan"))
    result = run_cli("predict", "--model", str(folder), "--patient", str(patient))
    assert_one_line_error(result, "patient P002", "file PV.nii.gz", "vox_offset nan")


def test_predict_edited_note_refused_without_tensorflow_logs(model_and_cohort, tmp_path):
    """An edited manifest (the SYNTHETIC warning replaced) is refused; with TF_CPP_MIN_LOG_LEVEL unset
    (a plain shell), TensorFlow's start-up lines do not precede the one line."""
    import json
    import shutil

    from test_final_model import patient_folder

    folder, cohort = model_and_cohort
    edited = Path(shutil.copytree(folder, tmp_path / "edited_model"))
    manifest = json.loads((edited / "manifest.json").read_text())
    manifest["note"] = "Validated for clinical use."
    (edited / "manifest.json").write_text(json.dumps(manifest))
    patient = patient_folder(cohort, "P002", tmp_path / "P002")
    result = run_cli("predict", "--model", str(edited), "--patient", str(patient), tf_log_level=None)
    assert_one_line_error(result, f"model folder {edited}, file manifest.json", "changed since the model was saved")


def test_tensorflows_start_up_lines_are_told_from_other_lines():
    """The lines TensorFlow writes when it loads on a CPU with oneDNN on (seen verbatim) are dropped by the commands
    that load networks; an error line, TensorFlow's own errors (E...) and anything else are kept."""
    from hccer_lib.__main__ import _tensorflow_startup_line

    start_up = [
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
        "I0000 00:00:1796406754.805443    7001 port.cc:153] oneDNN custom operations are on. You may see slightly "
        "different numerical results due to floating-point round-off errors from different computation orders.",
        "I0000 00:00:1796401263.565374    2117 cpu_feature_guard.cc:227] This TensorFlow binary is optimized to use "
        "available CPU instructions in performance-critical operations.",
        "To enable the following instructions: AVX2 AVX512F AVX512_VNNI AVX512_BF16 FMA, in other operations, rebuild "
        "TensorFlow with the appropriate compiler flags.",
    ]
    kept = ["error: model folder m, file manifest.json: changed since the model was saved",
            "E0000 00:00:1796401263.5 cuda_dnn.cc:8] could not load the library", "Warning: something else"]
    assert [_tensorflow_startup_line(line) for line in start_up + kept] == [True] * len(start_up) + [False] * len(kept)
