"""The Ray executor (optional extra): the folds the local executors train, byte for byte; a killed
worker loses nothing. Skipped where Ray is not installed (``pip install -e '.[ray]'``)."""

import os
import signal
import threading
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

ray = pytest.importorskip("ray")

from test_training_pool import POOL_PROFILE, _fold_files, _study  # noqa: E402

from hccer_lib import ray_jobs, training  # noqa: E402


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray instance with 2 CPUs (2 trainings side by side), as ``ray_jobs.connect`` would start."""
    ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


def _train(study, profile, **kwargs):
    return training.train_cross_validated("deep_resnet50", study["dataset"], study["clinical"], study["folds"], profile,
                                          study["work_dir"], seed=3, imagenet="none", **kwargs)


def _task_processes() -> list[int]:
    """Process ids of Ray workers running a training task now (Ray names them ``ray::_train_task``)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "cmdline").read_bytes().startswith(b"ray::_train_task"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@pytest.mark.slow
@pytest.mark.parametrize("threads", [1, 0], ids=["pinned threads (quick)", "backend threads (smoke, paper)"])
def test_ray_tasks_give_the_local_predictions_byte_identical(tmp_path, local_ray, capsys, threads):
    profile = replace(POOL_PROFILE, training_threads=threads)
    local = _train(_study(tmp_path / "local"), profile, workers=1 if threads else None, executor="local")
    on_ray = _train(_study(tmp_path / "ray"), profile, executor="ray")
    pd.testing.assert_frame_equal(local, on_ray, check_exact=True)
    assert _fold_files(tmp_path / "local") == _fold_files(tmp_path / "ray") and len(_fold_files(tmp_path / "ray")) == 4
    out = capsys.readouterr().out
    assert "4 trainings as Ray tasks of 1 CPU(s) each" in out and "[4/4," in out
    # the executor is not part of the settings key: a local rerun reads every fold Ray saved
    again = _train(_study(tmp_path / "ray"), profile, workers=1 if threads else None, executor="local")
    pd.testing.assert_frame_equal(again, on_ray, check_exact=True)
    rerun = capsys.readouterr().out
    assert "done before" in rerun and "Ray tasks" not in rerun and "worker processes" not in rerun


@pytest.mark.slow
def test_several_models_on_ray_name_their_folds_and_match_the_local_run(tmp_path, local_ray, capsys):
    profile = replace(POOL_PROFILE, training_threads=0, train_seeds=1)
    models = ["fusion_a", "deep_resnet50"]
    study = _study(tmp_path / "ray")
    on_ray = training.train_models_cross_validated(models, study["dataset"], study["clinical"], study["folds"], profile,
                                                   study["work_dir"], seed=3, imagenet="none", executor="ray")
    out = capsys.readouterr().out
    assert "fusion_a: seed 3 fold 0:" in out and "deep_resnet50: seed 3 fold 1:" in out
    local = training.train_models_cross_validated(models, study["dataset"], study["clinical"], study["folds"], profile,
                                                  tmp_path / "local", seed=3, imagenet="none", executor="local")
    for name in models:
        pd.testing.assert_frame_equal(on_ray[name], local[name], check_exact=True)


@pytest.mark.slow
def test_a_ray_worker_killed_mid_set_loses_nothing(tmp_path, local_ray):
    killed: list[int] = []

    def kill_one_training() -> None:
        deadline = time.monotonic() + 300
        while not killed and time.monotonic() < deadline:
            running = _task_processes()
            if running and any((tmp_path / "ray" / "runs").rglob("fold_*.json")):  # one fold saved, others running
                os.kill(running[0], signal.SIGKILL)
                killed.append(running[0])
            time.sleep(0.05)

    killer = threading.Thread(target=kill_one_training, daemon=True)
    killer.start()
    on_ray = _train(_study(tmp_path / "ray"), POOL_PROFILE, executor="ray")
    killer.join(timeout=5)
    assert killed, "no training task was running to be killed"
    local = _train(_study(tmp_path / "local"), POOL_PROFILE, workers=1, executor="local")
    pd.testing.assert_frame_equal(local, on_ray, check_exact=True)
    assert _fold_files(tmp_path / "local") == _fold_files(tmp_path / "ray")


def test_the_executor_is_named_by_argument_or_environment(monkeypatch):
    monkeypatch.delenv(ray_jobs.EXECUTOR_VARIABLE, raising=False)
    assert ray_jobs.executor() == "local" and ray_jobs.executor("ray") == "ray"
    monkeypatch.setenv(ray_jobs.EXECUTOR_VARIABLE, "Ray")
    assert ray_jobs.executor() == "ray" and ray_jobs.executor("local") == "local"
    monkeypatch.setenv(ray_jobs.EXECUTOR_VARIABLE, "slurm")
    with pytest.raises(ValueError, match="executor must be one of"):
        ray_jobs.executor()


def test_one_gpu_per_training_where_the_profile_trains_on_the_backends_threads():
    gpu_profile = replace(POOL_PROFILE, training_threads=0)
    assert ray_jobs.task_resources(gpu_profile, cluster_gpus=4) == {"num_cpus": 1, "num_gpus": 1}
    assert ray_jobs.task_resources(gpu_profile, cluster_gpus=0) == {"num_cpus": 1, "num_gpus": 0}
    assert ray_jobs.task_resources(replace(POOL_PROFILE, training_threads=2), cluster_gpus=4) == {"num_cpus": 2, "num_gpus": 0}


@pytest.mark.slow
def test_the_seed_simulations_clinical_cohorts_on_ray_are_those_run_locally(tmp_path, local_ray, monkeypatch, capsys):
    import numpy as np

    from hccer_lib import simulation, synth

    population = synth.sample_population(synth.SynthConfig(), 4, np.random.SeedSequence(11))
    inputs, y = synth.oracle_inputs(population), population["early_recurrence"].to_numpy()
    cheap = {name: synth._oracle_model().fit(inputs[name], y) for name in simulation.ORACLE_MODELS.values()}
    monkeypatch.setattr(simulation, "fixed_oracles", lambda: cheap)  # fitted here, sent to the tasks
    counts = simulation.SeedCounts(clinical=2, image=0, deep=0, oracle_cohorts=0)
    local = simulation.run_simulation("smoke", tmp_path / "local", n_seeds=counts, n_jobs=1, executor="local")
    on_ray = simulation.run_simulation("smoke", tmp_path / "ray", n_seeds=counts, executor="ray")
    out = capsys.readouterr().out
    assert "seed 2021 clinical (1/2)" in out or "seed 2022 clinical (1/2)" in out, "no local progress line"
    assert ", Ray): clinical_rf" in out, "the Ray run printed no progress line per seed"
    pd.testing.assert_frame_equal(local, on_ray, check_exact=True)
    parts = {p.name: p.read_bytes() for p in (tmp_path / "local").rglob("seed_*_clinical.csv")}
    assert len(parts) == 2 and parts == {p.name: p.read_bytes() for p in (tmp_path / "ray").rglob("seed_*_clinical.csv")}


@pytest.mark.slow
def test_a_failing_ray_task_names_model_seed_and_fold(tmp_path, local_ray):
    study = _study(tmp_path)
    with pytest.raises(RuntimeError, match=r"fusion_c: training seed \d+ fold \d+ failed in a Ray task"):
        training.train_cross_validated("fusion_c", study["dataset"], study["clinical"], study["folds"], POOL_PROFILE,
                                       study["work_dir"], seed=3, imagenet="none", executor="ray",
                                       network_overrides={"clinical_kernel": 99})
    assert _fold_files(tmp_path) == {}
