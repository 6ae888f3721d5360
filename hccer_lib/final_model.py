"""The final models: refit on the whole cohort, saved without pickles, predicting a new patient.

After cross-validation has measured how well each model generalises, each one is refit on
every patient of the cohort (:func:`refit_final_model`) with the run's profile and seed,
and saved in one folder (:meth:`FinalModel.save`) that holds everything it needs to
predict and no pickled Python object:

    <model folder>/
        manifest.json                 what the folder holds: versions, settings, files and their sha256,
                                      and manifest_sha256, the digest of its own content
        self_check.npz                seeded random inputs and the probabilities every model gave them,
                                      and the probabilities of the self-check patients
        self_check_cohort/            a tiny generated cohort (no patient's data: clinical.csv,
                                      roi_boxes.csv, images/<id>/<phase>.nii.gz), predicted end to end
        clinical_rf/forest.npz        the random forest as tree arrays (numpy, allow_pickle=False)
        clinical_rf/model.json        the clinical bits it reads, its settings
        radiomics_rf/forest.npz       the pipeline's final forest as tree arrays
        radiomics_rf/pipeline.json    imputer medians, scaler mean and scale, LASSO-selected features
        <network>/model.keras         Keras' own format (deep_resnet50, fusion_a ... fusion_d_joint)
        <network>/model.json          its NetworkConfig, clinical bits, training settings

Random forests are stored as the arrays of their trees (``children_left``,
``children_right``, ``feature``, ``threshold``, ``value``, ``missing_go_to_left``, per
tree) and predicted by :func:`forest_predict_proba`, a numpy tree walker that gives
scikit-learn's ``predict_proba`` to the last bit (float32 inputs, the same comparisons,
the same order of summation). Networks are read with
``keras.saving.load_model(..., safe_mode=True)``.

:func:`load_final_model` refuses, with one line naming the folder and the file, any
folder that it cannot trust to predict as it did when saved: another folder format,
hccer version, Keras major version or PyRadiomics version, a manifest whose content no
longer matches its ``manifest_sha256`` (every setting a prediction depends on, the
synthetic flag and the note), a missing or changed file (sha256), a network whose
architecture differs from its recorded settings (image size, clinical vector length,
layers and weight shapes), any model that does not reproduce its saved self-check
probabilities, and finally a folder whose self-check patients, read from their raw files
and predicted end to end, do not get the probabilities saved for them. A save that is
interrupted leaves a hidden ``.<folder>.tmp-*`` sibling, removed by the next save
(:func:`clean_stale_saves`).

A new patient is a folder (:func:`read_patient_folder`)::

    <patient>/clinical.csv            one row: patient_id, the 17 clinical columns of a cohort;
                                      early_recurrence may be absent or empty (unknown)
    <patient>/NC.nii.gz, ART.nii.gz, PV.nii.gz           phase volumes in HU
    <patient>/NC_roi.nii.gz, ART_roi.nii.gz, PV_roi.nii.gz   tumour labels, and/or
    <patient>/roi_boxes.csv           phase, slice, x_min, x_max, y_min, y_max (patient_id optional)

which is checked by the cohort loaders of :mod:`hccer_lib.cohort` (the same one-line
messages naming the patient and the file, here relative to the patient folder). Every
patient of a cohort folder is predicted by :func:`predict_cohort`.

The clinical table of a new patient or cohort is read as the training cohort's was:
``manifest["clinical"]["dictionary"]`` holds the training cohort's data dictionary (its
``data_dictionary.yaml`` as a mapping; None: the paper's), and a folder without its own
``data_dictionary.yaml`` is read with it (its table: the dictionary's ``table`` when the folder
has it, else ``clinical.csv`` / ``clinical.xlsx``). A folder with its own dictionary is read
with that one, which must define every variable the model reads as the model's does (units
may differ: they are converted). The outcome may be absent or empty (unknown); a patient a
time-to-event outcome would exclude (censored before the horizon) is predicted, with an
unknown label. ``manifest["clinical"]["imputation"]`` holds the rule fitted on the whole
training cohort (``clinical.fit_imputation``): a missing value of a selected variable becomes
its ``modes`` level, and each variable of ``indicators`` has its bit ``"<variable> missing"``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from hccer_lib import __version__, outputs
from hccer_lib.cohort import CohortError

logger = logging.getLogger("hccer")

FORMAT_NAME = "hccer-final-model"
#: Raise when the folder layout or the meaning of a stored field changes.
#: 2: manifest_sha256 covers the manifest's settings; self_check_cohort/ is predicted end to end.
#: 3: the cohort's data dictionary and the clinical imputation (modes, indicator bits) are saved.
FORMAT_VERSION = 3
MANIFEST_FILE = "manifest.json"
SELF_CHECK_FILE = "self_check.npz"
#: The manifest's own digest: sha256 of its canonical JSON without this key (:func:`manifest_digest`).
DIGEST_KEY = "manifest_sha256"
#: A tiny generated cohort (no patient's data) that every load predicts end to end, raw images to probabilities.
SELF_CHECK_COHORT = "self_check_cohort"
N_SELF_CHECK_PATIENTS = 4
#: The self-check patients' phase volumes: voxels (x, y, z), spacing in mm (x, y, z), and HU of
#: background tissue and of the tumour per phase (NC, ART, PV: arterial enhancement, portal washout).
SELF_CHECK_VOLUME = (40, 40, 6)
SELF_CHECK_SPACING_MM = (0.8, 0.8, 2.5)
SELF_CHECK_TISSUE_HU = (55.0, 70.0, 110.0)
SELF_CHECK_TUMOUR_HU = (40.0, 160.0, 80.0)
SELF_CHECK_NOISE_HU = 12.0
#: Hidden siblings that a save leaves while it runs: ``.<folder>.tmp-<pid>-<hex>`` and ``.<folder>.old-<pid>-<hex>``.
SAVE_TEMP_PREFIXES = ("tmp", "old")
FOREST_MODELS = ("clinical_rf", "radiomics_rf")
NETWORK_MODELS = ("deep_resnet50", "fusion_a", "fusion_b", "fusion_c", "fusion_d", "fusion_d_joint")
MODEL_NAMES = FOREST_MODELS + NETWORK_MODELS
#: The model whose probability is "the" prediction: the first of these in the folder.
PRIMARY_ORDER = ("fusion_d_joint", "fusion_d", "fusion_c", "fusion_b", "fusion_a", "deep_resnet50", "clinical_rf", "radiomics_rf")
PATHWAY_HEADS = ("image", "clinical")
LABEL_COLUMN = "early_recurrence"
#: How closely a loaded model must reproduce its self-check probabilities. Forests are
#: exact arithmetic on stored arrays; networks may run on another backend or CPU/GPU.
FOREST_CHECK_TOLERANCE = 1e-12
NETWORK_CHECK_TOLERANCE = 1e-4
N_SELF_CHECK = 4
FOREST_ARRAYS = ("children_left", "children_right", "feature", "threshold", "value", "missing_go_to_left", "tree_offsets", "classes")
RESEARCH_NOTE = "Research software: not validated for clinical use."
SYNTHETIC_MODEL_NOTE = (
    "SYNTHETIC: this model was fitted on the generated stand-in cohort, not on patients; "
    "its probabilities say nothing about a real patient."
)
#: Smallest side (pixels) of the feature map that :func:`gradcam_figure` explains by default.
GRADCAM_MIN_SIDE = 4


class ModelFolderError(ValueError):
    """A model folder that cannot be used: ``model folder F, file X: problem``."""

    def __init__(self, problem: str, folder: str | os.PathLike | None = None, file: str | None = None):
        self.problem, self.folder, self.file = problem, None if folder is None else str(folder), file
        super().__init__(str(self))

    def __str__(self) -> str:
        where = [f"model folder {self.folder}"] if self.folder else []
        where += [f"file {self.file}"] if self.file else []
        return f"{', '.join(where)}: {self.problem}" if where else self.problem

    def __reduce__(self):
        return (type(self), (self.problem, self.folder, self.file))


# %% Random forests as arrays -----------------------------------------------------------------


def forest_arrays(forest) -> dict[str, np.ndarray]:
    """A fitted ``RandomForestClassifier`` as plain arrays (the trees one after another).

    Returns:
        ``children_left``, ``children_right``, ``feature`` (int64 ``[n_nodes]``; ``-1``
        children mark a leaf), ``threshold`` (float64 ``[n_nodes]``), ``value`` (float64
        ``[n_nodes, n_classes]``: the class fractions of each node), ``missing_go_to_left``
        (uint8 ``[n_nodes]``), ``tree_offsets`` (int64 ``[n_trees + 1]``: tree ``t`` holds
        nodes ``tree_offsets[t]:tree_offsets[t + 1]``), ``classes`` (int64) and
        ``n_features`` (int64 scalar).
    """
    if getattr(forest, "n_outputs_", 1) != 1:
        raise ValueError(f"only single-output forests can be exported, got {forest.n_outputs_} outputs")
    classes = np.asarray(forest.classes_)
    if classes.dtype.kind not in "iub":
        raise ValueError(f"class labels must be integers to be stored without pickles, got {classes.dtype}")
    trees = [estimator.tree_ for estimator in forest.estimators_]
    n_classes = len(classes)
    return {
        "children_left": np.concatenate([t.children_left for t in trees]).astype(np.int64),
        "children_right": np.concatenate([t.children_right for t in trees]).astype(np.int64),
        "feature": np.concatenate([t.feature for t in trees]).astype(np.int64),
        "threshold": np.concatenate([t.threshold for t in trees]).astype(np.float64),
        "value": np.concatenate([t.value[:, 0, :n_classes] for t in trees]).astype(np.float64),
        "missing_go_to_left": np.concatenate([t.missing_go_to_left for t in trees]).astype(np.uint8),
        "tree_offsets": np.cumsum([0] + [t.node_count for t in trees]).astype(np.int64),
        "classes": classes.astype(np.int64),
        "n_features": np.int64(forest.n_features_in_),
    }


def forest_predict_proba(arrays: dict[str, np.ndarray], X) -> np.ndarray:
    """Class probabilities ``[n, n_classes]`` of a forest stored by :func:`forest_arrays`.

    The same computation as scikit-learn's ``RandomForestClassifier.predict_proba`` (one
    job): inputs cast to float32, ``x <= threshold`` goes left, a missing value goes where
    ``missing_go_to_left`` says, each tree's leaf fractions summed in tree order and
    divided by the number of trees.

    Args:
        X: ``[n, n_features]`` numbers.
    """
    X = np.asarray(X, dtype=np.float32)
    n_features = int(arrays["n_features"])
    if X.ndim != 2 or X.shape[1] != n_features:
        raise ValueError(f"the forest reads [n, {n_features}] inputs, got shape {X.shape}")
    left, right, feature = arrays["children_left"], arrays["children_right"], arrays["feature"]
    threshold, value, missing_left = arrays["threshold"], arrays["value"], arrays["missing_go_to_left"]
    offsets = arrays["tree_offsets"]
    total = np.zeros((X.shape[0], value.shape[1]), dtype=np.float64)
    rows = np.arange(X.shape[0])
    for begin in offsets[:-1]:
        node = np.full(X.shape[0], begin, dtype=np.int64)  # global node index
        active = left[node] != -1
        while active.any():
            at = node[active]
            x = X[rows[active], feature[at]]
            go_left = np.where(np.isnan(x), missing_left[at] == 1, x <= threshold[at])
            node[active] = begin + np.where(go_left, left[at], right[at])
            active = left[node] != -1
        total += value[node]
    total /= len(offsets) - 1
    return total


def check_forest_arrays(arrays: dict[str, np.ndarray], n_features: int | None = None) -> None:
    """``ValueError`` unless ``arrays`` is a consistent binary forest (for a folder that may be damaged)."""
    missing = [name for name in (*FOREST_ARRAYS, "n_features") if name not in arrays]
    if missing:
        raise ValueError(f"forest arrays lack {', '.join(missing)}")
    offsets = arrays["tree_offsets"]
    n_nodes = len(arrays["children_left"])
    if offsets.ndim != 1 or len(offsets) < 2 or offsets[0] != 0 or offsets[-1] != n_nodes or np.any(np.diff(offsets) < 1):
        raise ValueError(f"tree_offsets {offsets[:3]}... do not split {n_nodes} nodes into trees")
    for name in ("children_right", "feature", "threshold", "missing_go_to_left"):
        if arrays[name].shape != (n_nodes,):
            raise ValueError(f"{name} has shape {arrays[name].shape}, expected ({n_nodes},)")
    if arrays["value"].shape != (n_nodes, len(arrays["classes"])):
        raise ValueError(f"value has shape {arrays['value'].shape}, expected ({n_nodes}, {len(arrays['classes'])})")
    if list(arrays["classes"]) != [0, 1]:
        raise ValueError(f"classes are {list(arrays['classes'])}, expected [0, 1]")
    stored = int(arrays["n_features"])
    if n_features is not None and stored != n_features:
        raise ValueError(f"the forest reads {stored} features but the model's inputs have {n_features}")
    sizes = np.repeat(np.diff(offsets), np.diff(offsets))
    local_left, local_right = arrays["children_left"], arrays["children_right"]
    leaf = local_left == -1
    internal = ~leaf
    if np.any(leaf != (local_right == -1)) or np.any(
        internal & ((local_left < 1) | (local_left >= sizes) | (local_right < 1) | (local_right >= sizes))
    ):
        raise ValueError("children indices outside their tree")
    if np.any(internal & ((arrays["feature"] < 0) | (arrays["feature"] >= stored))):
        raise ValueError(f"split features outside 0..{stored - 1}")


def save_arrays(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    """``np.savez_compressed`` of plain numeric arrays (no object arrays), atomically."""
    with outputs.atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez_compressed(handle, **{name: np.asarray(value) for name, value in arrays.items()})
    return path


def load_arrays(path: Path) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` file, read with ``allow_pickle=False``."""
    with np.load(path, allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


# %% The radiomics pipeline as numbers --------------------------------------------------------


def radiomics_spec(pipeline, feature_columns: list[str]) -> dict:
    """What the fitted radiomics pipeline (impute → scale → LASSO → forest) does before its forest.

    Returns a JSON-able dict: ``feature_columns`` (every input column, in order),
    ``impute_median``, ``scale_mean``, ``scale_scale`` (one number per column; a column
    that was empty when fitted is imputed with 0, as ``SimpleImputer(keep_empty_features=True)``
    does), ``selected`` (the columns the LASSO kept, in order), ``lasso_C``, ``lasso_fallback``.
    """
    impute, scale, lasso = (pipeline.named_steps[k] for k in ("impute", "scale", "lasso"))
    medians = np.where(np.isnan(impute.statistics_), 0.0, impute.statistics_)
    support = np.asarray(lasso.support_, dtype=bool)
    if len(feature_columns) != len(support):
        raise ValueError(f"{len(feature_columns)} column names for a pipeline fitted on {len(support)} features")
    return {
        "feature_columns": list(feature_columns),
        "impute_median": [float(v) for v in medians],
        "scale_mean": [float(v) for v in scale.mean_],
        "scale_scale": [float(v) for v in scale.scale_],
        "selected": [c for c, keep in zip(feature_columns, support, strict=True) if keep],
        "lasso_C": float(lasso.C_),
        "lasso_fallback": bool(lasso.fallback_),
    }


def radiomics_transform(spec: dict, X) -> np.ndarray:
    """The pipeline's imputation, scaling and LASSO selection: ``[n, n_columns]`` → ``[n, n_selected]``."""
    X = np.array(X, dtype=np.float64)
    columns = spec["feature_columns"]
    if X.ndim != 2 or X.shape[1] != len(columns):
        raise ValueError(f"radiomics rows must be [n, {len(columns)}], got shape {X.shape}")
    medians = np.asarray(spec["impute_median"], dtype=np.float64)
    missing = np.isnan(X)
    X[missing] = np.broadcast_to(medians, X.shape)[missing]
    X -= np.asarray(spec["scale_mean"], dtype=np.float64)
    X /= np.asarray(spec["scale_scale"], dtype=np.float64)
    index = {c: i for i, c in enumerate(columns)}
    return X[:, [index[c] for c in spec["selected"]]]


# %% The final model --------------------------------------------------------------------------


def output_names(model_name: str) -> list[str]:
    """The probabilities a model gives: its name (the fused head), plus ``<name>_image_head`` and
    ``<name>_clinical_head`` for a joint-loss model."""
    if model_name.endswith("_joint"):
        return [model_name] + [f"{model_name}_{head}_head" for head in PATHWAY_HEADS]
    return [model_name]


@dataclass
class PatientInputs:
    """One patient read from a patient folder or a cohort folder.

    Attributes:
        patient_id: from ``clinical.csv``.
        clinical: the validated one-row raw clinical frame.
        y_true: the known label (0/1), or ``None`` when ``early_recurrence`` was empty.
        images: phase → float32 SimpleITK image (HU).
        boxes: phase → ``cohort.SliceBox`` list.
    """

    patient_id: str
    clinical: pd.DataFrame
    y_true: int | None
    images: dict
    boxes: dict


@dataclass
class PatientPrediction:
    """The prediction for one patient.

    Attributes:
        probabilities: output name (:func:`output_names`) → patient-level probability of
            early recurrence (the mean over the patient's slices for slice-level models).
        slices: one row per matched tumour slice: ``patient_id``, ``slice``, ``z_mm`` and
            the slice-level probability of each image model.
        images: the processed slices ``[n, H, W, 3]`` (NC, ART, PV in ``[0, 1]``).
        clinical_bits: the patient's clinical vector ``[1, k]``.
    """

    patient_id: str
    y_true: int | None
    probabilities: dict
    slices: pd.DataFrame
    images: np.ndarray
    clinical_bits: np.ndarray


@dataclass
class FinalModel:
    """Every refit model of a study and what it needs to predict a new patient.

    Attributes:
        manifest: settings and provenance (see :meth:`save`); ``manifest["models"]``
            lists the models, ``manifest["clinical"]["bit_names"]`` the clinical vector,
            ``manifest["preprocessing"]["settings"]`` the image preprocessing.
        networks: model name → ``keras.Model`` (inference only).
        forests: model name → forest arrays (:func:`forest_arrays`).
        radiomics: the radiomics pipeline's spec (:func:`radiomics_spec`), or ``None``.
        folder: where it was loaded from, if it was.
    """

    manifest: dict
    networks: dict = field(default_factory=dict)
    forests: dict = field(default_factory=dict)
    radiomics: dict | None = None
    folder: Path | None = None

    @property
    def model_names(self) -> list[str]:
        return [m for m in MODEL_NAMES if m in self.manifest["models"]]

    @property
    def primary_model(self) -> str:
        return self.manifest["primary_model"]

    @property
    def output_names(self) -> list[str]:
        return [name for model in self.model_names for name in output_names(model)]

    @property
    def bit_names(self) -> list[str]:
        return list(self.manifest["clinical"]["bit_names"])

    def preprocess_settings(self):
        from hccer_lib.preprocessing import PreprocessSettings

        return PreprocessSettings(**self.manifest["preprocessing"]["settings"])

    def describe(self) -> str:
        """One line: the cohort, profile and models of this folder."""
        m = self.manifest
        cohort = m["cohort"]
        synthetic = "SYNTHETIC cohort" if cohort.get("synthetic") else "cohort"
        return (
            f"{synthetic} {cohort['name']!r} ({cohort['n_patients']} patients), profile {m['profile']['name']}, "
            f"seed {m['seed']}, hccer {m['hccer_version']}; models: {', '.join(self.model_names)}"
        )

    # -- inputs -------------------------------------------------------------------------------

    @property
    def dictionary_spec(self) -> dict | None:
        """The training cohort's data dictionary (a mapping), or None for the paper's."""
        return self.manifest["clinical"].get("dictionary")

    def clinical_bits(self, clinical: pd.DataFrame) -> np.ndarray:
        """The clinical vector ``[n, k]`` of raw clinical rows, encoded and imputed as at fitting time."""
        from hccer_lib.clinical import apply_imputation, binarise

        imputation = self.manifest["clinical"]["imputation"]
        bits, names = apply_imputation(binarise(clinical), self.manifest["clinical"]["variables"], imputation["modes"],
                                       imputation["indicators"])  # fmt: skip
        if names != self.bit_names:
            raise ValueError(f"the clinical encoding gives {names}, the model was fitted on {self.bit_names}")
        return bits

    # -- arrays -> probabilities --------------------------------------------------------------

    def predict_arrays(self, image=None, clinical=None, clinical_rows=None, radiomics_rows=None) -> dict[str, np.ndarray]:
        """Probabilities of every model from prepared arrays.

        Args:
            image: ``[n, H, W, 3]`` processed slices, with ``clinical`` ``[n, k]`` their
                patients' clinical vectors: for the networks.
            clinical_rows: ``[m, k]`` clinical vectors: for ``clinical_rf``.
            radiomics_rows: ``[r, n_columns]`` feature rows (``radiomics["feature_columns"]``):
                for ``radiomics_rf``.
        Returns:
            output name → ``[rows]`` probabilities of early recurrence, for the models
            whose inputs were given.
        """
        result = {}
        if "clinical_rf" in self.forests and clinical_rows is not None:
            result["clinical_rf"] = forest_predict_proba(self.forests["clinical_rf"], clinical_rows)[:, 1]
        if "radiomics_rf" in self.forests and radiomics_rows is not None:
            selected = radiomics_transform(self.radiomics, radiomics_rows)
            result["radiomics_rf"] = forest_predict_proba(self.forests["radiomics_rf"], selected)[:, 1]
        if image is not None:
            for name, model in self.networks.items():
                inputs = {"image": np.asarray(image, dtype=np.float32)}
                if name != "deep_resnet50":
                    inputs["clinical"] = np.asarray(clinical, dtype=np.float32)
                result.update(network_probabilities(model, inputs, name))
        return result

    # -- one patient ----------------------------------------------------------------------------

    def predict_patient(self, patient: PatientInputs) -> PatientPrediction:
        """Preprocess one patient as at fitting time and predict with every model.

        Raises:
            CohortError: no tumour slice could be matched across the three phases.
        """
        from hccer_lib.preprocessing import process_patient

        bits = self.clinical_bits(patient.clinical)  # [1, k]
        processed = process_patient(patient.images, patient.boxes, self.preprocess_settings())
        n = len(processed["slice"])
        if n == 0 and (self.networks or self.manifest.get("radiomics", {}).get("mode") == "2d"):
            raise CohortError("no tumour slice of the reference phase has a matching ROI slice in the other phases", patient.patient_id)
        slices = pd.DataFrame({"patient_id": patient.patient_id, "slice": processed["slice"], "z_mm": processed["z_mm"]})
        per_slice = self.predict_arrays(image=processed["images"], clinical=np.repeat(bits, n, axis=0)) if self.networks else {}
        for name, values in per_slice.items():
            slices[name] = values
        probabilities = {name: float(np.mean(values)) for name, values in per_slice.items()}
        if "clinical_rf" in self.forests:
            probabilities.update({k: float(v[0]) for k, v in self.predict_arrays(clinical_rows=bits).items()})
        if "radiomics_rf" in self.forests:
            rows = self.radiomics_rows(patient)
            values = self.predict_arrays(radiomics_rows=rows[self.radiomics["feature_columns"]].to_numpy(dtype=float))["radiomics_rf"]
            probabilities["radiomics_rf"] = float(np.mean(values))
            if self.manifest["radiomics"]["mode"] == "2d":
                slices = slices.merge(pd.DataFrame({"slice": rows["slice"].astype(int), "radiomics_rf": values}), on="slice", how="left")
        ordered = {name: probabilities[name] for name in self.output_names if name in probabilities}
        return PatientPrediction(patient.patient_id, patient.y_true, ordered, slices, processed["images"], bits)

    def radiomics_rows(self, patient: PatientInputs) -> pd.DataFrame:
        """The patient's PyRadiomics feature rows, extracted with the fitted settings."""
        from hccer_lib.radiomics_baseline import extract_patient

        settings = self.manifest["radiomics"]
        rows, _ = extract_patient(
            patient.images, patient.boxes, settings["params"], settings["mode"], settings["reference_phase"],
            settings["tolerance_mm"], settings["min_texture_voxels"],
        )  # fmt: skip
        frame = pd.DataFrame.from_records(rows)
        if frame.empty:
            raise CohortError("radiomics extraction gave no row (no matched tumour slice)", patient.patient_id)
        # A feature PyRadiomics could not compute (an ROI too small or failed, whose rows then lack
        # its columns) is NaN, as in the study's folds: the fitted imputer fills it (small-ROI rule).
        return frame.reindex(columns=[*frame.columns, *(c for c in self.radiomics["feature_columns"] if c not in frame.columns)])

    # -- saving ---------------------------------------------------------------------------------

    def save(self, folder: str | os.PathLike, overwrite: bool = True) -> Path:
        """Write the model folder (module docstring) whole: into a temporary sibling, then swapped in.

        ``manifest.json`` fields: ``format``, ``format_version``, ``hccer_version``,
        ``versions`` (python, numpy, scikit-learn, keras, keras_backend, pyradiomics),
        ``cohort`` (name, synthetic, patient and slice counts), ``profile`` (every field),
        ``seed``, ``selection_protocol``, ``clinical`` (alpha, variables, bit_names),
        ``preprocessing`` (settings, format_version), ``radiomics`` (PyRadiomics params,
        mode, reference phase, tolerance, small-ROI rule, versions; with ``radiomics_rf``),
        ``primary_model``, ``models`` (per model: kind, inputs, outputs, files), ``files``
        (relative path → sha256 of every other file), ``self_check`` and ``note``.
        """
        folder = Path(folder)
        if not self.manifest["models"]:
            raise ValueError("no model to save: add one first (add_clinical_rf, add_radiomics_rf, add_network)")
        if folder.exists() and any(folder.iterdir()) and not overwrite:
            raise FileExistsError(f"{folder} exists and is not empty")
        folder.parent.mkdir(parents=True, exist_ok=True)
        clean_stale_saves(folder)
        tmp = _save_temp_path(folder, "tmp")
        tmp.mkdir()
        try:
            manifest = json.loads(json.dumps(self.manifest, default=str))
            for name, arrays in self.forests.items():
                save_arrays(tmp / name / "forest.npz", arrays)
            if self.radiomics is not None:
                outputs.write_json(tmp / "radiomics_rf" / "pipeline.json", self.radiomics)
            for name, model in self.networks.items():
                path = tmp / name / "model.keras"
                path.parent.mkdir(parents=True, exist_ok=True)
                with outputs.atomic_path(path) as target:
                    model.save(target)
            for name, entry in manifest["models"].items():
                outputs.write_json(tmp / name / "model.json", {"model": name, **entry.get("details", {})})
            check = self.self_check_arrays()
            check.update(self.self_check_patients(write_self_check_cohort(tmp / SELF_CHECK_COHORT,
                                                                          dictionary_spec=self.dictionary_spec)))
            save_arrays(tmp / SELF_CHECK_FILE, check)
            manifest["files"] = {
                p.relative_to(tmp).as_posix(): _sha256(p) for p in sorted(tmp.rglob("*")) if p.is_file()
            }
            manifest[DIGEST_KEY] = manifest_digest(manifest)
            outputs.write_json(tmp / MANIFEST_FILE, manifest)
            _swap_into_place(tmp, folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.folder = folder
        return folder

    def self_check_arrays(self, seed: int = 0) -> dict[str, np.ndarray]:
        """Seeded random inputs (no patient data) and every model's probabilities for them."""
        rng = np.random.default_rng(seed)
        size = int(self.manifest["preprocessing"]["settings"]["image_size"])
        k = len(self.bit_names)
        arrays = {
            "image": rng.random((N_SELF_CHECK, size, size, 3), dtype=np.float32),
            "clinical": rng.integers(0, 2, (N_SELF_CHECK, k)).astype(np.float32),
        }
        if self.radiomics is not None:
            mean, scale = np.asarray(self.radiomics["scale_mean"]), np.asarray(self.radiomics["scale_scale"])
            rows = mean + scale * rng.standard_normal((N_SELF_CHECK, len(mean)))
            rows[0, :: max(1, len(mean) // 3)] = np.nan  # exercises the imputation
            arrays["radiomics"] = rows
        probabilities = self.predict_arrays(
            image=arrays["image"], clinical=arrays["clinical"], clinical_rows=arrays["clinical"],
            radiomics_rows=arrays.get("radiomics"),
        )  # fmt: skip
        return {**arrays, **{f"expected:{name}": values for name, values in probabilities.items()}}

    def self_check_patients(self, cohort_dir: str | os.PathLike) -> dict[str, np.ndarray]:
        """Every output's probabilities ``[N_SELF_CHECK_PATIENTS]`` for the patients of
        :func:`write_self_check_cohort`, predicted end to end (as ``patients:<output name>``)."""
        patients, _ = predict_cohort(self, cohort_dir, progress=False)
        return {f"patients:{name}": patients[name].to_numpy(dtype=np.float64) for name in self.output_names}


def network_probabilities(model, inputs: dict, model_name: str, batch_size: int = 32) -> dict[str, np.ndarray]:
    """Probability of early recurrence ``[n]`` of each head of a network (:func:`output_names`).

    The model is called eagerly (``training=False``), batch by batch: a few slices of a
    patient are not worth tracing a prediction graph for.
    """
    import keras

    names = [tensor.name for tensor in model.inputs]
    n = len(inputs["image"])
    heads: dict[str, list] = {}
    for begin in range(0, n, batch_size):
        out = model({name: inputs[name][begin : begin + batch_size] for name in names}, training=False)
        out = out if isinstance(out, dict) else {"fused": out}
        for head, values in out.items():
            heads.setdefault(head, []).append(keras.ops.convert_to_numpy(values).astype(np.float64)[:, 1])
    result = {}
    for head, parts in heads.items():
        key = model_name if head == "fused" else f"{model_name}_{head}_head"
        result[key] = np.concatenate(parts) if parts else np.zeros(0)
    return {name: result[name] for name in output_names(model_name)}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def manifest_digest(manifest: dict) -> str:
    """sha256 of the manifest's canonical JSON (sorted keys), leaving out :data:`DIGEST_KEY` itself.

    It covers every setting a prediction depends on (preprocessing, clinical variables and
    their order, radiomics parameters, network settings), the synthetic flag and the note.
    """
    content = {key: value for key, value in manifest.items() if key != DIGEST_KEY}
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def _save_temp_path(folder: Path, kind: str) -> Path:
    """``.<folder>.<kind>-<pid>-<hex>`` beside ``folder``: the pid tells a stale one from a live save."""
    return folder.parent / f".{folder.name}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (signal 0 checks without signalling)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def clean_stale_saves(folder: str | os.PathLike) -> list[Path]:
    """Remove what interrupted saves of ``folder`` left beside it; returns what was removed.

    A save that was killed (power cut, SIGKILL, a full disk) can leave a hidden
    ``.<folder>.tmp-*`` folder holding a half-written model (hundreds of MB at the paper
    profile) or, killed while swapping, ``.<folder>.old-*`` holding the previous model. One
    whose process is still running (same machine) is left alone. A stale ``.old-*`` is the
    last complete model when ``folder`` itself is missing: it is put back, not removed.
    """
    folder = Path(folder)
    removed = []
    pattern = re.compile(rf"^\.{re.escape(folder.name)}\.({'|'.join(SAVE_TEMP_PREFIXES)})-(?:(\d+)-)?[0-9a-f]+$")
    siblings = sorted(folder.parent.iterdir()) if folder.parent.is_dir() else []
    for path in siblings:
        match = pattern.match(path.name)
        if match is None or not path.is_dir() or (match.group(2) and _process_alive(int(match.group(2)))):
            continue
        if match.group(1) == "old" and not folder.exists():
            path.rename(folder)
            logger.warning("model folder %s was missing after an interrupted save: restored from %s", folder, path.name)
            continue
        shutil.rmtree(path, ignore_errors=True)
        logger.warning("removed %s, left by an interrupted save of %s", path.name, folder.name)
        removed.append(path)
    return removed


def _swap_into_place(tmp: Path, folder: Path) -> None:
    """Replace ``folder`` by ``tmp``; a failure puts the previous folder back."""
    if not folder.exists():
        tmp.rename(folder)
        return
    old = _save_temp_path(folder, "old")
    folder.rename(old)
    try:
        tmp.rename(folder)
    except BaseException:
        old.rename(folder)
        raise
    shutil.rmtree(old)


# %% Loading ----------------------------------------------------------------------------------


def versions() -> dict:
    """The versions that a model folder records and checks."""
    import keras
    import sklearn

    found = {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scikit_learn": sklearn.__version__,
        "keras": keras.__version__,
        "keras_backend": keras.backend.backend(),
    }
    try:
        import radiomics

        found["pyradiomics"] = radiomics.__version__
    except ImportError:  # pragma: no cover - a dependency of the project
        found["pyradiomics"] = None
    return found


def load_final_model(folder: str | os.PathLike, self_check: bool = True) -> FinalModel:
    """Read a model folder written by :meth:`FinalModel.save`, refusing any it cannot trust.

    Raises:
        ModelFolderError: one line naming the folder, the file and the problem (module
            docstring lists what is checked).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelFolderError("does not exist", folder)
    manifest = _read_manifest(folder)
    _check_versions(manifest, folder)
    _check_digest(manifest, folder)
    _check_files(manifest, folder)
    _check_clinical_spec(manifest, folder)
    k = len(manifest["clinical"]["bit_names"])
    final = FinalModel(manifest=manifest, folder=folder)
    unknown = [m for m in manifest["models"] if m not in MODEL_NAMES]
    if unknown or not manifest["models"]:
        raise ModelFolderError(f"unknown or no models {unknown} (known: {', '.join(MODEL_NAMES)})", folder, MANIFEST_FILE)
    if manifest.get("primary_model") not in manifest["models"]:
        raise ModelFolderError(f"primary_model {manifest.get('primary_model')!r} is not among the models", folder, MANIFEST_FILE)
    if "radiomics_rf" in manifest["models"]:
        final.radiomics = _read_json(folder, "radiomics_rf/pipeline.json")
        _check_radiomics_spec(final.radiomics, folder)
    for name in FOREST_MODELS:
        if name in manifest["models"]:
            rel = f"{name}/forest.npz"
            arrays = _read_arrays(folder, rel)
            expected = k if name == "clinical_rf" else len(final.radiomics["selected"])
            try:
                check_forest_arrays(arrays, expected)
            except ValueError as err:
                raise ModelFolderError(str(err), folder, rel) from None
            final.forests[name] = arrays
    for name in NETWORK_MODELS:
        if name in manifest["models"]:
            final.networks[name] = _load_network(folder, manifest, name, k)
    if self_check:
        _run_self_check(final, folder)
    return final


def _read_json(folder: Path, rel: str) -> dict:
    try:
        return json.loads((folder / rel).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelFolderError("missing", folder, rel) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ModelFolderError(f"not valid JSON ({err})", folder, rel) from None


def _read_arrays(folder: Path, rel: str) -> dict[str, np.ndarray]:
    try:
        return load_arrays(folder / rel)
    except ValueError as err:  # object arrays need pickles: refused
        raise ModelFolderError(f"unreadable arrays ({err})", folder, rel) from None
    except (OSError, EOFError) as err:
        raise ModelFolderError(f"unreadable arrays ({err})", folder, rel) from None


def _read_manifest(folder: Path) -> dict:
    if not (folder / MANIFEST_FILE).is_file():
        raise ModelFolderError(f"not an hccer model folder (no {MANIFEST_FILE})", folder, MANIFEST_FILE)
    manifest = _read_json(folder, MANIFEST_FILE)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise ModelFolderError(f"not an hccer model folder (format {manifest.get('format')!r})", folder, MANIFEST_FILE)
    required = {"format_version": int, "hccer_version": str, "versions": dict, "models": dict, "files": dict,
                "clinical": dict, "preprocessing": dict, "primary_model": str}  # fmt: skip
    wrong = [key for key, kind in required.items() if not isinstance(manifest.get(key), kind)]
    wrong += [f"models.{m}" for m, entry in manifest.get("models", {}).items()
              if not isinstance(entry, dict) or not isinstance(entry.get("files"), list)]  # fmt: skip
    if wrong:
        raise ModelFolderError(f"manifest lacks or mistypes {', '.join(wrong)}", folder, MANIFEST_FILE)
    outside = [rel for rel in manifest["files"] if Path(rel).is_absolute() or ".." in Path(rel).parts]
    if outside:
        raise ModelFolderError(f"manifest lists files outside the folder: {outside[:2]}", folder, MANIFEST_FILE)
    return manifest


def _check_clinical_spec(manifest: dict, folder: Path) -> None:
    """The recorded dictionary must parse, and the recorded variables and imputation encode to the recorded bits."""
    from hccer_lib.clinical import MISSING_LEVEL, VARIABLES_ATTR, encode_variables

    clinical = manifest["clinical"]
    variables, bit_names = clinical.get("variables", []), clinical.get("bit_names", [])
    try:
        by_column = {v.column: v for v in model_variables(clinical.get("dictionary"))}
    except ValueError as err:
        raise ModelFolderError(f"its clinical data dictionary is unusable ({err})", folder, MANIFEST_FILE) from None
    unknown = [v for v in variables if v not in by_column]
    if unknown or not variables:
        raise ModelFolderError(f"unknown or no clinical variables {unknown}", folder, MANIFEST_FILE)
    imputation = clinical.get("imputation")
    if (not isinstance(imputation, dict) or not isinstance(imputation.get("modes"), dict)
            or not isinstance(imputation.get("indicators"), list)):  # fmt: skip
        raise ModelFolderError("no clinical imputation (modes, indicators)", folder, MANIFEST_FILE)
    modes, indicators = imputation["modes"], imputation["indicators"]
    levels = pd.DataFrame({v: [by_column[v].levels[0]] for v in variables})
    levels.attrs[VARIABLES_ATTR] = tuple(by_column.values())
    _, names = encode_variables(levels, variables)
    names += [f"{c} {MISSING_LEVEL}" for c in indicators]
    if names != bit_names:
        raise ModelFolderError(f"clinical variables {variables} encode to bits {names}, not the recorded {bit_names}", folder, MANIFEST_FILE)
    wrong = [v for v in variables if modes.get(v) not in by_column[v].levels] + [v for v in indicators if v not in variables]
    if wrong:
        raise ModelFolderError(f"the clinical imputation of {wrong[0]!r} is not one of its levels or variables", folder, MANIFEST_FILE)


def model_variables(spec: dict | None):
    """The candidate variables of a saved dictionary mapping (None: the paper's 17)."""
    from hccer_lib.clinical import CLINICAL_VARIABLES
    from hccer_lib.dictionary import parse_dictionary

    return CLINICAL_VARIABLES if spec is None else parse_dictionary(spec).variables


def _check_versions(manifest: dict, folder: Path) -> None:
    """Refuse a folder written by another format, hccer version, Keras major or PyRadiomics version."""
    from hccer_lib import preprocessing

    def refuse(what: str) -> None:
        raise ModelFolderError(f"{what}; refit and save the model with this version (notebook 07)", folder, MANIFEST_FILE)

    if manifest["format_version"] != FORMAT_VERSION:
        refuse(f"written in model-folder format {manifest['format_version']}, this hccer reads format {FORMAT_VERSION}")
    if manifest["hccer_version"] != __version__:
        refuse(f"written by hccer {manifest['hccer_version']}, this is hccer {__version__}")
    if manifest["preprocessing"].get("format_version") != preprocessing.FORMAT_VERSION:
        refuse(f"preprocessing format {manifest['preprocessing'].get('format_version')}, this hccer has {preprocessing.FORMAT_VERSION}")
    found, saved = versions(), manifest["versions"]
    if any(m in manifest["models"] for m in NETWORK_MODELS):
        if str(saved.get("keras", "")).split(".")[0] != found["keras"].split(".")[0]:
            refuse(f"written with Keras {saved.get('keras')}, this is Keras {found['keras']} (another major version)")
    if "radiomics_rf" in manifest["models"] and saved.get("pyradiomics") != found["pyradiomics"]:
        refuse(f"radiomics features from PyRadiomics {saved.get('pyradiomics')}, this is PyRadiomics {found['pyradiomics']}")


def _check_digest(manifest: dict, folder: Path) -> None:
    """The manifest's settings unchanged since saving (:func:`manifest_digest`)."""
    recorded = manifest.get(DIGEST_KEY)
    if not isinstance(recorded, str):
        raise ModelFolderError(f"no {DIGEST_KEY}: the settings cannot be checked; refit and save the model (notebook 07)",
                               folder, MANIFEST_FILE)  # fmt: skip
    if manifest_digest(manifest) != recorded:
        raise ModelFolderError(
            f"changed since the model was saved: its settings no longer match its {DIGEST_KEY} "
            "(an edited setting would change the predictions or their labelling)",
            folder, MANIFEST_FILE,
        )  # fmt: skip


def _check_files(manifest: dict, folder: Path) -> None:
    """Every model's files listed, present, and unchanged since saving (sha256)."""
    files = manifest["files"]
    needed = [SELF_CHECK_FILE, f"{SELF_CHECK_COHORT}/clinical.csv"]
    for entry in manifest["models"].values():
        needed += entry.get("files", [])
    for rel in needed:
        if rel not in files:
            raise ModelFolderError(f"{rel} is not listed in the manifest's files", folder, MANIFEST_FILE)
    for rel, digest in files.items():
        path = folder / rel
        if not path.is_file():
            raise ModelFolderError("missing (listed in manifest.json)", folder, rel)
        if _sha256(path) != digest:
            raise ModelFolderError("changed since the model was saved (sha256 differs from manifest.json)", folder, rel)


def _check_radiomics_spec(spec: dict, folder: Path) -> None:
    rel = "radiomics_rf/pipeline.json"
    columns = spec.get("feature_columns", [])
    for key in ("impute_median", "scale_mean", "scale_scale"):
        if len(spec.get(key, [])) != len(columns):
            raise ModelFolderError(f"{key} has {len(spec.get(key, []))} values for {len(columns)} feature columns", folder, rel)
    unknown = [c for c in spec.get("selected", []) if c not in set(columns)]
    if unknown or not spec.get("selected"):
        raise ModelFolderError(f"selected features {unknown[:3] or '[]'} are not among the feature columns", folder, rel)


def _load_network(folder: Path, manifest: dict, name: str, n_clinical: int):
    """Load ``<name>/model.keras`` (safe mode) and check it against the manifest's settings."""
    import keras

    from hccer_lib import networks

    rel = f"{name}/model.keras"
    try:
        model = keras.saving.load_model(folder / rel, compile=False, safe_mode=True)
    except Exception as err:  # Keras raises ValueError, TypeError, OSError... on a bad file
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelFolderError(f"unreadable Keras model ({first[:200]})", folder, rel) from None
    size = int(manifest["preprocessing"]["settings"]["image_size"])
    shapes = {t.name: tuple(t.shape[1:]) for t in model.inputs}
    expected = {"image": (size, size, 3)} if name == "deep_resnet50" else {"image": (size, size, 3), "clinical": (n_clinical,)}
    if shapes != expected:
        raise ModelFolderError(
            f"the network's inputs {shapes} do not match the manifest's settings {expected} "
            f"(image_size {size}, {n_clinical} clinical bits)", folder, rel,
        )  # fmt: skip
    details = manifest["models"][name].get("details", {})
    try:
        config = networks.NetworkConfig(**{**details["network"], "resnet_blocks": tuple(details["network"]["resnet_blocks"]), "imagenet": "none"})
        reference = networks.build_model(name, config)
    except (KeyError, TypeError, ValueError) as err:
        raise ModelFolderError(f"the manifest's network settings of {name} are unusable ({err})", folder, MANIFEST_FILE) from None
    if (config.image_size, config.n_clinical) != (size, n_clinical):
        raise ModelFolderError(
            f"the manifest's {name} settings (image_size {config.image_size}, n_clinical {config.n_clinical}) differ from "
            f"its preprocessing and clinical settings (image_size {size}, {n_clinical} clinical bits)", folder, MANIFEST_FILE,
        )  # fmt: skip
    got = [tuple(w.shape) for w in model.weights]
    want = [tuple(w.shape) for w in reference.weights]
    if got != want or model.name != name:
        raise ModelFolderError(
            f"the network ({model.name}, {len(got)} weight arrays) is not the {name} that the manifest's settings "
            f"build ({len(want)} weight arrays; first difference at "
            f"{next((i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b), min(len(got), len(want)))})",
            folder, rel,
        )  # fmt: skip
    return model


def _run_self_check(final: FinalModel, folder: Path) -> None:
    """Every model must give again the probabilities it gave the self-check inputs when saved."""
    arrays = _read_arrays(folder, SELF_CHECK_FILE)
    try:
        got = final.predict_arrays(
            image=arrays["image"], clinical=arrays["clinical"], clinical_rows=arrays["clinical"],
            radiomics_rows=arrays.get("radiomics"),
        )  # fmt: skip
    except (KeyError, ValueError) as err:
        raise ModelFolderError(f"the self-check inputs do not fit the models ({err})", folder, SELF_CHECK_FILE) from None
    for name in final.output_names:
        key = f"expected:{name}"
        if key not in arrays or name not in got:
            raise ModelFolderError(f"no self-check probabilities for {name}", folder, SELF_CHECK_FILE)
        tolerance = FOREST_CHECK_TOLERANCE if name in FOREST_MODELS else NETWORK_CHECK_TOLERANCE
        error = float(np.max(np.abs(got[name] - arrays[key])))
        if not error <= tolerance:
            raise ModelFolderError(
                f"{name} does not reproduce its saved probabilities (largest difference {error:.3g}, allowed "
                f"{tolerance:g}); saved with {final.manifest['versions']}, running {versions()}",
                folder, SELF_CHECK_FILE,
            )  # fmt: skip
    _run_patient_self_check(final, folder, arrays)


def _run_patient_self_check(final: FinalModel, folder: Path, arrays: dict[str, np.ndarray]) -> None:
    """The stored self-check patients, predicted end to end (images and clinical rows read,
    preprocessed, encoded, radiomics extracted), must get again the probabilities saved for them.

    Runs after the models reproduced their array self-check, so a difference here comes from
    the settings that turn a patient into model inputs (manifest.json) or from the code.
    """
    try:
        got = final.self_check_patients(folder / SELF_CHECK_COHORT)
    except (CohortError, KeyError, ValueError) as err:
        raise ModelFolderError(f"its stored self-check patients cannot be predicted ({err})", folder, SELF_CHECK_COHORT) from None
    for key, values in got.items():
        tolerance = FOREST_CHECK_TOLERANCE if key.split(":", 1)[1] in FOREST_MODELS else NETWORK_CHECK_TOLERANCE
        if key not in arrays or arrays[key].shape != values.shape:
            raise ModelFolderError(f"no self-check probabilities {key!r} for the stored patients", folder, SELF_CHECK_FILE)
        error = float(np.max(np.abs(values - arrays[key])))
        if not error <= tolerance:
            raise ModelFolderError(
                f"the models reproduce their self-check arrays, but {key.split(':', 1)[1]} gives the stored self-check "
                f"patients ({SELF_CHECK_COHORT}/) other probabilities than when saved (largest difference {error:.3g}, "
                f"allowed {tolerance:g}): the preprocessing, clinical or radiomics settings differ from the model's",
                folder, MANIFEST_FILE,
            )  # fmt: skip


# %% Refitting on the whole cohort ------------------------------------------------------------


def available_models(work_dir: str | os.PathLike) -> list[str]:
    """The models of :data:`MODEL_NAMES` whose cross-validated predictions exist in ``work_dir``."""
    from hccer_lib import evaluation

    return [m for m in MODEL_NAMES if evaluation.predictions_path(work_dir, m).is_file()]


def new_final_model(
    cohort_name: str,
    clinical: pd.DataFrame,
    profile,
    variables: list[str],
    seed: int = 2020,
    selection_protocol: str = "paper",
    alpha: float = 0.05,
    synthetic: bool = False,
    preprocess_settings=None,
    dictionary_spec: dict | None = None,
) -> FinalModel:
    """An empty :class:`FinalModel` (no model yet) for a cohort and its settings.

    Args:
        cohort_name: the cohort folder's name (no path).
        clinical: the raw clinical frame the models are fitted on (counts and the imputation
            of missing values are kept).
        variables: the selected clinical variables (``clinical.select_variables``); their
            bits (``clinical.encode_variables``), with an indicator bit for each variable some
            patient lacks, are the clinical vector of every model.
        preprocess_settings: ``preprocessing.PreprocessSettings`` (default: the profile's
            image size with the default window, phase, margin and tolerance).
        dictionary_spec: the cohort's data dictionary (``dictionary.load_spec``; None: the
            paper's), saved to read new patients as the cohort was read.
    """
    from hccer_lib import preprocessing
    from hccer_lib.clinical import apply_imputation, binarise, fit_imputation

    if preprocess_settings is None:
        preprocess_settings = preprocessing.PreprocessSettings(image_size=profile.image_size)
    settings = preprocess_settings if isinstance(preprocess_settings, dict) else asdict(preprocess_settings)
    levels = binarise(clinical)
    modes, indicators = fit_imputation(levels, variables, np.ones(len(levels), dtype=bool))
    _, bit_names = apply_imputation(levels, variables, modes, indicators)
    labels = clinical[LABEL_COLUMN].to_numpy(dtype=int)
    manifest = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "hccer_version": __version__,
        "versions": versions(),
        "cohort": {"name": str(cohort_name), "synthetic": bool(synthetic), "n_patients": len(clinical), "n_er": int(labels.sum())},
        "profile": profile.as_dict(),
        "seed": int(seed),
        "selection_protocol": selection_protocol,
        "clinical": {"alpha": alpha, "variables": list(variables), "bit_names": list(bit_names),
                     "imputation": {"modes": modes, "indicators": list(indicators)},
                     "dictionary": None if dictionary_spec is None else json.loads(json.dumps(dictionary_spec))},
        "preprocessing": {"settings": dict(settings), "format_version": preprocessing.FORMAT_VERSION},
        "models": {},
        "primary_model": None,
        "note": (SYNTHETIC_MODEL_NOTE + " " if synthetic else "") + RESEARCH_NOTE,
    }
    return FinalModel(manifest=manifest)


def add_clinical_rf(final: FinalModel, forest, **details) -> None:
    """Add the fitted clinical random forest (on ``final.bit_names``, in that order)."""
    if forest.n_features_in_ != len(final.bit_names):
        raise ValueError(f"the forest reads {forest.n_features_in_} features, the clinical vector has {len(final.bit_names)}")
    final.forests["clinical_rf"] = forest_arrays(forest)
    details = {"feature_names": final.bit_names, "n_estimators": len(forest.estimators_), **details}
    _add_entry(final, "clinical_rf", "forest", ["clinical"], ["clinical_rf/forest.npz"], details)


def add_radiomics_rf(final: FinalModel, pipeline, feature_columns: list[str], extraction: dict, **details) -> None:
    """Add the fitted radiomics pipeline (``radiomics_baseline.make_pipeline``).

    Args:
        feature_columns: the columns it was fitted on, in order.
        extraction: how to extract a new patient's features: ``params`` (PyRadiomics),
            ``mode``, ``reference_phase``, ``tolerance_mm``, ``min_texture_voxels``.
    """
    import radiomics

    from hccer_lib import radiomics_baseline as rb

    missing = [k for k in ("params", "mode", "reference_phase", "tolerance_mm", "min_texture_voxels") if k not in extraction]
    if missing:
        raise ValueError(f"extraction settings lack {missing}")
    final.radiomics = radiomics_spec(pipeline, feature_columns)
    final.forests["radiomics_rf"] = forest_arrays(pipeline.named_steps["forest"])
    final.manifest["radiomics"] = {
        **{k: extraction[k] for k in ("params", "mode", "reference_phase", "tolerance_mm", "min_texture_voxels")},
        "pyradiomics_version": radiomics.__version__,
        "format_version": rb.FORMAT_VERSION,
    }
    details = {"n_features": len(feature_columns), "n_selected": len(final.radiomics["selected"]),
               "lasso_C": final.radiomics["lasso_C"], "n_estimators": len(pipeline.named_steps["forest"].estimators_),
               **details}  # fmt: skip
    _add_entry(final, "radiomics_rf", "forest", ["radiomics"], ["radiomics_rf/forest.npz", "radiomics_rf/pipeline.json"], details)


def add_network(final: FinalModel, name: str, model, config, **details) -> None:
    """Add a trained network: an uncompiled copy built from ``config`` carries its weights.

    Building the copy from the recorded settings proves that they describe the weights
    (``load_final_model`` checks it again).
    """
    from hccer_lib import networks

    if name not in NETWORK_MODELS:
        raise ValueError(f"unknown network {name!r}; choose one of {NETWORK_MODELS}")
    config = replace(config, n_clinical=len(final.bit_names), imagenet="none")
    size = final.manifest["preprocessing"]["settings"]["image_size"]
    if config.image_size != size:
        raise ValueError(f"{name} takes {config.image_size} px images, the preprocessing makes {size} px")
    clean = networks.build_model(name, config)
    clean.set_weights(model.get_weights())
    final.networks[name] = clean
    network = {k: (list(v) if isinstance(v, tuple) else v) for k, v in config.as_dict().items()}
    inputs = ["image"] if name == "deep_resnet50" else ["image", "clinical"]
    _add_entry(final, name, "network", inputs, [f"{name}/model.keras"], {"network": network, **details})


def _add_entry(final: FinalModel, name: str, kind: str, inputs: list[str], files: list[str], details: dict) -> None:
    final.manifest["models"][name] = {"kind": kind, "inputs": inputs, "outputs": output_names(name),
                                      "files": [*files, f"{name}/model.json"], "details": details}  # fmt: skip
    final.manifest["models"] = {m: final.manifest["models"][m] for m in MODEL_NAMES if m in final.manifest["models"]}
    final.manifest["primary_model"] = next(m for m in PRIMARY_ORDER if m in final.manifest["models"])


def refit_final_model(
    cohort_dir: str | os.PathLike,
    work_dir: str | os.PathLike,
    profile,
    models: list[str] | tuple[str, ...] = MODEL_NAMES,
    seed: int = 2020,
    selection_protocol: str = "paper",
    imagenet: str = "auto",
    synthetic: bool = False,
    alpha: float = 0.05,
    clinical_estimators: int = 500,
    radiomics_estimators: int = 500,
    inner_folds: int = 5,
    radiomics_mode: str | None = None,
    min_texture_voxels: int = 16,
    verbose: int | str = 0,
) -> FinalModel:
    """Refit ``models`` on every patient of the cohort, with the settings of their cross-validation.

    ``clinical_rf``: the random forest on the clinical vector (variables selected by
    chi-squared on the whole cohort, with ``alpha``). ``radiomics_rf``: the radiomics
    pipeline on the cached feature table (``radiomics_baseline.extract_cohort``).
    Networks: ``training.train_fold(..., fold=None)`` on the processed slices of every
    patient (``preprocessing.study_dataset``: notebook 02's preprocessing, cached). The defaults are those of
    notebooks 01 and 03-06. On the whole cohort the ``paper`` and ``strict`` selection
    protocols select on the same patients; ``strict`` skips single-level variables.

    Returns:
        the :class:`FinalModel`, not yet saved (:meth:`FinalModel.save`).
    """
    from hccer_lib import clinical as clinical_module
    from hccer_lib import cohort, dictionary, evaluation, preprocessing, training

    unknown = [m for m in models if m not in MODEL_NAMES]
    if unknown or not models:
        raise ValueError(f"unknown or no models {unknown}; choose from {MODEL_NAMES}")
    if selection_protocol not in ("paper", "strict"):
        raise ValueError(f"selection_protocol must be 'paper' or 'strict', got {selection_protocol!r}")
    work_dir = Path(work_dir)
    clinical = cohort.load_clinical(cohort_dir)
    labels = clinical[LABEL_COLUMN].to_numpy(dtype=int)
    levels = clinical_module.binarise(clinical)
    on_single_level = "raise" if selection_protocol == "paper" else "skip"
    variables = clinical_module.select_variables(levels, labels, alpha, on_single_level)
    if not variables:
        raise ValueError(f"no clinical variable has chi-squared p < {alpha} on this cohort")
    networks_wanted = [m for m in NETWORK_MODELS if m in models]
    dataset = None
    settings = preprocessing.study_settings(work_dir, profile.image_size)
    if networks_wanted:
        dataset = preprocessing.study_dataset(cohort_dir, work_dir, profile.image_size)
        settings = dataset.settings
    try:
        spec = dictionary.load_spec(cohort_dir)
    except dictionary.DictionaryError as err:
        raise CohortError(str(err), file=dictionary.DICTIONARY_FILE) from None
    final = new_final_model(Path(cohort_dir).name, clinical, profile, variables, seed, selection_protocol, alpha,
                            synthetic, settings, dictionary_spec=spec)  # fmt: skip

    if "clinical_rf" in models:  # imputed as the networks' folds impute (clinical.clinical_matrix on every patient)
        imputation = final.manifest["clinical"]["imputation"]
        bits, _ = clinical_module.apply_imputation(levels, variables, imputation["modes"], imputation["indicators"])
        logger.info("final model: clinical_rf on %d patients, %d clinical bits", len(clinical), bits.shape[1])
        forest = clinical_module.make_clinical_rf(seed, n_estimators=clinical_estimators).fit(bits, labels)
        add_clinical_rf(final, forest, rf_params=clinical_module.RF_PARAMS, seed=int(seed), n_patients=len(clinical))

    if "radiomics_rf" in models:
        _refit_radiomics(final, cohort_dir, work_dir, profile, seed, radiomics_estimators, inner_folds,
                         radiomics_mode or profile.radiomics_mode, min_texture_voxels)  # fmt: skip

    if networks_wanted:
        final.manifest["cohort"]["n_slices"] = len(dataset)
        folds = evaluation.load_or_make_folds(work_dir, clinical, profile.n_folds, seed)
        for name in networks_wanted:
            logger.info("final model: training %s on %d slices of %d patients", name, len(dataset), len(clinical))
            # one fit per network: XLA's compilation would cost more than it saves (networks.compile_model)
            single_fit = training.FoldModel(name, profile.learning_rate, profile.weight_decay, xla=False)
            model, data = training.train_fold(name, dataset, clinical, folds, profile, None, seed=seed,
                                              selection_protocol=selection_protocol, imagenet=imagenet, verbose=verbose,
                                              fold_model=single_fit)  # fmt: skip
            fitted = data.train & ~data.validation
            if name != "deep_resnet50" and list(data.clinical_names) != final.bit_names:
                raise ValueError(f"{name} was trained on clinical bits {data.clinical_names}, the final model encodes {final.bit_names}")
            add_network(final, name, model, data.config, seed=int(seed), imagenet=imagenet if imagenet in ("auto", "none") else Path(imagenet).name,
                        n_training_slices=int(fitted.sum()), n_training_patients=len(set(data.patient_id[fitted])),
                        training={f: getattr(profile, f) for f in training.DEEP_PROFILE_FIELDS if f != "xla"})  # fmt: skip
    return final


def _refit_radiomics(final, cohort_dir, work_dir, profile, seed, n_estimators, inner_folds, mode, min_texture_voxels) -> None:
    from hccer_lib import radiomics_baseline as rb

    features, meta = rb.extract_cohort(
        cohort_dir, work_dir, mode=mode, feature_classes=profile.radiomics_feature_classes,
        min_texture_voxels=min_texture_voxels,
    )  # fmt: skip
    columns = rb.feature_columns(features)
    X = features[columns].to_numpy(dtype=float)
    y = features["y_true"].to_numpy(dtype=int)
    patients = features["patient_id"].astype(str).to_numpy()
    logger.info("final model: radiomics_rf on %d rows x %d features", *X.shape)
    pipeline = rb.make_pipeline(seed, rb.inner_splits(patients, y, inner_folds, seed), n_estimators).fit(X, y)
    extraction = {"params": meta["params"], "mode": mode, "reference_phase": meta["reference_phase"],
                  "tolerance_mm": meta["tolerance_mm"], "min_texture_voxels": min_texture_voxels}  # fmt: skip
    add_radiomics_rf(final, pipeline, columns, extraction, inner_folds=inner_folds, seed=int(seed), n_rows=len(X))


# %% The self-check cohort --------------------------------------------------------------------


def write_self_check_cohort(cohort_dir: str | os.PathLike, seed: int = 0, dictionary_spec: dict | None = None) -> Path:
    """Write the tiny generated cohort that a model folder is checked with, end to end.

    :data:`N_SELF_CHECK_PATIENTS` patients, no patient's data: clinical rows of
    ``clinical.paper_clinical_frame`` (raw values on either side of every cut-off, both
    labels), and per patient three int16 HU phase volumes :data:`SELF_CHECK_VOLUME` voxels
    of :data:`SELF_CHECK_SPACING_MM`, each phase with its own origin: air around a body of
    :data:`SELF_CHECK_TISSUE_HU` holding a 10 x 10 voxel tumour of
    :data:`SELF_CHECK_TUMOUR_HU` on two slices (seeded noise, a different place and offset
    per patient), its boxes in ``roi_boxes.csv``. The same ``seed`` writes the same cohort.

    With ``dictionary_spec`` (a model's data dictionary) the clinical table follows that
    dictionary instead (``data_dictionary.yaml`` beside it; :func:`_dictionary_rows`): its
    column names, units, codes and outcome, and the last patient without any value that the
    dictionary does not require, so that every load checks the saved imputation too.

    Returns:
        ``cohort_dir``.
    """
    import SimpleITK as sitk

    from hccer_lib import cohort
    from hccer_lib.clinical import paper_clinical_frame

    cohort_dir = Path(cohort_dir)
    rng = np.random.default_rng(seed)
    frame = paper_clinical_frame(seed)
    rows = np.concatenate([rng.choice(np.flatnonzero(frame[LABEL_COLUMN] == label), N_SELF_CHECK_PATIENTS // 2, replace=False)
                           for label in (0, 1)])  # fmt: skip
    clinical = frame.iloc[rows].reset_index(drop=True)
    clinical["patient_id"] = [f"SELFCHECK{i + 1}" for i in range(len(clinical))]
    size_x, size_y, size_z = SELF_CHECK_VOLUME
    boxes = []
    for pid in clinical["patient_id"]:
        x0, y0 = (int(v) for v in rng.integers(8, size_x - 18, 2))
        shift = float(rng.normal(0.0, 10.0))
        for index, phase in enumerate(cohort.PHASES):
            array = np.full((size_z, size_y, size_x), -1000.0)
            array[:, 3:-3, 3:-3] = SELF_CHECK_TISSUE_HU[index]
            array[2:4, y0 : y0 + 10, x0 : x0 + 10] = SELF_CHECK_TUMOUR_HU[index] + shift
            array += rng.normal(0.0, SELF_CHECK_NOISE_HU, array.shape)
            image = sitk.GetImageFromArray(np.round(array).astype(np.int16))
            image.SetSpacing(SELF_CHECK_SPACING_MM)
            image.SetOrigin((-16.0 + index, -16.0 - index, 20.0 + 2.0 * index))
            path = cohort_dir / "images" / pid / f"{phase}.nii.gz"
            path.parent.mkdir(parents=True, exist_ok=True)
            sitk.WriteImage(image, str(path), useCompression=True)
            boxes += [{"patient_id": pid, "phase": phase, "slice": k, "x_min": x0, "x_max": x0 + 9, "y_min": y0, "y_max": y0 + 9}
                      for k in (2, 3)]  # fmt: skip
    if dictionary_spec is None:
        outputs.write_csv(cohort_dir / cohort.CLINICAL_FILE, clinical)
    else:
        import yaml

        from hccer_lib.dictionary import DICTIONARY_FILE, parse_dictionary

        spec = {k: v for k, v in dictionary_spec.items() if k != "sheet"} | {"table": cohort.CLINICAL_FILE}
        rows = _dictionary_rows(parse_dictionary(spec), list(clinical["patient_id"]), clinical[LABEL_COLUMN].tolist())
        outputs.write_csv(cohort_dir / cohort.CLINICAL_FILE, rows)
        outputs.write_text(cohort_dir / DICTIONARY_FILE, yaml.safe_dump(spec, sort_keys=False, allow_unicode=True))
    outputs.write_csv(cohort_dir / cohort.BOX_TABLE_FILE, pd.DataFrame(boxes))
    return cohort_dir


def _dictionary_rows(dictionary, ids: list[str], labels: list[int]) -> pd.DataFrame:
    """A raw clinical table in ``dictionary``'s terms (columns, units, codes, outcome).

    Patient ``i`` has level ``(i + j) % n_levels`` of variable ``j`` (numbers 20% of the
    cut-off on either side of it, converted back to the table's unit); the last patient has
    no value of the variables that are not required. Outcome: the 0/1 ``labels``, or times
    at half the horizon (event) and twice the horizon (no event).
    """
    outcome = dictionary.outcome
    table: dict[str, list] = {dictionary.id_column: list(ids)}
    if outcome.is_time_to_event:
        table[outcome.time] = [f"{outcome.horizon * (0.5 if y else 2.0):g}" for y in labels]
        table[outcome.event] = [str(int(y)) for y in labels]
    else:
        table[outcome.column] = [str(int(y)) for y in labels]
    for j, var in enumerate(dictionary.variables):
        values = []
        for i in range(len(ids)):
            if i == len(ids) - 1 and not var.required:
                values.append("")
                continue
            level = var.levels[(i + j) % len(var.levels)]
            values.append(_raw_of_level(var, level, dictionary.factor(var.column)))
        table[var.source_column] = values
    return pd.DataFrame(table)


def _raw_of_level(var, level: str, factor: float) -> str:
    """A raw table value (text) that the dictionary reads as ``level`` of ``var``."""
    index = var.levels.index(level)
    if var.kind == "threshold":
        step = abs(var.cutoff) * 0.2 or 1.0
        value = var.cutoff + step if level.startswith(">=") else var.cutoff - step
        return f"{value / factor:.10g}"
    if var.kind == "count":
        return str(1 + index)
    raw = next((raw for raw, lvl in var.aliases if lvl == level), None)
    if raw is not None:
        return raw
    if var.kind == "binary":
        return str(index)
    return (var.codes or var.levels)[index]


# %% Reading patients -------------------------------------------------------------------------


UNKNOWN_LABELS = {"", "na", "nan", "unknown"}


def read_patient_folder(patient_dir: str | os.PathLike, clinical_settings: dict | None = None) -> PatientInputs:
    """Read and validate one new patient's folder (module docstring); labels may be unknown.

    Checked by :mod:`hccer_lib.cohort` (the patient folder is presented to it as a
    one-patient cohort), so bad input raises the same :class:`CohortError` messages, with
    files named relative to the patient folder (``ART.nii.gz``, ``clinical.csv``).

    ``clinical_settings``: the model's ``manifest["clinical"]`` (:func:`peek_clinical_settings`):
    its data dictionary reads the clinical table (module docstring); None: the paper's.
    """
    from hccer_lib import cohort

    patient_dir = Path(patient_dir)
    if not patient_dir.is_dir():
        raise CohortError(f"patient folder {patient_dir} does not exist")
    reading = _reading(patient_dir, clinical_settings)
    if reading is None and not (patient_dir / cohort.CLINICAL_FILE).is_file():
        raise CohortError(f"missing: the patient folder {patient_dir} has no {cohort.CLINICAL_FILE}", file=cohort.CLINICAL_FILE)
    with tempfile.TemporaryDirectory(prefix="hccer-patient-") as view:
        view = Path(view)
        if reading is None:
            table = cohort.CLINICAL_FILE
            unknown = _write_labelled_clinical(patient_dir / cohort.CLINICAL_FILE, view / cohort.CLINICAL_FILE)
            clinical = cohort.load_clinical(view)
        else:
            table = reading.table
            unknown, _ = _write_dictionary_view(patient_dir, reading, view, link=False)
            clinical = _renamed(lambda: cohort.load_clinical(view, _view_dictionary(reading)), table)
        if len(clinical) != 1:
            raise CohortError(f"a patient folder's {table} holds one row, got {len(clinical)}", file=table)
        patient_id = clinical["patient_id"].iloc[0]
        (view / "images").mkdir()
        _link(patient_dir, view / "images" / patient_id)
        if (patient_dir / cohort.BOX_TABLE_FILE).is_file():
            _write_patient_boxes(patient_dir / cohort.BOX_TABLE_FILE, view / cohort.BOX_TABLE_FILE, patient_id)
        try:
            phases = cohort.load_patient(view, patient_id)
        except CohortError as err:
            prefix = f"images/{patient_id}/"
            file = err.file[len(prefix) :] if err.file and err.file.startswith(prefix) else err.file
            raise CohortError(err.problem.replace(prefix, ""), err.patient, file) from None
    y_true = None if unknown and unknown[0] else int(clinical[LABEL_COLUMN].iloc[0])
    return _patient_inputs(clinical, 0, y_true, phases)


def iter_cohort_patients(cohort_dir: str | os.PathLike, patient_ids: list[str] | None = None,
                         clinical_settings: dict | None = None) -> Iterator[PatientInputs]:  # fmt: skip
    """The patients of a cohort folder (all, or ``patient_ids`` in that order), read and validated.

    Labels may be empty (unknown: ``y_true`` None). An id not in ``clinical.csv`` is a
    :class:`CohortError`. ``clinical_settings``: as for :func:`read_patient_folder`.
    """
    from hccer_lib import cohort

    cohort_dir = Path(cohort_dir)
    if not cohort_dir.is_dir():
        raise CohortError(f"cohort folder {cohort_dir} does not exist")
    with _cohort_view(cohort_dir, clinical_settings) as (view, unknown, _, dictionary, table):
        clinical = _renamed(lambda: cohort.load_clinical(view, dictionary), table)
        rows = {pid: row for row, pid in enumerate(clinical["patient_id"])}
        for patient_id in clinical["patient_id"] if patient_ids is None else map(str, patient_ids):
            if patient_id not in rows:
                raise CohortError(f"no row in {cohort.CLINICAL_FILE}", patient_id, cohort.CLINICAL_FILE)
            row = rows[patient_id]
            phases = cohort.load_patient(view, patient_id)
            y_true = None if unknown and unknown[row] else int(clinical[LABEL_COLUMN].iloc[row])
            yield _patient_inputs(clinical, row, y_true, phases)


def _patient_inputs(clinical: pd.DataFrame, row: int, y_true, phases: dict) -> PatientInputs:
    one = clinical.iloc[[row]].reset_index(drop=True)
    return PatientInputs(
        patient_id=str(one["patient_id"].iloc[0]), clinical=one, y_true=y_true,
        images={p: image for p, (image, _) in phases.items()}, boxes={p: boxes for p, (_, boxes) in phases.items()},
    )  # fmt: skip


@dataclass(frozen=True)
class _Reading:
    """How a folder's clinical table is read: its dictionary (a ``DataDictionary``) and table file."""

    dictionary: object
    table: str


def peek_clinical_settings(model_folder: str | os.PathLike) -> dict | None:
    """The ``clinical`` settings of a model folder's manifest, read without any check (None when
    unreadable: :func:`load_final_model` then names the problem). For reading a patient folder
    before the model is loaded."""
    try:
        manifest = json.loads((Path(model_folder) / MANIFEST_FILE).read_text(encoding="utf-8"))
        return manifest["clinical"] if isinstance(manifest["clinical"], dict) else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _reading(folder: Path, clinical_settings: dict | None) -> _Reading | None:
    """How to read ``folder``'s clinical table; None: the paper's dictionary on ``clinical.csv`` (as always).

    The folder's own ``data_dictionary.yaml`` (checked against the model's variables), else the
    model's saved dictionary (its table when the folder has it, else ``clinical.csv`` / ``.xlsx``).
    """
    from hccer_lib import dictionary as dictionary_module

    spec = (clinical_settings or {}).get("dictionary")
    if (folder / dictionary_module.DICTIONARY_FILE).is_file():
        try:
            own = dictionary_module.load_dictionary(folder)
        except dictionary_module.DictionaryError as err:
            raise CohortError(str(err), file=dictionary_module.DICTIONARY_FILE) from None
        if clinical_settings is not None:
            _check_compatible(own, model_variables(spec), clinical_settings.get("variables", []))
        return _Reading(own, own.table)
    if spec is None:
        return None
    saved = dictionary_module.parse_dictionary(spec)
    if not (folder / saved.table).is_file():
        saved = replace(saved, table=dictionary_module.find_table(folder), sheet=None)
    return _Reading(saved, saved.table)


def _encoding(variable) -> tuple:
    return (variable.kind, variable.levels, variable.cutoff, variable.codes, variable.onehot, variable.high_first)


def _check_compatible(own, variables, columns) -> None:
    """A folder's own dictionary must define every variable the model reads as the model's dictionary does."""
    from hccer_lib.dictionary import DICTIONARY_FILE

    ours = {v.column: v for v in variables}
    theirs = {v.column: v for v in own.variables}
    for column in columns:
        if column not in theirs:
            raise CohortError(f"variable {column!r}: the model reads it, but this {DICTIONARY_FILE} does not define it", file=DICTIONARY_FILE)
        if column in ours and _encoding(theirs[column]) != _encoding(ours[column]):
            raise CohortError(
                f"variable {column!r}: defined otherwise than in the model's dictionary (type, levels, cut-off or "
                f"one-hot bits: {_encoding(theirs[column])[:3]} here, {_encoding(ours[column])[:3]} in the model)",
                file=DICTIONARY_FILE,
            )  # fmt: skip


def _view_dictionary(reading: _Reading):
    """The dictionary that reads the view's ``clinical.csv`` (:func:`_write_dictionary_view`)."""
    from hccer_lib import cohort

    return replace(reading.dictionary, table=cohort.CLINICAL_FILE, sheet=None)


def _renamed(read, table: str):
    """``read()``, its CohortErrors naming ``table`` instead of the view's ``clinical.csv``."""
    try:
        return read()
    except CohortError as err:
        raise _renamed_error(err, table) from None


def _renamed_error(err: CohortError, table: str) -> CohortError:
    from hccer_lib import cohort

    if err.file == cohort.CLINICAL_FILE and table != cohort.CLINICAL_FILE:
        return CohortError(err.problem.replace(cohort.CLINICAL_FILE, table), err.patient, table)
    return err


def _write_dictionary_view(folder: Path, reading: _Reading, view: Path, link: bool = True) -> tuple[list[bool], list[str]]:
    """Write ``folder``'s table as ``view/clinical.csv``, an unknown outcome made readable.

    An absent or empty outcome (``early_recurrence`` or the dictionary's column; a time or an
    event), and a time-to-event outcome that would exclude the patient (censored before the
    horizon), are written as known and NER (the time at the horizon, no event) and flagged
    unknown. With ``link``, the folder's ``images/`` and ``roi_boxes.csv`` are linked into the
    view. Returns the unknown flags and the patient ids, in table order.
    """
    from hccer_lib import cohort

    dictionary = reading.dictionary
    path = folder / reading.table
    if not path.is_file():
        raise CohortError(f"missing: the folder {folder} has no {reading.table}", file=reading.table)
    if reading.table.endswith(".xlsx"):
        frame = cohort._read_workbook(path, reading.table, dictionary.sheet, (), {}, dictionary.id_column)
        frame = frame.astype(object).where(frame.notna(), "")
    else:
        try:
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as err:
            raise CohortError(f"unreadable CSV ({str(err).strip().splitlines()[0]})", file=reading.table) from None
        frame.columns = [str(c).strip() for c in frame.columns]
    outcome = dictionary.outcome
    for column in outcome.source_columns:
        if column not in frame.columns:
            frame[column] = ""
    text = {c: frame[c].astype(str).str.strip() for c in outcome.source_columns}
    unknown = pd.Series(False, index=frame.index)
    for values in text.values():
        unknown |= values.str.lower().isin(UNKNOWN_LABELS)
    if outcome.is_time_to_event:
        time = pd.to_numeric(text[outcome.time], errors="coerce")
        event = pd.to_numeric(text[outcome.event], errors="coerce")
        unknown |= (event == 0) & (time < outcome.horizon)  # would be excluded: predicted, label unknown
        frame.loc[unknown, outcome.time] = f"{outcome.horizon:g}"
        frame.loc[unknown, outcome.event] = "0"
    else:
        frame.loc[unknown, outcome.column] = "0"
    frame.to_csv(view / cohort.CLINICAL_FILE, index=False)
    for name in (cohort.IMAGES_DIR, cohort.BOX_TABLE_FILE) if link else ():
        if (folder / name).exists():
            _link(folder / name, view / name)
    ids = frame[dictionary.id_column].astype(str).str.strip() if dictionary.id_column in frame.columns else pd.Series([], dtype=str)
    return unknown.tolist(), [pid for pid in ids if pid]


@contextlib.contextmanager
def _cohort_view(cohort_dir: Path, clinical_settings: dict | None):
    """``(view, unknown, ids, dictionary, table)``: a folder whose clinical table the cohort loaders
    read with ``dictionary`` (None: the folder's own), the unknown-label flags and ids in table order."""
    from hccer_lib import cohort

    reading = _reading(cohort_dir, clinical_settings)
    if reading is None:
        if not (cohort_dir / cohort.CLINICAL_FILE).is_file():
            raise CohortError(f"missing: the cohort folder {cohort_dir} has no {cohort.CLINICAL_FILE}", file=cohort.CLINICAL_FILE)
        with _labelled_view(cohort_dir) as (view, unknown):
            yield view, unknown, None, None, cohort.CLINICAL_FILE
        return
    with tempfile.TemporaryDirectory(prefix="hccer-cohort-") as view:
        view = Path(view)
        unknown, ids = _write_dictionary_view(cohort_dir, reading, view)
        yield view, unknown, ids, _view_dictionary(reading), reading.table


@contextlib.contextmanager
def _labelled_view(cohort_dir: Path) -> Iterator[tuple[Path, list[bool] | None]]:
    """The cohort folder itself when every label is given, else a view whose empty labels read 0."""
    from hccer_lib import cohort

    with tempfile.TemporaryDirectory(prefix="hccer-cohort-") as view:
        view = Path(view)
        unknown = _write_labelled_clinical(cohort_dir / cohort.CLINICAL_FILE, view / cohort.CLINICAL_FILE)
        if not unknown or not any(unknown):
            yield cohort_dir, unknown
            return
        for name in ("images", cohort.BOX_TABLE_FILE):
            if (cohort_dir / name).exists():
                _link(cohort_dir / name, view / name)
        yield view, unknown


def _write_labelled_clinical(source: Path, target: Path) -> list[bool] | None:
    """Copy ``clinical.csv``, an absent or empty ``early_recurrence`` written as 0; which rows were unknown.

    A file pandas cannot read is copied unchanged (the cohort loader then names the problem).
    """
    from hccer_lib import cohort

    try:
        frame = pd.read_csv(source, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
        shutil.copyfile(source, target)
        return None
    except OSError as err:  # e.g. no permission to read it
        raise CohortError(f"unreadable CSV ({str(err).strip().splitlines()[0]})", file=cohort.CLINICAL_FILE) from None
    frame.columns = [str(c).strip() for c in frame.columns]
    if LABEL_COLUMN not in frame.columns:
        frame[LABEL_COLUMN] = ""
    unknown = frame[LABEL_COLUMN].str.strip().str.lower().isin(UNKNOWN_LABELS)
    frame.loc[unknown, LABEL_COLUMN] = "0"
    frame.to_csv(target, index=False)
    return unknown.tolist()


def _write_patient_boxes(source: Path, target: Path, patient_id: str) -> None:
    """A patient folder's ``roi_boxes.csv`` with its ``patient_id`` column filled in."""
    from hccer_lib import cohort

    try:
        frame = pd.read_csv(source, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as err:
        raise CohortError(f"unreadable CSV ({str(err).strip().splitlines()[0]})", patient_id, cohort.BOX_TABLE_FILE) from None
    frame.columns = [str(c).strip() for c in frame.columns]
    if "patient_id" in frame.columns:
        other = frame.loc[frame["patient_id"].str.strip().ne(patient_id), "patient_id"]
        if len(other):
            raise CohortError(f"rows of patient {other.iloc[0]!r}, expected only {patient_id!r}", patient_id, cohort.BOX_TABLE_FILE)
    frame["patient_id"] = patient_id
    frame.to_csv(target, index=False)


def _link(source: Path, target: Path) -> None:
    """A symbolic link to ``source`` (a copy where links are not allowed)."""
    try:
        target.symlink_to(source.resolve(), target_is_directory=source.is_dir())
    except OSError:
        if source.is_dir():
            shutil.copytree(source, target)
        else:
            shutil.copyfile(source, target)


# %% Predicting and writing --------------------------------------------------------------------


def prediction_row(prediction: PatientPrediction) -> dict:
    """``patient_id, y_true, n_slices`` and one probability per output, for a CSV row."""
    return {
        "patient_id": prediction.patient_id,
        "y_true": pd.NA if prediction.y_true is None else prediction.y_true,
        "n_slices": len(prediction.slices),
        **prediction.probabilities,
    }


def prediction_frame(predictions: list[PatientPrediction]) -> pd.DataFrame:
    """One row per patient: :func:`prediction_row`, ``y_true`` as a nullable integer."""
    frame = pd.DataFrame([prediction_row(p) for p in predictions])
    frame["y_true"] = frame["y_true"].astype("Int64")
    return frame


#: ``status`` of a row of ``predictions.csv``: predicted, or not (``reason`` says why).
STATUS_OK, STATUS_FAILED = "ok", "failed"


def predict_cohort(final: FinalModel, cohort_dir: str | os.PathLike, progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Predict every patient of a cohort folder; one patient that cannot be predicted stops no other.

    A patient whose clinical row, images or ROI are refused, or whose prediction fails, gets
    a row with ``status`` ``"failed"``, no probability and the one-line ``reason``; the others
    are predicted as :meth:`FinalModel.predict_patient` predicts them. A problem of the table
    itself (a missing column, an unreadable file) still ends the whole run (CohortError).

    Returns:
        ``(patients, slices)``: one row per patient of the table, in its order
        (:func:`prediction_row` plus ``status`` and ``reason``), and one row per matched
        tumour slice of the predicted patients (:attr:`PatientPrediction.slices`).
    """
    from tqdm import tqdm

    from hccer_lib import cohort

    cohort_dir = Path(cohort_dir)
    if not cohort_dir.is_dir():
        raise CohortError(f"cohort folder {cohort_dir} does not exist")
    rows, slices = [], []
    with _cohort_view(cohort_dir, final.manifest["clinical"]) as (view, unknown, ids, dictionary, table):
        clinical, refused, order = _view_rows(cohort_dir, view, ids, dictionary, table)
        good = {pid: row for row, pid in enumerate(clinical["patient_id"])}
        for position, patient_id in enumerate(tqdm(order, desc="predict patients", unit="patient", disable=not progress)):
            if patient_id in refused:
                rows.append(_failed_row(patient_id, None, str(refused[patient_id])))
                continue
            row = good[patient_id]
            y_true = None if unknown and unknown[position] else int(clinical[LABEL_COLUMN].iloc[row])
            try:
                patient = _patient_inputs(clinical, row, y_true, cohort.load_patient(view, patient_id))
                prediction = final.predict_patient(patient)
            except Exception as err:  # noqa: BLE001  any failure of one patient is that patient's row
                reason = str(err) if isinstance(err, CohortError) else f"{type(err).__name__}: {_first_line_of(err)}"
                rows.append(_failed_row(patient_id, y_true, reason))
                continue
            prediction.images = prediction.images[:0]  # keep only the numbers: a cohort's images add up
            rows.append({**prediction_row(prediction), "status": STATUS_OK, "reason": ""})
            slices.append(prediction.slices)
    patients = pd.DataFrame(rows)
    patients["y_true"] = patients["y_true"].astype("Int64")
    patients = patients[[c for c in patients.columns if c not in ("status", "reason")] + ["status", "reason"]]
    return patients, (pd.concat(slices, ignore_index=True) if slices else pd.DataFrame(columns=["patient_id", "slice", "z_mm"]))


def _view_rows(cohort_dir: Path, view: Path, ids: list[str] | None, dictionary, table: str):
    """``(clinical, refused, order)`` of a :func:`_cohort_view`: the rows without a problem, each refused
    patient's error (naming the folder's own table) and the patient ids in table order."""
    from hccer_lib import cohort

    clinical, refused = _renamed(lambda: cohort.load_clinical_rows(view, dictionary), table)
    refused = {pid: _renamed_error(err, table) for pid, err in refused.items()}
    return clinical, refused, (_table_ids(cohort_dir) if ids is None else ids)


def read_cohort_clinical(cohort_dir: str | os.PathLike, clinical_settings: dict | None = None,
                         ) -> tuple[pd.DataFrame, dict[str, CohortError]]:  # fmt: skip
    """A cohort folder's clinical table read exactly as :func:`predict_cohort` reads it.

    The folder's own ``data_dictionary.yaml`` (checked against the model's variables), else the
    model's saved dictionary (``clinical_settings``: the model's ``manifest["clinical"]``), else
    the paper's (module docstring). For tables beside the predictions, such as external
    validation's case-mix.

    Returns:
        ``(frame, refused)``: the patients with a known label whose row is not refused, in
        table order, as ``cohort.load_clinical`` gives them (the dictionary's variables in
        ``frame.attrs``); and, per refused patient, its error (naming the folder's table).
        Patients with an unknown label (empty outcome, or censored before a time-to-event
        horizon) are in neither.

    Raises:
        CohortError: a problem of the table itself, or a dictionary that does not fit the model.
    """
    cohort_dir = Path(cohort_dir)
    if not cohort_dir.is_dir():
        raise CohortError(f"cohort folder {cohort_dir} does not exist")
    with _cohort_view(cohort_dir, clinical_settings) as (view, unknown, ids, dictionary, table):
        clinical, refused, order = _view_rows(cohort_dir, view, ids, dictionary, table)
    unknown_ids = {pid for pid, flag in zip(order, unknown or [False] * len(order), strict=False) if flag}
    attrs = dict(clinical.attrs)
    known = clinical[~clinical["patient_id"].astype(str).isin(unknown_ids).to_numpy()].reset_index(drop=True)
    known.attrs = attrs
    return known, {pid: err for pid, err in refused.items() if pid not in unknown_ids}


def cohort_dictionary(folder: str | os.PathLike, clinical_settings: dict | None = None):
    """The ``DataDictionary`` that reads ``folder``'s clinical table with a model's settings (the
    folder's own, else the model's saved one, its table found in the folder), or None: the paper's."""
    reading = _reading(Path(folder), clinical_settings)
    return None if reading is None else reading.dictionary


def _table_ids(cohort_dir: Path) -> list[str]:
    """The patient ids of ``clinical.csv`` as written, in file order (empty ids left out)."""
    from hccer_lib import cohort

    ids = pd.read_csv(cohort_dir / cohort.CLINICAL_FILE, dtype=str, keep_default_na=False, skipinitialspace=True)
    ids.columns = [str(c).strip() for c in ids.columns]
    return [pid for pid in ids["patient_id"].str.strip() if pid]


def _failed_row(patient_id: str, y_true: int | None, reason: str) -> dict:
    return {"patient_id": patient_id, "y_true": pd.NA if y_true is None else y_true, "n_slices": 0,
            "status": STATUS_FAILED, "reason": reason}  # fmt: skip


def _first_line_of(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def gradcam_figure(final: FinalModel, prediction: PatientPrediction, max_slices: int = 6, layer_name: str | None = None,
                   min_side: int = GRADCAM_MIN_SIDE):
    """Grad-CAM of the primary network (fused head) on up to ``max_slices`` of the patient's slices.

    The explained layer is ``layer_name``, by default the last feature map of the image
    pathway that is at least ``min_side`` pixels a side (the last one at the paper's
    224 px, 7 x 7; an earlier one at the small profiles' sizes, whose last map is 1 x 1
    or 2 x 2). Returns the figure (``gradcam.plot_gradcam``), or ``None`` when the folder
    holds no network.
    """
    from hccer_lib import gradcam

    name = next((m for m in PRIMARY_ORDER if m in final.networks), None)
    if name is None or len(prediction.images) == 0:
        return None
    layer_name = layer_name or gradcam.last_feature_map(final.networks[name], min_side)
    chosen = np.unique(np.linspace(0, len(prediction.images) - 1, min(max_slices, len(prediction.images))).round().astype(int))
    inputs = {"image": prediction.images[chosen]}
    if name != "deep_resnet50":
        inputs["clinical"] = np.repeat(prediction.clinical_bits, len(chosen), axis=0)
    heatmaps = gradcam.grad_cam(final.networks[name], inputs, layer_name=layer_name)
    slice_probs = prediction.slices[name].to_numpy()[chosen]
    titles = [f"slice {s}, P(ER) {p:.2f}" for s, p in zip(prediction.slices["slice"].to_numpy()[chosen], slice_probs, strict=True)]
    fig = gradcam.plot_gradcam(prediction.images[chosen], heatmaps, titles)
    synthetic = " (SYNTHETIC training cohort)" if final.manifest["cohort"].get("synthetic") else ""
    fig.suptitle(f"patient {prediction.patient_id}: P(ER) {prediction.probabilities[name]:.2f} ({name}){synthetic}\n"
                 f"Grad-CAM of the fused head at layer {layer_name}", fontsize=9)  # fmt: skip
    return fig
