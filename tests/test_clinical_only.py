"""Clinical-only cohorts (issue 14): a cohort folder without images/ runs the clinical study.

The runner skips the notebooks whose metadata says ``"hccer": {"needs_images": true}``: their
executed copy says at its top that they were skipped and why, the run ends with
"N of M notebooks passed, K skipped" and exit code 0.
"""

import json
import shutil
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
import yaml
from test_cohort import CLINICAL_ROW, write_cohort

from hccer_lib import runner
from hccer_lib.cohort import CohortError, validate_cohort
from hccer_lib.runner import REPO_ROOT, list_notebooks, run_notebooks

#: The committed notebooks that read the CT images, and so are skipped on a clinical-only cohort.
IMAGE_NOTEBOOKS = {"00_build_cohort", "02_preprocess_images", "03_radiomics_baseline", "04_deep_model",
                   "05_fusion_models", "06_joint_loss", "07_final_model"}  # fmt: skip


def write_clinical_only_cohort(root: Path, n_er: int = 10, n_ner: int = 14) -> Path:
    """``clinical.csv`` only: ER patients younger than 60 (all: the strict protocol selects age in each
    training fold of 12 patients), mostly with tumours of 50 mm or more; every other variable takes
    both of its levels (one patient in three on the second), as notebook 01's chi-squared tests need."""
    rows = []
    for k in range(n_er + n_ner):
        er = int(k < n_er)
        aligned = k % 5 != 0  # one patient in five goes against the signal
        young_large = er == aligned
        c = int(k % 3 == 0)
        rows.append(dict(CLINICAL_ROW, patient_id=f"C{k:03d}", early_recurrence=er, age=50 if er else 70,
                         tumor_size_mm=60.0 if young_large else 30.0, sex="MF"[c], tumor_number=1 + c,
                         portal_vein_invasion=c, cirrhosis=1 - c, hbv=c, nlr=2.0 + c, alt=30 + 20 * c, ast=40 + 20 * c,
                         akp=100 + 50 * c, ggt=40 + 10 * c, alb=45 - 10 * c, tb=15.0 + 10 * c, afp=5.0 + 10 * c,
                         child_pugh="AB"[c], bclc="0ABC"[k % 4]))  # fmt: skip
    root.mkdir(parents=True)
    pd.DataFrame(rows).to_csv(root / "clinical.csv", index=False)
    return root


def test_validate_accepts_a_cohort_without_images(tmp_path):
    cohort = write_clinical_only_cohort(tmp_path / "clinical_only", n_er=3, n_ner=5)
    report = validate_cohort(cohort, n_folds=2)
    assert report.clinical_only and (report.n_patients, report.n_er, report.n_ner) == (8, 3, 5), report
    assert "clinical-only cohort: no images/ folder" in report.summary(), report.summary()
    assert report.n_slices == 0 and report.spacing_range == {}, report
    # A cohort that has an images/ folder still needs every patient's images.
    with_images = write_cohort(tmp_path / "with_images")
    shutil.rmtree(with_images / "images" / "P002")
    with pytest.raises(CohortError, match="P002"):
        validate_cohort(with_images)
    assert validate_cohort(write_cohort(tmp_path / "whole")).clinical_only is False


def test_committed_notebooks_say_which_need_images():
    marked = {nb.stem for nb in list_notebooks() if runner.needs_images(nb)}
    assert marked == IMAGE_NOTEBOOKS, sorted(marked)


def _notebook(path: Path, body: str, needs_images: bool) -> None:
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('profile = "quick"\ncohort_dir = ""')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell(f"# {path.stem}"), params, nbformat.v4.new_code_cell(body)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    if needs_images:
        nb.metadata["hccer"] = {"needs_images": True}
    nbformat.write(nb, path)


def test_runner_skips_image_notebooks_on_a_clinical_only_cohort(tmp_path, capsys):
    cohort = write_clinical_only_cohort(tmp_path / "clinical_only", n_er=3, n_ner=3)
    log = tmp_path / "log.txt"
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    _notebook(nbs / "00_clinical.ipynb", f"open({str(log)!r}, 'a').write('clinical ' + cohort_dir)", needs_images=False)
    _notebook(nbs / "01_images.ipynb", f"open({str(log)!r}, 'a').write('images')\nraise ValueError('no images')",
              needs_images=True)  # fmt: skip
    code = run_notebooks("smoke", cohort=str(cohort), notebooks=list_notebooks(nbs), executed_dir=tmp_path / "executed",
                         cwd=tmp_path, report_dir=tmp_path / "reports")  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    assert out.strip().splitlines()[-1] == "1 of 2 notebooks passed, 1 skipped", out
    assert log.read_text() == f"clinical {cohort}", "the clinical notebook ran, the image notebook did not"
    record = json.loads((tmp_path / "figures" / "clinical_only" / "smoke" / "run.json").read_text())
    assert [(n["name"], n["status"]) for n in record["notebooks"]] == [("00_clinical.ipynb", "passed"),
                                                                       ("01_images.ipynb", "skipped")], record
    assert record["clinical_only"] is True and "clinical-only" in record["notebooks"][1]["error"], record

    skipped = nbformat.read(tmp_path / "executed" / "01_images.ipynb", as_version=4)
    first = skipped.cells[0]
    assert first.cell_type == "markdown" and first.source.startswith("**Skipped, not run:**"), first.source
    assert "clinical-only" in first.source and "no images/ folder" in first.source, first.source
    assert runner.notebook_status(skipped) == "skipped" and "clinical-only" in skipped.metadata["hccer"]["skipped"]
    assert not any(c.get("outputs") for c in skipped.cells if c.cell_type == "code"), "a skipped notebook has no outputs"

    html = (tmp_path / "reports" / "study_report_smoke.html").read_text()
    assert "1 of 2 notebooks passed, 1 skipped" in html
    assert 'class="hccer-status skipped"' in html and "Skipped, not run" in html
    # Read back from the folder alone (no record of the run), the copy is still shown as skipped.
    combined = runner.combined_report_notebook(tmp_path / "executed")
    assert "1 of 2 notebooks passed, 1 skipped" in combined.cells[0].source, combined.cells[0].source


@pytest.mark.slow
def test_clinical_only_cohort_runs_the_clinical_study_end_to_end(tmp_path, capsys):
    """The real notebooks on a 24-patient clinical-only cohort, smoke profile: 01, 08 and 09 run, the rest are skipped."""
    cohort = write_clinical_only_cohort(tmp_path / "clinical_only")
    notebooks = list_notebooks()
    code = run_notebooks("smoke", cohort=str(cohort), seed=2020, data_root=str(tmp_path / "data"),
                         figures_dir=str(tmp_path / "figures"), executed_dir=tmp_path / "executed", cwd=REPO_ROOT,
                         report_dir=tmp_path / "reports")  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out[-4000:]
    n_skipped = len(IMAGE_NOTEBOOKS)
    last = out.strip().splitlines()[-1]
    assert last == f"{len(notebooks) - n_skipped} of {len(notebooks)} notebooks passed, {n_skipped} skipped", out[-4000:]

    figures, work = tmp_path / "figures" / "clinical_only" / "smoke", tmp_path / "data" / "clinical_only" / "results" / "smoke"
    table1 = pd.read_csv(figures / "table1_clinical.csv")
    age = table1[table1["variable"] == "age"].set_index("level")
    assert int(age["total"].sum()) == 24 and int(age["er"].sum()) == 10, age
    for model in ("clinical_rf", "clinical_rf_strict", "clinical_lr"):
        predictions = pd.read_csv(work / "predictions" / f"{model}.csv", dtype={"patient_id": str})
        assert predictions["patient_id"].nunique() == 24 and set(predictions["fold"]) == {0, 1}, model
    results = pd.read_csv(figures / "study_results_vs_paper.csv")
    assert "clinical_rf" in set(results["model"]) and set(results["model"]) <= {"clinical_rf", "clinical_rf_strict", "clinical_lr"}, results
    comparisons = pd.read_csv(figures / "study_comparisons.csv")
    assert comparisons["p_value"].between(0, 1).all() and len(comparisons) >= 1, comparisons
    assert (figures / "reporting_checklist.csv").is_file() and (figures / "study_calibration.csv").is_file()
    for name in ("fig1_phases_roi.png", "fig2_preprocessing.png", "table3_radiomics_vs_deep.csv"):
        assert not (figures / name).exists(), f"{name} written although its notebook was skipped"

    for nb in notebooks:
        executed = nbformat.read(tmp_path / "executed" / nb.name, as_version=4)
        status = runner.notebook_status(executed)
        assert status == ("skipped" if nb.stem in IMAGE_NOTEBOOKS else "passed"), (nb.name, status)
    html = (tmp_path / "reports" / "study_report_smoke.html").read_text()
    assert html.count('class="hccer-status skipped"') >= n_skipped, "the report shows each skipped notebook"
    validation = nbformat.read(tmp_path / "executed" / "09_external_validation.ipynb", as_version=4)
    shown = json.dumps([c.get("outputs", []) for c in validation.cells])
    assert "External validation not run" in shown and "no external cohort given" in shown, shown[:2000]


# %% Cohorts where only some patients have images ------------------------------------------------


def test_patients_without_images_are_named_in_one_refusal(tmp_path):
    cohort = write_cohort(tmp_path / "mixed")
    shutil.rmtree(cohort / "images" / "P002")
    shutil.rmtree(cohort / "images" / "P003")
    with pytest.raises(CohortError) as info:
        validate_cohort(cohort)
    err, message = info.value, str(info.value)
    assert (err.patient, err.file) == ("P002", "images/P002/NC.nii.gz"), message
    assert "2 of 3 patients have no images (P002, P003)" in message, message
    assert "--clinical-only" in message and "(and" not in message and "\n" not in message, message


def test_clinical_only_request_lists_patients_without_images_and_reads_no_image(tmp_path):
    cohort = write_cohort(tmp_path / "mixed")
    shutil.rmtree(cohort / "images" / "P003")
    (cohort / "images" / "P001" / "NC.nii.gz").write_bytes(b"not an image")  # not read when asked for the clinical study
    report = validate_cohort(cohort, clinical_only=True)
    assert report.clinical_only and report.requested_clinical_only, report
    assert report.without_images == ["P003"] and report.patients == ["P001", "P002", "P003"], report
    assert (report.n_er, report.n_ner, report.n_slices) == (1, 2, 0), report
    summary = report.summary()
    assert "clinical study only (asked for)" in summary and "1 of 3 patients have no images (P003)" in summary, summary
    # A folder without images/: every patient lacks images, the report reads as before.
    only = validate_cohort(write_clinical_only_cohort(tmp_path / "clinical_only", n_er=2, n_ner=2))
    assert only.without_images == ["C000", "C001", "C002", "C003"] and not only.requested_clinical_only
    # A whole cohort: nothing lacks images, the images are checked.
    whole = validate_cohort(write_cohort(tmp_path / "whole"))
    assert whole.without_images == [] and not whole.clinical_only and whole.n_slices == 6, whole


def test_runner_with_clinical_only_runs_the_clinical_study_of_a_mixed_cohort(tmp_path, capsys):
    cohort = write_clinical_only_cohort(tmp_path / "mixed", n_er=3, n_ner=3)
    (cohort / "images" / "C001").mkdir(parents=True)  # C001 has a folder, the 5 others none
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    _notebook(nbs / "00_clinical.ipynb", "print('clinical ran')", needs_images=False)
    _notebook(nbs / "01_images.ipynb", "raise ValueError('no images')", needs_images=True)
    kwargs = dict(cohort=str(cohort), notebooks=list_notebooks(nbs), executed_dir=tmp_path / "executed", cwd=tmp_path,
                  report_dir=tmp_path / "reports")  # fmt: skip
    with pytest.raises(CohortError, match=r"5 of 6 patients have no images \(C000, C002, C003, C004, C005\)"):
        run_notebooks("smoke", **kwargs)
    assert not (tmp_path / "executed" / "00_clinical.ipynb").exists(), "a refused cohort runs no notebook"

    code = run_notebooks("smoke", clinical_only=True, **kwargs)
    out = capsys.readouterr().out
    assert code == 0 and out.strip().splitlines()[-1] == "1 of 2 notebooks passed, 1 skipped", out
    assert "5 of 6 patients have no images: C000, C002, C003, C004, C005" in out, out
    skipped = nbformat.read(tmp_path / "executed" / "01_images.ipynb", as_version=4)
    reason = skipped.metadata["hccer"]["skipped"]
    assert "--clinical-only" in reason and "5 of 6 patients have no images" in reason, reason
    with pytest.raises(ValueError, match="--clinical-only needs --cohort"):
        run_notebooks("smoke", clinical_only=True, notebooks=list_notebooks(nbs), cwd=tmp_path, write_report=False)


def test_cli_validate_and_run_take_clinical_only(tmp_path, capsys):
    from hccer_lib.__main__ import build_parser, main

    cohort = write_cohort(tmp_path / "mixed")
    shutil.rmtree(cohort / "images" / "P001")
    assert main(["validate", str(cohort)]) == 2
    assert "error: patient P001, file images/P001/NC.nii.gz: missing patient folder images/P001" in capsys.readouterr().err
    assert main(["validate", "--clinical-only", str(cohort)]) == 0
    assert "1 of 3 patients have no images (P001)" in capsys.readouterr().out
    args = build_parser().parse_args(["run", "--cohort", str(cohort), "--clinical-only"])
    assert args.clinical_only is True and build_parser().parse_args(["run"]).clinical_only is False


# %% A hospital export as it comes, end to end --------------------------------------------------


@pytest.mark.slow
def test_dictionary_cohort_with_censoring_and_missing_values_runs_end_to_end(tmp_path, capsys):
    """The real notebooks (smoke) on a clinical-only hospital export read through a data dictionary.

    An ``.xlsx`` sheet with its own id and column names, age in months, tumour size in cm,
    coded sex, a time-to-event outcome (12-month horizon) with 2 patients censored before
    it, and AFP missing for 3 patients. Known answers: the 24 analysed patients of
    :func:`write_clinical_only_cohort` (10 ER), the 2 censored patients excluded and listed in
    the data-flow table, AFP's 3 missing values counted in Table 1, every analysed patient
    predicted out of fold by both clinical forests.
    """
    base = pd.read_csv(write_clinical_only_cohort(tmp_path / "base") / "clinical.csv")
    censored = base.iloc[:2].assign(patient_id=["X900", "X901"], early_recurrence=0)
    frame = pd.concat([base, censored], ignore_index=True)
    export = pd.DataFrame({
        "MRN": frame["patient_id"],
        # ER: recurrence at 4-11 months; NER: followed 13-40 months without one; censored at 6 and 9
        "rfs_months": [4 + k % 8 if er else 13 + k for k, er in enumerate(frame["early_recurrence"])],
        "recurrence": frame["early_recurrence"],
        "age_months": frame["age"] * 12,
        "max_diameter_cm": frame["tumor_size_mm"] / 10,
        "gender": frame["sex"].map({"M": 1, "F": 2}),
        "AFP": frame["afp"].astype(float),
        "n_nodules": frame["tumor_number"],
        "PVTT": frame["portal_vein_invasion"].map({1: "Y", 0: "N"}),
        "BCLC": frame["bclc"],
    })  # fmt: skip
    export.loc[export["MRN"].isin(["X900", "X901"]), "rfs_months"] = [6, 9]
    export.loc[export["MRN"].isin(["C001", "C011", "C020"]), "AFP"] = np.nan
    cohort = tmp_path / "hospital"
    cohort.mkdir()
    export.to_excel(cohort / "export.xlsx", sheet_name="Patients", index=False)
    dictionary = {
        "table": "export.xlsx", "sheet": "Patients", "id": "MRN",
        "outcome": {"time": "rfs_months", "event": "recurrence", "unit": "months", "horizon": 12},
        "variables": {
            "age": {"source": "age_months", "unit": "months", "required": True},
            "tumor_size_mm": {"source": "max_diameter_cm", "unit": "cm"},
            "sex": {"source": "gender", "codes": {1: "male", 2: "female"}},
            "afp": {"source": "AFP"},
            "tumor_number": {"source": "n_nodules"},
            "portal_vein_invasion": {"source": "PVTT", "codes": {"Y": "yes", "N": "no"}},
            "bclc": {"source": "BCLC"},
        },
    }  # fmt: skip
    (cohort / "data_dictionary.yaml").write_text(yaml.safe_dump(dictionary, sort_keys=False), encoding="utf-8")

    code = run_notebooks("smoke", cohort=str(cohort), seed=2020, data_root=str(tmp_path / "data"),
                         figures_dir=str(tmp_path / "figures"), executed_dir=tmp_path / "executed", cwd=REPO_ROOT,
                         report_dir=tmp_path / "reports")  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out[-4000:]
    figures, work = tmp_path / "figures" / "hospital" / "smoke", tmp_path / "data" / "hospital" / "results" / "smoke"
    table1 = pd.read_csv(figures / "table1_clinical.csv")
    age = table1[table1["variable"] == "age"]
    assert int(age["total"].sum()) == 24 and int(age["er"].sum()) == 10, age
    afp = table1[table1["variable"] == "afp"].set_index("level")
    assert int(afp.loc["missing", "total"]) == 3 and int(afp["total"].sum()) == 24, afp
    assert "sex" in set(table1["variable"]) and "hbv" not in set(table1["variable"]), "only the dictionary's variables"
    for model in ("clinical_rf", "clinical_rf_strict", "clinical_lr"):
        predictions = pd.read_csv(work / "predictions" / f"{model}.csv", dtype={"patient_id": str})
        assert set(predictions["patient_id"]) == set(base["patient_id"]), model
        assert predictions["y_prob"].between(0, 1).all(), model
    flow = pd.read_csv(figures / "study_data_flow.csv")
    excluded = flow[flow["excluded"].notna()]
    assert excluded["excluded"].tolist() == [2], flow
    assert excluded["reason"].iloc[0] == "censored before the 12-months horizon: X900, X901", flow
