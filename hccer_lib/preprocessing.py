"""Multi-phase ROI preprocessing: crop, centre registration, resize, window, stack (paper II.B, Figure 2).

For every tumour-bearing slice of the reference phase (PV by default) the library

1. finds, in each other phase, the ROI slice at the same position *relative to that phase's
   ROI centre* (slices are matched by physical z in mm, never by index: phases have their
   own origins and slice thicknesses, 5 or 7 mm in the paper);
2. crops a square around each phase's ROI box centre (registration by the ROI centre point:
   the three centres are brought onto the image centre, a translation only) with the same
   physical side in every phase (the largest box extent of the three, plus an optional margin),
   so the three channels share one scale in mm;
3. resamples that square by linear interpolation onto ``image_size x image_size`` pixels;
4. windows Hounsfield units to ``[0, 1]`` (level 75 HU, width 350 HU by default: -100..250 HU);
5. stacks NC, ART, PV as the three channels of one image ``[H, W, 3]``.

:func:`build_dataset` runs this over a cohort (both cores, progress bar) and caches the result
in ``work_dir/processed/images_<key>.npz`` (+ ``.json`` with the settings), keyed by a hash of
the settings and a fingerprint of the cohort files' content; a rerun with the same settings reads
it back, and gets the same images as the run that built it.

Arrays: a CT volume from SimpleITK is ``[z, y, x]`` as numpy; a slice ``[y, x]``; the
processed images ``[n, H, W, 3]`` (channels NC, ART, PV).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk
from scipy import ndimage

from hccer_lib import outputs
from hccer_lib.cohort import PHASES

DEFAULT_REFERENCE_PHASE = "PV"
#: Window level and width in HU: -100..250 HU keeps liver (NC ~55 HU, PV ~110 HU), arterially
#: enhancing tumour (up to ~200 HU) and washout apart, and saturates fat/air and bone/dense contrast.
DEFAULT_WINDOW_LEVEL = 75.0
DEFAULT_WINDOW_WIDTH = 350.0
#: Bumped whenever the processing changes in a way that makes older caches wrong.
FORMAT_VERSION = 2  # 2: roi_area_mm2

log = logging.getLogger("hccer")


# --------------------------------------------------------------------------------------------
# Settings and the processed dataset
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PreprocessSettings:
    """Everything that changes the processed images; its hash keys the cache.

    Attributes:
        image_size: side of the output image, pixels.
        window_level, window_width: HU window mapped onto [0, 1].
        reference_phase: phase whose ROI slices define the samples (one sample per slice).
        margin: fraction of the square side added on each side of the ROI (0 = tight box).
        margin_mm: millimetres added on each side of the square after ``margin``. Unlike the
            fraction, a fixed margin leaves the tumour's size visible after the resize: the
            tumour fills ``s / (s + 2 * margin_mm)`` of a crop's side of ``s`` mm.
        tolerance_mm: largest allowed distance between the wanted and the matched slice of an
            other phase, mm; ``None`` = that phase's slice thickness (at most one slice off).
    """

    image_size: int = 64
    window_level: float = DEFAULT_WINDOW_LEVEL
    window_width: float = DEFAULT_WINDOW_WIDTH
    reference_phase: str = DEFAULT_REFERENCE_PHASE
    margin: float = 0.0
    tolerance_mm: float | None = None
    margin_mm: float = 0.0

    def __post_init__(self) -> None:
        if self.image_size < 2:
            raise ValueError(f"image_size must be >= 2 pixels, got {self.image_size}")
        if self.window_width <= 0:
            raise ValueError(f"window_width must be > 0 HU, got {self.window_width}")
        if self.reference_phase not in PHASES:
            raise ValueError(f"reference_phase must be one of {PHASES}, got {self.reference_phase!r}")
        if self.margin < 0:
            raise ValueError(f"margin must be >= 0, got {self.margin}")
        if self.margin_mm < 0:
            raise ValueError(f"margin_mm must be >= 0 mm, got {self.margin_mm}")


@dataclass
class ProcessedDataset:
    """The processed slice images of a cohort.

    Attributes:
        images: float32 ``[n, H, W, 3]``, channels NC, ART, PV, windowed to ``[0, 1]``.
        patient_id: str ``[n]``.
        z_mm: float ``[n]``, physical z of the reference-phase slice, mm.
        slice: int ``[n]``, slice index k in the reference phase.
        y_true: int ``[n]``, early recurrence label of the patient (0/1).
        phase_slices: int ``[n, 3]``, slice index used in NC, ART, PV.
        roi_area_mm2: float ``[n]``, area of the reference phase's ROI box in the slice, mm²:
            how much of the tumour the slice shows (``evaluation.patient_level`` weights a
            patient's slices by it).
        key: cache key (hash of settings and cohort fingerprint).
        settings: the settings (dict) that made the images.
        dropped: one row per reference slice without a match in another phase.
    """

    images: np.ndarray
    patient_id: np.ndarray
    z_mm: np.ndarray
    slice: np.ndarray
    y_true: np.ndarray
    phase_slices: np.ndarray
    roi_area_mm2: np.ndarray
    key: str
    settings: dict
    dropped: list[dict] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.patient_id)

    def table(self) -> pd.DataFrame:
        """One row per image: patient_id, slice, z_mm, y_true, roi_area_mm2, and the slice used per phase."""
        frame = pd.DataFrame({"patient_id": self.patient_id, "slice": self.slice, "z_mm": self.z_mm,
                              "y_true": self.y_true, "roi_area_mm2": self.roi_area_mm2})
        for j, phase in enumerate(PHASES):
            frame[f"slice_{phase}"] = self.phase_slices[:, j]
        return frame


# --------------------------------------------------------------------------------------------
# Building blocks (each tested on tiny volumes)
# --------------------------------------------------------------------------------------------


def window_hu(hu: np.ndarray, level: float = DEFAULT_WINDOW_LEVEL, width: float = DEFAULT_WINDOW_WIDTH) -> np.ndarray:
    """Map HU linearly so that ``level - width/2 -> 0`` and ``level + width/2 -> 1``, clipped.

    Args:
        hu: any shape, Hounsfield units.
    Returns:
        float32 array of the same shape in ``[0, 1]``; ``level`` maps to 0.5.
    """
    if width <= 0:
        raise ValueError(f"window width must be > 0 HU, got {width}")
    scaled = (np.asarray(hu, dtype=np.float64) - (level - width / 2.0)) / width
    return np.clip(scaled, 0.0, 1.0).astype(np.float32)


def box_geometry_mm(image: sitk.Image, box) -> tuple[np.ndarray, np.ndarray]:
    """Physical centre ``(x, y, z)`` and in-plane extent ``(width_x, width_y)`` of a slice box, mm.

    ``box`` has ``slice``, ``x_min``, ``x_max``, ``y_min``, ``y_max`` (inclusive voxel indices,
    ITK order); the extent covers whole voxels: ``(x_max - x_min + 1) * spacing_x``.
    """
    centre_index = ((box.x_min + box.x_max) / 2.0, (box.y_min + box.y_max) / 2.0, float(box.slice))
    centre = np.array(image.TransformContinuousIndexToPhysicalPoint(centre_index))
    spacing = image.GetSpacing()
    extent = np.array([(box.x_max - box.x_min + 1) * spacing[0], (box.y_max - box.y_min + 1) * spacing[1]])
    return centre, extent


def box_area_mm2(image: sitk.Image, box) -> float:
    """Area of a slice box, mm² (its in-plane extent, :func:`box_geometry_mm`): how much of the tumour the slice shows."""
    return float(np.prod(box_geometry_mm(image, box)[1]))


def slice_z_mm(image: sitk.Image, k: int) -> float:
    """Physical z (mm) of the centre of slice ``k``."""
    return float(image.TransformContinuousIndexToPhysicalPoint((0.0, 0.0, float(k)))[2])


def roi_centre_z_mm(z_values: list[float] | np.ndarray) -> float:
    """z of the ROI centre, mm: midway between the first and the last ROI slice centres."""
    z_values = np.asarray(z_values, dtype=float)
    if z_values.size == 0:
        raise ValueError("an ROI needs at least one slice")
    return float((z_values.min() + z_values.max()) / 2.0)


def match_slices(
    reference_z: list[float] | np.ndarray,
    reference_centre_z: float,
    other_z: list[float] | np.ndarray,
    other_centre_z: float,
    tolerance_mm: float,
) -> list[int | None]:
    """For each reference ROI slice, the position in ``other_z`` of the matching ROI slice.

    Registration by the ROI centre point in z: a reference slice at ``z`` wants the slice of the
    other phase at ``other_centre_z + (z - reference_centre_z)``; the nearest ROI slice of the
    other phase is taken when it lies within ``tolerance_mm`` of that position, else ``None``.
    Ties go to the lower position.

    Args:
        reference_z: physical z of the reference phase's ROI slices, mm.
        other_z: physical z of the other phase's ROI slices, mm.
    Returns:
        list, same length as ``reference_z``, of indices into ``other_z`` or ``None``.
    """
    other_z = np.asarray(other_z, dtype=float)
    if other_z.size == 0:
        return [None] * len(reference_z)
    matches: list[int | None] = []
    for z in np.asarray(reference_z, dtype=float):
        wanted = other_centre_z + (z - reference_centre_z)
        distance = np.abs(other_z - wanted)
        best = int(np.argmin(distance))
        matches.append(best if distance[best] <= tolerance_mm + 1e-6 else None)
    return matches


def resample_square(
    image: sitk.Image,
    k: int,
    centre_xy_mm: tuple[float, float] | np.ndarray,
    side_mm: float,
    size: int,
) -> np.ndarray:
    """Linear-interpolation resample of a square of slice ``k``, centred on a physical point.

    The output pixel ``(row i, column j)`` samples the physical point
    ``centre + (-side/2 + (j + 0.5) * side/size, -side/2 + (i + 0.5) * side/size)`` in (x, y),
    at the z of slice ``k`` (so the slice itself is read, never a blend of slices). Points
    outside the image take the nearest edge value.

    Args:
        image: 3-D SimpleITK image (HU), array ``[z, y, x]``.
        centre_xy_mm: physical (x, y) of the square centre, mm.
        side_mm: side of the square, mm.
    Returns:
        float32 ``[size, size]`` (rows = y, columns = x), HU.
    """
    if side_mm <= 0:
        raise ValueError(f"side_mm must be > 0, got {side_mm}")
    step = side_mm / size
    offsets = -side_mm / 2.0 + (np.arange(size) + 0.5) * step
    xs = centre_xy_mm[0] + offsets[None, :].repeat(size, 0)
    ys = centre_xy_mm[1] + offsets[:, None].repeat(size, 1)
    z = slice_z_mm(image, k)
    points = np.stack([xs.ravel(), ys.ravel(), np.full(xs.size, z)])  # [3, size*size], mm
    matrix = np.array(image.GetDirection()).reshape(3, 3) @ np.diag(image.GetSpacing())
    index = np.linalg.solve(matrix, points - np.array(image.GetOrigin())[:, None])  # (i, j, k) = (x, y, z)
    index[2] = np.round(index[2])  # stay on the slice itself
    volume = sitk.GetArrayViewFromImage(image)  # [z, y, x]
    values = ndimage.map_coordinates(volume, index[::-1], order=1, mode="nearest")
    return values.reshape(size, size).astype(np.float32)


def _slice_thickness(image: sitk.Image) -> float:
    return float(abs(image.GetSpacing()[2]))


def match_phase_boxes(
    images: dict[str, sitk.Image],
    boxes: dict[str, list],
    reference_phase: str = DEFAULT_REFERENCE_PHASE,
    tolerance_mm: float | None = None,
) -> tuple[list[dict], list[dict]]:
    """Group the ROI slice boxes of the three phases into matched triples, one per reference ROI slice.

    Args:
        images: phase -> 3-D SimpleITK image (for slice positions in mm).
        boxes: phase -> list of slice boxes (``slice``, ``x_min``, ``x_max``, ``y_min``, ``y_max``).
        tolerance_mm: see :class:`PreprocessSettings` (``None``: the other phase's slice thickness).
    Returns:
        ``(matched, dropped)``: ``matched`` is a list (in reference z order) of dicts with
        ``z_mm`` (reference slice z) and ``boxes`` (phase -> box); ``dropped`` lists the
        reference slices without a match (``slice``, ``z_mm``, ``unmatched`` phases).
    """
    missing = [p for p in PHASES if p not in images or not boxes.get(p)]
    if missing:
        raise ValueError(f"phases without image or ROI boxes: {missing}")
    per_phase = {}
    for phase in PHASES:
        phase_boxes = sorted(boxes[phase], key=lambda b: b.slice)
        z_values = [slice_z_mm(images[phase], b.slice) for b in phase_boxes]
        per_phase[phase] = {"boxes": phase_boxes, "z": z_values, "centre_z": roi_centre_z_mm(z_values)}
    reference = per_phase[reference_phase]
    matches = {}
    for phase in PHASES:
        tolerance = tolerance_mm
        if tolerance is None:
            tolerance = _slice_thickness(images[phase]) if phase != reference_phase else 0.0
        matches[phase] = match_slices(
            reference["z"], reference["centre_z"], per_phase[phase]["z"], per_phase[phase]["centre_z"], tolerance
        )
    matched, dropped = [], []
    for r, ref_box in enumerate(reference["boxes"]):
        unmatched = [p for p in PHASES if matches[p][r] is None]
        if unmatched:
            dropped.append({"slice": int(ref_box.slice), "z_mm": reference["z"][r], "unmatched": ",".join(unmatched)})
            continue
        chosen = {p: per_phase[p]["boxes"][matches[p][r]] for p in PHASES}
        matched.append({"z_mm": reference["z"][r], "slice": int(ref_box.slice), "boxes": chosen})
    return matched, dropped


def process_patient(
    images: dict[str, sitk.Image],
    boxes: dict[str, list],
    settings: PreprocessSettings,
    keep_steps: bool = False,
) -> dict:
    """Preprocess one patient: one 3-channel image per reference-phase ROI slice.

    Args:
        images: phase -> 3-D SimpleITK image in HU (``NC``, ``ART``, ``PV``).
        boxes: phase -> list of slice boxes (``slice``, ``x_min``, ``x_max``, ``y_min``,
            ``y_max``; inclusive voxel indices), e.g. from ``cohort.roi_boxes``.
        keep_steps: also return the intermediate steps for Figure 2.
    Returns:
        dict with ``images`` float32 ``[n, S, S, 3]``, ``z_mm`` ``[n]``, ``slice`` ``[n]``,
        ``phase_slices`` ``[n, 3]``, ``roi_area_mm2`` ``[n]`` (the reference phase's box, mm²),
        ``dropped`` (list of dicts), and ``steps`` when asked.
    """
    size = settings.image_size
    matched, dropped = match_phase_boxes(images, boxes, settings.reference_phase, settings.tolerance_mm)
    out_images, out_z, out_slice, out_phase_slices, out_area, steps = [], [], [], [], [], []
    for match in matched:
        chosen = match["boxes"]
        geometry = {p: box_geometry_mm(images[p], chosen[p]) for p in PHASES}
        largest = max(float(extent.max()) for _, extent in geometry.values())
        side = largest * (1.0 + 2.0 * settings.margin) + 2.0 * settings.margin_mm
        channels_hu = [resample_square(images[p], chosen[p].slice, geometry[p][0][:2], side, size) for p in PHASES]
        windowed = [window_hu(c, settings.window_level, settings.window_width) for c in channels_hu]
        out_images.append(np.stack(windowed, axis=-1))
        out_z.append(match["z_mm"])
        out_slice.append(match["slice"])
        out_phase_slices.append([int(chosen[p].slice) for p in PHASES])
        out_area.append(box_area_mm2(images[settings.reference_phase], chosen[settings.reference_phase]))
        if keep_steps:
            steps.append({"boxes": chosen, "geometry": geometry, "side_mm": side, "resized_hu": channels_hu})
    result = {
        "images": np.asarray(out_images, dtype=np.float32).reshape(-1, size, size, 3),
        "z_mm": np.asarray(out_z, dtype=float),
        "slice": np.asarray(out_slice, dtype=int),
        "phase_slices": np.asarray(out_phase_slices, dtype=int).reshape(-1, 3),
        "roi_area_mm2": np.asarray(out_area, dtype=float),
        "dropped": dropped,
    }
    if keep_steps:
        result["steps"] = steps
    return result


# --------------------------------------------------------------------------------------------
# The cohort dataset, cached
# --------------------------------------------------------------------------------------------


def cohort_fingerprint(cohort_dir: str | os.PathLike) -> str:
    """Hash of the cohort's content: ``clinical.csv``, ``roi_boxes.csv`` and every file under
    ``images/`` (its path relative to the cohort folder and the sha256 of its bytes).

    Neither the folder's location nor file times enter it, so the same cohort gets the same
    cache keys in another clone, after a copy or a ``touch``. Each file's sha256 is computed
    once per process and file version (:func:`_file_sha256`).
    """
    cohort_dir = Path(cohort_dir)
    digest = hashlib.sha256()
    for name in ("clinical.csv", "roi_boxes.csv"):
        path = cohort_dir / name
        digest.update(name.encode())
        digest.update(path.read_bytes() if path.exists() else b"<absent>")
    images_dir = cohort_dir / "images"
    for path in sorted(images_dir.rglob("*")) if images_dir.exists() else []:
        if path.is_file():
            stat = path.stat()
            sha = _file_sha256(str(path.resolve()), stat.st_size, stat.st_mtime_ns)
            digest.update(f"{path.relative_to(cohort_dir).as_posix()}|{sha}\n".encode())
    return digest.hexdigest()[:16]


@functools.lru_cache(maxsize=8192)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    """sha256 of a file's bytes; ``size`` and ``mtime_ns`` only key the cache (a changed file is hashed again)."""
    del size, mtime_ns
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def dataset_key(settings: PreprocessSettings, fingerprint: str) -> str:
    """12-hex-digit key of a processed dataset: settings, cohort fingerprint and format version."""
    return outputs.settings_key({"settings": asdict(settings), "cohort": fingerprint, "format": FORMAT_VERSION})


def _dataset_paths(work_dir: str | os.PathLike, key: str) -> tuple[Path, Path]:
    base = Path(work_dir) / "processed" / f"images_{key}"
    return base.with_suffix(".npz"), base.with_suffix(".json")


def load_patient_inputs(cohort_dir: str | os.PathLike, patient_id: str) -> tuple[dict, dict]:
    """The three phase images and their ROI slice boxes of one patient (via ``hccer_lib.cohort``)."""
    from hccer_lib import cohort

    phases = cohort.load_patient(cohort_dir, patient_id)
    return {p: image for p, (image, _) in phases.items()}, {p: boxes for p, (_, boxes) in phases.items()}


def map_patients(worker, tasks: list, n_jobs: int, desc: str, progress: bool = True, chunksize: int = 1) -> list:
    """``[worker(task) for task in tasks]``, in order, over ``n_jobs`` processes when above 1, with a progress bar."""
    from tqdm import tqdm

    results = []
    with tqdm(total=len(tasks), desc=desc, unit="patient", disable=not progress) as bar:
        if n_jobs > 1:
            with ProcessPoolExecutor(max_workers=n_jobs) as pool:
                for result in pool.map(worker, tasks, chunksize=chunksize):
                    results.append(result)
                    bar.update()
        else:
            for task in tasks:
                results.append(worker(task))
                bar.update()
    return results


def _process_one(args: tuple[str, str, PreprocessSettings]) -> tuple[str, dict]:
    cohort_dir, patient_id, settings = args
    images, boxes = load_patient_inputs(cohort_dir, patient_id)
    return patient_id, process_patient(images, boxes, settings)


def build_dataset(
    cohort_dir: str | os.PathLike,
    work_dir: str | os.PathLike,
    image_size: int,
    window: tuple[float, float] = (DEFAULT_WINDOW_LEVEL, DEFAULT_WINDOW_WIDTH),
    seed: int | None = None,
    reference_phase: str = DEFAULT_REFERENCE_PHASE,
    margin: float = 0.0,
    tolerance_mm: float | None = None,
    margin_mm: float = 0.0,
    n_jobs: int | None = None,
    force: bool = False,
    progress: bool = True,
) -> ProcessedDataset:
    """Preprocess every patient of a cohort, or read the cached result made with the same settings.

    Args:
        cohort_dir: cohort folder (``clinical.csv``, ``images/<patient_id>/...``).
        work_dir: where ``processed/images_<key>.npz`` and ``.json`` go.
        image_size: side of the output images, pixels.
        window: (level, width) in HU.
        seed: accepted for a uniform signature; preprocessing has nothing random, so it is
            not part of the cache key.
        n_jobs: worker processes over patients (default: one per core, at most one per patient).
        force: rebuild even when a cache with this key exists.
    Returns:
        :class:`ProcessedDataset`; images float32 ``[n, image_size, image_size, 3]``, rounded as
        the cache stores them (:func:`as_stored`) whether built now or read back.
    """
    from hccer_lib import cohort

    del seed  # nothing random here
    settings = PreprocessSettings(
        image_size=int(image_size),
        window_level=float(window[0]),
        window_width=float(window[1]),
        reference_phase=reference_phase,
        margin=float(margin),
        tolerance_mm=tolerance_mm,
        margin_mm=float(margin_mm),
    )
    key = dataset_key(settings, cohort_fingerprint(cohort_dir))
    npz_path, json_path = _dataset_paths(work_dir, key)
    if npz_path.exists() and json_path.exists() and not force:
        log.info("preprocessing: reading cached dataset %s", npz_path.name)
        return load_dataset(work_dir, key)

    clinical = cohort.load_clinical(cohort_dir)
    labels = dict(zip(clinical["patient_id"].astype(str), clinical["early_recurrence"].astype(int), strict=True))
    patients = list(clinical["patient_id"].astype(str))
    log.info("preprocessing: %d patients -> %s", len(patients), npz_path)
    n_jobs = n_jobs or min(len(patients), os.cpu_count() or 1)
    tasks = [(str(cohort_dir), pid, settings) for pid in patients]
    results = dict(map_patients(_process_one, tasks, n_jobs, "preprocess patients", progress, chunksize=4))

    parts = [results[pid] for pid in patients]
    counts = [len(r["slice"]) for r in parts]
    dropped = [{"patient_id": pid, **d} for pid in patients for d in results[pid]["dropped"]]
    dataset = ProcessedDataset(
        images=as_stored(np.concatenate([r["images"] for r in parts])),
        patient_id=np.repeat(np.array(patients, dtype=str), counts),
        z_mm=np.concatenate([r["z_mm"] for r in parts]),
        slice=np.concatenate([r["slice"] for r in parts]),
        y_true=np.repeat(np.array([labels[pid] for pid in patients], dtype=int), counts),
        phase_slices=np.concatenate([r["phase_slices"] for r in parts]),
        roi_area_mm2=np.concatenate([r["roi_area_mm2"] for r in parts]),
        key=key,
        settings=asdict(settings),
        dropped=dropped,
    )
    save_dataset(work_dir, dataset, cohort_dir=cohort_dir)
    return dataset


#: dtype of the cached images on disk: float16 (~0.2 HU at the default 350 HU window).
IMAGES_DTYPE_ON_DISK = np.float16


def as_stored(images: np.ndarray) -> np.ndarray:
    """float32 ``images`` rounded as the cache stores them (:data:`IMAGES_DTYPE_ON_DISK`).

    :func:`build_dataset` returns these values on the run that builds the cache too, so that
    the first run and every later one (reading the cache) see the same images: the same
    training inputs, the same figures (``fig_processed_samples.png``) byte for byte.
    """
    return np.asarray(images).astype(IMAGES_DTYPE_ON_DISK).astype(np.float32)


def save_dataset(work_dir: str | os.PathLike, dataset: ProcessedDataset, cohort_dir: str | os.PathLike = "") -> Path:
    """Write ``images_<key>.npz`` (images stored as float16, ~0.2 HU resolution) and its ``.json``, atomically."""
    npz_path, json_path = _dataset_paths(work_dir, dataset.key)
    npz_path.parent.mkdir(parents=True, exist_ok=True)
    with outputs.atomic_path(npz_path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(
                handle,
                images=dataset.images.astype(IMAGES_DTYPE_ON_DISK),
                patient_id=dataset.patient_id.astype(str),
                z_mm=dataset.z_mm,
                slice=dataset.slice,
                y_true=dataset.y_true,
                phase_slices=dataset.phase_slices,
                roi_area_mm2=dataset.roi_area_mm2,
            )
    outputs.write_json(
        json_path,
        {
            "key": dataset.key,
            "settings": dataset.settings,
            "format": FORMAT_VERSION,
            "cohort": Path(cohort_dir).name,
            "n_images": len(dataset),
            "n_patients": int(len(np.unique(dataset.patient_id))),
            "images_dtype_on_disk": np.dtype(IMAGES_DTYPE_ON_DISK).name,
            "channels": list(PHASES),
            "dropped": dataset.dropped,
        },
    )
    return npz_path


def load_dataset(work_dir: str | os.PathLike, key: str | PreprocessSettings | dict) -> ProcessedDataset:
    """Read a cached dataset by key (or, given settings, by the newest cache made with them)."""
    if not isinstance(key, str):
        wanted = asdict(key) if isinstance(key, PreprocessSettings) else dict(key)
        candidates = []
        for path in (Path(work_dir) / "processed").glob("images_*.json"):
            meta = json.loads(path.read_text())
            if meta.get("settings") == wanted and meta.get("format") == FORMAT_VERSION:
                candidates.append((path.stat().st_mtime, meta["key"]))
        if not candidates:
            raise FileNotFoundError(f"no processed dataset in {work_dir}/processed with settings {wanted}")
        key = max(candidates)[1]
    npz_path, json_path = _dataset_paths(work_dir, key)
    if not npz_path.exists() or not json_path.exists():
        raise FileNotFoundError(f"no processed dataset {npz_path}")
    meta = json.loads(json_path.read_text())
    with np.load(npz_path) as arrays:
        return ProcessedDataset(
            images=arrays["images"].astype(np.float32),
            patient_id=arrays["patient_id"].astype(str),
            z_mm=arrays["z_mm"],
            slice=arrays["slice"],
            y_true=arrays["y_true"],
            phase_slices=arrays["phase_slices"],
            roi_area_mm2=arrays["roi_area_mm2"],
            key=meta["key"],
            settings=meta["settings"],
            dropped=meta.get("dropped", []),
        )


_STUDY_FIELDS = ("window_level", "window_width", "reference_phase", "margin", "tolerance_mm", "margin_mm")


def study_settings_path(work_dir: str | os.PathLike, profile) -> Path:
    """``<work_dir>/processed/study_settings_<profile>.json``: one per profile, whose margin differs."""
    name = profile if isinstance(profile, str) else profile.name
    return Path(work_dir) / "processed" / f"study_settings_{name}.json"


def record_study_settings(work_dir: str | os.PathLike, settings: PreprocessSettings | dict, profile) -> Path:
    """Record the preprocessing chosen for the study (notebook 02) for every later stage of ``profile``'s runs.

    Writes :func:`study_settings_path`: window, reference phase, margins and slice tolerance
    (not the image size, which each profile sets). The deep notebooks, the final model and
    the report read it through :func:`study_dataset`, so a non-default window chosen in
    notebook 02 reaches them all; a run of another profile never reads it.
    """
    values = asdict(settings) if isinstance(settings, PreprocessSettings) else dict(settings)
    chosen = {name: values[name] for name in _STUDY_FIELDS}
    PreprocessSettings(**chosen)  # refuse invalid settings before recording them
    return outputs.write_json(study_settings_path(work_dir, profile), chosen)


def study_settings(work_dir: str | os.PathLike, profile) -> PreprocessSettings:
    """The study's preprocessing for ``profile`` (a ``profiles.Profile``): as notebook 02 recorded it,
    else the defaults with the profile's ``image_size`` and ``roi_margin``."""
    path = study_settings_path(work_dir, profile)
    recorded = json.loads(path.read_text()) if path.is_file() else {}
    unknown = sorted(set(recorded) - set(_STUDY_FIELDS))
    if unknown:
        raise ValueError(f"{path}: unknown preprocessing settings {unknown}")
    return PreprocessSettings(image_size=int(profile.image_size), **{"margin": float(profile.roi_margin), **recorded})


def study_dataset(
    cohort_dir: str | os.PathLike, work_dir: str | os.PathLike, profile, n_jobs: int | None = None, progress: bool = True,
) -> ProcessedDataset:
    """The processed dataset of the study for ``profile`` (:func:`study_settings`), read from the cache or built."""
    return dataset_with(cohort_dir, work_dir, study_settings(work_dir, profile), n_jobs=n_jobs, progress=progress)


def dataset_with(
    cohort_dir: str | os.PathLike, work_dir: str | os.PathLike, settings: PreprocessSettings, n_jobs: int | None = None,
    progress: bool = True,
) -> ProcessedDataset:
    """:func:`build_dataset` with every field of ``settings``: read from the cache or built."""
    return build_dataset(
        cohort_dir,
        work_dir,
        settings.image_size,
        window=(settings.window_level, settings.window_width),
        reference_phase=settings.reference_phase,
        margin=settings.margin,
        tolerance_mm=settings.tolerance_mm,
        margin_mm=settings.margin_mm,
        n_jobs=n_jobs,
        progress=progress,
    )


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------


def plot_preprocessing_steps(
    images: dict[str, sitk.Image],
    boxes: dict[str, list],
    settings: PreprocessSettings,
    sample: int | None = None,
    title: str = "",
):
    """Figure 2 for one patient: original phases with ROI, crops, centre registration, resize, window, RGB stack.

    ``sample`` picks the reference ROI slice (default: the middle one). Returns the figure.
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    result = process_patient(images, boxes, settings, keep_steps=True)
    if len(result["slice"]) == 0:
        raise ValueError("this patient has no matched slice to draw")
    sample = len(result["slice"]) // 2 if sample is None else sample
    step = result["steps"][sample]
    lo, hi = settings.window_level - settings.window_width / 2, settings.window_level + settings.window_width / 2
    rows = ["original + ROI", "cropped ROI", "centre registration", "resized (linear)", "windowed [0, 1]"]
    fig, axes = plt.subplots(len(rows), 4, figsize=(11, 13.5))
    for j, phase in enumerate(PHASES):
        box = step["boxes"][phase]
        centre, _ = step["geometry"][phase]
        array = sitk.GetArrayViewFromImage(images[phase])[box.slice]  # [y, x]
        axes[0, j].imshow(array, cmap="gray", vmin=lo, vmax=hi)
        axes[0, j].add_patch(
            Rectangle((box.x_min - 0.5, box.y_min - 0.5), box.x_max - box.x_min + 1, box.y_max - box.y_min + 1,
                      fill=False, edgecolor="red", linewidth=1.2)
        )
        axes[0, j].set_title(f"{phase}: slice {box.slice}, z = {slice_z_mm(images[phase], box.slice):.1f} mm", fontsize=8)
        crop = array[box.y_min : box.y_max + 1, box.x_min : box.x_max + 1]
        axes[1, j].imshow(crop, cmap="gray", vmin=lo, vmax=hi)
        axes[1, j].set_title(f"{crop.shape[1]} x {crop.shape[0]} voxels", fontsize=8)
        # centre registration: the same physical square around each phase's own ROI centre, native pixels
        native = max(2, int(round(step["side_mm"] / images[phase].GetSpacing()[0])))
        square = resample_square(images[phase], box.slice, centre[:2], step["side_mm"], native)
        axes[2, j].imshow(square, cmap="gray", vmin=lo, vmax=hi)
        axes[2, j].axhline(native / 2 - 0.5, color="yellow", lw=0.6)
        axes[2, j].axvline(native / 2 - 0.5, color="yellow", lw=0.6)
        axes[2, j].set_title(f"{step['side_mm']:.1f} mm square on ROI centre", fontsize=8)
        axes[3, j].imshow(step["resized_hu"][j], cmap="gray", vmin=lo, vmax=hi)
        axes[3, j].set_title(f"{settings.image_size} x {settings.image_size} px, HU", fontsize=8)
        axes[4, j].imshow(result["images"][sample][..., j], cmap="gray", vmin=0, vmax=1)
        axes[4, j].set_title(f"[{lo:.0f}, {hi:.0f}] HU -> [0, 1]", fontsize=8)
    for i, label in enumerate(rows):
        axes[i, 3].axis("off")
        axes[i, 0].set_ylabel(label, fontsize=9)
    axes[4, 3].imshow(result["images"][sample])
    axes[4, 3].axis("on")
    axes[4, 3].set_title("stacked: R = NC, G = ART, B = PV", fontsize=8)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title or "Preprocessing (paper Figure 2)", fontsize=11)
    fig.tight_layout()
    return fig


def plot_samples(dataset: ProcessedDataset, n_per_class: int = 6, seed: int = 0, title: str = ""):
    """Grid of processed RGB images (R = NC, G = ART, B = PV): ``n_per_class`` NER rows above ER rows."""
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(seed)
    fig, axes = plt.subplots(2, n_per_class, figsize=(1.6 * n_per_class, 4.2), squeeze=False)
    for row, (label, name) in enumerate([(0, "NER"), (1, "ER")]):
        candidates = np.flatnonzero(dataset.y_true == label)
        chosen = rng.choice(candidates, size=min(n_per_class, len(candidates)), replace=False) if len(candidates) else []
        for col in range(n_per_class):
            ax = axes[row, col]
            ax.set_xticks([])
            ax.set_yticks([])
            if col < len(chosen):
                i = chosen[col]
                ax.imshow(dataset.images[i])
                ax.set_title(f"{dataset.patient_id[i]} k={dataset.slice[i]}", fontsize=6)
        axes[row, 0].set_ylabel(name, fontsize=10)
    fig.suptitle(title or "Processed ROI images (R = NC, G = ART, B = PV)", fontsize=10)
    fig.tight_layout()
    return fig
