"""run_all.sh's engine: notebooks in order, stop at the first failure, "N of M passed"."""

import json
import os
import subprocess
import sys
from dataclasses import asdict

import nbformat
import pytest

from hccer_lib.runner import list_notebooks, notebook_parameters, run_notebooks
from hccer_lib.study_run import DEFAULT_SETTINGS


def _notebook(path, body: str) -> None:
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('profile = "quick"\nseed = 0')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(body)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


def test_notebooks_run_in_order_with_parameters_and_stop_at_first_failure(tmp_path, capsys):
    log = tmp_path / "log.txt"
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    _notebook(nbs / "00_first.ipynb", f"open({str(log)!r}, 'a').write(f'00 {{profile}} {{seed}}\\n')")
    _notebook(nbs / "01_broken.ipynb", "raise ValueError('patient HCC001 is broken')")
    _notebook(nbs / "02_never.ipynb", f"open({str(log)!r}, 'a').write('02\\n')")
    notebooks = list_notebooks(nbs)
    assert [p.name for p in notebooks] == ["00_first.ipynb", "01_broken.ipynb", "02_never.ipynb"]

    code = run_notebooks("smoke", seed=7, notebooks=notebooks, executed_dir=tmp_path / "out", cwd=tmp_path)
    out = capsys.readouterr().out
    assert code == 1, out
    assert log.read_text() == "00 smoke 7\n", "parameters injected; the notebook after the failure never ran"
    assert "01_broken.ipynb FAILED" in out and "patient HCC001 is broken" in out, out
    assert out.strip().splitlines()[-1] == "1 of 3 notebooks passed", out
    executed = json.loads((tmp_path / "out" / "00_first.ipynb").read_text())
    assert any("injected-parameters" in c["metadata"].get("tags", []) for c in executed["cells"])

    # run.json in the run's figures folder: parameters, profile, versions, each notebook's status and time
    record = json.loads((tmp_path / "figures" / "synthetic_seed7" / "smoke" / "run.json").read_text())
    assert record["parameters"] == {"profile": "smoke", "cohort_dir": os.path.join("data", "synthetic_seed7"),
                                    "synthetic": True, "seed": 7, "data_root": "data", "figures_dir": "figures",
                                    **asdict(DEFAULT_SETTINGS)}, record  # the study's settings: none was changed
    assert record["settings_changed"] == {}, record
    assert record["profile"]["name"] == "smoke" and record["profile"]["n_folds"] == 2, record["profile"]
    assert {"python", "numpy", "pandas"} <= set(record["versions"]), record["versions"]
    statuses = [(n["name"], n["status"]) for n in record["notebooks"]]
    assert statuses == [("00_first.ipynb", "passed"), ("01_broken.ipynb", "failed"), ("02_never.ipynb", "not run")]
    first, broken, never = record["notebooks"]
    assert first["seconds"] > 0 and broken["seconds"] > 0 and never["seconds"] is None, record["notebooks"]
    assert "patient HCC001 is broken" in broken["error"], broken
    assert not list((tmp_path / "figures").rglob(".*.tmp*")), "a temporary file was left behind"


def test_all_passing_run_exits_zero(tmp_path, capfd):
    _notebook(tmp_path / "00_ok.ipynb", "x = 1")
    code = run_notebooks("smoke", notebooks=[tmp_path / "00_ok.ipynb"], executed_dir=tmp_path / "out", cwd=tmp_path)
    assert code == 0
    captured = capfd.readouterr()  # the kernel's own output too (a child process of this one)
    assert captured.out.strip().splitlines()[-1] == "1 of 1 notebooks passed"
    if os.name == "posix":  # local sockets, not plain-text TCP ports
        assert "without encryption" not in captured.err, captured.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["00_ok.ipynb", "figures", "out", "reports"], "the kernel left files"


def test_parameters_point_at_the_synthetic_cohort_by_default():
    params = notebook_parameters("quick", None, 2020)
    assert params["synthetic"] is True and params["cohort_dir"] == os.path.join("data", "synthetic_seed2020"), params
    # another generator seed: another cohort folder, never seed 2020's
    params = notebook_parameters("quick", None, 7, data_root="elsewhere")
    assert params["cohort_dir"] == os.path.join("elsewhere", "synthetic_seed7"), params
    params = notebook_parameters("paper", "/cohorts/hospital_a", 1)
    assert params["synthetic"] is False and params["cohort_dir"] == "/cohorts/hospital_a", params


def test_cli_refuses_an_unknown_profile():
    proc = subprocess.run(
        [sys.executable, "-m", "hccer_lib", "run", "--profile", "fast"], capture_output=True, text=True
    )
    assert proc.returncode == 2, proc.stderr
    assert "invalid choice: 'fast'" in proc.stderr, proc.stderr


# --- the HTML study report -------------------------------------------------------------

PNG_CELL = """import matplotlib.pyplot as plt
fig, ax = plt.subplots(figsize=(1, 1))
ax.plot([0, 1], [0, 1])
plt.show()"""


def _titled_notebook(path, title: str, body: str) -> None:
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('profile = "quick"')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell(f"# {title}\n\nReads nothing."), params,
                nbformat.v4.new_markdown_cell("## The figure"), nbformat.v4.new_code_cell(body)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


def test_run_writes_one_html_report_with_embedded_figures_and_statuses(tmp_path, capsys):
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    _titled_notebook(nbs / "00_plot.ipynb", "00 · A plotted line", PNG_CELL)
    _titled_notebook(nbs / "01_broken.ipynb", "01 · A broken step", "raise ValueError('patient HCC001 is broken')")
    _titled_notebook(nbs / "02_later.ipynb", "02 · Never reached", "x = 1")
    executed = tmp_path / "out"
    executed.mkdir()
    stale = executed / "02_later.ipynb"  # left by an earlier run: must not be shown as part of this one
    _titled_notebook(stale, "02 · STALE COPY", "x = 1")

    backend_before = os.environ.get("MPLBACKEND")
    code = run_notebooks("smoke", notebooks=list_notebooks(nbs), executed_dir=executed, cwd=tmp_path)
    out = capsys.readouterr().out
    assert code == 1 and out.strip().splitlines()[-1] == "1 of 3 notebooks passed", out
    assert os.environ.get("MPLBACKEND") == backend_before, "the kernels' backend leaked into the caller"
    report = tmp_path / "reports" / "synthetic_seed2020" / "study_report_smoke.html"
    assert report.is_file() and f"study report -> {report}" in out, out
    text = report.read_text()
    assert text.count("data:image/png;base64,") >= 1, "the figure is not embedded"
    assert 'src="data:image/png;base64,' in text
    for title in ("00 · A plotted line", "01 · A broken step"):
        assert title in text, f"no title {title!r}"
    assert "STALE COPY" not in text, "a notebook of an earlier run appears in the report"
    assert 'href="#nb-00_plot"' in text and 'id="nb-00_plot"' in text, "no table of contents link"
    assert 'href="#nb-00_plot-s1"' in text and 'id="nb-00_plot-s1"' in text, "no link to the ## section"
    assert "FAILED" in text and "patient HCC001 is broken" in text
    assert "02_later.ipynb" in text and "not run" in text
    assert "1 of 3 notebooks passed, 1 failed, 1 not run" in text
    assert "Synthetic cohort" in text, "the synthetic note is missing"
    assert not list((tmp_path / "reports").glob(".*.tmp*")), "a temporary file was left behind"


def test_report_can_be_switched_off_and_put_elsewhere(tmp_path, capsys):
    _notebook(tmp_path / "00_ok.ipynb", "x = 1")
    run_notebooks("smoke", notebooks=[tmp_path / "00_ok.ipynb"], executed_dir=tmp_path / "out", cwd=tmp_path,
                  write_report=False)
    assert not (tmp_path / "reports").exists()
    run_notebooks("smoke", notebooks=[tmp_path / "00_ok.ipynb"], executed_dir=tmp_path / "out", cwd=tmp_path,
                  report_dir=tmp_path / "elsewhere")
    assert (tmp_path / "elsewhere" / "study_report_smoke.html").is_file(), capsys.readouterr().out


def test_report_of_an_executed_folder_reads_each_status_from_papermill(tmp_path):
    from hccer_lib.runner import write_html_report

    for name, exception in (("00_a.ipynb", None), ("01_b.ipynb", True)):
        nb = nbformat.v4.new_notebook()
        nb.cells = [nbformat.v4.new_markdown_cell(f"# Notebook {name}")]
        nb.metadata["papermill"] = {"exception": exception}
        nbformat.write(nb, tmp_path / name)
    text = write_html_report(tmp_path / "r.html", tmp_path, parameters={"profile": "quick", "synthetic": False}).read_text()
    assert "Notebook 00_a.ipynb" in text and "Notebook 01_b.ipynb" in text
    assert "1 of 2 notebooks passed, 1 failed" in text and "profile quick" in text
    assert "Synthetic cohort" not in text


def _run_cli(args, keras_home, cwd):
    env = {**os.environ, "KERAS_HOME": str(keras_home), "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, "-m", "hccer_lib", "run", *args], capture_output=True, text=True, env=env,
                          cwd=cwd)


def test_paper_profile_without_imagenet_weights_refuses_to_start_in_one_line(tmp_path):
    proc = _run_cli(["--profile", "paper"], tmp_path / "empty_keras_home", tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5" in lines[0], proc.stderr
    assert "--random-init" in lines[0] and "Traceback" not in proc.stderr
    assert "notebooks" not in proc.stdout, "no notebook may start"
    # On CPUs where oneDNN is on, TensorFlow writes start-up lines to stderr at any log level: the refusal comes first.
    probe = ("import sys; from hccer_lib.__main__ import main; code = main(['run', '--profile', 'paper']); "
             "print(code, 'tensorflow' in sys.modules, 'keras' in sys.modules)")
    env = {**os.environ, "KERAS_HOME": str(tmp_path / "empty_keras_home")}
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert loaded.stdout.split() == ["2", "False", "False"], loaded.stdout + loaded.stderr


def test_random_init_reaches_the_network_notebooks_only(tmp_path, capsys):
    """``--random-init`` lets the paper profile start; ``imagenet`` goes to the notebooks that declare it."""
    log = tmp_path / "log.txt"
    networks_nb = tmp_path / "00_net.ipynb"
    _notebook(networks_nb, f"open({str(log)!r}, 'a').write(f'{{imagenet}}\\n')")
    nb = json.loads(networks_nb.read_text())
    nb["cells"][0]["source"] += '\nimagenet = "auto"'
    networks_nb.write_text(json.dumps(nb))
    _notebook(tmp_path / "01_plain.ipynb", f"open({str(log)!r}, 'a').write(str('imagenet' in globals()) + '\\n')")
    code = run_notebooks("paper", notebooks=list_notebooks(tmp_path), executed_dir=tmp_path / "out", cwd=tmp_path,
                         imagenet="none", write_report=False)
    assert code == 0, capsys.readouterr().out
    assert log.read_text() == "none\nFalse\n"


def test_workers_reach_the_kernels_and_a_bad_value_stops_the_run_first(tmp_path, capsys):
    log = tmp_path / "log.txt"
    _notebook(tmp_path / "00_env.ipynb", f"import os\nopen({str(log)!r}, 'a').write(os.environ['HCCER_TRAINING_WORKERS'])")
    code = run_notebooks("quick", notebooks=list_notebooks(tmp_path), executed_dir=tmp_path / "out", cwd=tmp_path,
                         workers=3, write_report=False)
    assert code == 0, capsys.readouterr().out
    assert log.read_text() == "3"
    proc = _run_cli(["--workers", "none"], tmp_path / "keras_home", tmp_path)
    assert proc.returncode == 2 and "training workers must be a whole number >= 1 or 'auto', got 'none'" in proc.stderr
    assert "notebooks" not in proc.stdout, "no notebook may start"


def test_the_executor_reaches_the_kernels_and_run_json_and_a_missing_ray_stops_the_run_first(tmp_path, capsys, monkeypatch):

    from hccer_lib import ray_jobs

    monkeypatch.delenv(ray_jobs.EXECUTOR_VARIABLE, raising=False)
    log = tmp_path / "log.txt"
    _notebook(tmp_path / "00_env.ipynb", f"import os\nopen({str(log)!r}, 'a').write(os.environ['HCCER_EXECUTOR'])")
    code = run_notebooks("quick", notebooks=list_notebooks(tmp_path), executed_dir=tmp_path / "out", cwd=tmp_path,
                         write_report=False)
    assert code == 0, capsys.readouterr().out
    assert log.read_text() == "local"
    record = json.loads(next(tmp_path.rglob("run.json")).read_text())
    assert record["executor"] == "local", record
    with pytest.raises(ValueError, match="executor must be one of"):
        run_notebooks("quick", notebooks=list_notebooks(tmp_path), cwd=tmp_path, executor="slurm", write_report=False)

    def no_ray():
        raise RuntimeError("the Ray executor needs Ray: pip install -e '.[ray]' (or run without --executor ray)")

    monkeypatch.setattr(ray_jobs, "_ray", no_ray)  # as on a machine without the extra
    with pytest.raises(RuntimeError, match=r"needs Ray: pip install -e '\.\[ray\]'"):
        run_notebooks("quick", notebooks=list_notebooks(tmp_path), cwd=tmp_path, executor="ray", write_report=False)
    assert log.read_text() == "local", "no notebook may start"


def test_a_cohort_of_the_earlier_layout_is_named_with_the_move_that_keeps_it(tmp_path):
    from pathlib import Path

    from hccer_lib.runner import earlier_layout_notice

    earlier = tmp_path / "data" / "synthetic"
    earlier.mkdir(parents=True)
    (earlier / "ground_truth.json").write_text(json.dumps({"seed": 2020, "synthetic": True}))
    notice = earlier_layout_notice(tmp_path, Path("data/synthetic_seed2020"), 2020)
    assert notice and "mv data/synthetic data/synthetic_seed2020" in notice and "seed 2020" in notice
    assert earlier_layout_notice(tmp_path, Path("data/synthetic_seed7"), 7) is None  # another seed's cohort
    (tmp_path / "data" / "synthetic_seed2020").mkdir()
    assert earlier_layout_notice(tmp_path, Path("data/synthetic_seed2020"), 2020) is None  # already in place
    assert (earlier / "ground_truth.json").is_file(), "the notice moved something"
    (earlier / "ground_truth.json").write_text("not json")
    assert earlier_layout_notice(tmp_path, Path("data/synthetic_seed2021"), 2021) is None
