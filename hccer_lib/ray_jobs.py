"""The trainings of a model as Ray tasks: one machine's GPUs, or a Ray cluster.

An optional executor of :func:`hccer_lib.training.run_fold_jobs` (``pip install -e
'.[ray]'``; nothing else of the study imports Ray). Every (training seed, fold) of a model is
one task, run by :func:`hccer_lib.training.train_and_save_fold` exactly as a local worker
process runs it: the task's process pinned to ``profile.training_threads`` threads (0: the
backend's own threading, as in the notebook's process), one compiled network reused per
process, and each finished fold saved by the task that trained it, whole or not at all, under
the run's settings key. So an interrupted set resumes as the local one does, a rerun without
Ray reads every fold, and the executor is not part of the settings key: it changes where a
fold is trained, not its result. A task whose worker process dies is retried by Ray
(``max_retries``).

The seed simulation's clinical cohorts (``simulation.run_simulation``) run as Ray tasks the
same way (:func:`map_tasks`), each writing its own cached part.

Choosing it: ``executor="ray"`` of ``training.train_cross_validated`` and
``simulation.run_simulation``, or the environment
variable ``HCCER_EXECUTOR=ray`` (``run_all.sh --executor ray`` sets it for every notebook).
Where: ``$RAY_ADDRESS`` (or ``ray.init(address=...)`` before the study) names a running
cluster; without it a local Ray instance is started with this machine's cores and GPUs.
Resources of a task: ``max(1, training_threads)`` CPUs, and one GPU when the cluster has
GPUs and the profile trains with the backend's own threading (``training_threads == 0``,
the ``paper`` profile): one training per GPU. On a cluster the run folder must be on a file
system that every node sees (each task writes its fold there) and every node needs the
project installed in the same environment.
"""

from __future__ import annotations

import os
import time

import pandas as pd

#: Environment variable choosing the executor of the trainings: ``local`` (default) or ``ray``.
EXECUTOR_VARIABLE = "HCCER_EXECUTOR"
EXECUTORS = ("local", "ray")


def executor(name: str | None = None) -> str:
    """The executor asked for: ``name``, else ``$HCCER_EXECUTOR``, else ``"local"``."""
    chosen = (name or os.environ.get(EXECUTOR_VARIABLE, "").strip() or "local").lower()
    if chosen not in EXECUTORS:
        raise ValueError(f"executor must be one of {EXECUTORS}, got {chosen!r} (argument or ${EXECUTOR_VARIABLE})")
    return chosen


def require_ray():
    """The ``ray`` module; ``RuntimeError`` saying how to install it when missing."""
    return _ray()


def _ray():
    try:
        import ray
    except ImportError:
        raise RuntimeError("the Ray executor needs Ray: pip install -e '.[ray]' (or run without --executor ray)") from None
    return ray


def connect(address: str | None = None):
    """The Ray module, connected: to ``address`` or ``$RAY_ADDRESS`` when given, else to a local
    instance started with this machine's resources (once per process)."""
    ray = _ray()
    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS") or None
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
        resources = ray.cluster_resources()
        print(f"hccer: Ray {'cluster ' + address if address else 'local instance'}: "
              f"{resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs", flush=True)
    return ray


def task_resources(profile, cluster_gpus: float) -> dict:
    """What one training asks Ray for: CPUs for its threads, a GPU where the profile uses one."""
    gpus = 1 if profile.training_threads == 0 and cluster_gpus >= 1 else 0
    return {"num_cpus": max(1, int(profile.training_threads)), "num_gpus": gpus}


# State of a Ray worker process: its pinned thread count and one compiled network per model.
_PROCESS: dict = {"threads": None, "fold_models": {}}


def _train_task(job, train_seed: int, fold: int) -> tuple[pd.DataFrame, str]:
    """Body of a Ray task: one (training seed, fold) of ``job``, saved, as a local worker trains it."""
    from hccer_lib import training

    threads = int(job.profile.training_threads)
    if _PROCESS["threads"] is None:
        if threads > 0:
            training.pin_threads(threads)
        _PROCESS["threads"] = threads
    elif _PROCESS["threads"] != threads:
        raise RuntimeError(f"this Ray worker process runs {_PROCESS['threads']} thread(s) per training; the job asks for "
                           f"{threads} (tasks of each thread count get their own processes: see run_fold_jobs)")
    key = (job.model_name, job.profile.learning_rate, job.profile.weight_decay, job.profile.xla)
    if key not in _PROCESS["fold_models"]:
        _PROCESS["fold_models"] = {key: training.FoldModel(job.model_name, job.profile.learning_rate,
                                                           job.profile.weight_decay, xla=job.profile.xla)}
    return training.train_and_save_fold(job, train_seed, fold, _PROCESS["fold_models"][key])


def run_fold_jobs(job, pending: list[tuple[int, int]], max_retries: int = 3) -> dict[tuple[int, int], pd.DataFrame]:
    """Train every (training seed, fold) of ``pending`` as Ray tasks; return their predictions by (seed, fold).

    A progress line is printed per fold as it finishes. A failing fold stops the set (the
    tasks still running are cancelled; finished folds are saved) and raises ``RuntimeError``
    naming the model, seed and fold; a task whose process died is retried up to
    ``max_retries`` times first.
    """
    done: dict[tuple[int, int], pd.DataFrame] = {}
    if not pending:
        return done
    ray = connect()
    resources = task_resources(job.profile, ray.cluster_resources().get("GPU", 0))
    # Workers are pooled per runtime environment: a task of another thread count never lands in
    # a process whose backend is already pinned to another (its threads cannot change).
    threads_env = {"env_vars": {"HCCER_TASK_THREADS": str(job.profile.training_threads)}}
    remote = ray.remote(max_retries=max_retries, runtime_env=threads_env, **resources)(_train_task)
    job_ref = ray.put(job)
    print(f"  {len(pending)} trainings as Ray tasks of {resources['num_cpus']} CPU(s)"
          f"{' and 1 GPU' if resources['num_gpus'] else ''} each", flush=True)
    start = time.perf_counter()
    tasks = {remote.remote(job_ref, train_seed, fold): (train_seed, fold) for train_seed, fold in pending}
    describe = lambda pair: f"{job.model_name}: training seed {pair[0]} fold {pair[1]}"  # noqa: E731
    for (train_seed, fold), (frame, line) in _completed(ray, tasks, describe):
        done[train_seed, fold] = frame
        print(f"{line} [{len(done)}/{len(pending)}, {time.perf_counter() - start:.0f} s]", flush=True)
    return done


def map_tasks(function, items: list, shared=None, describe=str, num_cpus: int = 1, max_retries: int = 3):
    """``function(item, shared)`` for each of ``items`` as Ray tasks; yields ``(item, result)`` as each finishes.

    For independent jobs that write their own result files (the seed simulation's cohorts);
    ``shared`` goes to the object store once. A failing task stops the set (the others are
    cancelled) with ``RuntimeError`` naming ``describe(item)``.
    """
    if not items:
        return
    ray = connect()
    shared_ref = ray.put(shared)
    remote = ray.remote(max_retries=max_retries, num_cpus=num_cpus)(function)
    yield from _completed(ray, {remote.remote(item, shared_ref): item for item in items}, describe)


def _completed(ray, tasks: dict, describe):
    """``(item, result)`` of each Ray task of ``tasks`` (object ref -> item) as it finishes. A failing
    task cancels the others and raises ``RuntimeError`` naming ``describe(item)`` and the cause."""
    remaining = list(tasks)
    while remaining:
        finished, remaining = ray.wait(remaining, num_returns=1)
        for ref in finished:
            try:
                result = ray.get(ref)
            except Exception as error:
                for other in remaining:
                    ray.cancel(other)
                cause = getattr(error, "cause", None) or error
                raise RuntimeError(f"{describe(tasks[ref])} failed in a Ray task: {type(cause).__name__}: {cause}") from error
            yield tasks[ref], result
