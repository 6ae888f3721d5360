"""The final model's folder: everything it needs to predict, saved without pickles, read back with checks.

A :class:`FinalModel` (made by ``final_model.refit_final_model``) is saved in one folder
(:meth:`FinalModel.save`) that holds everything it needs to predict and no pickled Python
object:

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

Random forests and the radiomics pipeline are stored as arrays and numbers
(:mod:`hccer_lib.model_arrays`). Networks are read with
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

New patients are read by :mod:`hccer_lib.new_patients` and predicted by
:meth:`FinalModel.predict_patient` and ``prediction.predict_cohort``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import re
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from hccer_lib import __version__, outputs
from hccer_lib.clinical import LABEL_COLUMN
from hccer_lib.cohort import CohortError
from hccer_lib.evaluation import area_weighted_mean
from hccer_lib.model_arrays import (
    check_forest_arrays,
    forest_predict_proba,
    load_arrays,
    radiomics_transform,
    save_arrays,
)
from hccer_lib.models import FOREST_MODELS, MODEL_NAMES, NETWORK_MODELS, output_names
from hccer_lib.new_patients import PatientInputs, model_variables
from hccer_lib.prediction import PatientPrediction, predict_cohort

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


#: How closely a loaded model must reproduce its self-check probabilities. Forests are
#: exact arithmetic on stored arrays; networks may run on another backend or CPU/GPU.
FOREST_CHECK_TOLERANCE = 1e-12


NETWORK_CHECK_TOLERANCE = 1e-4


N_SELF_CHECK = 4


RESEARCH_NOTE = "Research software: not validated for clinical use."


SYNTHETIC_MODEL_NOTE = (
    "SYNTHETIC: this model was fitted on the generated stand-in cohort, not on patients; "
    "its probabilities say nothing about a real patient."
)


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

    @property
    def test_symmetries(self) -> bool:
        """The networks predict as in the cross-validation: averaged over the 8 symmetries when its profile did."""
        return bool(self.manifest["profile"].get("test_symmetries", False))

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
                result.update(network_probabilities(model, inputs, name, symmetries=self.test_symmetries))
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
        slices = pd.DataFrame({"patient_id": patient.patient_id, "slice": processed["slice"], "z_mm": processed["z_mm"],
                               "roi_area_mm2": processed["roi_area_mm2"]})
        per_slice = self.predict_arrays(image=processed["images"], clinical=np.repeat(bits, n, axis=0)) if self.networks else {}
        for name, values in per_slice.items():
            slices[name] = values
        # as in the study's tables (evaluation.patient_level): slices weighted by the tumour's area in them
        probabilities = {name: area_weighted_mean(values, processed["roi_area_mm2"]) for name, values in per_slice.items()}
        if "clinical_rf" in self.forests:
            probabilities.update({k: float(v[0]) for k, v in self.predict_arrays(clinical_rows=bits).items()})
        if "radiomics_rf" in self.forests:
            rows = self.radiomics_rows(patient)
            values = self.predict_arrays(radiomics_rows=rows[self.radiomics["feature_columns"]].to_numpy(dtype=float))["radiomics_rf"]
            two_d = self.manifest["radiomics"]["mode"] == "2d"
            probabilities["radiomics_rf"] = area_weighted_mean(values, rows["roi_area_mm2"]) if two_d else float(np.mean(values))
            if two_d:
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


def network_probabilities(model, inputs: dict, model_name: str, batch_size: int = 128,
                          symmetries: bool = False) -> dict[str, np.ndarray]:
    """Probability of early recurrence ``[n]`` of each head of a network (:func:`output_names`).

    The model is called eagerly (``training=False``) on batches of at most ``batch_size``
    images: a few slices of a patient are not worth tracing a prediction graph for. With
    ``symmetries``, each head's probability is the mean over the 8 symmetries of the square of
    the image (``training.turned_inputs``), as ``training.predict_probability`` predicts the
    folds; the 8 turned copies of ``batch_size // 8`` slices go through the network in one call
    (an eager call's cost is mostly per call, not per image: a patient's few slices in one
    call instead of eight).
    """
    import keras

    from hccer_lib.training import SYMMETRIES, turned_inputs

    names = [tensor.name for tensor in model.inputs]
    n = len(inputs["image"])
    transforms = SYMMETRIES if symmetries else (0,)
    per_call = max(1, batch_size // len(transforms))  # slices per call
    heads: dict[str, np.ndarray] = {}
    for begin in range(0, n, per_call):
        part = {name: inputs[name][begin : begin + per_call] for name in names}
        turned = [turned_inputs(part, transform) for transform in transforms]
        stacked = {name: np.concatenate([copy[name] for copy in turned]) for name in names}  # [transforms * m, ...]
        out = model(stacked, training=False)
        out = out if isinstance(out, dict) else {"fused": out}
        for head, values in out.items():
            if head not in heads:
                heads[head] = np.empty(n)
            per_transform = keras.ops.convert_to_numpy(values).astype(np.float64)[:, 1].reshape(len(transforms), -1)
            heads[head][begin : begin + per_call] = per_transform.mean(axis=0)
    result = {}
    for head, mean in heads.items():
        result[model_name if head == "fused" else f"{model_name}_{head}_head"] = mean
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


def peek_clinical_settings(model_folder: str | os.PathLike) -> dict | None:
    """The ``clinical`` settings of a model folder's manifest, read without any check (None when
    unreadable: :func:`load_final_model` then names the problem). For reading a patient folder
    before the model is loaded."""
    try:
        manifest = json.loads((Path(model_folder) / MANIFEST_FILE).read_text(encoding="utf-8"))
        return manifest["clinical"] if isinstance(manifest["clinical"], dict) else None
    except (OSError, ValueError, KeyError, TypeError):
        return None
