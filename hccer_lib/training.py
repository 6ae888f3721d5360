"""Cross-validated training of the deep and fusion models, fold by fold, resumable.

One network is trained per model and fold on the shared patient-level folds
(``evaluation.load_or_make_folds``): every slice of a training patient is a training
sample, paired with its patient's clinical vector (``clinical.clinical_matrix``); the
slices of the test patients get out-of-fold probabilities. Adam, cross entropy (or the
joint loss), batch size, learning rate and epochs from the profile (the paper: 16, 1e-4,
50). Each fold is seeded with ``keras.utils.set_random_seed(seed + fold)``.

Resuming: each finished fold is saved as ``<work_dir>/runs/<model>/<settings key>/
fold_<k>.csv`` (its out-of-fold predictions) with ``fold_<k>.json`` (its settings and
AUC). The settings key is a hash of everything that changes the result (profile deep
fields, network config, seed, selection protocol, the data and the folds), so a rerun
with the same settings continues at the first unfinished fold, and a rerun with other
settings goes to another folder: finished folds are never lost nor mixed. When every
fold is done, ``predictions/<model>.csv`` is written through
``evaluation.write_predictions``.

Only Keras APIs are used (no ``tf.*``): the same code runs on the TensorFlow and JAX
backends.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from hccer_lib import networks, outputs
from hccer_lib.profiles import Profile

logger = logging.getLogger("hccer")

PREDICTION_COLUMNS = ["patient_id", "slice", "fold", "y_true", "y_prob"]
# The profile's fields that change a network's training (part of every run's settings key).
DEEP_PROFILE_FIELDS = ("image_size", "epochs", "batch_size", "learning_rate", "resnet_blocks", "resnet_width", "augment")
# Part of every run's settings key: raise it when a change of this module changes results.
TRAINING_VERSION = 1


def use_fast_cpu_graphs() -> bool:
    """TensorFlow on a CPU only: switch off Grappler's graph rewriting; ``True`` if done.

    The one backend-specific setting of the study. On a 2-core CPU, TensorFlow's graph
    optimiser took longer than the training itself: tracing a small ResNet's training step
    went from about 60 s to 17 s and steady training was about twice as fast without it
    (``scripts/benchmark_training.py``). With a GPU, or another backend, nothing changes.
    """
    if keras.backend.backend() != "tensorflow":
        return False
    import tensorflow as tf  # backend-specific on purpose, see the docstring

    if tf.config.list_physical_devices("GPU"):
        return False
    tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
    return True


def network_config(profile: Profile, n_clinical: int = 9, imagenet: str = "auto", **overrides) -> networks.NetworkConfig:
    """The :class:`networks.NetworkConfig` of ``profile`` (image size, ResNet blocks, width)."""
    return networks.NetworkConfig(
        image_size=profile.image_size,
        n_clinical=n_clinical,
        resnet_blocks=tuple(profile.resnet_blocks),
        resnet_width=profile.resnet_width,
        imagenet=imagenet,
        **overrides,
    )


class SliceBatches(keras.utils.PyDataset):
    """Shuffled full batches of in-memory arrays, reshuffled every epoch (seeded).

    With ``augment``, each image of a batch is turned by one of the 8 symmetries of the
    square (:func:`dihedral`), drawn anew for every sample each epoch (seeded).

    Every batch has exactly ``batch_size`` samples: the ``n % batch_size`` left over after
    each epoch's shuffle are skipped for that epoch (other ones the next epoch). With one
    batch shape the training step is traced once, not twice (a partial last batch makes
    Keras trace it again, which costs more than a quick fold's training on a CPU).
    Backend-neutral: numpy indexing only.

    Args:
        inputs: dict of arrays ``[n, ...]``; targets: array ``[n]`` or dict of them.
    """

    def __init__(self, inputs: dict, targets, batch_size: int, seed: int, augment: bool = False):
        super().__init__()
        self.inputs, self.targets = inputs, targets
        self.n = len(next(iter(inputs.values())))
        self.batch_size = min(int(batch_size), self.n)
        self.augment = bool(augment)
        self.rng = np.random.default_rng(seed)
        self.order = self.rng.permutation(self.n)
        self.transforms = self.rng.integers(0, 8, self.n) if self.augment else None

    def __len__(self) -> int:
        return self.n // self.batch_size

    def __getitem__(self, index: int):
        rows = np.sort(self.order[index * self.batch_size : (index + 1) * self.batch_size])
        x = {name: array[rows] for name, array in self.inputs.items()}
        if self.augment:
            x["image"] = dihedral(x["image"], self.transforms[rows])
        y = {head: t[rows] for head, t in self.targets.items()} if isinstance(self.targets, dict) else self.targets[rows]
        return x, y

    def on_epoch_end(self) -> None:
        self.order = self.rng.permutation(self.n)
        if self.augment:
            self.transforms = self.rng.integers(0, 8, self.n)


def dihedral(images: np.ndarray, transforms) -> np.ndarray:
    """Images ``[n, H, W, c]`` each turned by one of the 8 symmetries of the square.

    ``transforms[i]`` in ``0..7``: ``t % 4`` quarter turns, then a left-right flip when
    ``t >= 4``; 0 is the identity. A tumour crop has no preferred orientation (the phases
    move together: the same symmetry for the three channels), so these keep its label.
    """
    transforms = np.asarray(transforms, dtype=int)
    if len(transforms) != len(images):
        raise ValueError(f"{len(images)} images but {len(transforms)} transforms")
    out = np.empty_like(images)
    for t in np.unique(transforms):
        rows = transforms == t
        turned = np.rot90(images[rows], k=int(t) % 4, axes=(1, 2))
        out[rows] = turned[:, :, ::-1] if t >= 4 else turned
    return out


def fit_model(
    model: keras.Model,
    inputs: dict,
    y,
    epochs: int,
    batch_size: int,
    verbose: int | str = 0,
    seed: int = 0,
    augment: bool = False,
):
    """Train ``model`` (compiled) on ``inputs`` (dict of ``[n, ...]`` arrays), labels ``y`` ``[n]`` 0/1.

    Batches come from :class:`SliceBatches` (full batches, reshuffled each epoch with
    ``seed``; image symmetries with ``augment``). A joint-loss model gets the same labels
    on its three heads. Returns the Keras History.
    """
    targets = model_targets(model, np.asarray(y, dtype="int32"))
    return model.fit(SliceBatches(inputs, targets, batch_size, seed, augment), epochs=epochs, verbose=verbose)


def model_targets(model: keras.Model, y):
    """Training targets of ``model``: labels ``y`` ``[n]``, the same on each head of a joint-loss model."""
    return {head: y for head in networks.JOINT_LOSS_WEIGHTS} if networks.has_joint_loss(model) else y


def reset_optimizer(model: keras.Model, learning_rate: float) -> None:
    """Put the compiled model's optimizer back to its initial state (step 0, zero moments)."""
    for variable in model.optimizer.variables:
        variable.assign(np.zeros(variable.shape, dtype=variable.dtype))
    model.optimizer.learning_rate = learning_rate


class FoldModel:
    """One compiled network reused for every fold, re-initialised per fold.

    Tracing the training and prediction graphs costs more than a quick fold's training on
    a CPU, so the network of a model is built and compiled once; each fold then gets fresh
    weights, drawn by building the same architecture after
    ``keras.utils.set_random_seed(seed)``, and a reset optimizer. The result is the same
    as building a new network per fold with that seed.
    """

    def __init__(self, model_name: str, learning_rate: float):
        self.model_name = model_name
        self.learning_rate = learning_rate
        self.config: networks.NetworkConfig | None = None
        self.model: keras.Model | None = None

    def fresh(self, config: networks.NetworkConfig, seed: int) -> keras.Model:
        """The compiled network of ``config`` with the initial weights of ``seed``."""
        if self.model is None or config != self.config:
            keras.backend.clear_session()
            self.model = networks.compile_model(networks.build_model(self.model_name, config), self.learning_rate)
            self.config = config
        keras.utils.set_random_seed(seed)
        initial = networks.build_model(self.model_name, config)
        self.model.set_weights(initial.get_weights())
        reset_optimizer(self.model, self.learning_rate)
        keras.utils.set_random_seed(seed)
        return self.model


def predict_probability(model: keras.Model, inputs: dict, batch_size: int = 64) -> np.ndarray:
    """Probability of early recurrence ``[n]``: the fused head's second neuron.

    The inputs are padded with zeros to whole batches (and the padding dropped after), so
    that the prediction step is traced once for every fold whatever its size.
    """
    n = len(next(iter(inputs.values())))
    padded_n = -(-n // batch_size) * batch_size
    padded = {name: np.concatenate([a, np.zeros((padded_n - n, *a.shape[1:]), a.dtype)]) for name, a in inputs.items()}
    probabilities = []
    for begin in range(0, padded_n, batch_size):
        batch = {name: a[begin : begin + batch_size] for name, a in padded.items()}
        probabilities.append(np.asarray(networks.fused_probability(model.predict_on_batch(batch)), dtype=np.float64)[:, 1])
    return np.concatenate(probabilities)[:n]


def array_digest(*arrays) -> str:
    """A short content hash of numpy arrays (the data a run was trained on)."""
    digest = hashlib.sha256()
    for array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(str((array.dtype.str, array.shape)).encode())
        digest.update(array.tobytes() if array.dtype != object else "\x00".join(map(str, array.ravel())).encode())
    return digest.hexdigest()[:12]


def _patient_level_auc(frame: pd.DataFrame) -> float:
    """AUC of the mean slice probability per patient (``evaluation.patient_level``); NaN with one class."""
    from hccer_lib import evaluation

    patients = evaluation.patient_level(frame)
    if patients["y_true"].nunique() < 2:
        return float("nan")
    return evaluation.auc(patients["y_true"], patients["y_prob"])


def slice_clinical_vectors(clinical_rows: np.ndarray, clinical_ids, slice_ids) -> np.ndarray:
    """Per-slice clinical vectors ``[n_slices, k]`` from per-patient ones ``[n_patients, k]``.

    ``clinical_ids`` are the patient ids of the rows of ``clinical_rows``; every id of
    ``slice_ids`` must be among them (``ValueError`` names the first missing one).
    """
    index = {str(pid): i for i, pid in enumerate(clinical_ids)}
    missing = [pid for pid in map(str, slice_ids) if pid not in index]
    if missing:
        raise ValueError(f"patient {missing[0]} has image slices but no clinical row ({len(set(missing))} such patients)")
    return np.asarray(clinical_rows, dtype=np.float32)[[index[str(pid)] for pid in slice_ids]]


@dataclass
class FoldData:
    """The network inputs of one fold: every slice of the dataset, split by patient.

    Attributes:
        inputs: ``{"image": [n, H, W, 3]}`` float32 in ``[0, 1]`` (NC, ART, PV), plus
            ``"clinical": [n, k]`` (each slice's patient vector) for the fusion models.
        y: ``[n]`` 0/1 labels; patient_id ``[n]`` str; slice ``[n]`` slice index.
        train, test: ``[n]`` bool masks (test all ``False`` for a whole-cohort fit).
        clinical_names: the bits of the clinical vector (selected on this fold's training
            patients under the ``strict`` protocol, on every patient under ``paper``).
        config: the :class:`networks.NetworkConfig` of the fold's network.
    """

    inputs: dict
    y: np.ndarray
    patient_id: np.ndarray
    slice: np.ndarray
    train: np.ndarray
    test: np.ndarray
    clinical_names: list
    config: networks.NetworkConfig

    def subset(self, mask) -> dict:
        """``inputs`` restricted to the rows of ``mask``."""
        return {name: array[mask] for name, array in self.inputs.items()}


def _dataset_arrays(dataset, profile: Profile) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Checked ``images [n, H, H, 3]`` float32, ``patient_id``, ``y_true`` and ``slice`` of ``dataset``."""
    images = np.asarray(dataset.images, dtype=np.float32)
    if images.ndim != 4 or images.shape[-1] != 3 or images.shape[1] != images.shape[2]:
        raise ValueError(f"dataset.images must be [n, H, H, 3], got shape {images.shape}")
    if images.shape[1] != profile.image_size:
        raise ValueError(f"dataset images are {images.shape[1]} px but profile {profile.name!r} wants {profile.image_size} px")
    return images, np.asarray(dataset.patient_id).astype(str), np.asarray(dataset.y_true, dtype=int), np.asarray(dataset.slice)


def fold_data(
    model_name: str,
    dataset,
    clinical: pd.DataFrame,
    folds: pd.DataFrame,
    profile: Profile,
    fold: int | None,
    selection_protocol: str = "paper",
    imagenet: str = "auto",
    network_overrides: dict | None = None,
) -> FoldData:
    """The inputs, labels and train/test split of ``fold`` (``None``: every patient trains).

    Args are those of :func:`train_cross_validated`; ``fold`` is a fold number of
    ``folds`` or ``None`` for the whole-cohort fit (no test slices).
    """
    from hccer_lib import clinical as clinical_module
    from hccer_lib import evaluation

    if model_name not in networks.MODEL_NAMES:
        raise ValueError(f"unknown model {model_name!r}; choose one of {networks.MODEL_NAMES}")
    if selection_protocol not in ("paper", "strict"):
        raise ValueError(f"selection_protocol must be 'paper' or 'strict', got {selection_protocol!r}")
    images, slice_pids, y_slices, slice_index = _dataset_arrays(dataset, profile)
    if fold is None:
        test = np.zeros(len(slice_pids), dtype=bool)
    else:
        if int(fold) not in set(folds["fold"].astype(int)):
            raise ValueError(f"fold {fold} is not among the folds {sorted(set(folds['fold'].astype(int)))}")
        test = evaluation.fold_of(folds, slice_pids) == int(fold)
    train = ~test
    train_ids = folds.loc[folds["fold"].astype(int) != (-1 if fold is None else int(fold)), "patient_id"].astype(str)
    matrix, names = clinical_module.clinical_matrix(clinical, protocol=selection_protocol, train_ids=list(train_ids))
    vectors = slice_clinical_vectors(matrix, clinical["patient_id"].astype(str).to_numpy(), slice_pids)
    config = network_config(profile, n_clinical=vectors.shape[1], imagenet=imagenet, **(network_overrides or {}))
    inputs = {"image": images} if model_name == "deep_resnet50" else {"image": images, "clinical": vectors}
    return FoldData(inputs, y_slices, slice_pids, slice_index, train, test, list(names), config)


def train_fold(
    model_name: str,
    dataset,
    clinical: pd.DataFrame,
    folds: pd.DataFrame,
    profile: Profile,
    fold: int | None,
    seed: int = 2020,
    selection_protocol: str = "paper",
    imagenet: str = "auto",
    network_overrides: dict | None = None,
    verbose: int | str = 0,
    fast_cpu_graphs: bool = True,
    fold_model: FoldModel | None = None,
) -> tuple[keras.Model, FoldData]:
    """Train the network of one fold (``None``: of the whole cohort); return it and its data.

    The same network, initial weights (``keras.utils.set_random_seed(seed + fold)``),
    batches and epochs as :func:`train_cross_validated`'s fold ``fold``, so predicting
    ``data.subset(data.test)`` gives that fold's out-of-fold predictions again. The
    whole-cohort fit (``fold=None``) is seeded with ``seed + n_folds``, after the folds'.
    ``fold_model``: a :class:`FoldModel` to reuse (its traced graphs) across calls.
    """
    if fast_cpu_graphs:
        use_fast_cpu_graphs()
    data = fold_data(model_name, dataset, clinical, folds, profile, fold, selection_protocol, imagenet, network_overrides)
    fold_seed = seed + (int(fold) if fold is not None else folds["fold"].nunique())
    model = (fold_model or FoldModel(model_name, profile.learning_rate)).fresh(data.config, fold_seed)
    fit_model(model, data.subset(data.train), data.y[data.train], profile.epochs, profile.batch_size, verbose, fold_seed,
              augment=profile.augment)
    return model, data


def train_cross_validated(
    model_name: str,
    dataset,
    clinical: pd.DataFrame,
    folds: pd.DataFrame,
    profile: Profile,
    work_dir: str | os.PathLike,
    seed: int = 2020,
    selection_protocol: str = "paper",
    output_name: str | None = None,
    network_overrides: dict | None = None,
    imagenet: str = "auto",
    verbose: int | str = 0,
    predict_batch_size: int = 64,
    fast_cpu_graphs: bool = True,
) -> pd.DataFrame:
    """Train ``model_name`` on every fold; return and save its out-of-fold slice predictions.

    Args:
        model_name: one of :data:`networks.MODEL_NAMES` (the architecture).
        dataset: a ``preprocessing.ProcessedDataset``: ``images`` ``[n, H, W, 3]`` in
            ``[0, 1]`` (NC, ART, PV), ``patient_id`` ``[n]``, ``slice`` ``[n]``, ``y_true`` ``[n]``.
        clinical: the raw clinical frame (``patient_id``, ``early_recurrence``, ...).
        folds: ``patient_id, y_true, fold`` from ``evaluation.load_or_make_folds``.
        profile: epochs, batch size, learning rate, ResNet blocks and width.
        work_dir: the cohort's work folder; runs go to ``runs/``, the result to
            ``predictions/<output_name>.csv``.
        seed: each fold trains with ``keras.utils.set_random_seed(seed + fold)``.
        selection_protocol: ``"paper"`` (clinical variables selected on the whole cohort)
            or ``"strict"`` (selected on each training fold), see ``clinical.clinical_matrix``.
        output_name: the prediction file's model name (default ``model_name``), e.g.
            ``"fusion_d_strict"``.
        network_overrides: extra :class:`networks.NetworkConfig` fields (``image_units``, ...).
        imagenet: ``"auto"``, ``"none"`` or a weights file (see ``NetworkConfig``).
        verbose: Keras ``fit`` verbosity (0 silent, 2 one line per epoch); one line per
            fold is always printed.
        fast_cpu_graphs: call :func:`use_fast_cpu_graphs` (TensorFlow on CPU only).

    Returns:
        ``patient_id, slice, fold, y_true, y_prob``, one row per slice of the dataset.
    """
    from hccer_lib import evaluation

    if model_name not in networks.MODEL_NAMES:
        raise ValueError(f"unknown model {model_name!r}; choose one of {networks.MODEL_NAMES}")
    if selection_protocol not in ("paper", "strict"):
        raise ValueError(f"selection_protocol must be 'paper' or 'strict', got {selection_protocol!r}")
    output_name = output_name or model_name
    work_dir = Path(work_dir)
    if fast_cpu_graphs:
        use_fast_cpu_graphs()
    images, slice_pids, y_slices, slice_index = _dataset_arrays(dataset, profile)
    evaluation.fold_of(folds, slice_pids)  # every slice's patient has a fold
    fold_numbers = sorted(set(folds["fold"].astype(int)))

    deep_fields = {f: getattr(profile, f) for f in DEEP_PROFILE_FIELDS}
    base_settings = {
        "model": model_name,
        "profile_deep": deep_fields,
        "network": {k: v for k, v in network_config(profile, 1, imagenet, **(network_overrides or {})).as_dict().items() if k != "n_clinical"},
        "training_version": TRAINING_VERSION,
        "imagenet": imagenet if imagenet in ("auto", "none") else str(imagenet),
        "imagenet_file_found": networks.imagenet_weights_path() is not None if imagenet == "auto" else None,
        "seed": int(seed),
        "selection_protocol": selection_protocol,
        "data": array_digest(images, slice_pids, y_slices, slice_index),
        "clinical": array_digest(pd.util.hash_pandas_object(clinical, index=False).to_numpy()),
        "folds": array_digest(folds["patient_id"].astype(str).to_numpy(), folds["fold"].to_numpy()),
        "keras_backend": keras.backend.backend(),
    }
    key = outputs.settings_key(base_settings)
    run_dir = work_dir / "runs" / output_name / key
    outputs.write_json(run_dir / "settings.json", {**base_settings, "key": key, "profile": profile.name})
    print(f"hccer: training {output_name} ({model_name}), {len(fold_numbers)} folds, run folder {run_dir}", flush=True)

    frames = []
    fold_model = FoldModel(model_name, profile.learning_rate)
    for fold in fold_numbers:
        fold_csv, fold_json = run_dir / f"fold_{fold}.csv", run_dir / f"fold_{fold}.json"
        if fold_csv.is_file() and fold_json.is_file() and json.loads(fold_json.read_text())["key"] == key:
            frame = pd.read_csv(fold_csv, dtype={"patient_id": str})
            frames.append(frame)
            print(f"  fold {fold}: done before, read {fold_csv.name} (AUC {_patient_level_auc(frame):.3f})", flush=True)
            continue
        start = time.perf_counter()
        model, data = train_fold(model_name, dataset, clinical, folds, profile, fold, seed, selection_protocol, imagenet,
                                 network_overrides, verbose, fast_cpu_graphs=False, fold_model=fold_model)
        test, train = data.test, data.train
        probability = predict_probability(model, data.subset(test), predict_batch_size)
        frame = pd.DataFrame(
            {
                "patient_id": slice_pids[test],
                "slice": slice_index[test],
                "fold": fold,
                "y_true": y_slices[test],
                "y_prob": probability,
            }
        )
        seconds = time.perf_counter() - start
        fold_auc = _patient_level_auc(frame)
        outputs.write_csv(fold_csv, frame)
        losses = model.history.history.get("loss", [float("nan")])
        outputs.write_json(
            fold_json,
            {
                "key": key,
                "fold": fold,
                "n_train_slices": int(train.sum()),
                "n_test_slices": int(test.sum()),
                "clinical_columns": list(data.clinical_names),
                "network": data.config.as_dict(),
                "final_training_loss": float(losses[-1]),
                "patient_auc": fold_auc,
                "seconds": round(seconds, 1),
            },
        )
        frames.append(frame)
        print(
            f"  fold {fold}: {int(train.sum())} training / {int(test.sum())} test slices, "
            f"final loss {losses[-1]:.3f}, patient AUC {fold_auc:.3f}, {seconds:.0f} s",
            flush=True,
        )
    del fold_model
    keras.backend.clear_session()

    predictions = pd.concat(frames, ignore_index=True)[PREDICTION_COLUMNS]
    evaluation.write_predictions(work_dir, output_name, predictions)
    print(f"hccer: {output_name}: out-of-fold patient AUC {_patient_level_auc(predictions):.3f} (pooled over folds)", flush=True)
    return predictions

