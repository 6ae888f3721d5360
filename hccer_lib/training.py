"""Cross-validated training of the deep and fusion models, fold by fold, resumable.

One network is trained per model and fold on the shared patient-level folds
(``evaluation.load_or_make_folds``): every slice of a training patient is a training
sample, paired with its patient's clinical vector (``clinical.clinical_matrix``); the
slices of the test patients get out-of-fold probabilities. Adam, cross entropy (or the
joint loss), batch size, learning rate and epochs from the profile (the paper: 16, 1e-4,
50).

**Training seeds.** Every network is trained ``profile.train_seeds`` times with different
initialisation seeds (:func:`train_seeds`: ``seed``, ``seed + 1000``, ...): training seed
``s`` draws the initial weights of every fold (``keras.utils.set_random_seed(s)``), and fold
``k`` of it shuffles its batches with ``s + k``. The prediction
file keeps every seed's out-of-fold predictions in a ``train_seed`` column, so that the
tables give the training noise (AUC over seeds) and the seed ensemble.

**The recipe** (:class:`~hccer_lib.profiles.Profile` fields, chosen for the CPU profile on
development cohorts only, see the README): with ``validation_fraction > 0`` a stratified
share of the *training* patients of the fold is held out (never a test patient); the
network trains on the others for up to ``epochs`` epochs and keeps the weights of the
epoch whose patient-level AUC on those held-out patients was best (checkpoint choice; the
test fold is never looked at). ``weight_decay`` (AdamW), ``lr_schedule`` (``"cosine"``:
the learning rate falls per epoch from ``learning_rate`` towards 0) and ``augment``
(:func:`dihedral`) complete it; ``test_symmetries`` predicts every test image in the 8
symmetries that ``augment`` trains on and averages them (:func:`predict_probability`);
``head_refit`` fits the deep model's softmax head anew, after its training, as a penalised logistic
regression on its own pooled features of the fold's training patients (:func:`refit_head`;
``fusion_head_refit`` does the same for the fusion models' fused head). The
``paper`` profile uses none of them.

Resuming: each finished fold is saved as ``<work_dir>/runs/<model>/<settings key>/
seed_<s>/fold_<k>.csv`` (its out-of-fold predictions) with ``fold_<k>.json`` (its settings,
chosen epoch and AUC). The settings key is a hash of everything that changes the result (profile deep
fields, network config, seed, selection protocol, the data and the folds), so a rerun
with the same settings continues at the first unfinished fold, and a rerun with other
settings goes to another folder: finished folds are never lost nor mixed. When every
fold is done, ``predictions/<model>.csv`` is written through
``evaluation.write_predictions``.

**Where the trainings run.** With ``profile.training_threads > 0`` (the ``quick``
profile) every (training seed, fold) is a job for :func:`run_fold_jobs`: spawned worker
processes, each pinned to that many threads (:func:`pin_threads`) and reusing its compiled
network, as many side by side as the cores allow (:func:`training_workers`). Each job reads
the same inputs and seeds as it would in this process, so the predictions do not depend
on the number of workers; the thread count is in the settings key. With 0 (``smoke``,
``paper``) the jobs run one after another in this process.

Only Keras APIs are used for the networks; the backend-specific parts are the CPU graph
and thread settings (:func:`fast_cpu_graphs`, a scoped option around each training and
prediction, and :func:`pin_threads`, set once by each worker process): the same code runs
on the TensorFlow and JAX backends.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import multiprocessing
import os
import time
import weakref
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, replace
from pathlib import Path

import keras
import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from hccer_lib import evaluation, networks, outputs
from hccer_lib.imagenet import check_imagenet
from hccer_lib.profiles import Profile
from hccer_lib.study_run import DEFAULT_SETTINGS, SELECTION_PROTOCOLS

logger = logging.getLogger("hccer")

# The profile's fields that change a network's training (part of every run's settings key;
# ``train_seeds`` is not: each seed has its own files under the key).
DEEP_PROFILE_FIELDS = ("image_size", "epochs", "batch_size", "learning_rate", "resnet_blocks", "resnet_width", "augment",
                       "validation_fraction", "weight_decay", "lr_schedule", "xla", "bn_momentum", "training_threads",
                       "test_symmetries", "image_dropout", "train_min_area", "train_sampling", "fusion_head_init")


def training_settings(profile: Profile, model_name: str | None = None) -> dict:
    """The settings of ``profile`` that change a network's training: :data:`DEEP_PROFILE_FIELDS`, ``augment_shift``
    where it is set, ``clinical_warm_start`` where it is set and the network (``model_name``; ``None``: any) has a clinical
    pathway, ``head_refit`` where it is set and the network is the deep model (or any), and ``fusion_head_refit`` and
    ``fusion_texture_size_free`` where they are set and the network is a fusion model (or any). Left out otherwise, so
    that the trainings keyed before they existed keep their keys."""
    settings = {f: getattr(profile, f) for f in DEEP_PROFILE_FIELDS}
    if profile.augment_shift:
        settings["augment_shift"] = profile.augment_shift
    if profile.clinical_warm_start and (model_name is None or model_name in networks.FUSION_KINDS):
        settings["clinical_warm_start"] = profile.clinical_warm_start
    if profile.head_refit and (model_name is None or model_name == "deep_resnet50"):
        settings["head_refit"] = profile.head_refit
    if profile.area_target:
        settings["area_target"] = profile.area_target
    if profile.texture_target:
        settings["texture_target"] = True
    if profile.texture_size_free:
        settings["texture_size_free"] = True
    if (profile.fusion_texture_size_free and profile.texture_target
            and (model_name is None or model_name in networks.FUSION_KINDS)):
        settings["fusion_texture_size_free"] = True
    for field, kinds in networks.ACTIVATION_LAYER_KINDS.items():  # keyed for the models that have the layer
        if (getattr(profile, field) != networks.KEYED_AT_DEFAULT_SINCE[field]
                and (model_name is None or networks.FUSION_KINDS.get(model_name) in kinds)):
            settings[field] = getattr(profile, field)
    if profile.image_warm_start and (model_name is None or model_name.endswith("_joint")):
        settings["image_warm_start"] = profile.image_warm_start
    if profile.fusion_head_refit and (model_name is None or model_name in networks.FUSION_KINDS):
        settings["fusion_head_refit"] = profile.fusion_head_refit
        settings["fusion_refit_image_scale"] = profile.fusion_refit_image_scale
        if profile.fusion_refit_clinical_bits:
            settings["fusion_refit_clinical_bits"] = True
    return settings


# Part of every run's settings key: raise it when a change of this module changes results.
TRAINING_VERSION = 9
#: Distance between two training seeds of a run (more than any number of folds).
TRAIN_SEED_STEP = 1000
#: Added to a fold's seed for the batches of ``Profile.image_warm_start``'s stage (between two training seeds).
IMAGE_STAGE_SEED_OFFSET = TRAIN_SEED_STEP // 2


def _cpu_without_gpu_on_tensorflow() -> bool:
    if keras.backend.backend() != "tensorflow":
        return False
    import tensorflow as tf  # backend-specific on purpose, see fast_cpu_graphs

    return not tf.config.list_physical_devices("GPU")


@contextlib.contextmanager
def fast_cpu_graphs():
    """Within this block only: TensorFlow on a CPU builds its graphs without Grappler's rewriting.

    The one backend-specific setting of the study, and a scoped one: the option in force
    before is restored on leaving, so code around a training is unchanged. On a 2-core CPU,
    TensorFlow's graph optimiser took longer than the training itself: tracing a small
    ResNet's training step went from about 60 s to 17 s and steady training was about twice
    as fast without it (``scripts/benchmark_training.py``). Every training of the study
    (:func:`train_fold`, whatever process runs it) and every prediction
    (:func:`predict_probability`) runs inside it, so a network trained in this process, in a
    worker or on Ray goes through the same graphs and gives the same numbers (both are
    decorated with it). With a GPU, or another backend, it does nothing. Yields ``True``
    when the option was set.
    """
    if not _cpu_without_gpu_on_tensorflow():
        yield False
        return
    import tensorflow as tf

    before = bool(tf.config.optimizer.get_experimental_options().get("disable_meta_optimizer", False))
    tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
    try:
        yield True
    finally:
        tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": before})


def network_config(profile: Profile, n_clinical: int = 9, imagenet: str = "auto", **overrides) -> networks.NetworkConfig:
    """The :class:`networks.NetworkConfig` of ``profile`` (image size, ResNet blocks and width,
    batch normalisation momentum, image dropout, the fusion heads' initial weights); ``overrides``
    replace any of these (``develop_recipe.py --network image_dropout=0``) or set the network's
    other fields.

    Fusion C's Conv1D kernel (3) is shortened to the clinical vector's length when the
    selection keeps fewer bits (a cohort where only one or two variables pass the
    chi-squared test): the convolution then spans the whole vector, the nearest the paper's
    layer can come, instead of the study stopping. An explicit ``clinical_kernel`` override
    is kept as given (and refused by ``networks.build_model`` when too long).
    """
    if "clinical_kernel" not in overrides:
        default_kernel = networks.NetworkConfig.__dataclass_fields__["clinical_kernel"].default
        if n_clinical < default_kernel:
            overrides = {**overrides, "clinical_kernel": max(int(n_clinical), 1)}
    fields = {
        "image_size": profile.image_size,
        "n_clinical": n_clinical,
        "resnet_blocks": tuple(profile.resnet_blocks),
        "resnet_width": profile.resnet_width,
        "imagenet": imagenet,
        "bn_momentum": profile.bn_momentum,
        "image_dropout": profile.image_dropout,
        "fusion_head_init": profile.fusion_head_init,
        "clinical_activation": profile.clinical_activation,
        "image_activation": profile.image_activation,
    }
    return networks.NetworkConfig(**{**fields, **overrides})


class SliceBatches(keras.utils.PyDataset):
    """Shuffled full batches of in-memory arrays, reshuffled every epoch (seeded).

    With ``augment``, each image of a batch is turned by one of the 8 symmetries of the
    square (:func:`dihedral`), drawn anew for every sample each epoch (seeded); with ``shift``
    above 0 it is also moved by up to ``shift`` pixels along each axis (:func:`shifted`).

    Every batch has exactly ``batch_size`` samples: the ``n % batch_size`` left over after
    each epoch's shuffle are skipped for that epoch (other ones the next epoch). With one
    batch shape the training step is traced once, not twice (a partial last batch makes
    Keras trace it again, which costs more than a quick fold's training on a CPU).
    Backend-neutral: numpy indexing only.

    Args:
        inputs: dict of arrays ``[n, ...]``; targets: array ``[n]`` or dict of them.
        weights: ``[n]`` probabilities of drawing each row (:func:`sampling_weights`): each epoch then
            draws ``n`` rows with replacement; ``None``: every row once per epoch.
    """

    def __init__(self, inputs: dict, targets, batch_size: int, seed: int, augment: bool = False, weights=None,
                 shift: int = 0):
        super().__init__()
        self.inputs, self.targets = inputs, targets
        self.n = len(next(iter(inputs.values())))
        self.batch_size = min(int(batch_size), self.n)
        self.augment = bool(augment)
        self.weights = None if weights is None else np.asarray(weights, dtype=float) / np.sum(weights)
        self.rng = np.random.default_rng(seed)
        self.order = self._draw()
        self.transforms = self.rng.integers(0, len(SYMMETRIES), self.n) if self.augment else None
        self.shift = int(shift)
        if self.shift < 0 or (self.shift and not self.augment):
            raise ValueError(f"shift must be >= 0 and needs augment; got shift={shift}, augment={augment}")
        self.offsets = self._draw_offsets()

    def _draw_offsets(self):
        """``[n, 2]`` pixel offsets (rows, columns) in ``-shift..shift`` (``None`` without a shift)."""
        return self.rng.integers(-self.shift, self.shift + 1, (self.n, 2)) if self.shift else None

    def __len__(self) -> int:
        return self.n // self.batch_size

    def __getitem__(self, index: int):
        rows = np.sort(self.order[index * self.batch_size : (index + 1) * self.batch_size])
        x = {name: array[rows] for name, array in self.inputs.items()}
        if self.augment:
            x["image"] = dihedral(x["image"], self.transforms[rows])
        if self.shift:
            x["image"] = shifted(x["image"], self.offsets[rows], self.shift)
        y = {head: t[rows] for head, t in self.targets.items()} if isinstance(self.targets, dict) else self.targets[rows]
        return x, y

    def _draw(self) -> np.ndarray:
        if self.weights is None:
            return self.rng.permutation(self.n)
        return self.rng.choice(self.n, self.n, replace=True, p=self.weights)

    def on_epoch_end(self) -> None:
        self.order = self._draw()
        if self.augment:
            self.transforms = self.rng.integers(0, len(SYMMETRIES), self.n)
        self.offsets = self._draw_offsets()


#: The symmetries of the square (:func:`dihedral`): 0 is the identity.
SYMMETRIES = tuple(range(8))


def turned_inputs(inputs: dict, transform: int) -> dict:
    """``inputs`` with every ``"image"`` ``[n, H, W, c]`` turned by the symmetry ``transform`` (:func:`dihedral`);
    the other inputs (the clinical vector) as they are. The identity returns ``inputs`` itself."""
    if transform == 0:
        return inputs
    return {**inputs, "image": dihedral(inputs["image"], np.full(len(inputs["image"]), transform))}


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


def shifted(images: np.ndarray, offsets, max_shift: int) -> np.ndarray:
    """Images ``[n, H, W, c]`` each moved by ``offsets[i] = (rows, columns)`` pixels, |offset| <= ``max_shift``.

    The image is mirrored by ``max_shift`` pixels on each side (``numpy.pad``'s ``"reflect"``), and the
    ``H × W`` window moved by the offset from the centre is kept: the gap an offset opens at one edge is
    filled with the mirror of the image's own border, the liver around the tumour, not zeros. Offset
    ``(0, 0)`` gives the image itself.
    """
    offsets = np.asarray(offsets, dtype=int)
    max_shift = int(max_shift)
    if offsets.shape != (len(images), 2):
        raise ValueError(f"offsets must be [{len(images)}, 2], got {offsets.shape}")
    if np.abs(offsets).max(initial=0) > max_shift:
        raise ValueError(f"an offset is larger than max_shift={max_shift}: {np.abs(offsets).max()}")
    if max_shift >= min(images.shape[1:3]):
        raise ValueError(f"max_shift={max_shift} must be smaller than the image side {images.shape[1:3]}")
    height, width = images.shape[1:3]
    padded = np.pad(images, ((0, 0), (max_shift, max_shift), (max_shift, max_shift), (0, 0)), mode="reflect")
    out = np.empty_like(images)
    for i, (dy, dx) in enumerate(offsets):
        top, left = max_shift - dy, max_shift - dx
        out[i] = padded[i, top:top + height, left:left + width]
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
    validation: tuple[dict, np.ndarray, np.ndarray, np.ndarray] | None = None,
    lr_schedule: str = "constant",
    test_symmetries: bool = False,
    row_weights=None,
    shift: int = 0,
    trainer: keras.Model | None = None,
    extra_targets: dict | None = None,
):
    """Train ``model`` (compiled) on ``inputs`` (dict of ``[n, ...]`` arrays), labels ``y`` ``[n]`` 0/1.

    Batches come from :class:`SliceBatches` (full batches, reshuffled each epoch with
    ``seed``; image symmetries with ``augment``). A joint-loss model gets the same labels
    on its three heads. ``lr_schedule="cosine"`` lowers the learning rate every epoch
    (:func:`cosine_learning_rate`). With ``validation = (inputs, y, patient_id, roi_area_mm2)`` (rows of
    held-out *training* patients), the model ends with the weights of the epoch whose
    patient-level AUC on them was best (:class:`BestEpoch`, predicting as the test fold will be:
    ``test_symmetries``, see :func:`predict_probability`). ``row_weights``: each row's probability of
    being drawn (``Profile.train_sampling``, :func:`sampling_weights`, :func:`class_balanced_weights`). ``shift``: with ``augment``, each
    training image is also moved by up to this many pixels (``Profile.augment_shift``). ``trainer``: a compiled model
    on ``model``'s layers with more outputs (:func:`networks.with_area_head`) that is trained instead, on the labels
    and ``extra_targets`` (``{output: [n]}``); ``model`` shares its weights. Returns the Keras History;
    its ``best_epoch`` attribute is the epoch kept (1-based; ``epochs`` without validation).
    """
    if lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {lr_schedule!r}")
    targets = model_targets(model, np.asarray(y, dtype="int32"))
    fitted = model
    if trainer is not None:
        targets = {**(targets if isinstance(targets, dict) else {"fused": targets}),
                   **{name: np.asarray(values, dtype="float32") for name, values in (extra_targets or {}).items()}}
        fitted = trainer
    base_rate = float(keras.ops.convert_to_numpy(fitted.optimizer.learning_rate))
    best = BestEpoch(*validation, symmetries=test_symmetries) if validation is not None else None
    history = keras.callbacks.History()
    for callback in (history, best):
        if callback is not None:
            callback.set_model(model)
    history.on_train_begin()
    build_training_state(fitted, inputs, targets, batch_size)
    batches = SliceBatches(inputs, targets, batch_size, seed, augment, row_weights, shift)
    # Keras's fit() would feed the same batches through a tf.data generator, about 1.5 s more
    # per quick fold on one thread; the steps, and so the weights, are the same.
    for epoch in range(int(epochs)):
        if lr_schedule == "cosine":
            fitted.optimizer.learning_rate = cosine_learning_rate(base_rate, epoch, epochs)
        losses = []
        for index in range(len(batches)):
            batch_x, batch_y = batches[index]
            losses.append(float(fitted.train_on_batch(batch_x, batch_y, return_dict=True)["loss"]))
        batches.on_epoch_end()
        logs = {"loss": float(np.mean(losses))}
        if verbose:
            print(f"epoch {epoch + 1}/{epochs}: loss {logs['loss']:.4f}", flush=True)
        history.on_epoch_end(epoch, logs)
        if best is not None:
            best.on_epoch_end(epoch, logs)
    if best is not None:
        best.restore()
    history.best_epoch = best.best_epoch if best is not None else epochs
    model.history = history
    return history


LR_SCHEDULES = ("constant", "cosine")


def cosine_learning_rate(base_rate: float, epoch: int, epochs: int) -> float:
    """Learning rate of ``epoch`` (0-based) of ``epochs``: ``base_rate`` falling as a half cosine.

    ``base_rate * (1 + cos(pi * epoch / epochs)) / 2``: ``base_rate`` at epoch 0, above 0
    at the last epoch.
    """
    return float(base_rate * 0.5 * (1.0 + np.cos(np.pi * epoch / max(int(epochs), 1))))


class BestEpoch(keras.callbacks.Callback):
    """Keep the weights of the epoch with the best patient-level AUC on held-out training patients.

    After each epoch the model predicts the held-out rows (``inputs`` ``[n, ...]``, labels
    ``y`` ``[n]``, ``patient_id`` ``[n]``); the patient probability is the mean over the
    patient's rows, weighted by the tumour's area in each (``roi_area_mm2`` ``[n]``, mm²) when
    given, as the test fold's patients are (``evaluation.patient_level``). The first epoch with
    the highest AUC wins (ties keep the earlier one). :meth:`restore` puts its weights back.
    Used only with rows of training patients: the test fold is never seen. ``symmetries``: see
    :func:`predict_probability`.
    """

    def __init__(self, inputs: dict, y, patient_id, roi_area_mm2=None, symmetries: bool = False):
        super().__init__()
        self.inputs = inputs
        self.symmetries = bool(symmetries)
        patients = pd.DataFrame({"patient_id": np.asarray(patient_id).astype(str), "fold": 0,
                                 "slice": np.arange(len(patient_id)), "y_true": np.asarray(y, dtype=int)})
        if roi_area_mm2 is not None:
            patients[evaluation.AREA_COLUMN] = np.asarray(roi_area_mm2, dtype=float)
        if patients.groupby("patient_id")["y_true"].first().nunique() < 2:
            raise ValueError("the held-out validation patients must hold both classes")
        self.patients = patients
        self.best_auc, self.best_epoch, self.best_weights = -np.inf, 0, None
        self.aucs: list[float] = []

    def on_epoch_end(self, epoch, logs=None):
        frame = self.patients.assign(y_prob=predict_probability(self.model, self.inputs, symmetries=self.symmetries))
        per_patient = evaluation.patient_level(frame)
        value = evaluation.auc(per_patient["y_true"], per_patient["y_prob"])
        self.aucs.append(value)
        if value > self.best_auc:
            self.best_auc, self.best_epoch, self.best_weights = value, epoch + 1, self.model.get_weights()

    def restore(self) -> None:
        """Put the best epoch's weights back into the model."""
        if self.best_weights is not None:
            self.model.set_weights(self.best_weights)


def validation_patients(patient_ids, labels, fraction: float, seed: int) -> np.ndarray:
    """Patients held out for checkpoint choice: ``fraction`` of each class, drawn with ``seed``.

    Args:
        patient_ids: ``[n]`` the training patients (one entry each); labels ``[n]`` 0/1.
        fraction: share held out per class, in ``[0, 1)``; at least one patient of each
            class when ``fraction > 0``.
    Returns:
        the held-out patient ids, sorted.
    """
    if not 0 <= fraction < 1:
        raise ValueError(f"validation_fraction must be in [0, 1), got {fraction}")
    patient_ids, labels = np.asarray(patient_ids).astype(str), np.asarray(labels, dtype=int)
    if fraction == 0:
        return np.array([], dtype=str)
    rng = np.random.default_rng(seed)
    held = []
    for value in (0, 1):
        members = np.sort(patient_ids[labels == value])
        if len(members) < 2:
            raise ValueError(f"a validation split needs at least 2 training patients of class {value}, got {len(members)}")
        count = min(max(1, int(round(fraction * len(members)))), len(members) - 1)
        held.append(rng.choice(members, count, replace=False))
    return np.sort(np.concatenate(held))


def train_seeds(profile: Profile, seed: int) -> list[int]:
    """The initialisation seeds of a run: ``seed + TRAIN_SEED_STEP * i`` for ``i < profile.train_seeds``."""
    if profile.train_seeds < 1:
        raise ValueError(f"profile {profile.name!r}: train_seeds must be at least 1, got {profile.train_seeds}")
    return [int(seed) + TRAIN_SEED_STEP * i for i in range(profile.train_seeds)]


def model_targets(model: keras.Model, y):
    """Training targets of ``model``: labels ``y`` ``[n]``, the same on each head of a joint-loss model."""
    return {head: y for head in networks.JOINT_LOSS_WEIGHTS} if networks.has_joint_loss(model) else y


def build_training_state(model: keras.Model, inputs: dict, targets, batch_size: int) -> None:
    """Create a compiled model's optimizer and loss variables before its first training step.

    Without a distribution strategy, Keras creates them while tracing the first step, and
    TensorFlow then traces (and with XLA compiles) that step a second time without the
    variable creation: half of a network's first training on a CPU goes to the repeat
    (a smoke network's ~12 s, ~6 s of it). Built here, the step is traced once. The
    optimizer's moments start at zero either way; the joint loss's per-head trackers are
    built by one loss evaluation on the first rows, in inference mode (batch
    normalisation's statistics untouched; every training step resets the trackers).
    Nothing to do when the model has trained before (:class:`FoldModel`).
    """
    if model.optimizer.built:
        return
    model.optimizer.build(model.trainable_variables)
    if networks.has_joint_loss(model):
        rows = {name: array[:batch_size] for name, array in inputs.items()}
        first = {head: labels[:batch_size] for head, labels in targets.items()}
        model.compute_loss(x=rows, y=first, y_pred=model(rows, training=False), training=False)
        model.reset_metrics()


def reset_optimizer(model: keras.Model, learning_rate: float) -> None:
    """Put the compiled model's optimizer back to its initial state (step 0, zero moments)."""
    for variable in model.optimizer.variables:
        variable.assign(np.zeros(variable.shape, dtype=variable.dtype))
    model.optimizer.learning_rate = learning_rate


def random_states(model: keras.Model) -> list:
    """The model's variables that are not weights: the random state of its dropout layers
    (``keras.random.SeedGenerator``), which ``get_weights``/``set_weights`` leave alone."""
    weights = {id(w) for w in model.weights}
    return [v for v in model.variables if id(v) not in weights]


class FoldModel:
    """One compiled network reused for every fold and seed, re-initialised for each.

    Tracing (or compiling) the training and prediction graphs costs more than a quick
    fold's training on a CPU, so the network of a model is built and compiled once; each
    fit then gets the initial weights of its seed, drawn by building the same architecture
    after ``keras.utils.set_random_seed(seed)`` (once per seed, then kept), and a reset
    optimizer. The random state of its dropout layers (``image_dropout``) is put back too, so a
    fold's dropout masks do not depend on the folds the worker trained before. The result is
    the same as building a new network with that seed.
    """

    def __init__(self, model_name: str, learning_rate: float, weight_decay: float = 0.0, xla: bool = False):
        self.model_name = model_name
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.xla = xla
        self.config: networks.NetworkConfig | None = None
        self.model: keras.Model | None = None
        self.initial_weights: dict[int, tuple[list, list]] = {}  # seed -> (weights, random states)
        self.trainers: dict[tuple[float, int], keras.Model] = {}  # (area weight, units) -> compiled with_area_head model
        self.image_model: keras.Model | None = None  # image_stage's model of the image alone
        self.image_trainers: dict[tuple[float, int], keras.Model] = {}  # the same as trainers, on image_model

    def fresh(self, config: networks.NetworkConfig, seed: int) -> keras.Model:
        """The compiled network of ``config`` with the initial weights of ``seed``."""
        if self.model is None or config != self.config:
            keras.backend.clear_session()
            self.model = networks.compile_model(networks.build_model(self.model_name, config), self.learning_rate,
                                                self.weight_decay, self.xla)
            self.config, self.initial_weights, self.trainers = config, {}, {}
            self.image_model, self.image_trainers = None, {}
        if seed not in self.initial_weights:
            keras.utils.set_random_seed(seed)
            built = networks.build_model(self.model_name, config)
            self.initial_weights[seed] = (built.get_weights(), [v.numpy() for v in random_states(built)])
        weights, states = self.initial_weights[seed]
        self.model.set_weights(weights)
        for variable, value in zip(random_states(self.model), states, strict=True):
            variable.assign(value)
        reset_optimizer(self.model, self.learning_rate)
        keras.utils.set_random_seed(seed)
        return self.model

    def trainer(self, area_weight: float, seed: int, units: int = 1) -> keras.Model:
        """The network of the last :meth:`fresh` with the area regression of ``units`` targets
        (:func:`networks.with_area_head`), compiled once per weight and number of targets; its area head started from
        ``seed`` (Glorot uniform, bias 0) and its optimizer reset."""
        if self.model is None:
            raise RuntimeError("call fresh() before trainer()")
        return self._area_trainer(self.trainers, self.model, area_weight, seed, units)

    def image_stage(self, area_weight: float, seed: int, units: int = 1) -> tuple[keras.Model, keras.Model | None]:
        """The image pathway of the last :meth:`fresh` joint-loss network with its own head (``image_head``), as a
        model of the image alone (compiled once), and the training model that adds the area regression of ``units``
        targets to it as :meth:`trainer` does (``None`` where ``area_weight`` is 0); both share the network's layers
        and come with their optimizers reset and the area head started from ``seed`` (``Profile.image_warm_start``)."""
        if self.model is None:
            raise RuntimeError("call fresh() before image_stage()")
        if not networks.has_joint_loss(self.model):
            raise ValueError(f"{self.model_name} has no image head of its own: image_warm_start needs the joint loss")
        if self.image_model is None:
            self.image_model = networks.compile_model(
                keras.Model({"image": self.model.input["image"]}, self.model.output["image"],
                            name=f"{self.model.name}_image_stage"), self.learning_rate, self.weight_decay, self.xla)
        reset_optimizer(self.image_model, self.learning_rate)
        trainer = (self._area_trainer(self.image_trainers, self.image_model, area_weight, seed, units)
                   if area_weight else None)
        return self.image_model, trainer

    def _area_trainer(self, compiled: dict, base: keras.Model, area_weight: float, seed: int, units: int) -> keras.Model:
        """``base`` with the area regression (:func:`networks.with_area_head`), compiled once per weight and number of
        targets into ``compiled``; its area head started from ``seed`` and its optimizer reset."""
        if (area_weight, units) not in compiled:
            compiled[area_weight, units] = networks.compile_model(
                networks.with_area_head(base, units), self.learning_rate, self.weight_decay, self.xla,
                area_weight=area_weight)
        trainer = compiled[area_weight, units]
        head = trainer.get_layer("area_head")  # Glorot uniform from the seed, bias 0
        n_in = int(head.kernel.shape[0])
        limit = np.sqrt(6.0 / (n_in + units))
        kernel = np.random.default_rng(seed).uniform(-limit, limit, (n_in, units)).astype(np.float32)
        head.set_weights([kernel, np.zeros(units, dtype=np.float32)])
        reset_optimizer(trainer, self.learning_rate)
        return trainer


@fast_cpu_graphs()
def predict_probability(model: keras.Model, inputs: dict, batch_size: int = 64, symmetries: bool = False) -> np.ndarray:
    """Probability of early recurrence ``[n]``: the fused head's second neuron.

    With ``symmetries`` (the profile's ``test_symmetries``), the mean of the probabilities of
    each image turned by the 8 symmetries of the square (:func:`dihedral`; the clinical
    vector unchanged): the network trained with ``augment`` has seen every image in any of
    them. The inputs are padded with zeros to whole batches (and the padding dropped after),
    so that the prediction step is traced once for every fold whatever its size. Predicted
    inside :func:`fast_cpu_graphs`, as the network was trained.
    """
    n = len(next(iter(inputs.values())))
    padded_n = -(-n // batch_size) * batch_size
    padded = {name: np.concatenate([a, np.zeros((padded_n - n, *a.shape[1:]), a.dtype)]) for name, a in inputs.items()}
    transforms = SYMMETRIES if symmetries else (0,)
    probabilities = np.zeros(padded_n)
    for transform in transforms:
        turned = turned_inputs(padded, transform)
        for begin in range(0, padded_n, batch_size):
            batch = {name: a[begin : begin + batch_size] for name, a in turned.items()}
            fused = np.asarray(networks.fused_probability(model.predict_on_batch(batch)), dtype=np.float64)[:, 1]
            probabilities[begin : begin + batch_size] += fused
    return probabilities[:n] / len(transforms)


#: Each network's layers up to its head as a Keras model (:func:`head_features`), kept while the network lives.
_FEATURE_MODELS: weakref.WeakKeyDictionary[keras.Model, keras.Model] = weakref.WeakKeyDictionary()


def head_features(model: keras.Model, inputs: dict, batch_size: int = 64, symmetries: bool = False) -> np.ndarray:
    """What the network's ``fused`` softmax head sees, ``[n, f]``, for ``inputs`` (the network's input dict).

    The deep model's pooled image features; a fusion model's image branch beside its clinical branch (the
    ``concat`` layer). With ``symmetries``, each row averaged over the image's 8 symmetries of the square
    (:func:`dihedral`; the clinical vector unchanged). The network's layers up to its head are predicted as one
    Keras model, made once per network (:data:`_FEATURE_MODELS`), inside :func:`fast_cpu_graphs` as the network
    is trained.
    """
    names = {layer.name for layer in model.layers}
    if "phase_scaling" not in names or "fused" not in names:
        raise ValueError(f"{model.name} has no image pathway and head")
    if model not in _FEATURE_MODELS:
        _FEATURE_MODELS[model] = keras.Model(model.inputs, model.get_layer("fused").input)
    features_of = _FEATURE_MODELS[model]
    inputs = {name: np.asarray(array, dtype=np.float32) for name, array in inputs.items()}
    transforms = SYMMETRIES if symmetries else (0,)
    features = 0.0
    with fast_cpu_graphs():
        for transform in transforms:
            features = features + features_of.predict(turned_inputs(inputs, transform), batch_size=batch_size, verbose=0)
    return np.asarray(features, dtype=np.float64) / len(transforms)


def _scaled_columns(features: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """``features`` ``[n, f]`` with each column multiplied by its ``scales`` ``[f]`` (a step of :func:`refit_head`)."""
    return features * scales


def clinical_branch_map(model: keras.Model, vectors) -> tuple[np.ndarray, np.ndarray]:
    """The affine map ``h = x @ K + h0`` by which a fusion model's clinical branch (what it puts beside the image
    branch in its ``concat`` layer: the fitted :class:`~hccer_lib.networks.ClinicalScaling`, then fusion C's Conv1D or
    D's FC layer) turns a clinical vector ``x`` ``[k]`` into its ``m`` features: ``(K [k, m], h0 [m])``, read from the
    branch's outputs for the zero vector and the ``k`` unit vectors. ``vectors`` ``[n, k]`` (the training slices' own
    clinical vectors) check it: a ``ValueError`` when the branch does not give them what the map gives (a ReLU
    layer, ``Profile.clinical_activation="relu"``, is not affine)."""
    names = {layer.name for layer in model.layers}
    if "clinical_scaling" not in names or "concat" not in names:
        raise ValueError(f"{model.name} has no clinical branch")
    clinical_input = model.get_layer("clinical_scaling").input  # the network's clinical vector
    branch = keras.Model(clinical_input, model.get_layer("concat").input[1])
    vectors = np.asarray(vectors, dtype=np.float32)
    k = int(clinical_input.shape[-1])
    if vectors.ndim != 2 or vectors.shape[1] != k:
        raise ValueError(f"{model.name} takes clinical vectors of {k} bits, got shape {vectors.shape}")
    basis = np.vstack([np.zeros((1, k), np.float32), np.eye(k, dtype=np.float32)])
    outputs = np.asarray(branch.predict(basis, verbose=0), dtype=np.float64).reshape(k + 1, -1)
    offset, kernel = outputs[0], outputs[1:] - outputs[0]
    rows = np.unique(vectors, axis=0)
    actual = np.asarray(branch.predict(rows, verbose=0), dtype=np.float64).reshape(len(rows), -1)
    error = np.abs(rows.astype(np.float64) @ kernel + offset - actual).max()
    if error > 1e-4 * (1.0 + np.abs(actual).max()):
        raise ValueError(f"{model.name}'s clinical branch is not affine in the clinical vector (largest departure "
                         f"{error:.3g}; a ReLU layer, clinical_activation='relu'?): its head cannot be refitted on the "
                         f"clinical bits")
    return kernel, offset


def refit_head(model: keras.Model, inputs: dict, y, patient_id, roi_area_mm2, C: float,
               symmetries: bool = False, image_scale: float = 1.0, clinical_bits: bool = False,
               features: np.ndarray | None = None) -> Pipeline:
    """Fit a network's ``fused`` softmax head anew as a penalised logistic regression on its training patients.

    ``inputs`` the network's input dict (``{"image": [n, H, W, 3]}``, plus ``"clinical": [n, k]`` for a fusion
    model), ``y`` ``[n]`` 0/1, ``patient_id`` and ``roi_area_mm2`` (mm²) ``[n]``: the training slices. Each
    patient's head features (:func:`head_features`, with ``symmetries`` averaged over the 8 turns; the deep model's
    pooled image features, a fusion model's image and clinical branches side by side) are averaged over its slices
    weighted by the tumour's area, as the patient level weights its slices' probabilities; a logistic regression
    (scikit-learn, standardised features, L2 penalty of ``C``) is fitted on one row per patient. Its coefficients
    are put into the ``fused`` softmax layer, half on each neuron with opposite signs, so that the network's
    probability for a slice is the regression's on that slice's features. The layers below the head, and a
    joint-loss model's image and clinical heads (used in training only), are left as they are.

    ``image_scale`` (fusion models): the standardised image-branch features are multiplied by it before the
    regression, so that their coefficients are penalised ``1 / image_scale²`` times as much as the clinical
    branch's. On its training patients a fusion model's image branch looks far stronger than it is on new ones
    (it has just been fitted to them; docs/cpu_recipe.md, "Tried since"), and an equal penalty lets it crowd out the clinical
    branch.

    ``clinical_bits`` (fusion models whose clinical branch is affine, :func:`clinical_branch_map`): the regression
    reads the clinical vector's bits themselves in place of the clinical branch's features, each standardised and
    penalised alike, as ``clinical_lr`` penalises them, and its coefficients are carried into the head through the branch's
    map (the least-norm ``γ`` with ``K γ = β``; the map's offset into the intercept): the network's probability is
    still the regression's. Fusion A and B's branch is the vector itself, scaled; fusion C's Conv1D (56 features) and
    D's FC layer (16) mix the bits, and their features' L2 penalty is not the bits' (without it the refit of C and D
    penalises whatever directions 4 epochs have stretched).

    ``features``: the training slices' :func:`head_features` (with the same ``symmetries``), where they are already at
    hand: a refit changes only the head, not what it reads, so one network can be refitted many times on them
    (``scripts/develop_recipe.py``'s ``--refit-grid``). ``None``: computed here.

    Why: trained by the recipe's last Adam steps on the slices of patients whose features it has just fitted, the
    head weighs those features too much. A strongly penalised regression on the same features ranks the test
    patients better (docs/cpu_recipe.md). Returns the fitted pipeline.
    """
    if C <= 0:
        raise ValueError(f"C must be positive, got {C}")
    fusion = "clinical_scaling" in {layer.name for layer in model.layers}
    if image_scale <= 0 or (image_scale != 1.0 and not fusion):
        raise ValueError(f"image_scale weighs a fusion model's image branch against its clinical branch, > 0 (1 for "
                         f"{model.name}); got {image_scale}")
    y = np.asarray(y, dtype=int)
    patient_id, areas = np.asarray(patient_id), np.asarray(roi_area_mm2, dtype=np.float64)
    lengths = {name: len(array) for name, array in inputs.items()}
    if len(set(lengths.values()) | {len(y), len(patient_id), len(areas)}) != 1 or len(y) == 0:
        raise ValueError(f"the inputs ({lengths}), y, patient_id and roi_area_mm2 must have one row per slice, got "
                         f"lengths {len(y)}, {len(patient_id)}, {len(areas)}")
    if (pd.Series(areas).groupby(patient_id).sum() <= 0).any():
        raise ValueError("every training patient needs a tumour area above 0 in its slices")
    labels = pd.Series(y).groupby(patient_id).agg(["min", "max"])
    if (labels["min"] != labels["max"]).any():
        raise ValueError("each patient's slices must carry one label")
    if clinical_bits and not fusion:
        raise ValueError(f"clinical_bits refits a fusion model's head on its clinical vector; {model.name} has none")
    if features is None:
        features = head_features(model, inputs, symmetries=symmetries)
    elif np.shape(features) != (len(y), int(model.get_layer("fused").input.shape[-1])):
        raise ValueError(f"features must be the {len(y)} slices' head features, [n, "
                         f"{int(model.get_layer('fused').input.shape[-1])}]; got shape {np.shape(features)}")
    n_image = int(model.get_layer("concat").input[0].shape[-1]) if fusion else features.shape[1]
    branch_map = None
    if clinical_bits:
        vectors = np.asarray(inputs["clinical"], dtype=np.float64)
        branch_map = clinical_branch_map(model, vectors)
        features = np.column_stack([features[:, :n_image], vectors])
    patient_features = area_weighted_patient_means(features, patient_id, areas)
    column_scales = np.ones(features.shape[1])
    if fusion:  # the concat layer's first input is the image branch
        column_scales[:n_image] = image_scale
    regression = make_pipeline(StandardScaler(), FunctionTransformer(_scaled_columns, kw_args={"scales": column_scales}),
                               LogisticRegression(C=C, max_iter=10_000))
    regression.fit(patient_features.to_numpy(), labels["min"].to_numpy())
    scaler, logistic = regression[0], regression[-1]
    weights = logistic.coef_[0] * column_scales / scaler.scale_
    intercept = logistic.intercept_[0] - float(np.sum(weights * scaler.mean_))
    if branch_map is not None:  # the bits' coefficients β through the branch: K γ = β, h0·γ into the intercept
        kernel_map, offset = branch_map
        bits = weights[n_image:]
        gamma, *_ = np.linalg.lstsq(kernel_map, bits, rcond=None)
        if np.abs(kernel_map @ gamma - bits).max() > 1e-6 * (1.0 + np.abs(bits).max()):
            raise ValueError(f"{model.name}'s clinical branch loses bits of the clinical vector (its map has rank "
                             f"{np.linalg.matrix_rank(kernel_map)} of {len(bits)}): the head cannot read the regression's "
                             f"coefficients through it")
        intercept -= float(gamma @ offset)
        weights = np.concatenate([weights[:n_image], gamma])
    kernel = np.stack([-weights / 2, weights / 2], axis=1).astype(np.float32)
    bias = np.array([-intercept / 2, intercept / 2], dtype=np.float32)
    model.get_layer("fused").set_weights([kernel, bias])
    return regression


def array_digest(*arrays) -> str:
    """A short content hash of numpy arrays (the data a run was trained on)."""
    digest = hashlib.sha256()
    for array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(str((array.dtype.str, array.shape)).encode())
        digest.update(array.tobytes() if array.dtype != object else "\x00".join(map(str, array.ravel())).encode())
    return digest.hexdigest()[:12]


def _patient_level_auc(frame: pd.DataFrame) -> float:
    """AUC of the patient probabilities (``evaluation.patient_level``: slices weighted by the tumour's area when
    the frame has it); NaN with one class."""
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
        roi_area_mm2: ``[n]`` the tumour's area in each slice, mm² (``dataset.roi_area_mm2``).
        train, test: ``[n]`` bool masks (test all ``False`` for a whole-cohort fit).
        clinical_names: the bits of the clinical vector (selected on this fold's training
            patients under the ``strict`` protocol, on every patient under ``paper``).
        config: the :class:`networks.NetworkConfig` of the fold's network.
        validation: ``[n]`` bool mask of the training rows held out for the choice of the
            epoch (a subset of ``train``; all ``False`` without a validation split).
        fit: ``[n]`` bool mask of the rows the network is fitted on: ``train`` but
            ``validation`` and the slices below ``Profile.train_min_area`` (set by :func:`train_fold`).
    """

    inputs: dict
    y: np.ndarray
    patient_id: np.ndarray
    slice: np.ndarray
    roi_area_mm2: np.ndarray
    train: np.ndarray
    test: np.ndarray
    clinical_names: list
    config: networks.NetworkConfig
    validation: np.ndarray | None = None
    fit: np.ndarray | None = None

    def __post_init__(self):
        if self.validation is None:
            self.validation = np.zeros_like(self.train, dtype=bool)
        if self.fit is None:
            self.fit = self.train & ~self.validation

    def subset(self, mask) -> dict:
        """``inputs`` restricted to the rows of ``mask``."""
        return {name: array[mask] for name, array in self.inputs.items()}


def sampling_weights(patient_id, roi_area_mm2) -> np.ndarray:
    """Probability of drawing each training row ``[n]`` under ``Profile.train_sampling = "patient"``: every patient
    weighs alike (its rows sum to ``1 / n_patients``), and its slices by the tumour's area in them (mm²)."""
    areas = pd.Series(np.asarray(roi_area_mm2, dtype=float))
    shares = areas / areas.groupby(np.asarray(patient_id).astype(str)).transform("sum")
    return (shares / shares.sum()).to_numpy()


def class_balanced_weights(y) -> np.ndarray:
    """Probability of drawing each training row ``[n]`` under ``Profile.train_sampling = "class"``: each class
    (0/1 label) weighs one half, shared alike by its rows, so an epoch holds about as many rows of either class."""
    y = np.asarray(y).astype(int)
    counts = np.bincount(y, minlength=2)
    if (counts == 0).any():
        raise ValueError(f"class-balanced sampling needs rows of both classes; the training rows have {counts.tolist()} of 0 / 1")
    return 1.0 / (len(counts) * counts[y])


def area_weighted_patient_means(values: np.ndarray, patient_id, roi_area_mm2) -> pd.DataFrame:
    """``[patients, k]``: each patient's rows of ``values`` ``[n, k]`` averaged with weights proportional to the
    tumour's area in each slice (mm², ``[n]``), as a patient's probability weighs its slices
    (``evaluation.area_weighted_mean``); indexed by patient id, sorted."""
    patient_id, areas = np.asarray(patient_id), np.asarray(roi_area_mm2, dtype=np.float64)
    sums = pd.DataFrame(np.asarray(values) * areas[:, None]).groupby(patient_id).sum()
    return sums.div(pd.Series(areas).groupby(patient_id).sum(), axis=0)


def area_shares(dataset) -> np.ndarray:
    """``[n]`` each image's tumour area (``dataset.roi_area_mm2``) as a share of the largest of its patient's slices."""
    areas = pd.Series(np.asarray(dataset.roi_area_mm2, dtype=float))
    return (areas / areas.groupby(np.asarray(dataset.patient_id).astype(str)).transform("max")).to_numpy()


def _dataset_arrays(dataset, profile: Profile) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Checked ``images [n, H, H, 3]`` float32, ``patient_id``, ``y_true`` and ``slice`` of ``dataset``."""
    images = np.asarray(dataset.images, dtype=np.float32)
    if images.ndim != 4 or images.shape[-1] != 3 or images.shape[1] != images.shape[2]:
        raise ValueError(f"dataset.images must be [n, H, H, 3], got shape {images.shape}")
    if images.shape[1] != profile.image_size:
        raise ValueError(f"dataset images are {images.shape[1]} px but profile {profile.name!r} wants {profile.image_size} px")
    return images, np.asarray(dataset.patient_id).astype(str), np.asarray(dataset.y_true, dtype=int), np.asarray(dataset.slice)


_CLINICAL_MATRICES: dict = {}


def _clinical_matrix(clinical: pd.DataFrame, protocol: str, train_ids: tuple) -> tuple[np.ndarray, list]:
    """``clinical.clinical_matrix`` of a fold, computed once per clinical table, protocol and training patients.

    Every training seed of a fold, and every model, selects the same variables on the
    same patients: the chi-squared selection ran for each of them and took about as long
    as a quick fold's first epoch. Keyed by the table's content, not by the object.
    """
    from hccer_lib import clinical as clinical_module

    key = (array_digest(pd.util.hash_pandas_object(clinical, index=True).to_numpy(), np.asarray(clinical.columns, dtype=str)),
           protocol, train_ids)
    if key not in _CLINICAL_MATRICES:
        if len(_CLINICAL_MATRICES) >= 64:
            _CLINICAL_MATRICES.clear()
        _CLINICAL_MATRICES[key] = clinical_module.clinical_matrix(clinical, protocol=protocol, train_ids=list(train_ids))
    matrix, names = _CLINICAL_MATRICES[key]
    return matrix.copy(), list(names)


def fold_data(
    model_name: str,
    dataset,
    clinical: pd.DataFrame,
    folds: pd.DataFrame,
    profile: Profile,
    fold: int | None,
    selection_protocol: str = DEFAULT_SETTINGS.selection_protocol,
    imagenet: str = "auto",
    network_overrides: dict | None = None,
) -> FoldData:
    """The inputs, labels and train/test split of ``fold`` (``None``: every patient trains).

    Args are those of :func:`train_cross_validated`; ``fold`` is a fold number of
    ``folds`` or ``None`` for the whole-cohort fit (no test slices).
    """
    if model_name not in networks.MODEL_NAMES:
        raise ValueError(f"unknown model {model_name!r}; choose one of {networks.MODEL_NAMES}")
    if selection_protocol not in SELECTION_PROTOCOLS:
        raise ValueError(f"selection_protocol must be 'paper' or 'strict', got {selection_protocol!r}")
    check_imagenet(profile, imagenet)
    images, slice_pids, y_slices, slice_index = _dataset_arrays(dataset, profile)
    if fold is None:
        test = np.zeros(len(slice_pids), dtype=bool)
    else:
        if int(fold) not in set(folds["fold"].astype(int)):
            raise ValueError(f"fold {fold} is not among the folds {sorted(set(folds['fold'].astype(int)))}")
        test = evaluation.fold_of(folds, slice_pids) == int(fold)
    train = ~test
    train_ids = folds.loc[folds["fold"].astype(int) != (-1 if fold is None else int(fold)), "patient_id"].astype(str)
    matrix, names = _clinical_matrix(clinical, selection_protocol, tuple(train_ids))
    vectors = slice_clinical_vectors(matrix, clinical["patient_id"].astype(str).to_numpy(), slice_pids)
    config = network_config(profile, n_clinical=vectors.shape[1], imagenet=imagenet, **(network_overrides or {}))
    inputs = {"image": images} if model_name == "deep_resnet50" else {"image": images, "clinical": vectors}
    areas = np.asarray(dataset.roi_area_mm2, dtype=float)
    return FoldData(inputs, y_slices, slice_pids, slice_index, areas, train, test, list(names), config)


def _standardised(columns: np.ndarray) -> np.ndarray:
    """Each column minus its mean, over its SD (a constant column: over 1, so 0)."""
    spread = columns.std(axis=0)
    return (columns - columns.mean(axis=0)) / np.where(spread > 0, spread, 1.0)


def area_targets(roi_area_mm2, images=None, margin: float = 0.0, size_free: bool = False) -> np.ndarray:
    """The area regression's targets (``Profile.area_target``): each training slice's log tumour area (mm²),
    standardised over those slices (``[n]``). The log, because the crop's resize shrinks a tumour by its side, not its
    area. With ``images`` (``[n, H, W, phases]``, the slices' crops; ``Profile.texture_target``): ``[n, 2·phases + 1]``,
    the crops' :func:`texture_statistics` (the tumour's box inside the crop's fractional ``margin``) and then the log
    area, each column standardised over the slices. ``size_free`` (:func:`texture_size_free_for`): each statistic as
    its log's residual from a least-squares line on the log area over the slices, before it is standardised; a flat
    phase (statistic 0, which has no log: a crop clipped whole by the window, say) counts as the smallest statistic
    above 0 of its column (a column with none: a constant, 0 once standardised)."""
    areas = np.asarray(roi_area_mm2, dtype=np.float64)
    if not np.all(np.isfinite(areas) & (areas > 0)):
        raise ValueError("every training slice needs a tumour area above 0 mm² for the area target")
    logs = _standardised(np.log(areas))
    if images is None:
        return logs
    if len(images) != len(areas):
        raise ValueError(f"the texture target needs one crop per slice: {len(images)} crops, {len(areas)} areas")
    statistics = texture_statistics(images, margin)
    if size_free:
        smallest = np.where(statistics > 0, statistics, np.inf).min(axis=0)
        statistics = np.maximum(statistics, np.where(np.isfinite(smallest), smallest, 1.0))
        statistics = _residuals_on(np.log(statistics), np.log(areas))
    return _standardised(np.column_stack([statistics, logs]))


def _residuals_on(columns: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Each column of ``columns`` ``[n, k]`` less its least-squares line on ``x`` ``[n]`` (slope and intercept)."""
    design = np.column_stack([np.ones_like(x), x])
    coefficients, *_ = np.linalg.lstsq(design, columns, rcond=None)
    return columns - design @ coefficients


#: The statistics of :func:`texture_statistics`, in their order within each phase.
TEXTURE_STATISTICS = ("gradient", "centre_local_sd")


def texture_statistics(images, margin: float) -> np.ndarray:
    """Two texture statistics of each phase of each crop, ``[n, H, W, phases]`` → ``[n, 2·phases]`` (phase by phase,
    :data:`TEXTURE_STATISTICS` within each): the mean absolute difference of neighbouring pixels over the crop (the two
    axes' means added), and the mean SD of the 3 × 3 neighbourhoods (edges mirrored) over the tumour's box, which the
    crop's fractional ``margin`` surrounds (``margin / (1 + 2·margin)`` of the side on each side; the whole crop
    without a margin). How much a crop's grey levels change from pixel to pixel: the tumour's heterogeneity, and how
    much the resize has squeezed it (a large tumour's texture into fewer pixels)."""
    from scipy import ndimage

    images = np.asarray(images, dtype=np.float64)
    if images.ndim != 4:
        raise ValueError(f"texture statistics need crops [n, H, W, phases], got shape {images.shape}")
    if margin < 0:
        raise ValueError(f"margin is a fraction of the tumour's box, >= 0; got {margin}")
    n, height, width, phases = images.shape
    centre = tumour_box_mask(height, width, margin)
    columns = []
    for phase in range(phases):
        x = images[..., phase]
        local_mean = ndimage.uniform_filter(x, size=(1, 3, 3))
        local_sd = np.sqrt(np.clip(ndimage.uniform_filter(x * x, size=(1, 3, 3)) - local_mean**2, 0, None))
        gradient = np.abs(np.diff(x, axis=1)).mean(axis=(1, 2)) + np.abs(np.diff(x, axis=2)).mean(axis=(1, 2))
        columns += [gradient, local_sd[:, centre].mean(1)]
    return np.stack(columns, axis=1)


def texture_size_free_for(profile: Profile, model_name: str) -> bool:
    """Whether the texture targets of ``model_name``'s training have the size taken out (:func:`area_targets`'
    ``size_free``): ``profile.texture_size_free`` for every network, ``profile.fusion_texture_size_free`` for the
    fusion models (with ``profile.texture_target``: there are no texture targets otherwise)."""
    return bool(profile.texture_target and (profile.texture_size_free
                                            or (profile.fusion_texture_size_free and model_name in networks.FUSION_KINDS)))


def tumour_box_mask(height: int, width: int, margin: float) -> np.ndarray:
    """``[height, width]`` boolean mask of the tumour's box inside a crop made with the fractional ``margin`` around
    it (``margin / (1 + 2·margin)`` of the side on each side; the whole crop without a margin)."""
    edge = int(round(height * margin / (1 + 2 * margin)))
    mask = np.zeros((height, width), dtype=bool)
    mask[edge:height - edge, edge:width - edge] = True
    return mask


def _crop_margin(dataset) -> float:
    """The fractional margin around the tumour's box with which ``dataset``'s crops were made (its settings)."""
    settings = getattr(dataset, "settings", None)
    if not isinstance(settings, dict) or "margin" not in settings:
        raise ValueError("the texture target needs the processed dataset's settings (its crops' margin); this dataset "
                         "has none: preprocess the cohort with preprocessing.dataset_with")
    return float(settings["margin"])


@fast_cpu_graphs()
def train_fold(
    model_name: str,
    dataset,
    clinical: pd.DataFrame,
    folds: pd.DataFrame,
    profile: Profile,
    fold: int | None,
    seed: int = 2020,
    selection_protocol: str = DEFAULT_SETTINGS.selection_protocol,
    imagenet: str = "auto",
    network_overrides: dict | None = None,
    verbose: int | str = 0,
    fold_model: FoldModel | None = None,
) -> tuple[keras.Model, FoldData]:
    """Train the network of one fold (``None``: of the whole cohort); return it and its data.

    ``seed`` is one training seed (:func:`train_seeds`): it draws the initial weights
    (``keras.utils.set_random_seed(seed)``, the same for every fold of the seed), and
    ``seed + fold`` the validation patients, the batches and the symmetries. The same
    network, initial weights, validation patients, batches and epochs as
    :func:`train_cross_validated`'s fold ``fold`` of that seed, so predicting
    ``data.subset(data.test)`` gives that fold's out-of-fold predictions again. With
    ``profile.head_refit`` (the deep model) or ``profile.fusion_head_refit`` (a fusion model), the network's fused
    head is then fitted anew on the training patients (:func:`refit_head`; never the test fold, nor held-out
    validation patients). The
    whole-cohort fit (``fold=None``) is seeded with ``seed + n_folds``, after the folds'. With
    ``profile.image_warm_start``, a joint-loss network's image pathway is first trained alone with its own head
    (:meth:`FoldModel.image_stage`, its batches seeded with ``seed + fold +`` :data:`IMAGE_STAGE_SEED_OFFSET`).
    With ``profile.validation_fraction > 0`` a share of the training patients is held out
    for the choice of the epoch (``data.validation``; the network's history says which,
    ``model.history.best_epoch``). ``fold_model``: a :class:`FoldModel` to reuse (its
    traced graphs) across calls. Trained inside :func:`fast_cpu_graphs` (restored after).
    """
    data = fold_data(model_name, dataset, clinical, folds, profile, fold, selection_protocol, imagenet, network_overrides)
    fold_seed = int(seed) + (int(fold) if fold is not None else folds["fold"].nunique())
    training_patients = pd.DataFrame({"patient_id": data.patient_id[data.train], "y": data.y[data.train]}).drop_duplicates()
    held_out = validation_patients(training_patients["patient_id"], training_patients["y"], profile.validation_fraction,
                                   fold_seed)
    data.validation = data.train & np.isin(data.patient_id, held_out)
    data.fit = fit_rows = data.train & ~data.validation & (area_shares(dataset) >= profile.train_min_area)
    fold_model = fold_model or FoldModel(model_name, profile.learning_rate, profile.weight_decay, xla=profile.xla)
    model = fold_model.fresh(data.config, int(seed))
    if "clinical" in data.inputs:  # standardised on the patients it is fitted on, one row each
        first_rows = np.unique(data.patient_id[fit_rows], return_index=True)[1]
        patient_vectors = data.inputs["clinical"][fit_rows][first_rows]
        networks.set_clinical_scaling(model, patient_vectors)
        if profile.clinical_warm_start:  # scikit-learn's C on these patients: a penalty of 1 / (C n)
            networks.warm_start_clinical(model, patient_vectors, data.y[fit_rows][first_rows],
                                         penalty=1.0 / (profile.clinical_warm_start * len(first_rows)))
    keras.utils.set_random_seed(fold_seed)
    sampling = None
    if profile.train_sampling == "patient":
        sampling = sampling_weights(data.patient_id[fit_rows], data.roi_area_mm2[fit_rows])
    elif profile.train_sampling == "class":
        sampling = class_balanced_weights(data.y[fit_rows])
    validation = None
    if data.validation.any():
        validation = (data.subset(data.validation), data.y[data.validation], data.patient_id[data.validation],
                      data.roi_area_mm2[data.validation])
    trainer, extra_targets, units = None, None, 1
    if profile.area_target:
        crops = data.inputs["image"][fit_rows] if profile.texture_target else None
        targets = area_targets(data.roi_area_mm2[fit_rows], crops, _crop_margin(dataset) if profile.texture_target else 0.0,
                               size_free=texture_size_free_for(profile, model_name))
        units = 1 if targets.ndim == 1 else targets.shape[1]
        trainer = fold_model.trainer(profile.area_target, fold_seed, units=units)
        extra_targets = {networks.AREA_HEAD: targets}
    if profile.image_warm_start and networks.has_joint_loss(model):  # the image pathway alone first (its head's loss)
        stage, stage_trainer = fold_model.image_stage(profile.area_target, fold_seed, units=units)
        fit_model(stage, {"image": data.inputs["image"][fit_rows]}, data.y[fit_rows], profile.image_warm_start,
                  profile.batch_size, verbose, fold_seed + IMAGE_STAGE_SEED_OFFSET, augment=profile.augment,
                  lr_schedule=profile.lr_schedule, row_weights=sampling, shift=profile.augment_shift,
                  trainer=stage_trainer, extra_targets=extra_targets)
    fit_model(model, data.subset(fit_rows), data.y[fit_rows], profile.epochs, profile.batch_size, verbose, fold_seed,
              augment=profile.augment, validation=validation, lr_schedule=profile.lr_schedule,
              test_symmetries=profile.test_symmetries, row_weights=sampling, shift=profile.augment_shift,
              trainer=trainer, extra_targets=extra_targets)
    refit = head_refit_settings(profile, model_name)
    if refit is not None:
        refit_head(model, data.subset(fit_rows), data.y[fit_rows], data.patient_id[fit_rows],
                   data.roi_area_mm2[fit_rows], **refit)
    return model, data


def head_refit_settings(profile: Profile, model_name: str) -> dict | None:
    """:func:`refit_head`'s settings for ``model_name`` under ``profile`` (``C``, ``symmetries``, ``image_scale``,
    ``clinical_bits``), or ``None`` when the profile refits no head of that network. The deep model reads
    ``head_refit`` (its image features at scale 1, no clinical bits); a fusion model ``fusion_head_refit``,
    ``fusion_refit_image_scale`` and ``fusion_refit_clinical_bits``. :func:`train_fold` refits with them."""
    deep = model_name == "deep_resnet50"
    C = profile.head_refit if deep else profile.fusion_head_refit
    if not C:
        return None
    return {"C": C, "symmetries": profile.test_symmetries,
            "image_scale": 1.0 if deep else profile.fusion_refit_image_scale,
            "clinical_bits": bool(profile.fusion_refit_clinical_bits and not deep)}


def _network_record(model_name: str, clinical: pd.DataFrame, folds: pd.DataFrame, profile: Profile,
                    selection_protocol: str, imagenet: str, network_overrides: dict | None) -> dict:
    """The network a run's settings record (and its key hashes), less ``n_clinical`` (the clinical table's digest
    keys the vector): a fusion model's as built for the clinical vector that the whole cohort selects under
    ``selection_protocol`` (fusion C's kernel is shortened to a shorter vector, :func:`network_config`); the deep
    model, which has no clinical input, at the default vector's length. A network without fusion C or D's clinical
    layer is recorded with that layer's default activation, whatever the profile's ``clinical_activation``, and one
    without fusion B, C or D's image FC layer likewise, whatever its ``image_activation``."""
    n_clinical = networks.NetworkConfig.__dataclass_fields__["n_clinical"].default
    if model_name != "deep_resnet50":
        _, names = _clinical_matrix(clinical, selection_protocol, tuple(folds["patient_id"].astype(str)))
        n_clinical = len(names)
    config = network_config(profile, n_clinical, imagenet, **(network_overrides or {}))
    kind = networks.FUSION_KINDS.get(model_name)
    config = replace(config, **{field: networks.KEYED_AT_DEFAULT_SINCE[field]  # no such layer to activate
                                for field, kinds in networks.ACTIVATION_LAYER_KINDS.items() if kind not in kinds})
    return {k: v for k, v in config.key_dict().items() if k != "n_clinical"}


def run_folder(
    model_name: str,
    dataset,
    clinical: pd.DataFrame,
    folds: pd.DataFrame,
    profile: Profile,
    work_dir: str | os.PathLike,
    seed: int = 2020,
    selection_protocol: str = DEFAULT_SETTINGS.selection_protocol,
    output_name: str | None = None,
    network_overrides: dict | None = None,
    imagenet: str = "auto",
) -> tuple[Path, dict]:
    """The run folder ``<work_dir>/runs/<output_name>/<settings key>`` and its settings.

    The key hashes everything that changes a fold's result: the model, the profile's
    :data:`DEEP_PROFILE_FIELDS`, the network, :data:`TRAINING_VERSION`, the ImageNet
    setting, the run seed, the selection protocol, the data, the clinical table, the folds
    and the Keras backend. The number of training seeds is not part of it.
    """
    images, slice_pids, y_slices, slice_index = _dataset_arrays(dataset, profile)
    settings = {
        "model": model_name,
        "profile_deep": training_settings(profile, model_name),
        "network": _network_record(model_name, clinical, folds, profile, selection_protocol, imagenet, network_overrides),
        "training_version": TRAINING_VERSION,
        "imagenet": imagenet if imagenet in ("auto", "none") else str(imagenet),
        "imagenet_file_found": networks.imagenet_weights_path() is not None if imagenet == "auto" else None,
        "seed": int(seed),
        "selection_protocol": selection_protocol,
        "data": array_digest(images, slice_pids, y_slices, slice_index, np.asarray(dataset.roi_area_mm2, dtype=float)),
        "clinical": array_digest(pd.util.hash_pandas_object(clinical, index=False).to_numpy()),
        "folds": array_digest(folds["patient_id"].astype(str).to_numpy(), folds["fold"].to_numpy()),
        "keras_backend": keras.backend.backend(),
    }
    key = outputs.settings_key(settings)
    return Path(work_dir) / "runs" / (output_name or model_name) / key, {**settings, "key": key}


def train_cross_validated(
    model_name: str,
    dataset,
    clinical: pd.DataFrame,
    folds: pd.DataFrame,
    profile: Profile,
    work_dir: str | os.PathLike,
    *,
    output_name: str | None = None,
    **options,
) -> pd.DataFrame:
    """Train ``model_name`` on every fold, once per training seed; return and save its out-of-fold predictions.

    :func:`train_models_cross_validated` for one model. ``output_name``: the predictions
    file's model name (default ``model_name``), e.g. ``"fusion_d_strict"``; ``options``:
    the keyword arguments of :func:`train_models_cross_validated` (``seed``,
    ``selection_protocol``, ``imagenet``, ``workers``, ``executor``, ``predictions_dir``, ...).

    Returns:
        ``patient_id, slice, fold, y_true, y_prob, train_seed, roi_area_mm2``, one row per slice
        of the dataset and training seed.
    """
    output_name = output_name or model_name
    return train_models_cross_validated({output_name: model_name}, dataset, clinical, folds, profile, work_dir,
                                        **options)[output_name]


def train_models_cross_validated(
    models: list[str] | tuple[str, ...] | dict[str, str],
    dataset,
    clinical: pd.DataFrame,
    folds: pd.DataFrame,
    profile: Profile,
    work_dir: str | os.PathLike,
    *,
    seed: int = 2020,
    selection_protocol: str = DEFAULT_SETTINGS.selection_protocol,
    network_overrides: dict | None = None,
    imagenet: str = "auto",
    verbose: int | str = 0,
    predict_batch_size: int = 64,
    workers: int | str | None = None,
    executor: str | None = None,
    predictions_dir: str | os.PathLike | None = None,
) -> dict[str, pd.DataFrame]:
    """Train each model on every fold, once per training seed; return and save their out-of-fold predictions.

    Several models at once (notebook 05's fusion models A-D) give the same predictions,
    files and run folders as one call per model, in less time when the trainings run in
    worker processes: a worker keeps training one model while it has trainings left, so each
    network is compiled by about one worker instead of by every worker
    (:func:`run_model_jobs`). Each model's predictions file is written, and its summary
    printed, as soon as its last training is done.

    Args:
        models: the models' names (each one of :data:`networks.MODEL_NAMES`, the architecture),
            or output name -> architecture, e.g. ``{"fusion_d_strict": "fusion_d"}``: the name of
            the predictions file and of the run folder.
        dataset: a ``preprocessing.ProcessedDataset``: ``images`` ``[n, H, W, 3]`` in
            ``[0, 1]`` (NC, ART, PV), ``patient_id`` ``[n]``, ``slice`` ``[n]``, ``y_true`` ``[n]``.
        clinical: the raw clinical frame (``patient_id``, ``early_recurrence``, ...).
        folds: ``patient_id, y_true, fold`` from ``evaluation.load_or_make_folds``.
        profile: the training recipe (epochs, batch size, learning rate, ResNet blocks and
            width, ``train_seeds``, ``validation_fraction``, ``weight_decay``,
            ``lr_schedule``, ``augment``).
        work_dir: the cohort's work folder; runs go to ``runs/``, each result to
            ``<predictions_dir>/predictions/<output name>.csv``.
        seed: the run seed; the training seeds are :func:`train_seeds` of it (see
            :func:`train_fold` for what each seeds).
        selection_protocol: ``"paper"`` (clinical variables selected on the whole cohort)
            or ``"strict"`` (selected on each training fold), see ``clinical.clinical_matrix``.
        network_overrides: extra :class:`networks.NetworkConfig` fields (``image_units``, ...).
        imagenet: ``"auto"``, ``"none"`` or a weights file (see ``NetworkConfig``).
        verbose: Keras ``fit`` verbosity (0 silent, 2 one line per epoch); one line per
            fold is always printed.
        workers: worker processes for the trainings (:func:`training_workers`; ``None``:
            ``$HCCER_TRAINING_WORKERS`` or one per ``profile.training_threads`` cores). The
            predictions do not depend on it.
        executor: ``"local"`` (this process or local worker processes) or ``"ray"`` (Ray
            tasks, :mod:`hccer_lib.ray_jobs`); ``None``: ``$HCCER_EXECUTOR``, else local.
            The predictions do not depend on it.
        predictions_dir: the folder whose ``predictions/`` receives the result (the run's
            ``StudyRun.results_dir``, one per profile); default ``work_dir``.

    Returns:
        output name -> ``patient_id, slice, fold, y_true, y_prob, train_seed, roi_area_mm2`` (one row per
        slice of the dataset and training seed), in the order of ``models``.
    """
    if not isinstance(models, dict):
        names = list(models)
        if len(set(names)) != len(names):
            raise ValueError(f"a model is named twice in {names}")
        models = {name: name for name in names}
    for model_name in models.values():
        if model_name not in networks.MODEL_NAMES:
            raise ValueError(f"unknown model {model_name!r}; choose one of {networks.MODEL_NAMES}")
    if selection_protocol not in SELECTION_PROTOCOLS:
        raise ValueError(f"selection_protocol must be 'paper' or 'strict', got {selection_protocol!r}")
    check_imagenet(profile, imagenet)
    from hccer_lib import ray_jobs  # Ray itself is imported only when chosen

    on_ray = ray_jobs.executor(executor) == "ray"
    n_workers = training_workers(profile, workers)
    seeds = train_seeds(profile, seed)
    evaluation.fold_of(folds, np.asarray(dataset.patient_id).astype(str))  # every slice's patient has a fold
    fold_numbers = sorted(set(folds["fold"].astype(int)))
    jobs: dict[str, FoldJob] = {}
    saved: dict[str, dict[tuple[int, int], pd.DataFrame | None]] = {}
    for output_name, model_name in models.items():
        run_dir, settings = run_folder(model_name, dataset, clinical, folds, profile, work_dir, seed, selection_protocol,
                                       output_name, network_overrides, imagenet)  # checks the dataset's arrays
        outputs.write_json(run_dir / "settings.json", {**settings, "profile": profile.name})
        print(f"hccer: training {output_name} ({model_name}), {len(fold_numbers)} folds x {len(seeds)} training seeds "
              f"{seeds}, run folder {run_dir}", flush=True)
        jobs[output_name] = FoldJob(model_name, dataset, clinical, folds, profile, run_dir, settings["key"],
                                    selection_protocol, imagenet, network_overrides, verbose, predict_batch_size,
                                    _model_tag(output_name, models))
        saved[output_name] = {(s, f): _saved_fold(run_dir, settings["key"], s, f) for s in seeds for f in fold_numbers}
        for (train_seed, fold), frame in saved[output_name].items():
            if frame is not None:
                print(f"  {_model_tag(output_name, models)}seed {train_seed} fold {fold}: done before, read fold_{fold}.csv "
                      f"(AUC {_patient_level_auc(frame):.3f})", flush=True)
    pending = {name: [pair for pair, frame in saved[name].items() if frame is None] for name in models}
    results: dict[str, pd.DataFrame] = {}

    def finish(output_name: str, trained: dict[tuple[int, int], pd.DataFrame]) -> None:
        saved[output_name].update(trained)
        results[output_name] = _write_model_predictions(output_name, saved[output_name], seeds, fold_numbers, dataset,
                                                        work_dir, predictions_dir)

    if on_ray:
        for name in models:
            finish(name, ray_jobs.run_fold_jobs(jobs[name], pending[name]))
    elif n_workers == 0 or len(models) == 1:
        for name in models:
            finish(name, run_fold_jobs(jobs[name], pending[name], n_workers))
    else:
        run_model_jobs(jobs, pending, n_workers, on_model_done=finish)
    return {name: results[name] for name in models}


def _model_tag(output_name: str, models: dict) -> str:
    """``"<model>: "`` in a fold's progress line when several models train together, else ``""``."""
    return f"{output_name}: " if len(models) > 1 else ""


def slice_areas(dataset) -> pd.DataFrame:
    """``patient_id, slice, roi_area_mm2`` of every image of ``dataset`` (a ``preprocessing.ProcessedDataset``)."""
    return pd.DataFrame({"patient_id": np.asarray(dataset.patient_id).astype(str), "slice": np.asarray(dataset.slice),
                         evaluation.AREA_COLUMN: np.asarray(dataset.roi_area_mm2, dtype=float)})


def _write_model_predictions(output_name: str, saved: dict[tuple[int, int], pd.DataFrame], seeds: list[int],
                             fold_numbers: list[int], dataset, work_dir, predictions_dir) -> pd.DataFrame:
    """Every fold and seed of a model in one predictions file (written whole), with each slice's tumour area
    (``roi_area_mm2``, by which the patient level weights its slices), one line per seed and a summary."""
    frames = []
    areas = slice_areas(dataset)
    for train_seed in seeds:
        frames.extend(saved[train_seed, fold].merge(areas, on=["patient_id", "slice"], how="left", validate="many_to_one")
                      for fold in fold_numbers)
        seed_frame = pd.concat(frames[-len(fold_numbers):], ignore_index=True)
        print(f"  {output_name} training seed {train_seed}: out-of-fold patient AUC {_patient_level_auc(seed_frame):.3f}",
              flush=True)
    predictions = pd.concat(frames, ignore_index=True)[[*evaluation.PREDICTION_COLUMNS, evaluation.SEED_COLUMN,
                                                         evaluation.AREA_COLUMN]]
    evaluation.write_predictions(work_dir if predictions_dir is None else predictions_dir, output_name, predictions)
    per_seed = evaluation.seed_aucs(predictions)
    print(f"hccer: {output_name}: pooled patient AUC {np.mean(list(per_seed.values())):.3f} ± "
          f"{np.std(list(per_seed.values()), ddof=1) if len(per_seed) > 1 else float('nan'):.3f} over {len(per_seed)} "
          f"training seeds; seed ensemble {_patient_level_auc(predictions):.3f}", flush=True)
    return predictions


def _saved_fold(run_dir: Path, key: str, train_seed: int, fold: int) -> pd.DataFrame | None:
    """The saved out-of-fold predictions of (``fold``, ``train_seed``) under ``key``; ``None`` when not done."""
    fold_csv = run_dir / f"seed_{train_seed}" / f"fold_{fold}.csv"
    fold_json = fold_csv.with_suffix(".json")
    if fold_csv.is_file() and fold_json.is_file() and json.loads(fold_json.read_text())["key"] == key:
        return pd.read_csv(fold_csv, dtype={"patient_id": str})
    return None


@dataclass(frozen=True)
class FoldJob:
    """Everything that one (fold, training seed) training reads, but the two numbers.

    The same object is handed to every worker process (:func:`run_model_jobs`), so a job
    trained there gets exactly the inputs it would get in this process.
    """

    model_name: str
    dataset: object
    clinical: pd.DataFrame
    folds: pd.DataFrame
    profile: Profile
    run_dir: Path
    key: str
    selection_protocol: str
    imagenet: str
    network_overrides: dict | None
    verbose: int | str
    predict_batch_size: int
    #: What each of its progress lines starts with: the model's name when several train together.
    tag: str = ""


def train_and_save_fold(job: FoldJob, train_seed: int, fold: int, fold_model: FoldModel) -> tuple[pd.DataFrame, str]:
    """Train (``fold``, ``train_seed``) of ``job``, save its predictions and record; return them and a progress line.

    Written whole or not at all (``outputs.write_csv`` / ``write_json``): the record
    (``fold_<k>.json``) comes last, so a fold counts as done only when both exist.
    """
    start = time.perf_counter()
    model, data = train_fold(job.model_name, job.dataset, job.clinical, job.folds, job.profile, fold, train_seed,
                             job.selection_protocol, job.imagenet, job.network_overrides, job.verbose,
                             fold_model=fold_model)
    test = data.test
    frame = pd.DataFrame({
        "patient_id": data.patient_id[test],
        "slice": data.slice[test],
        "fold": fold,
        "y_true": data.y[test],
        "y_prob": predict_probability(model, data.subset(test), job.predict_batch_size, job.profile.test_symmetries),
        evaluation.SEED_COLUMN: int(train_seed),
    })
    seconds = time.perf_counter() - start
    # weighted by the tumour's area as the tables are; the saved file gets the areas when the model's file is written
    fold_auc = _patient_level_auc(frame.assign(**{evaluation.AREA_COLUMN: data.roi_area_mm2[test]}))
    fold_csv = job.run_dir / f"seed_{train_seed}" / f"fold_{fold}.csv"
    outputs.write_csv(fold_csv, frame)
    history = model.history
    losses = history.history.get("loss", [float("nan")])
    outputs.write_json(fold_csv.with_suffix(".json"), {
        "key": job.key,
        "fold": fold,
        "train_seed": int(train_seed),
        "n_train_slices": int(data.fit.sum()),
        "n_validation_slices": int(data.validation.sum()),
        "n_test_slices": int(test.sum()),
        "clinical_columns": list(data.clinical_names),
        "network": data.config.as_dict(),
        "best_epoch": int(history.best_epoch),
        "final_training_loss": float(losses[-1]),
        "patient_auc": fold_auc,
        "seconds": round(seconds, 1),
    })
    line = (f"  {job.tag}seed {train_seed} fold {fold}: {int((data.train & ~data.validation).sum())} training / "
            f"{int(data.validation.sum())} validation / {int(test.sum())} test slices, epoch kept {history.best_epoch}, "
            f"loss {losses[-1]:.3f}, patient AUC {fold_auc:.3f}, {seconds:.0f} s")
    return frame, line


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the system has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def training_workers(profile: Profile, workers: int | str | None = None) -> int:
    """How many worker processes train a model's folds and seeds; 0: in this process.

    A profile with ``training_threads == 0`` trains in this process with the backend's own
    threading (the ``paper`` profile, on a GPU). Otherwise every training runs in a worker
    process pinned to ``training_threads`` threads, so that the result does not depend on
    the machine's core count nor on how many workers run side by side: ``workers`` (else
    ``$HCCER_TRAINING_WORKERS``, else ``"auto"``: the cores available divided by
    ``training_threads``, at least 1) only changes the time taken.
    """
    if profile.training_threads < 0:
        raise ValueError(f"profile {profile.name!r}: training_threads must be >= 0, got {profile.training_threads}")
    if profile.training_threads == 0:
        return 0
    if workers is None:
        workers = os.environ.get("HCCER_TRAINING_WORKERS", "").strip() or "auto"
    if workers == "auto":
        return max(1, available_cores() // profile.training_threads)
    try:
        count = int(workers)
    except ValueError:
        raise ValueError(f"training workers must be a whole number >= 1 or 'auto', got {workers!r}") from None
    if count < 1:
        raise ValueError(f"training workers must be a whole number >= 1 or 'auto', got {workers!r}")
    return count


def pin_threads(threads: int) -> None:
    """Run this process's Keras backend on ``threads`` CPU threads (before its first computation).

    TensorFlow: its intra- and inter-op thread pools; JAX: XLA's CPU client
    (``XLA_FLAGS``, read when JAX first computes). The number of threads changes the order
    of floating-point sums, hence a network's training: it is part of the settings key
    (``Profile.training_threads``).
    """
    os.environ["OMP_NUM_THREADS"] = str(threads)
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf  # backend-specific on purpose, as fast_cpu_graphs

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    elif keras.backend.backend() == "jax":
        flags = os.environ.get("XLA_FLAGS", "")
        os.environ["XLA_FLAGS"] = (f"{flags} --xla_cpu_multi_thread_eigen={'true' if threads > 1 else 'false'} "
                                   f"intra_op_parallelism_threads={threads}").strip()


_WORKER: dict = {}
#: A worker that has compiled one network joins another model only when at least this many of its
#: trainings wait: compiling a quick network costs about as much as four or five quick trainings.
STEAL_MIN_TRAININGS = 6


def _train_in_worker(job: FoldJob | None, train_seed: int, fold: int) -> tuple[pd.DataFrame, str]:
    """One training in a worker process; ``job``: the model it switches to (``None``: the one it trains)."""
    if job is not None:
        _WORKER.clear()
        _WORKER.update(job=job, fold_model=FoldModel(job.model_name, job.profile.learning_rate, job.profile.weight_decay,
                                                     xla=job.profile.xla))
    return train_and_save_fold(_WORKER["job"], train_seed, fold, _WORKER["fold_model"])


def run_fold_jobs(job: FoldJob, pending: list[tuple[int, int]], workers: int) -> dict[tuple[int, int], pd.DataFrame]:
    """Train every (training seed, fold) of ``pending``; return their predictions by (seed, fold).

    ``workers == 0``: one after another in this process. Otherwise in ``workers`` fresh
    (spawned) processes (:func:`run_model_jobs`). A progress line is printed per fold as it
    finishes.
    """
    if workers == 0:
        done: dict[tuple[int, int], pd.DataFrame] = {}
        fold_model = FoldModel(job.model_name, job.profile.learning_rate, job.profile.weight_decay, xla=job.profile.xla)
        for train_seed, fold in pending:
            done[train_seed, fold], line = train_and_save_fold(job, train_seed, fold, fold_model)
            print(line, flush=True)
        del fold_model
        keras.backend.clear_session()
        return done
    return run_model_jobs({job.model_name: job}, {job.model_name: pending}, workers)[job.model_name]


def next_model(worker: int, worker_models: list[str | None], waiting: dict[str, int]) -> str | None:
    """The model whose next training a free worker takes (:func:`run_model_jobs`); ``None``: it waits.

    Args:
        worker: the free worker's index in ``worker_models``.
        worker_models: the model each worker has compiled (``None``: none yet).
        waiting: model -> trainings not yet started, in the order models are taken.

    The worker's own model while it has trainings waiting; else the first model with
    trainings waiting that no other worker has compiled; else the model with the most
    trainings waiting, if this worker has compiled nothing yet or if at least
    :data:`STEAL_MIN_TRAININGS` of them wait (the ties go to the earlier model).
    """
    own = worker_models[worker]
    if own is not None and waiting.get(own, 0):
        return own
    others = {model for i, model in enumerate(worker_models) if i != worker}
    free = [name for name, n in waiting.items() if n and name not in others]
    if free:
        return free[0]
    left = [name for name, n in waiting.items() if n]
    if not left:
        return None
    busiest = max(left, key=lambda name: waiting[name])
    return busiest if own is None or waiting[busiest] >= STEAL_MIN_TRAININGS else None


def run_model_jobs(jobs: dict[str, FoldJob], pending: dict[str, list[tuple[int, int]]], workers: int,
                   on_model_done=None) -> dict[str, dict[tuple[int, int], pd.DataFrame]]:
    """Train every (training seed, fold) of ``pending[name]`` of every model in ``workers`` worker processes.

    Each worker is a fresh (spawned) process pinned to ``profile.training_threads`` threads
    that reuses its compiled network (:class:`FoldModel`) from one training to the next, so
    the jobs go to the workers model by model: a free worker takes the next training of the
    model it has compiled; when that model has none left, a model no other worker trains
    (in the order of ``jobs``); else it helps with the model that has the most trainings
    left (:func:`next_model`). With one model every worker trains it; with four models and
    two workers each network is compiled about once instead of twice. Which worker trains a
    job never changes its result (each starts from its seed's weights, in a pinned thread
    pool).

    Every finished fold is saved by the process that trained it, so an interrupted set
    resumes where it stopped. A progress line is printed per fold as it finishes, and
    ``on_model_done(name, predictions by (seed, fold))`` is called when a model's last
    training is done. A failing fold stops the set (the trainings already running finish
    and are kept) and raises ``RuntimeError`` naming the model, seed and fold.

    Returns:
        model -> {(training seed, fold): predictions}.
    """
    done: dict[str, dict[tuple[int, int], pd.DataFrame]] = {name: {} for name in jobs}
    queue = {name: list(pending.get(name, [])) for name in jobs}
    total = sum(len(q) for q in queue.values())
    for name in jobs:
        if not queue[name] and on_model_done is not None:
            on_model_done(name, {})
    if not total:
        return done
    threads = next(iter(jobs.values())).profile.training_threads
    count = min(workers, total)
    n_models = sum(bool(q) for q in queue.values())
    print(f"  {total} trainings{f' of {n_models} models' if n_models > 1 else ''} in {count} worker processes of {threads} "
          f"thread(s) each", flush=True)
    start = time.perf_counter()
    lanes = [ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), initializer=pin_threads,
                                 initargs=(threads,)) for _ in range(count)]
    lane_model: list[str | None] = [None] * count
    running: dict = {}

    def dispatch(lane: int) -> None:
        name = next_model(lane, lane_model, {name: len(q) for name, q in queue.items()})
        if name is None:
            return
        train_seed, fold = queue[name].pop(0)
        switch = jobs[name] if lane_model[lane] != name else None
        lane_model[lane] = name
        running[lanes[lane].submit(_train_in_worker, switch, train_seed, fold)] = (lane, name, train_seed, fold)

    try:
        for lane in range(count):
            dispatch(lane)
        finished_count = 0
        while running:
            finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for future in finished:
                lane, name, train_seed, fold = running.pop(future)
                try:
                    done[name][train_seed, fold], line = future.result()
                except Exception as error:
                    raise RuntimeError(f"{jobs[name].model_name}: training seed {train_seed} fold {fold} failed in a "
                                       f"worker process: {type(error).__name__}: {error}") from error
                finished_count += 1
                print(f"{line} [{finished_count}/{total}, {time.perf_counter() - start:.0f} s]", flush=True)
                dispatch(lane)
                if on_model_done is not None and not queue[name] and not any(r[1] == name for r in running.values()):
                    on_model_done(name, done[name])
    finally:
        for executor in lanes:
            executor.shutdown(wait=True, cancel_futures=True)
    return done


def _fold_model_for(arguments: tuple, xla: bool | None) -> FoldModel | None:
    """The network of one request of :func:`train_folds_isolated` compiled with ``xla``; ``None``: the profile's."""
    profile = arguments[4]
    return None if xla is None else FoldModel(arguments[0], profile.learning_rate, profile.weight_decay, xla=xla)


def _training_place(arguments: tuple) -> str:
    """``"every patient"`` or ``"fold <k>"``: what one request of :func:`train_folds_isolated` trains on."""
    return "every patient" if arguments[5] is None else f"fold {arguments[5]}"


def _train_fold_to_file(arguments: tuple, path: str, xla: bool | None = None, verbose: int | str = 0) -> FoldData:
    model, data = train_fold(*arguments, verbose=verbose, fold_model=_fold_model_for(arguments, xla))
    model.save(path)
    return data


def train_folds_isolated(requests: list[tuple], profile: Profile, xla: bool | None = None,
                         workers: int | str | None = None, verbose: int | str = 0) -> list[tuple[keras.Model, FoldData]]:
    """:func:`train_fold` for each of ``requests``, where :func:`run_fold_jobs` would train them.

    Each request holds :func:`train_fold`'s arguments ``(model_name, dataset, clinical, folds,
    profile, fold, seed, selection_protocol, imagenet, network_overrides)``. With
    ``profile.training_threads > 0`` every network is trained in a fresh worker process pinned
    to those threads (as every fold of the cross-validation was), up to
    :func:`training_workers` side by side, saved there and loaded here; with 0, one after the
    other in this process. ``xla``: compile the training step with XLA or not (``None``: the
    profile's ``xla``); a network trained once compiles once, which can cost more than it saves.
    ``verbose``: :func:`train_fold`'s. A line is printed as each network is ready.
    Returns the networks and their data in the order of ``requests``.
    """
    start = time.perf_counter()

    def done_line(request: tuple, data: FoldData, i: int) -> str:
        return (f"  {request[0]}, seed {request[6]}, {_training_place(request)}: "
                f"{int((data.train & ~data.validation).sum())} training slices "
                f"[{i}/{len(requests)}, {time.perf_counter() - start:.0f} s]")

    if profile.training_threads == 0:
        trained = []
        for i, request in enumerate(requests, 1):
            trained.append(train_fold(*request, verbose=verbose, fold_model=_fold_model_for(request, xla)))
            print(done_line(request, trained[-1][1], i), flush=True)
        return trained
    import tempfile

    count = max(1, min(training_workers(profile, workers), len(requests)))
    with tempfile.TemporaryDirectory(prefix="hccer_fold_") as folder:
        paths = [str(Path(folder) / f"network_{i}.keras") for i in range(len(requests))]
        with ProcessPoolExecutor(count, mp_context=multiprocessing.get_context("spawn"), initializer=pin_threads,
                                 initargs=(profile.training_threads,)) as pool:
            futures = [pool.submit(_train_fold_to_file, request, path, xla, verbose)
                       for request, path in zip(requests, paths, strict=True)]
            trained = []
            for i, (request, path, future) in enumerate(zip(requests, paths, futures, strict=True), 1):
                try:
                    data = future.result()
                except Exception as error:
                    raise RuntimeError(f"{request[0]}: training on {_training_place(request)} "
                                       f"(seed {request[6]}) failed in a worker process: {type(error).__name__}: {error}") from error
                trained.append((keras.models.load_model(path, compile=False), data))
                print(done_line(request, data, i), flush=True)
    return trained


def train_fold_isolated(model_name: str, dataset, clinical: pd.DataFrame, folds: pd.DataFrame, profile: Profile,
                        fold: int | None, seed: int = 2020, selection_protocol: str = DEFAULT_SETTINGS.selection_protocol, imagenet: str = "auto",
                        network_overrides: dict | None = None) -> tuple[keras.Model, FoldData]:
    """:func:`train_fold` where :func:`run_fold_jobs` would train it: the same network as the stored fold.

    With ``profile.training_threads > 0`` the fold is trained in a fresh worker process
    pinned to those threads (as every fold of the cross-validation was), saved there and
    loaded here, so that predicting the fold's test slices gives its stored out-of-fold
    predictions again; with 0, in this process (as the cross-validation did).
    """
    arguments = (model_name, dataset, clinical, folds, profile, fold, seed, selection_protocol, imagenet, network_overrides)
    return train_folds_isolated([arguments], profile)[0]
