"""Run the study's notebooks in order with papermill (the engine behind ``run_all.sh``).

Every ``notebooks/NN_*.ipynb`` is executed in numeric order with the same injected
parameters (``profile``, ``cohort_dir``, ``synthetic``, ``seed``, ``data_root``,
``figures_dir``); they make their run (``study_run.StudyRun``) from them. The study's settings
(``study_run.StudySettings``: ``selection_protocol``, ``alpha``, ``n_estimators``, ``inner_folds``,
``min_texture_voxels``; ``run --set NAME=VALUE``) reach every notebook that declares them
(:func:`injected_parameters`). The executed copies go to
``executed/<cohort name>/<profile>/``, the tables and figures to ``figures/<cohort name>/<profile>/``, where
``run.json`` records the parameters, the profile, the versions and each notebook's status and time,
rewritten (whole) as each notebook finishes (:func:`run_record_entries`). The kernels run in the
project folder with ``$HCCER_ROOT`` naming it, so that the notebooks, which read relative
paths from the project root (``outputs.project_path``), read them from that folder. The run stops at the
first failing notebook, names it, and ends with "N of M notebooks passed" (", K skipped"
when notebooks were skipped).

A notebook whose metadata says ``"hccer": {"needs_images": true}`` reads the CT images. On a
clinical-only cohort (a folder without ``images/``, ``cohort.is_clinical_only``) it is not
run: its executed copy is the notebook with a first markdown cell saying that it was
skipped and why, and ``"hccer": {"skipped": <reason>}`` in its metadata. The same holds for a
cohort with images run with ``clinical_only`` (``run --clinical-only``): the clinical study on
every patient, e.g. of a cohort where some patients have no images (docs/real_cohorts.md). Skipped notebooks
count as neither passed nor failed; a run whose other notebooks all passed exits with 0.

After the notebooks ran (also when one failed) the executed copies of this run are
combined into one HTML file, ``reports/<cohort name>/study_report_<profile>.html``: readable in any
browser without Jupyter, every figure embedded as a data URI, a table of contents with
each notebook's status (passed, FAILED, not run) and its ``##`` sections.
"""

from __future__ import annotations

import contextlib
import html
import json
import os
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
#: Key of the study's own entries in a notebook's metadata (``needs_images``; ``skipped`` in an executed copy).
METADATA_KEY = "hccer"
#: Optional parameter that reaches the notebooks declaring it (09): a labelled cohort to validate the final models on.
EXTERNAL_PARAMETER = "external_cohort"
#: matplotlib backend of the notebook kernels: Jupyter's inline backend, so that every figure a
#: notebook shows is stored in its executed copy as a PNG, whatever MPLBACKEND the caller has
#: (run_all.sh and the tests set Agg for themselves, which would leave the notebooks without figures).
KERNEL_MPLBACKEND = "module://matplotlib_inline.backend_inline"
REPORT_STYLE = """
<style>
.hccer-report-head { font-family: sans-serif; max-width: 1100px; margin: 1em auto; }
.hccer-status { display: inline-block; padding: 0.1em 0.6em; border-radius: 0.3em; font-weight: bold; }
.hccer-status.passed { background: #d8f0d8; color: #145214; }
.hccer-status.failed { background: #f8d0d0; color: #8a1010; }
.hccer-status.not-run { background: #e4e4e4; color: #444; }
.hccer-status.skipped { background: #f4ecc8; color: #5a4a00; }
.hccer-notebook { border-top: 4px solid #2c5f8a; margin-top: 3em; padding-top: 0.5em; font-family: sans-serif; }
</style>
"""


@dataclass
class NotebookRun:
    """What happened to one notebook in a run.

    Attributes:
        name: file name, e.g. ``03_radiomics_baseline.ipynb``.
        status: ``"passed"``, ``"failed"``, ``"skipped"`` or ``"not run"``.
        seconds: wall time, ``None`` when it did not run.
        error: first line of the error of a failed notebook, or why a notebook was skipped.
    """

    name: str
    status: str
    seconds: float | None = None
    error: str = ""


def list_notebooks(notebooks_dir: str | os.PathLike = REPO_ROOT / "notebooks") -> list[Path]:
    """The study notebooks ``NN_*.ipynb``, in order."""
    return sorted(p for p in Path(notebooks_dir).glob("[0-9][0-9]_*.ipynb"))


def notebook_parameters(
    profile: str,
    cohort: str | None,
    seed: int,
    data_root: str = "data",
    figures_dir: str = "figures",
    settings: dict | None = None,
) -> dict:
    """The run's parameters (``StudyRun.parameters``): the six every notebook receives, then the study's settings.

    Without ``cohort``: the synthetic cohort of generator ``seed``, ``<data_root>/synthetic_seed<seed>``.
    ``settings``: the study's settings changed for this run (``{"alpha": 0.01}``; the others keep the
    study's values, ``study_run.DEFAULT_SETTINGS``). An unknown profile or setting, or a bad value,
    raises ``ValueError`` naming it.
    """
    from dataclasses import replace

    from hccer_lib.study_run import StudyRun, study_settings

    chosen = study_settings(settings, "the run's settings (--set)")  # fails early, naming the setting
    run = StudyRun.from_parameters(profile, cohort, cohort is None, seed, data_root, figures_dir)
    return replace(run, study_settings=chosen).parameters()


def injected_parameters(params: dict, declared) -> dict:
    """What papermill injects into one notebook: the six run parameters, and each other one it declares.

    ``declared``: the notebook's parameter names (``papermill.inspect_notebook``). A study setting
    reaches exactly the notebooks whose parameters cell names it.
    """
    from hccer_lib.study_run import RUN_PARAMETERS

    return {k: v for k, v in params.items() if k in RUN_PARAMETERS or k in declared}


def run_record_entries(runs: list[NotebookRun], notebooks: list[Path]) -> list[dict]:
    """``run.json``'s ``notebooks``: name, status, seconds (and the error or skip reason) of each, in order.

    Notebooks not reached yet are ``"not run"``.
    """
    entries = [{"name": r.name, "status": r.status,
                "seconds": None if r.seconds is None else round(r.seconds, 1),
                **({"error": r.error} if r.error else {})} for r in runs]
    return entries + [{"name": nb.name, "status": "not run", "seconds": None} for nb in notebooks[len(runs):]]


def run_notebooks(
    profile: str = "quick",
    cohort: str | None = None,
    seed: int = 2020,
    data_root: str = "data",
    figures_dir: str = "figures",
    executed_dir: str | os.PathLike | None = None,
    notebooks: list[Path] | None = None,
    cwd: str | os.PathLike | None = None,
    report_dir: str | os.PathLike | None = None,
    write_report: bool = True,
    imagenet: str = "auto",
    external_cohort: str | None = None,
    clinical_only: bool = False,
    workers: int | str | None = None,
    executor: str | None = None,
    settings: dict | None = None,
) -> int:
    """Execute the notebooks in order; return 0 when all passed or were skipped, 1 otherwise.

    A cohort folder given as ``cohort`` is validated first (:func:`validate_cohort_first`):
    a bad one raises ``CohortError`` before any notebook runs. Relative paths in the
    parameters are relative to ``cwd``, the project folder of the run (``outputs.project_root()``
    by default): the notebooks run there, with ``$HCCER_ROOT`` set to it. The executed copies go to
    ``executed_dir`` (default ``<cwd>/executed/<cohort name>/<run name>``, ``StudyRun.run_name``: the
    profile, with ``_seed<N>`` for a cohort of your own run with another seed); ``run.json`` to the run's
    figures folder (``StudyRun.run_record``), rewritten as each notebook finishes. With ``write_report`` the executed notebooks of
    this run are combined into ``<report_dir>/study_report_<run name>.html``
    (``report_dir`` defaults to ``<cwd>/reports/<cohort name>``), also after a failure; a report that
    cannot be written is named in one line and does not change the return code.

    ``imagenet`` reaches the notebooks that declare it (the networks'): ``"auto"`` (the
    weights file when present) or ``"none"`` (random initialisation, ``--random-init``). A
    profile that fine-tunes ImageNet weights (``paper``) without the file raises
    ``ValueError`` before any notebook runs (``imagenet.check_imagenet``).
    ``external_cohort`` (a labelled cohort folder, or ``None``) reaches the notebooks that
    declare it (09, external validation). ``workers`` (a number or ``"auto"``; ``None``:
    ``$HCCER_TRAINING_WORKERS`` or ``"auto"``) sets how many worker processes train the
    networks side by side (``training.training_workers``); it changes the time, not the results.
    ``executor`` (``"local"`` or ``"ray"``; ``None``: ``$HCCER_EXECUTOR`` or local) sets where
    the networks' trainings run (``hccer_lib.ray_jobs``): Ray tasks on ``$RAY_ADDRESS``'s cluster
    or a local Ray instance; it also changes the time, not the results. ``"ray"`` without Ray
    installed raises ``RuntimeError`` before any notebook runs.

    ``settings``: the study's settings changed for this run (``{"alpha": 0.01}``, ``run --set``):
    injected into each notebook that declares them (:func:`injected_parameters`) and recorded in
    ``run.json``; a changed hyper-parameter also names the run's folders (``StudyRun.run_name``).

    On a clinical-only cohort the notebooks that need images are skipped
    (:func:`skip_reason`, :func:`write_skipped_copy`); ``clinical_only`` asks for that on a
    cohort folder that has images (the clinical study on every patient, images not read).

    Raises:
        ValueError: ``clinical_only`` without a ``cohort`` (the synthetic cohort is generated
            by an image notebook).
    """
    import papermill as pm

    from hccer_lib import outputs, ray_jobs
    from hccer_lib.imagenet import check_imagenet
    from hccer_lib.profiles import get_profile
    from hccer_lib.study_run import EXECUTED_ROOT, StudyRun

    params = notebook_parameters(profile, cohort, seed, data_root, figures_dir, settings)
    cwd = Path(cwd).resolve() if cwd is not None else outputs.project_root()
    run = StudyRun.from_parameters(**params)
    with _kernel_environment(**{outputs.ROOT_VARIABLE: str(cwd)}):  # the run's paths as its notebooks read them
        cohort_name, run_name, run_record = run.cohort_name, run.run_name, Path(cwd) / run.run_record
    check_imagenet(get_profile(profile), imagenet)  # before TensorFlow is loaded: a refusal is one line
    from hccer_lib import training

    training.training_workers(get_profile(profile), workers)  # a bad value stops the run before any notebook
    kernel_environment = {"MPLBACKEND": KERNEL_MPLBACKEND, outputs.ROOT_VARIABLE: str(cwd)}
    if workers is not None:
        kernel_environment["HCCER_TRAINING_WORKERS"] = str(workers)
    executor = ray_jobs.executor(executor)  # a bad name stops the run before any notebook
    if executor == "ray":
        ray_jobs.require_ray()  # so does a missing Ray
    kernel_environment[ray_jobs.EXECUTOR_VARIABLE] = executor
    if clinical_only and cohort is None:
        raise ValueError("--clinical-only needs --cohort: the synthetic cohort is generated with its images by notebook 00")
    validation = None
    if cohort is not None:
        validation = validate_cohort_first(Path(cwd) / cohort, profile, clinical_only)
        clinical_only = validation.clinical_only
    else:
        notice = earlier_layout_notice(Path(cwd), Path(params["cohort_dir"]), seed)
        if notice:
            print(notice, flush=True)
    optional = {"imagenet": imagenet, EXTERNAL_PARAMETER: external_cohort}
    notebooks = list_notebooks() if notebooks is None else list(notebooks)
    executed_dir = Path(executed_dir) if executed_dir else Path(cwd) / EXECUTED_ROOT / cohort_name / run_name
    executed_dir.mkdir(parents=True, exist_ok=True)
    total = len(notebooks)
    print(f"hccer: {total} notebooks, profile={profile}, cohort={params['cohort_dir']}, seed={seed}", flush=True)
    print(f"hccer: executed notebooks -> {executed_dir}; record of the run -> {run_record}", flush=True)
    runs: list[NotebookRun] = []
    passed = skipped = 0

    def record() -> None:  # run.json, whole, after every notebook
        with _kernel_environment(**{outputs.ROOT_VARIABLE: str(cwd)}):
            run.write_run_record(run_record_entries(runs, notebooks), target=run_record,
                                 executed=str(executed_dir), clinical_only=bool(clinical_only), executor=executor,
                                 **{k: v for k, v in optional.items() if v is not None})

    record()
    for i, nb in enumerate(notebooks, start=1):
        reason = skip_reason(nb, params["cohort_dir"], validation) if clinical_only else None
        if reason:
            write_skipped_copy(nb, executed_dir / nb.name, reason)
            skipped += 1
            runs.append(NotebookRun(nb.name, "skipped", None, reason))
            record()
            print(f"[{i}/{total}] {nb.name} skipped: {reason}", flush=True)
            continue
        print(f"[{i}/{total}] {nb.name} ...", flush=True)
        start = time.perf_counter()
        try:
            with _kernel_environment(**kernel_environment):
                declared = pm.inspect_notebook(str(nb))
                pm.execute_notebook(
                    str(nb),
                    str(executed_dir / nb.name),
                    parameters={**injected_parameters(params, declared),
                                **{k: v for k, v in optional.items() if k in declared}},
                    cwd=str(cwd),
                    kernel_name="python3",
                    progress_bar=False,
                    log_output=True,
                    **kernel_transport(),
                )
        except Exception as err:  # papermill raises PapermillExecutionError with the cell's error
            seconds = time.perf_counter() - start
            print(f"[{i}/{total}] {nb.name} FAILED after {seconds:.0f} s: {err}", flush=True)
            runs.append(NotebookRun(nb.name, "failed", seconds, _first_line(err)))
            record()
            break
        passed += 1
        seconds = time.perf_counter() - start
        runs.append(NotebookRun(nb.name, "passed", seconds))
        record()
        print(f"[{i}/{total}] {nb.name} passed in {seconds:.0f} s", flush=True)
    runs += [NotebookRun(nb.name, "not run") for nb in notebooks[len(runs):]]
    if write_report:
        target = Path(report_dir) if report_dir else Path(cwd) / "reports" / cohort_name
        target = target / f"study_report_{run_name}.html"
        try:
            write_html_report(target, executed_dir, runs, parameters=params)
            print(f"hccer: study report -> {target}", flush=True)
        except Exception as err:  # the report must never hide the notebooks' own result
            print(f"hccer: could not write the study report {target}: {_first_line(err)}", flush=True)
    print(f"{passed} of {total} notebooks passed" + (f", {skipped} skipped" if skipped else ""), flush=True)
    return 0 if passed + skipped == total else 1


def kernel_transport() -> dict:
    """Papermill's keyword for the kernel's connection: local sockets (IPC) on POSIX systems.

    A kernel started over TCP listens on local ports in plain text, which another user of a
    shared machine (a cluster's node) could connect to, and ipykernel says so on every
    notebook. IPC sockets are files only this user can open. Windows has only TCP: ``{}``.
    """
    if os.name != "posix":
        return {}
    from traitlets.config import Config

    return {"config": Config({"KernelManager": {"transport": "ipc"}})}


def earlier_layout_notice(cwd: Path, cohort_dir: Path, seed: int) -> str | None:
    """One line when ``data/synthetic`` of the earlier layout holds this run's synthetic cohort; else ``None``.

    Before runs were kept apart, the synthetic cohort of every seed lived in ``data/synthetic``.
    When that folder holds the cohort of this run's ``seed`` (its ``ground_truth.json``) and
    the run's own folder ``cohort_dir`` does not exist yet, the run would generate the same
    cohort again and recompute its caches: the line says how to keep them. Nothing is moved.
    """
    earlier = cohort_dir.parent / "synthetic"
    truth = cwd / earlier / "ground_truth.json"
    if (cwd / cohort_dir).exists() or not truth.is_file():
        return None
    try:
        earlier_seed = json.loads(truth.read_text()).get("seed")
    except (OSError, ValueError):
        return None
    if earlier_seed != seed:
        return None
    return (f"hccer: {earlier} holds the synthetic cohort of seed {seed} from the earlier layout (one folder for every "
            f"seed); this run generates {cohort_dir} again. To keep that cohort and its caches, stop and run: "
            f"mv {earlier} {cohort_dir}")


def needs_images(notebook: str | os.PathLike) -> bool:
    """Whether a notebook reads the CT images (``"hccer": {"needs_images": true}`` in its metadata)."""
    import nbformat

    nb = nbformat.read(notebook, as_version=4)
    return bool(nb.metadata.get(METADATA_KEY, {}).get("needs_images", False))


def skip_reason(notebook: str | os.PathLike, cohort_dir: str, validation=None) -> str | None:
    """Why a notebook is skipped on the clinical-only cohort ``cohort_dir``; ``None`` when it runs.

    ``validation``: the cohort's ``cohort.ValidationReport``; when it says the clinical study
    alone was asked for (``requested_clinical_only``), the reason says so and counts the
    patients without images.
    """
    if not needs_images(notebook):
        return None
    still = "the notebooks without images (Table 1, selection, clinical models, study report) still run"
    if validation is not None and getattr(validation, "requested_clinical_only", False):
        lacking = validation.without_images
        count = (f"{len(lacking)} of {validation.n_patients} patients have no images"
                 if lacking else "every patient has images")  # fmt: skip
        return (f"the run was asked for the clinical study only (--clinical-only) on the cohort {cohort_dir} "
                f"({count}) and this notebook reads the CT images; {still}, on every patient")
    return (f"the cohort {cohort_dir} is clinical-only (it has no images/ folder) and this notebook reads the "
            f"CT images; {still}")


def write_skipped_copy(notebook: str | os.PathLike, target: str | os.PathLike, reason: str) -> Path:
    """The executed copy of a skipped notebook: a first markdown cell saying so and why, the cells not run.

    Its metadata holds ``"hccer": {"skipped": reason}`` (:func:`notebook_status` reads it).
    """
    import nbformat

    from hccer_lib import outputs

    nb = nbformat.read(notebook, as_version=4)
    banner = nbformat.v4.new_markdown_cell(f"**Skipped, not run:** {reason}.\n\n"
                                           "The cells below are the notebook as committed, without outputs.")
    nb.cells = [banner, *nb.cells]
    nb.metadata.setdefault(METADATA_KEY, {})["skipped"] = reason
    return outputs.write_text(target, nbformat.writes(nb))


def validate_cohort_first(cohort_dir: str | os.PathLike, profile: str, clinical_only: bool = False):
    """Validate a cohort folder for a run of ``profile`` (its folds) before any notebook runs.

    ``clinical_only``: check the clinical table only (``cohort.validate_cohort``).

    Returns:
        the ``cohort.ValidationReport`` (``clinical_only`` says whether images are skipped).

    Raises:
        CohortError: the first problem, one line naming the patient and the file (the
            command line prints it and exits with code 2).
    """
    from hccer_lib.cohort import _some, validate_cohort
    from hccer_lib.profiles import get_profile

    print(f"hccer: validating the cohort {cohort_dir} ...", flush=True)
    report = validate_cohort(cohort_dir, n_folds=get_profile(profile).n_folds, clinical_only=clinical_only)
    if report.requested_clinical_only:
        lacking = report.without_images
        print(f"hccer: clinical study only on {cohort_dir} (--clinical-only): the notebooks that read images are "
              f"skipped; " + (f"{len(lacking)} of {report.n_patients} patients have no images: {_some(lacking)}"
                              if lacking else "every patient has images"), flush=True)  # fmt: skip
    elif report.clinical_only:
        print(f"hccer: {cohort_dir} is a clinical-only cohort (no images/ folder): "
              "the notebooks that read images are skipped", flush=True)
    return report


@contextlib.contextmanager
def _kernel_environment(**variables: str):
    """Set environment variables for the kernels started inside the block, then restore them."""
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


# ---------------------------------------------------------------------------------------
# The HTML study report
# ---------------------------------------------------------------------------------------


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    text = lines[0] if lines else type(err).__name__
    # papermill's message starts with a banner; the line naming the exception is more useful
    named = [line for line in lines if re.match(r"^[A-Za-z_.]*(Error|Exception)\b", line)]
    return (named[-1] if named else text)[:300]


def notebook_status(nb) -> str:
    """``"skipped"`` for the copy of a skipped notebook (:func:`write_skipped_copy`), ``"failed"``
    when papermill recorded an exception in an executed notebook, else ``"passed"``."""
    if nb.metadata.get(METADATA_KEY, {}).get("skipped"):
        return "skipped"
    return "failed" if nb.metadata.get("papermill", {}).get("exception") else "passed"


def notebook_title(nb, default: str) -> str:
    """The first ``# `` heading of a notebook's markdown cells, or ``default``."""
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    return default


def _anchor(name: str) -> str:
    return "nb-" + re.sub(r"[^A-Za-z0-9_-]+", "-", Path(name).stem)


def _status_badge(status: str) -> str:
    label = {"passed": "passed", "failed": "FAILED", "not run": "not run", "skipped": "skipped"}.get(status, status)
    return f'<span class="hccer-status {status.replace(" ", "-")}">{html.escape(label)}</span>'


def _anchored_sections(nb, anchor: str) -> list[str]:
    """Give every ``##`` heading of ``nb`` an anchor ``<anchor>-s<k>``; return the titles in order."""
    titles: list[str] = []
    for cell in nb.cells:
        if cell.cell_type != "markdown":
            continue
        lines = []
        for line in cell.source.splitlines():
            if line.startswith("## "):
                titles.append(line[3:].strip())
                lines += [f'<a id="{anchor}-s{len(titles)}"></a>', ""]
            lines.append(line)
        cell.source = "\n".join(lines)
    return titles


def combined_report_notebook(
    executed_dir: str | os.PathLike,
    runs: list[NotebookRun] | None = None,
    title: str = "hccer study report",
    parameters: dict | None = None,
):
    """One notebook holding a header with the table of contents, then every executed notebook.

    Args:
        executed_dir: folder of the executed notebooks (``executed/<cohort name>/<profile>``).
        runs: what happened to each notebook in this run, in order; ``None``: every
            ``*.ipynb`` of ``executed_dir``, its status read from papermill's metadata.
            Notebooks marked ``"not run"`` are listed, without content: an executed copy
            left from an earlier run is not shown as if it belonged to this one.
        parameters: the notebooks' parameters, shown in the header.

    Returns:
        An ``nbformat`` v4 notebook (not executed again).
    """
    import nbformat

    executed_dir = Path(executed_dir)
    if runs is None:
        runs = []
        for path in sorted(executed_dir.glob("*.ipynb")):
            executed = nbformat.read(path, as_version=4)
            runs.append(NotebookRun(path.name, notebook_status(executed),
                                    error=executed.metadata.get(METADATA_KEY, {}).get("skipped", "")))
    combined = nbformat.v4.new_notebook()
    toc, body = [], []
    for run in runs:
        anchor = _anchor(run.name)
        path = executed_dir / run.name
        seconds = f", {run.seconds:.0f} s" if run.seconds is not None else ""
        if run.status == "not run" or not path.is_file():
            status = run.status if run.status == "not run" else "failed"
            toc.append(f'<li>{html.escape(run.name)} {_status_badge(status)}'
                       f'{" (no executed copy)" if status != "not run" else ""}</li>')
            continue
        nb = nbformat.read(path, as_version=4)
        status = run.status if run.status in ("passed", "failed", "skipped") else notebook_status(nb)
        name_title = notebook_title(nb, run.name)
        sections = _anchored_sections(nb, anchor)
        section_items = "".join(f'<li><a href="#{anchor}-s{k}">{html.escape(t)}</a></li>'
                                for k, t in enumerate(sections, start=1))
        toc.append(f'<li><a href="#{anchor}">{html.escape(name_title)}</a> {_status_badge(status)}'
                   f' <small>{html.escape(run.name)}{seconds}</small>'
                   f'{f"<ul>{section_items}</ul>" if section_items else ""}</li>')
        what = "Skipped" if status == "skipped" else "Error"
        error = f"<p><b>{what}:</b> <code>{html.escape(run.error)}</code></p>" if run.error else ""
        banner = (f'<div class="hccer-notebook" id="{anchor}"><p>{_status_badge(status)} '
                  f'<b>{html.escape(run.name)}</b>{seconds}</p>{error}</div>')
        body.append(nbformat.v4.new_markdown_cell(banner))
        body += nb.cells
        if not combined.metadata and nb.metadata.get("kernelspec"):
            combined.metadata["kernelspec"] = nb.metadata["kernelspec"]
            combined.metadata["language_info"] = nb.metadata.get("language_info", {"name": "python"})
    counts = {s: sum(r.status == s for r in runs) for s in ("passed", "failed", "skipped", "not run")}
    facts = [f"{counts['passed']} of {len(runs)} notebooks passed"
             + (f", {counts['skipped']} skipped" if counts["skipped"] else "")
             + (f", {counts['failed']} failed" if counts["failed"] else "")
             + (f", {counts['not run']} not run" if counts["not run"] else ""),
             "written " + datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")]
    if parameters:
        facts.append("parameters: " + ", ".join(f"{k}={v}" for k, v in parameters.items()))
    note = ""
    if parameters and parameters.get("synthetic"):
        from hccer_lib.outputs import SYNTHETIC_NOTE

        note = f"<p><i>{html.escape(SYNTHETIC_NOTE)}</i></p>"
    header = (REPORT_STYLE + f'<div class="hccer-report-head"><h1>{html.escape(title)}</h1>'
              + "".join(f"<p>{html.escape(f)}</p>" for f in facts) + note
              + "<h2>Contents</h2><ol>" + "".join(toc) + "</ol></div>")
    combined.cells = [nbformat.v4.new_markdown_cell(header), *body]
    if "kernelspec" not in combined.metadata:
        combined.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return combined


def write_html_report(
    target: str | os.PathLike,
    executed_dir: str | os.PathLike,
    runs: list[NotebookRun] | None = None,
    title: str | None = None,
    parameters: dict | None = None,
) -> Path:
    """Write the executed notebooks as one self-contained HTML file (atomic); returns its path.

    Uses nbconvert's ``HTMLExporter`` (lab template): code, text, tables and figures of
    every notebook, images embedded as ``data:image/png;base64`` URIs, so the single file
    is readable anywhere. See :func:`combined_report_notebook` for ``runs``.
    """
    from nbconvert import HTMLExporter

    from hccer_lib import outputs

    if title is None:
        profile = (parameters or {}).get("profile")
        title = "hccer study report" + (f" (profile {profile})" if profile else "")
    nb = combined_report_notebook(executed_dir, runs, title, parameters)
    exporter = HTMLExporter(template_name="lab", embed_images=True)
    body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": title}})
    return outputs.write_text(target, body)
