"""Smoke run of every study notebook, in order, exactly as run_all.sh runs them.

The smoke profile (2 folds, 1 epoch, tiny images) proves that every notebook runs end to
end on a freshly generated synthetic cohort and writes its tables and figures. Outputs go
to a temporary folder, never to the repository's data/ and figures/. Each output has one writer:
the notebooks before a table's own write their part under their own name (01 ``table4_clinical``,
03 ``table3_radiomics``), each notebook records its comparisons in its own file, and notebook 08
assembles ``model_comparisons.csv``.
"""

import ast
import json
from pathlib import Path

import nbformat
import pandas as pd
import papermill as pm
import pytest
from papermill.translators import PythonTranslator
from test_clinical_only import write_clinical_only_cohort

from hccer_lib import models, outputs
from hccer_lib.runner import REPO_ROOT, list_notebooks, notebook_parameters, run_notebooks
from hccer_lib.study_run import RUN_PARAMETERS

# What each notebook must leave behind in the run's figures folder (figures/<cohort>/<profile>/).
EXPECTED_FIGURES = {
    "00_build_cohort": ["fig0_cohort_summary.png", "fig1_phases_roi.png", "synthetic_oracle_auc.csv"],
    "01_select_clinical": ["table1_clinical.csv", "table1_clinical.md", "table4_clinical.csv", "table4_clinical.md",
                           "fig5_roc_clinical.png", "model_comparisons_clinical.csv"],
    "02_preprocess_images": ["fig2_preprocessing.png", "fig_processed_samples.png"],
    "03_radiomics_baseline": ["table3_radiomics.csv", "table3_radiomics.md", "fig3_roc_radiomics.png",
                              "fig3_radiomics_selection.png"],
    "04_deep_model": ["table3_radiomics_vs_deep.csv", "table3_radiomics_vs_deep.md", "fig4_roc_deep.png",
                      "model_comparisons_deep.csv"],
    "05_fusion_models": ["table4_fusion.csv", "table4_fusion.md", "fig5_roc_fusion.png", "model_comparisons_fusion.csv"],
    "06_joint_loss": ["table5_joint_loss.csv", "table5_joint_loss.md", "fig6_roc_joint_loss.png",
                      "model_comparisons_joint_loss.csv"],
    "07_final_model": ["fig7_gradcam_final_model.png"],
    "08_study_report": [
        "model_comparisons.csv", "study_results_vs_paper.csv", "study_results_vs_paper.md", "fig8_auc_vs_paper.png",
        "study_learning_checks.csv", "study_learning_checks.md", "fig8_learning_checks.png",
        "study_image_readings.csv", "study_image_readings.md", "fig8_image_readings.png",
        "study_data_flow.csv", "study_comparisons.csv", "study_comparisons.md", "fig8_auc_differences.png",
        "study_calibration.csv", "fig8_calibration_decision.png", "study_seed_spread.csv",
        "study_paper_differences.csv", "fig8_seed_spread.png", "fig8_gradcam.png", "study_gradcam_patients.csv",
        "reporting_checklist.csv", "reporting_checklist.md",
    ],
}
# Every registered model's predictions, written by the notebook the model registry names.
EXPECTED_PREDICTIONS = {record.notebook: models.names(notebook=record.notebook) for record in models.REGISTRY}


@pytest.mark.slow
def test_every_notebook_runs_on_the_smoke_profile(tmp_path, capsys):
    notebooks = list_notebooks()
    assert notebooks, "no notebooks found"
    code = run_notebooks(
        "smoke",
        seed=2020,
        data_root=str(tmp_path / "data"),
        figures_dir=str(tmp_path / "figures"),
        executed_dir=tmp_path / "executed",
        cwd=REPO_ROOT,
        report_dir=tmp_path / "reports",
    )
    out = capsys.readouterr().out
    assert code == 0, out[-3000:]
    assert out.strip().splitlines()[-1] == f"{len(notebooks)} of {len(notebooks)} notebooks passed"

    work = tmp_path / "data" / "synthetic_seed2020"  # the synthetic cohort of seed 2020 is its own work folder
    figures = tmp_path / "figures" / "synthetic_seed2020" / "smoke"
    results = work / "results" / "smoke"
    assert (work / "clinical.csv").is_file() and (work / "folds_2_seed2020.csv").is_file()
    for nb in notebooks:
        stem = nb.stem
        for name in EXPECTED_FIGURES.get(stem, []):
            path = figures / name
            assert path.is_file() and path.stat().st_size > 0, f"{stem} did not write {name}"
        for model in EXPECTED_PREDICTIONS.get(stem, []):
            preds = pd.read_csv(results / "predictions" / f"{model}.csv", dtype={"patient_id": str})
            assert set(preds["fold"]) == {0, 1}, f"{model}: folds {sorted(set(preds['fold']))}"
            assert preds["y_prob"].between(0, 1).all(), f"{model}: probabilities outside [0, 1]"
            assert preds["patient_id"].nunique() == 167, f"{model}: {preds['patient_id'].nunique()} patients"
    # Every paired comparison the study reports, with a DeLong p-value on the same patients.
    comparisons = pd.read_csv(figures / "model_comparisons.csv")
    pairs = {frozenset(p) for p in zip(comparisons["model_a"], comparisons["model_b"], strict=True)}
    for pair in [("clinical_rf", "clinical_rf_strict"), ("clinical_lr", "clinical_rf"), ("fusion_d_joint", "clinical_lr"),
                 ("fusion_d", "deep_resnet50"),
                 ("fusion_d", "clinical_rf"), ("fusion_d_joint", "fusion_d")]:
        assert frozenset(pair) in pairs, f"no comparison {pair} in {sorted(map(sorted, pairs))}"
    assert comparisons["p_value"].between(0, 1).all(), comparisons
    low, high = comparisons["difference_ci_low"], comparisons["difference_ci_high"]
    assert (low <= comparisons["auc_difference"]).all() and (comparisons["auc_difference"] <= high).all(), comparisons
    # The final model is saved whole, and the reporting checklist marks what the run could not fill.
    manifest = json.loads((results / "final_model" / "manifest.json").read_text())
    assert manifest["cohort"]["synthetic"] is True and manifest["primary_model"] in manifest["models"], manifest
    checklist = pd.read_csv(figures / "reporting_checklist.csv")
    assert {"filled", "open"} <= set(checklist["status"]), checklist["status"].value_counts()
    # run.json: every notebook passed, with its time
    record = json.loads((figures / "run.json").read_text())
    assert [(n["name"], n["status"]) for n in record["notebooks"]] == [(nb.name, "passed") for nb in notebooks], record
    assert all(n["seconds"] > 0 for n in record["notebooks"]) and record["parameters"]["seed"] == 2020, record
    # One HTML report of the executed notebooks, with every figure embedded.
    html = (tmp_path / "reports" / "study_report_smoke.html").read_text()
    assert html.count("data:image/png;base64") >= len(EXPECTED_FIGURES), "figures missing from the HTML report"
    assert all(nb.stem in html for nb in notebooks)
    # Executed copies are kept for reading; the committed notebooks stay output-free.
    assert sorted(p.name for p in (tmp_path / "executed").glob("*.ipynb")) == [p.name for p in notebooks]
    for nb in notebooks:
        assert '"output_type"' not in Path(nb).read_text(), f"{nb.name} is committed with outputs"


@pytest.mark.parametrize("notebook", list_notebooks(), ids=lambda p: p.stem)
def test_papermill_reads_every_line_of_the_parameters_cell(notebook):
    """Each ``name = value`` line of a notebook's parameters cell is one parameter that
    papermill can name (``papermill --help-notebook``); a line it cannot parse is dropped
    from that list with a warning. Every notebook receives the runner's parameters."""
    nb = nbformat.read(notebook, as_version=4)
    cells = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, f"{notebook.name}: {len(cells)} cells tagged 'parameters'"
    assigned = [node.targets[0].id for node in ast.parse(cells[0].source).body if isinstance(node, ast.Assign)]
    parsed = [p.name for p in PythonTranslator.inspect(cells[0])]
    assert parsed == assigned, f"{notebook.name}: papermill reads {parsed}, the cell assigns {assigned}"
    missing = set(RUN_PARAMETERS) - set(assigned)  # the study's settings: only where used (test_study_settings)
    assert not missing, f"{notebook.name} lacks the runner's parameters {sorted(missing)}"
    assert set(RUN_PARAMETERS) <= set(notebook_parameters("quick", None, 2020))


def _files(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder`` (hidden ones too) with its size and modification time."""
    return {p.relative_to(folder).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in folder.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_a_notebook_opened_in_its_folder_runs_with_its_defaults(tmp_path, monkeypatch):
    """JupyterLab starts a notebook's kernel in notebooks/. Notebook 01, executed there with its
    default parameters (smoke profile, seed 2020's synthetic cohort data/synthetic_seed2020, data, figures), reads and writes the
    project root's folders (here a temporary project, named by $HCCER_ROOT) and writes nothing
    beside the notebooks (issue 17)."""
    root = tmp_path / "project"
    write_clinical_only_cohort(root / "data" / "synthetic_seed2020")
    monkeypatch.setenv(outputs.ROOT_VARIABLE, str(root))
    # a network's predictions left by an earlier run: notebook 01's part of Table 4 holds its own models only
    clinical = pd.read_csv(root / "data" / "synthetic_seed2020" / "clinical.csv", dtype={"patient_id": str})
    stale = clinical[["patient_id", "early_recurrence"]].rename(columns={"early_recurrence": "y_true"}).sort_values("y_true")
    stale = stale.assign(slice=0, fold=[k % 2 for k in range(len(stale))], y_prob=0.5)
    predictions_dir = root / "data" / "synthetic_seed2020" / "results" / "smoke" / "predictions"
    predictions_dir.mkdir(parents=True)
    stale[["patient_id", "slice", "fold", "y_true", "y_prob"]].to_csv(predictions_dir / "deep_resnet50.csv", index=False)
    notebooks_dir = REPO_ROOT / "notebooks"
    before = _files(notebooks_dir)
    executed = tmp_path / "01_select_clinical.ipynb"
    pm.execute_notebook(str(notebooks_dir / "01_select_clinical.ipynb"), str(executed), parameters={},
                        cwd=str(notebooks_dir), kernel_name="python3", progress_bar=False)  # fmt: skip

    assert _files(notebooks_dir) == before, "the notebook wrote beside the notebooks"
    table1 = pd.read_csv(root / "figures" / "synthetic_seed2020" / "smoke" / "table1_clinical.csv")
    assert int(table1[table1["variable"] == "age"]["total"].sum()) == 24, table1
    for model in ("clinical_rf", "clinical_rf_strict", "clinical_lr"):
        predictions = pd.read_csv(root / "data" / "synthetic_seed2020" / "results" / "smoke" / "predictions" / f"{model}.csv",
                                  dtype={"patient_id": str})
        assert predictions["patient_id"].nunique() == 24 and set(predictions["fold"]) == {0, 1}, model
    assert (root / "data" / "synthetic_seed2020" / "folds_2_seed2020.csv").is_file()
    table4 = pd.read_csv(root / "figures" / "synthetic_seed2020" / "smoke" / "table4_clinical.csv")
    assert table4["model"].tolist() == models.names(notebook="01_select_clinical"), table4["model"].tolist()
    shown = json.dumps([c.get("outputs", []) for c in nbformat.read(executed, as_version=4).cells])
    assert f"work folder {root.resolve() / 'data' / 'synthetic_seed2020'}" in shown, shown[:2000]
