"""run_all.sh's engine: notebooks in order, stop at the first failure, "N of M passed"."""

import json
import subprocess
import sys

import nbformat

from hccer_lib.runner import list_notebooks, notebook_parameters, run_notebooks


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


def test_all_passing_run_exits_zero(tmp_path, capsys):
    _notebook(tmp_path / "00_ok.ipynb", "x = 1")
    code = run_notebooks("smoke", notebooks=[tmp_path / "00_ok.ipynb"], executed_dir=tmp_path / "out", cwd=tmp_path)
    assert code == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "1 of 1 notebooks passed"


def test_parameters_point_at_the_synthetic_cohort_by_default():
    params = notebook_parameters("quick", None, 2020)
    assert params["synthetic"] is True and params["cohort_dir"].endswith("synthetic"), params
    params = notebook_parameters("paper", "/cohorts/hospital_a", 1)
    assert params["synthetic"] is False and params["cohort_dir"] == "/cohorts/hospital_a", params


def test_cli_refuses_an_unknown_profile():
    proc = subprocess.run(
        [sys.executable, "-m", "hccer_lib", "run", "--profile", "fast"], capture_output=True, text=True
    )
    assert proc.returncode == 2, proc.stderr
    assert "invalid choice: 'fast'" in proc.stderr, proc.stderr
