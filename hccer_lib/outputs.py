"""Writing results whole or not at all, and the fixed places they go.

Every table, figure and prediction file of the study is written through these helpers:
the content goes to a temporary file in the same folder, which then replaces the target
in one ``os.replace``. A run that fails half-way leaves the last good file in place.

The study's relative paths (the cohort folder ``data/synthetic_seed2020``, ``data/``, ``figures/``)
mean paths inside the project folder (:func:`project_root`), whatever the working folder:
a notebook opened in JupyterLab, whose kernel starts in ``notebooks/``, reads and writes
the same files as ``run_all.sh`` (:func:`project_path`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

SYNTHETIC_NOTE = (
    "Synthetic cohort: these numbers come from the generated stand-in cohort, not from the "
    "paper's patients; the paper's reported values are shown beside them for reference only."
)


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()

#: Environment variable naming the project folder (an installed package, or a run of the
#: study in another folder; the runner sets it for its notebook kernels).
ROOT_VARIABLE = "HCCER_ROOT"
PROJECT_NAME = "hccer"


def _is_project_folder(folder: Path) -> bool:
    """Whether ``folder`` holds this project's ``pyproject.toml``."""
    try:
        with open(folder / "pyproject.toml", "rb") as handle:
            return tomllib.load(handle).get("project", {}).get("name") == PROJECT_NAME
    except (OSError, tomllib.TOMLDecodeError):
        return False


def project_root() -> Path:
    """The project folder, from which the study's relative paths are read (absolute).

    In order: the folder named by ``$HCCER_ROOT``; the folder holding the project's
    ``pyproject.toml`` above this package (a checkout, an editable install); the nearest one
    at or above the working folder; else the working folder.
    """
    named = os.environ.get(ROOT_VARIABLE)
    if named:
        return Path(named).expanduser().resolve()
    above_package = Path(__file__).resolve().parent.parent
    if _is_project_folder(above_package):
        return above_package
    cwd = Path.cwd().resolve()
    return next((folder for folder in (cwd, *cwd.parents) if _is_project_folder(folder)), cwd)


def project_path(path: str | os.PathLike) -> Path:
    """``path`` as the study reads it: an absolute path as given, a relative one from :func:`project_root`.

    When the working folder is the project root (``run_all.sh``, the runner's kernels) a
    relative path already means that and is returned as given (a ``Path``), so that the paths
    a run prints and records stay as they were.

    Example:
        >>> project_path("data/synthetic_seed2020")   # doctest: +SKIP
        PosixPath('/home/me/hccer/data/synthetic_seed2020')   # in a kernel started in notebooks/
    """
    path = Path(path).expanduser()
    if path.is_absolute():
        return path
    root = project_root()
    return path if Path.cwd().resolve() == root else root / path


def project_paths(*paths: str | os.PathLike | None) -> tuple[Path | None, ...]:
    """:func:`project_path` of each of ``paths`` (``None`` stays ``None``): a notebook's set-up."""
    return tuple(None if p is None else project_path(p) for p in paths)


def from_working_folder(path: str | os.PathLike | None) -> str | None:
    """A path given on the command line (relative to the working folder) as the notebooks will read it.

    Relative paths of the notebooks' parameters are read from the project root
    (:func:`project_path`); a relative path given elsewhere is made absolute. An absolute path,
    or any path when the working folder is the project root, is returned as given.
    """
    if path is None:
        return None
    if Path(path).expanduser().is_absolute() or Path.cwd().resolve() == project_root():
        return str(path)
    return os.path.abspath(Path(path).expanduser())


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success it replaces ``target``.

    Example:
        >>> with atomic_path("figures/x.csv") as tmp:   # doctest: +SKIP
        ...     frame.to_csv(tmp)
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp" + target.suffix, dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if tmp.is_file():  # mkstemp makes the file private (0600); give it the usual mode
            os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text(target: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``target`` atomically; returns the path."""
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(target)


def write_json(target: str | os.PathLike, obj) -> Path:
    """Write ``obj`` as indented JSON, atomically."""
    return write_text(target, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_csv(target: str | os.PathLike, frame: pd.DataFrame, **kwargs) -> Path:
    """Write ``frame`` as CSV (no index unless asked), atomically."""
    kwargs.setdefault("index", False)
    with atomic_path(target) as tmp:
        frame.to_csv(tmp, **kwargs)
    return Path(target)


def frame_to_markdown(frame: pd.DataFrame, float_format: str = "{:.4g}") -> str:
    """A GitHub-flavoured Markdown table of ``frame`` (no extra dependency)."""

    def cell(value) -> str:
        if isinstance(value, float):
            return "" if pd.isna(value) else float_format.format(value)
        return "" if value is None else str(value).replace("|", "\\|")

    header = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    rows = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *rows]) + "\n"


def write_table(
    stem: str | os.PathLike,
    frame: pd.DataFrame,
    title: str = "",
    note: str = "",
    float_format: str = "{:.4g}",
) -> tuple[Path, Path]:
    """Write ``frame`` as ``<stem>.csv`` and ``<stem>.md`` (title and note above the table)."""
    stem = Path(stem)
    csv_path = write_csv(stem.with_suffix(".csv"), frame)
    parts = [f"# {title}\n" if title else "", f"{note}\n" if note else "", frame_to_markdown(frame, float_format)]
    md_path = write_text(stem.with_suffix(".md"), "\n".join(p for p in parts if p))
    return csv_path, md_path


def save_figure(fig, target: str | os.PathLike, dpi: int = 150) -> Path:
    """Save a matplotlib figure as PNG atomically."""
    with atomic_path(target) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png")
    return Path(target)


def work_dir_for(cohort_dir: str | os.PathLike, data_root: str | os.PathLike = "data") -> Path:
    """Where the study writes what it derives from a cohort: ``data/<cohort name>/``.

    A cohort folder that already lies under ``data_root`` (the synthetic one) is its own
    work folder; any other cohort folder is never written to, its outputs go to
    ``data_root/<folder name>/``. Relative paths are read from the project root
    (:func:`project_path`).
    """
    cohort_dir = project_path(cohort_dir).resolve()
    data_root = project_path(data_root).resolve()
    if cohort_dir.parent == data_root:
        return cohort_dir
    return data_root / cohort_dir.name


def settings_key(settings) -> str:
    """12-hex-digit key of a cached result: hash of ``settings`` as sorted JSON (non-JSON values as ``str``)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:12]
