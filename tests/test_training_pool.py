"""Trainings in worker processes: the same predictions whatever the number of workers, resumable after a kill."""

import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_training import TINY_PROFILE, tiny_clinical, tiny_dataset, tiny_folds

from hccer_lib import training

POOL_PROFILE = replace(TINY_PROFILE, training_threads=1, train_seeds=2)


def test_training_workers_follow_profile_argument_and_environment(monkeypatch):
    monkeypatch.delenv("HCCER_TRAINING_WORKERS", raising=False)
    in_process = replace(POOL_PROFILE, training_threads=0)
    assert training.training_workers(in_process, 4) == 0  # a profile without pinned threads trains in-process
    assert training.training_workers(POOL_PROFILE, 3) == 3
    assert training.training_workers(POOL_PROFILE) == max(1, training.available_cores())
    assert training.training_workers(replace(POOL_PROFILE, training_threads=2), "auto") == max(1, training.available_cores() // 2)
    monkeypatch.setenv("HCCER_TRAINING_WORKERS", "5")
    assert training.training_workers(POOL_PROFILE) == 5
    assert training.training_workers(POOL_PROFILE, 2) == 2  # an explicit argument wins
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv("HCCER_TRAINING_WORKERS", bad)
        with pytest.raises(ValueError, match="training workers must be a whole number"):
            training.training_workers(POOL_PROFILE)
    with pytest.raises(ValueError, match="training_threads must be >= 0"):
        training.training_workers(replace(POOL_PROFILE, training_threads=-1))


def _study(work_dir):
    clinical = tiny_clinical()
    return dict(dataset=tiny_dataset(clinical), clinical=clinical, folds=tiny_folds(clinical), work_dir=work_dir)


def _train(study, workers, model_name="deep_resnet50", **kwargs):
    return training.train_cross_validated(model_name, study["dataset"], study["clinical"], study["folds"], POOL_PROFILE,
                                          study["work_dir"], seed=3, imagenet="none", workers=workers, **kwargs)


def _fold_files(work_dir: Path) -> dict[str, bytes]:
    files = sorted((work_dir / "runs").rglob("fold_*.csv"))
    return {str(f.relative_to(work_dir)): f.read_bytes() for f in files}


@pytest.mark.slow
def test_one_or_two_workers_give_byte_identical_predictions(tmp_path, capsys):
    one = _train(_study(tmp_path / "one"), workers=1)
    two = _train(_study(tmp_path / "two"), workers=2)
    pd.testing.assert_frame_equal(one, two, check_exact=True)
    assert sorted(one["train_seed"].unique()) == [3, 1003] and len(one) == 2 * 24
    files_one, files_two = _fold_files(tmp_path / "one"), _fold_files(tmp_path / "two")
    assert len(files_one) == 4 and files_one == files_two
    out = capsys.readouterr().out
    assert "4 trainings in 2 worker processes of 1 thread(s) each" in out and "[4/4," in out
    # a rerun reads every fold and starts no worker
    again = _train(_study(tmp_path / "two"), workers=2)
    pd.testing.assert_frame_equal(again, two, check_exact=True)
    assert "worker processes" not in capsys.readouterr().out
    # one fold trained again where the pool trained it (notebook 08's Grad-CAM) predicts as stored
    study = _study(tmp_path / "again")
    model, data = training.train_fold_isolated("deep_resnet50", study["dataset"], study["clinical"], study["folds"],
                                               POOL_PROFILE, 1, seed=1003, imagenet="none")
    stored = two[(two["train_seed"] == 1003) & (two["fold"] == 1)]["y_prob"].to_numpy()
    retrained = training.predict_probability(model, data.subset(data.test), symmetries=POOL_PROFILE.test_symmetries)
    assert len(retrained) == len(stored) == 12 and np.abs(retrained - stored).max() < 1e-5


@pytest.mark.slow
def test_networks_trained_side_by_side_are_those_trained_one_by_one_in_order(tmp_path, capsys):
    """The final model's fits (training.train_folds_isolated): 2 workers or 1, same weights, request order."""
    study = _study(tmp_path)
    requests = [(name, study["dataset"], study["clinical"], study["folds"], POOL_PROFILE, None, 3, "paper", "none", None)
                for name in ("fusion_a", "deep_resnet50")]
    two = training.train_folds_isolated(requests, POOL_PROFILE, xla=False, workers=2)
    one = training.train_folds_isolated(requests, POOL_PROFILE, xla=False, workers=1)
    assert [m.name for m, _ in two] == [m.name for m, _ in one] and two[0][1].inputs.keys() != two[1][1].inputs.keys()
    assert "clinical" in two[0][1].inputs and "clinical" not in two[1][1].inputs, "results follow the requests' order"
    for (model_two, _), (model_one, _) in zip(two, one, strict=True):
        for w_two, w_one in zip(model_two.get_weights(), model_one.get_weights(), strict=True):
            np.testing.assert_array_equal(w_two, w_one)
    out = capsys.readouterr().out
    n_slices = len(study["dataset"].patient_id)  # every patient's slices: no validation share in this profile
    assert f"fusion_a, seed 3, every patient: {n_slices} training slices [1/2," in out and "[2/2," in out


@pytest.mark.slow
def test_a_failing_training_names_model_seed_and_fold(tmp_path):
    with pytest.raises(RuntimeError, match=r"fusion_c: training seed \d+ fold \d+ failed in a worker process"):
        _train(_study(tmp_path), workers=1, model_name="fusion_c", network_overrides={"clinical_kernel": 99})
    assert _fold_files(tmp_path) == {}


_KILLED_RUN = """
import sys
from dataclasses import replace
from pathlib import Path
sys.path.insert(0, {tests!r})
from test_training_pool import _study, _train
if __name__ == "__main__":
    _train(_study(Path({work!r})), workers=2)
"""


@pytest.mark.slow
def test_killing_the_run_mid_set_loses_nothing_and_the_rerun_completes_it(tmp_path, capsys):
    root = str(Path(__file__).resolve().parents[1])
    script = tmp_path / "run.py"
    script.write_text(_KILLED_RUN.format(tests=str(Path(__file__).resolve().parent), work=str(tmp_path / "killed")))
    process = subprocess.Popen([sys.executable, str(script)], cwd=root, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while not list((tmp_path / "killed").rglob("fold_*.json")) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)  # the parent and both workers, mid-set
    process.wait()
    saved = sorted((tmp_path / "killed").rglob("fold_*.json"))
    assert 1 <= len(saved) < 4, "the run must be killed after its first fold and before its last"
    rerun = _train(_study(tmp_path / "killed"), workers=2)
    out = capsys.readouterr().out
    assert out.count("done before") >= len(saved) and f"{4 - len(saved)} trainings in" in out
    complete = _train(_study(tmp_path / "whole"), workers=2)
    pd.testing.assert_frame_equal(rerun, complete, check_exact=True)
    assert _fold_files(tmp_path / "killed") == _fold_files(tmp_path / "whole")


def test_a_free_worker_keeps_to_its_model_then_takes_one_no_other_worker_has():
    waiting = {"a": 3, "b": 3, "c": 3, "d": 3}
    assert training.next_model(0, [None, None], waiting) == "a"
    assert training.next_model(1, ["a", None], waiting) == "b"  # not the model the other worker compiled
    assert training.next_model(0, ["a", "b"], waiting) == "a"  # its own while it has trainings waiting
    assert training.next_model(0, ["a", "b"], {**waiting, "a": 0}) == "c"  # then the first model nobody trains
    assert training.next_model(1, ["c", "b"], {"a": 0, "b": 0, "c": 3, "d": 3}) == "d"
    # one model: a fresh worker joins, whatever is left; a worker that compiled another joins only for enough
    assert training.next_model(1, ["a", None], {"a": 1}) == "a"
    many = training.STEAL_MIN_TRAININGS
    assert training.next_model(1, ["a", "b"], {"a": many, "b": 0}) == "a"
    assert training.next_model(1, ["a", "b"], {"a": many - 1, "b": 0}) is None
    assert training.next_model(0, ["a", "b"], {"a": 0, "b": 0}) is None
    # helping: the model with the most trainings waiting, ties to the earlier one
    assert training.next_model(2, ["a", "b", "c"], {"a": many + 2, "b": many + 5, "c": 0}) == "b"
    assert training.next_model(2, ["a", "b", None], {"a": 4, "b": 4}) == "a"


@pytest.mark.slow
def test_models_trained_together_are_those_trained_one_at_a_time(tmp_path, capsys):
    """Notebook 05's four models in one set of workers (train_models_cross_validated): same files, same predictions."""
    models = ["fusion_a", "deep_resnet50"]
    study = _study(tmp_path / "together")
    together = training.train_models_cross_validated(models, study["dataset"], study["clinical"], study["folds"],
                                                     POOL_PROFILE, study["work_dir"], seed=3, imagenet="none", workers=2)
    out = capsys.readouterr().out
    assert list(together) == models
    assert "8 trainings of 2 models in 2 worker processes of 1 thread(s) each" in out and "[8/8," in out
    assert "fusion_a: seed 3 fold 0:" in out and "deep_resnet50: seed 1003 fold 1:" in out
    for name in models:
        assert f"hccer: {name}: pooled patient AUC" in out
    alone = {name: _train(_study(tmp_path / "alone"), workers=1, model_name=name) for name in models}
    for name in models:
        pd.testing.assert_frame_equal(together[name], alone[name], check_exact=True)
        written = pd.read_csv(tmp_path / "together" / "predictions" / f"{name}.csv", dtype={"patient_id": str})
        assert len(written) == len(alone[name]) == 2 * 24
    assert _fold_files(tmp_path / "together") == _fold_files(tmp_path / "alone")
    with pytest.raises(ValueError, match="named twice"):
        training.train_models_cross_validated(["fusion_a", "fusion_a"], study["dataset"], study["clinical"], study["folds"],
                                              POOL_PROFILE, study["work_dir"])


@pytest.mark.slow
def test_models_trained_together_in_this_process_name_each_fold(tmp_path, capsys):
    """A profile without workers (smoke, paper) trains the models one after another; each line names its model."""
    profile = replace(POOL_PROFILE, training_threads=0, train_seeds=1)
    study = _study(tmp_path)
    together = training.train_models_cross_validated(["fusion_b", "deep_resnet50"], study["dataset"], study["clinical"],
                                                     study["folds"], profile, study["work_dir"], seed=3, imagenet="none")
    out = capsys.readouterr().out
    assert "fusion_b: seed 3 fold 0:" in out and "deep_resnet50: seed 3 fold 1:" in out and "worker processes" not in out
    alone = training.train_cross_validated("deep_resnet50", study["dataset"], study["clinical"], study["folds"], profile,
                                           tmp_path / "alone", seed=3, imagenet="none")
    pd.testing.assert_frame_equal(together["deep_resnet50"], alone, check_exact=True)
    assert "\n  seed 3 fold 0:" in capsys.readouterr().out, "one model alone: no name on its lines"
