"""Training speed of the study's networks on random tensors: images per second.

Usage (from the repository root)::

    .venv/bin/python scripts/benchmark_training.py                      # smoke, quick, paper (reduced steps)
    .venv/bin/python scripts/benchmark_training.py --profiles quick
    .venv/bin/python scripts/benchmark_training.py --grid               # candidate quick settings
    .venv/bin/python scripts/benchmark_training.py --image-size 48 --width 16 --blocks 1,1,1,1
    KERAS_BACKEND=jax .venv/bin/python scripts/benchmark_training.py    # another Keras backend (jax installed)
    .venv/bin/python scripts/benchmark_training.py --mixed-bfloat16     # bfloat16 compute, float32 weights
    .venv/bin/python scripts/benchmark_training.py --fold --profiles paper --epochs 2   # one fold, the study's path

``--fold`` times one fold of the study itself (``training.train_fold``: the profile's recipe,
validation split, batches, epochs) on a cohort of the paper's size (167 patients, 765 slice
images, Table 1's clinical counts, random images) for each model of ``--models``, beside a bare
``model.fit`` of the same compiled network on the same training tensors in memory, and prints
training images/s of both (the first epoch, with tracing or compilation, timed apart). Run it
once per backend (``KERAS_BACKEND=tensorflow`` / ``jax``) on the machine to measure; for the
paper profile that is a GPU (``--random-init`` is implied: no weights file is needed to time it).

For each setting it builds the image model (``deep_resnet50`` architecture) and fusion D,
trains one warm-up epoch (graph tracing, timed: "1st epoch s") and then ``--epochs`` timed epochs on
``--n-images`` random images with random clinical vectors, through
``hccer_lib.training.fit_model`` (the study's path) and through a bare ``model.fit``
of the same network, and prints training images/s, and prediction images/s. The paper
profile runs ResNet50 at 224×224 on fewer images ("reduced steps").
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import keras  # noqa: E402
import numpy as np  # noqa: E402

from hccer_lib import networks, training  # noqa: E402
from hccer_lib.profiles import get_profile  # noqa: E402


def measure(model_name: str, config: networks.NetworkConfig, n_images: int, epochs: int, batch_size: int, bare: bool) -> tuple[float, float, float]:
    """(training images/s, prediction images/s, seconds of the first epoch incl. tracing)."""
    rng = np.random.default_rng(0)
    x = {
        "image": rng.random((n_images, config.image_size, config.image_size, 3), dtype=np.float32),
        "clinical": rng.integers(0, 2, (n_images, config.n_clinical)).astype(np.float32),
    }
    y = rng.integers(0, 2, n_images)
    keras.utils.set_random_seed(0)
    model = networks.compile_model(networks.build_model(model_name, config), 1e-4)
    if model_name == "deep_resnet50":
        x = {"image": x["image"]}
    fit = (lambda e: model.fit(x, training.model_targets(model, y), batch_size=batch_size, epochs=e, verbose=0)) if bare else (
        lambda e: training.fit_model(model, x, y, epochs=e, batch_size=batch_size, verbose=0)
    )
    start = time.perf_counter()
    fit(1)  # warm-up: tracing
    first_epoch = time.perf_counter() - start
    start = time.perf_counter()
    fit(epochs)
    train_rate = n_images * epochs / (time.perf_counter() - start)
    model.predict(x, batch_size=64, verbose=0)
    start = time.perf_counter()
    model.predict(x, batch_size=64, verbose=0)
    predict_rate = n_images / (time.perf_counter() - start)
    keras.backend.clear_session()
    return train_rate, predict_rate, first_epoch


def paper_sized_fold(profile, seed: int = 0):
    """A random cohort of the paper's size for timing: (dataset, clinical, folds)."""
    from types import SimpleNamespace

    import pandas as pd

    from hccer_lib import evaluation
    from hccer_lib.clinical import paper_clinical_frame

    clinical = paper_clinical_frame(seed)
    rng = np.random.default_rng(seed)
    slices = np.full(len(clinical), 765 // len(clinical))
    slices[rng.choice(len(clinical), 765 - slices.sum(), replace=False)] += 1  # 765 slices, as the paper's Table 2
    pids = np.repeat(clinical["patient_id"].to_numpy(), slices)
    dataset = SimpleNamespace(
        images=rng.random((len(pids), profile.image_size, profile.image_size, 3), dtype=np.float32),
        patient_id=pids,
        slice=np.concatenate([np.arange(k) for k in slices]),
        y_true=np.repeat(clinical["early_recurrence"].to_numpy(), slices),
        roi_area_mm2=np.full(len(pids), 900.0),
    )
    folds = evaluation.make_folds(pd.Series(clinical["early_recurrence"].to_numpy(), index=clinical["patient_id"]),
                                  profile.n_folds, seed)
    return dataset, clinical, folds


def measure_fold(model_name: str, profile, epochs: int) -> dict:
    """Images/s of one fold through ``training.train_fold`` and of a bare ``model.fit`` of the same network."""
    from dataclasses import replace

    profile = replace(profile, epochs=epochs)
    dataset, clinical, folds = paper_sized_fold(profile)
    start = time.perf_counter()
    model, data = training.train_fold(model_name, dataset, clinical, folds, profile, fold=0, seed=0, imagenet="none")
    study_seconds = time.perf_counter() - start
    fit_rows = data.train & ~data.validation
    n_images = int(fit_rows.sum())
    x, y = data.subset(fit_rows), training.model_targets(model, data.y[fit_rows])
    start = time.perf_counter()
    model.fit(x, y, batch_size=profile.batch_size, epochs=1, verbose=0)
    bare_first = time.perf_counter() - start
    start = time.perf_counter()
    model.fit(x, y, batch_size=profile.batch_size, epochs=epochs, verbose=0)
    bare_rate = n_images * epochs / (time.perf_counter() - start)
    keras.backend.clear_session()
    return {"n_train": n_images, "n_validation": int(data.validation.sum()), "study_seconds": study_seconds,
            "study_rate": n_images * epochs / study_seconds, "bare_first": bare_first, "bare_rate": bare_rate}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", default="smoke,quick,paper")
    parser.add_argument("--grid", action="store_true", help="candidate quick settings instead of the profiles")
    parser.add_argument("--image-size", type=int)
    parser.add_argument("--width", type=int)
    parser.add_argument("--blocks")
    parser.add_argument("--models", default="deep_resnet50,fusion_d")
    parser.add_argument("--n-images", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--mixed-bfloat16", action="store_true", help="keras mixed_bfloat16 dtype policy")
    parser.add_argument("--no-bare", action="store_true", help="skip the bare model.fit measurement")
    parser.add_argument("--tf-graph-optimizer", action="store_true", help="keep TensorFlow's Grappler on for the bare networks "
                        "(the study's trainings, --fold included, switch it off on CPU)")
    parser.add_argument("--fold", action="store_true", help="time one fold of the study (train_fold) beside a bare model.fit")
    args = parser.parse_args(argv)
    with contextlib.nullcontext(False) if args.tf_graph_optimizer else training.fast_cpu_graphs() as fast:
        return _measure(args, fast)


def _measure(args: argparse.Namespace, fast: bool) -> int:
    if args.mixed_bfloat16:
        keras.config.set_dtype_policy("mixed_bfloat16")
    devices = keras.config.backend() + (": " + ", ".join(str(d) for d in __import__("jax").devices())
                                       if keras.backend.backend() == "jax" else "")
    if args.fold:
        print(f"one fold of the study, keras {keras.__version__}, backend {devices}, epochs {args.epochs} "
              f"(the study's images/s include its tracing and its per-epoch validation; the bare fit's exclude tracing)")
        print(f"{'profile':8} {'model':14} {'train':>5} {'valid':>5} {'study s':>8} {'study img/s':>11} "
              f"{'bare 1st s':>10} {'bare img/s':>10}")
        for name in args.profiles.split(","):
            for model_name in args.models.split(","):
                r = measure_fold(model_name, get_profile(name), args.epochs)
                print(f"{name:8} {model_name:14} {r['n_train']:5d} {r['n_validation']:5d} {r['study_seconds']:8.1f} "
                      f"{r['study_rate']:11.1f} {r['bare_first']:10.1f} {r['bare_rate']:10.1f}", flush=True)
        return 0

    settings = []  # (label, config, n_images)
    if args.image_size or args.width or args.blocks:
        blocks = tuple(int(b) for b in (args.blocks or "1,1,1,1").split(","))
        config = networks.NetworkConfig(args.image_size or 64, resnet_blocks=blocks, resnet_width=args.width or 16, imagenet="none")
        settings.append(("custom", config, args.n_images))
    elif args.grid:
        for size, width, blocks in itertools.product((32, 48, 64), (8, 16, 32), ((1, 1, 1, 1), (2, 2, 2, 2))):
            settings.append(("grid", networks.NetworkConfig(size, resnet_blocks=blocks, resnet_width=width, imagenet="none"), args.n_images))
    else:
        for name in args.profiles.split(","):
            profile = get_profile(name)
            config = training.network_config(profile, n_clinical=9, imagenet="none")
            settings.append((name, config, 32 if name == "paper" else args.n_images))

    print(f"keras {keras.__version__}, backend {keras.backend.backend()}, dtype policy {keras.config.dtype_policy().name}, "
          f"batch {args.batch_size}, Grappler off: {fast}")
    print(f"{'setting':8} {'model':14} {'size':>4} {'blocks':9} {'width':>5} {'params':>10} {'1st epoch s':>11} {'train img/s':>11} {'bare img/s':>10} {'predict img/s':>13}")
    for label, config, n_images in settings:
        for model_name in args.models.split(","):
            params = networks.build_model(model_name, config).count_params()
            keras.backend.clear_session()
            train_rate, predict_rate, first_epoch = measure(model_name, config, n_images, args.epochs, args.batch_size, bare=False)
            bare_rate = float("nan") if args.no_bare else measure(model_name, config, n_images, args.epochs, args.batch_size, bare=True)[0]
            blocks = ",".join(str(b) for b in config.resnet_blocks)
            print(
                f"{label:8} {model_name:14} {config.image_size:4d} {blocks:9} {config.resnet_width:5d} {params:10d} "
                f"{first_epoch:11.1f} {train_rate:11.1f} {bare_rate:10.1f} {predict_rate:13.1f}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
