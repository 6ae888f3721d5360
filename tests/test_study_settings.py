"""The study's settings, defined once (study_run.StudySettings): a value changed for a run reaches
every notebook and library call that uses it, and run.json; the name lists of the modules are the
registry's (issue 17, "Settings restated", "Names restated")."""

from __future__ import annotations

import inspect
import json
from dataclasses import asdict, replace
from pathlib import Path

import pandas as pd
import papermill as pm
import pytest
from test_clinical_only import write_clinical_only_cohort

from hccer_lib import (
    clinical,
    cohort,
    final_model,
    gradcam,
    models,
    networks,
    outputs,
    report,
    simulation,
    study_run,
)
from hccer_lib import radiomics_baseline as rb
from hccer_lib.__main__ import main
from hccer_lib.profiles import get_profile
from hccer_lib.runner import REPO_ROOT, injected_parameters, list_notebooks, notebook_parameters
from hccer_lib.study_run import (
    DEFAULT_SETTINGS,
    SETTING_NAMES,
    StudyRun,
    StudySettings,
    parse_settings,
)

#: The notebooks that use each setting (and so declare it as a parameter).
USES = {
    "selection_protocol": {"04_deep_model", "05_fusion_models", "06_joint_loss", "07_final_model", "08_study_report"},
    "alpha": {"01_select_clinical", "07_final_model", "08_study_report"},
    "n_estimators": {"01_select_clinical", "03_radiomics_baseline", "07_final_model", "08_study_report"},
    "inner_folds": {"03_radiomics_baseline", "07_final_model", "08_study_report"},
    "min_texture_voxels": {"03_radiomics_baseline", "07_final_model", "08_study_report"},
}
#: A value other than the study's for each setting.
CHANGED = {"selection_protocol": "strict", "alpha": 0.01, "n_estimators": 50, "inner_folds": 3, "min_texture_voxels": 8}


def test_the_settings_have_the_study_values_in_one_place_and_the_library_defaults_are_those():
    assert asdict(DEFAULT_SETTINGS) == {"selection_protocol": "paper", "alpha": 0.05, "n_estimators": 500,
                                        "inner_folds": 5, "min_texture_voxels": 16}  # fmt: skip
    assert set(SETTING_NAMES) == set(USES) == set(CHANGED)
    refit = inspect.signature(final_model.refit_final_model).parameters
    assert (refit["selection_protocol"].default, refit["alpha"].default, refit["clinical_estimators"].default,
            refit["radiomics_estimators"].default, refit["inner_folds"].default, refit["min_texture_voxels"].default) == (
        "paper", 0.05, 500, 500, 5, 16)  # fmt: skip
    for constant in ("ALPHA", "N_ESTIMATORS", "INNER_FOLDS"):
        assert not hasattr(simulation, constant), f"simulation.{constant} restates a setting"
    assert rb.DEFAULT_MIN_TEXTURE_VOXELS == 16 and clinical.RF_PARAMS["n_estimators"] == 500
    # the simulation's cache key of the study's settings is the one it had before the settings moved here (but for the
    # radiomics feature table's format 2, which added each slice's tumour area)
    assert simulation.simulation_dir("quick", "data") == Path("data/simulation/aba20122dd3d")
    assert simulation.simulation_dir("quick", "data", DEFAULT_SETTINGS) == simulation.simulation_dir("quick", "data")
    assert simulation.simulation_dir("quick", "data", replace(DEFAULT_SETTINGS, alpha=0.01)) != simulation.simulation_dir("quick", "data")


def test_each_notebook_declares_exactly_the_settings_it_uses_with_none_as_default():
    for path in list_notebooks():
        declared = pm.inspect_notebook(str(path))
        wanted = {name for name, users in USES.items() if path.stem in users}
        assert {k for k in declared if k in SETTING_NAMES} == wanted, path.name
        for name in wanted:  # None: the run object fills in the study's value (no default restated)
            assert declared[name]["default"] == "None", (path.name, name, declared[name])


def test_a_setting_changed_for_the_run_reaches_every_notebook_that_uses_it():
    params = notebook_parameters("smoke", None, 2020, settings=CHANGED)
    assert {k: params[k] for k in CHANGED} == CHANGED
    for path in list_notebooks():
        injected = injected_parameters(params, pm.inspect_notebook(str(path)))
        assert {k: injected[k] for k in study_run.RUN_PARAMETERS} == {k: params[k] for k in study_run.RUN_PARAMETERS}
        assert {k: v for k, v in injected.items() if k in SETTING_NAMES} == {
            k: v for k, v in CHANGED.items() if path.stem in USES[k]}, path.name  # fmt: skip
    # a notebook's own run object holds what it was given, the others the study's values
    run = StudyRun.from_parameters("smoke", None, True, 2020, alpha=0.01, n_estimators=None)
    assert run.study_settings == replace(DEFAULT_SETTINGS, alpha=0.01)
    assert run.run_name == "smoke_alpha0.01", "a run with another alpha keeps the study's tables"
    assert StudyRun.from_parameters("smoke", selection_protocol="strict").run_name == "smoke"  # <model>_strict files


def test_bad_settings_are_refused_naming_the_setting_and_where_it_came_from():
    assert parse_settings(["alpha=0.01", "n_estimators=200", "selection_protocol=strict"]) == {
        "alpha": 0.01, "n_estimators": 200, "selection_protocol": "strict"}  # fmt: skip
    with pytest.raises(ValueError, match=r"--set 'beta=1': unknown setting 'beta'; the settings are selection_protocol"):
        parse_settings(["beta=1"])
    with pytest.raises(ValueError, match=r"--set 'n_estimators=2\.5': setting n_estimators must be int, got '2\.5'"):
        parse_settings(["n_estimators=2.5"])
    with pytest.raises(ValueError, match=r"--set 'alpha': expected NAME=VALUE"):
        parse_settings(["alpha"])
    with pytest.raises(ValueError, match=r"--set: setting alpha must be in \(0, 1\), got 5\.0"):
        parse_settings(["alpha=5"])
    with pytest.raises(ValueError, match=r"notebook parameters: setting selection_protocol must be one of paper, strict, got 'both'"):
        StudyRun.from_parameters("smoke", selection_protocol="both")
    with pytest.raises(ValueError, match=r"notebook parameters: setting inner_folds must be int, got '3' \(str\)"):
        StudyRun.from_parameters("smoke", inner_folds="3")
    with pytest.raises(ValueError, match=r"notebook parameters: setting alpha must be float, got True \(bool\)"):
        StudyRun.from_parameters("smoke", alpha=True)
    with pytest.raises(ValueError, match=r"--set\): unknown setting 'trees'"):
        notebook_parameters("smoke", None, 2020, settings={"trees": 5})


def test_the_cli_passes_set_to_the_runner_and_refuses_a_bad_one_before_any_notebook(monkeypatch, capsys):
    from hccer_lib import runner

    calls = []
    monkeypatch.setattr(runner, "run_notebooks", lambda **kwargs: calls.append(kwargs) or 0)
    assert main(["run", "--profile", "smoke", "--set", "alpha=0.01", "--set", "selection_protocol=strict"]) == 0
    assert calls[0]["settings"] == {"alpha": 0.01, "selection_protocol": "strict"} and calls[0]["profile"] == "smoke"
    assert main(["run", "--profile", "smoke", "--set", "alpha=often"]) == 2
    assert "hccer: --set 'alpha=often': setting alpha must be float, got 'often'" in capsys.readouterr().err
    assert len(calls) == 1, "a bad --set must stop the run before the runner starts"


def test_the_runner_injects_a_set_value_into_notebooks_01_07_08_and_records_it_in_run_json(tmp_path, monkeypatch, capsys):
    from hccer_lib import runner

    given = {}
    monkeypatch.setattr(pm, "execute_notebook", lambda source, target, parameters, **kw: given.__setitem__(Path(source).stem, parameters))
    chosen = [REPO_ROOT / "notebooks" / f"{name}.ipynb" for name in ("01_select_clinical", "04_deep_model", "07_final_model", "08_study_report")]
    code = runner.run_notebooks("smoke", notebooks=chosen, cwd=tmp_path, write_report=False, settings={"alpha": 0.01})
    assert code == 0, capsys.readouterr().out
    assert {stem: p.get("alpha") for stem, p in given.items()} == {
        "01_select_clinical": 0.01, "04_deep_model": None, "07_final_model": 0.01, "08_study_report": 0.01}  # fmt: skip
    assert given["07_final_model"]["n_estimators"] == 500 and given["04_deep_model"]["selection_protocol"] == "paper"
    record = json.loads((tmp_path / "figures" / "synthetic_seed2020" / "smoke_alpha0.01" / "run.json").read_text())
    assert record["parameters"]["alpha"] == 0.01 and record["parameters"]["inner_folds"] == 5
    assert record["settings_changed"] == {"alpha": 0.01}
    assert [n["status"] for n in record["notebooks"]] == ["passed"] * 4


class _Stop(Exception):
    pass


def test_the_simulation_trains_with_the_settings_it_is_given(tmp_path, monkeypatch):
    seen = {}

    def fake_cross_validate(table, folds, protocol, seed, alpha, n_estimators):
        seen.update(alpha=alpha, n_estimators=n_estimators)
        raise _Stop

    monkeypatch.setattr(simulation.clinical, "cross_validate_clinical", fake_cross_validate)
    study = replace(DEFAULT_SETTINGS, alpha=0.2, n_estimators=7)
    with pytest.raises(_Stop):
        simulation.clinical_part(2021, 2, oracles={}, study=study)
    assert seen == {"alpha": 0.2, "n_estimators": 7}
    # run_simulation hands the run's settings to each clinical seed and keys its cache by them
    tasks = []
    monkeypatch.setattr(simulation, "fixed_oracles", dict)
    monkeypatch.setattr(simulation, "clinical_part", lambda *args: tasks.append(args) or (_ for _ in ()).throw(_Stop()))
    with pytest.raises(_Stop):
        simulation.run_simulation("smoke", tmp_path, n_seeds=1, n_jobs=1, progress=False, study=study)
    assert tasks[0][3] == study
    written = json.loads(next((tmp_path / "simulation").glob("*/settings.json")).read_text())
    assert written["clinical"]["alpha"] == 0.2 and written["radiomics"]["n_estimators"] == 7


def test_the_final_model_is_refitted_with_the_settings_it_is_given(tmp_path, monkeypatch):
    cohort_dir = write_clinical_only_cohort(tmp_path / "hospital_a", n_er=30, n_ner=42)
    radiomics = {}
    monkeypatch.setattr(final_model, "_refit_radiomics",
                        lambda final, cohort_dir, work_dir, profile, seed, n_estimators, inner_folds, mode, min_texture_voxels:
                        radiomics.update(n_estimators=n_estimators, inner_folds=inner_folds, min_texture_voxels=min_texture_voxels))
    alphas, select = [], clinical.select_variables

    def recording_select(levels, labels, alpha, *rest):
        alphas.append(alpha)
        return select(levels, labels, alpha, *rest)

    monkeypatch.setattr(clinical, "select_variables", recording_select)
    final = final_model.refit_final_model(cohort_dir, tmp_path / "work", get_profile("smoke"), models=("clinical_rf", "radiomics_rf"),
                                          alpha=0.2, clinical_estimators=7, radiomics_estimators=9, inner_folds=3,
                                          min_texture_voxels=4)  # fmt: skip
    assert alphas == [0.2] and final.manifest["clinical"]["alpha"] == 0.2
    entry = json.dumps(final.manifest)
    assert '"n_estimators": 7' in entry and '"n_estimators": 500' not in entry, "the manifest records the forest's trees"
    assert radiomics == {"n_estimators": 9, "inner_folds": 3, "min_texture_voxels": 4}


def test_the_modules_name_lists_are_the_registry_and_cohort_ones():
    assert networks.MODEL_NAMES == models.NETWORK_MODELS
    assert networks.FUSION_KINDS == {"fusion_a": "a", "fusion_b": "b", "fusion_c": "c", "fusion_d": "d", "fusion_d_joint": "d"}
    assert set(networks.FUSION_KINDS) == set(models.FUSION_MODELS) and networks.FUSION_KINDS is models.FUSION_KINDS
    assert gradcam.PHASE_NAMES is cohort.PHASES


@pytest.mark.slow
def test_notebook_01_on_the_smoke_profile_uses_the_set_alpha_and_records_comparisons_with_the_runs_bootstrap(tmp_path, monkeypatch):
    root = tmp_path / "project"
    write_clinical_only_cohort(root / "data" / "synthetic_seed7", n_er=30, n_ner=42)
    monkeypatch.setenv(outputs.ROOT_VARIABLE, str(root))
    params = injected_parameters(notebook_parameters("smoke", None, 7, settings={"alpha": 0.2}),
                                 pm.inspect_notebook(str(REPO_ROOT / "notebooks" / "01_select_clinical.ipynb")))
    executed = tmp_path / "01.ipynb"
    pm.execute_notebook(str(REPO_ROOT / "notebooks" / "01_select_clinical.ipynb"), str(executed), parameters=params,
                        cwd=str(root), kernel_name="python3", progress_bar=False)  # fmt: skip
    text = executed.read_text()
    assert "selected (p < 0.2)" in text, "notebook 01 did not select with the run's alpha"
    figures = root / "figures" / "synthetic_seed7" / "smoke_alpha0.2"
    comparisons = pd.read_csv(figures / "model_comparisons_clinical.csv")
    # the profile's resamples (smoke: 100) and the run's seed, not 1000 and 2020
    assert comparisons[["n_bootstrap", "bootstrap_seed"]].values.tolist() == [[get_profile("smoke").n_bootstrap, 7]] * 2, comparisons
    assert comparisons[["model_a", "model_b"]].values.tolist() == [["clinical_rf", "clinical_rf_strict"], ["clinical_lr", "clinical_rf"]]
    assert not (root / "figures" / "synthetic_seed7" / "smoke").exists(), "the alpha run wrote into the study's folder"


def test_the_settings_dataclass_checks_its_values():
    with pytest.raises(ValueError, match="StudySettings: setting n_estimators must be >= 1, got 0"):
        StudySettings(n_estimators=0)
    assert StudySettings(alpha=0.1).changed() == {"alpha": 0.1} and DEFAULT_SETTINGS.changed() == {}


def test_the_checklist_states_the_runs_settings(tmp_path):
    cohort_dir = write_clinical_only_cohort(tmp_path / "hospital_a", n_er=30, n_ner=42)
    facts = report.checklist_facts(tmp_path / "work", cohort_dir, "smoke", image_headers=False,
                                   study=replace(DEFAULT_SETTINGS, alpha=0.2, n_estimators=7, inner_folds=3))
    assert (facts["alpha"], facts["n_estimators"], facts["inner_folds"]) == (0.2, 7, 3)
    assert "n_estimators=7," in facts["rf_params"]
    default = report.checklist_facts(tmp_path / "work", cohort_dir, "smoke", image_headers=False)
    assert (default["alpha"], default["n_estimators"], default["inner_folds"]) == (0.05, 500, 5)
    text = " ".join(report.render_checklist(report.checklist_template(), facts)["value"].astype(str))
    assert "chi-squared p < 0.2 on" in text and "forest 7 trees" in text and "p < 0.05" not in text
