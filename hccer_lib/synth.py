"""The seeded synthetic triple-phase CT cohort: a stand-in for the paper's private cohort.

``generate_cohort(out, SynthConfig(seed=2020))`` writes a cohort folder in the format of
docs/DESIGN.md ("The cohort folder"):

- ``clinical.csv``: 167 patients (65 ER, 102 NER) whose 17 clinical variables, binarised
  with the paper's cut-offs (:func:`hccer_lib.clinical.binarise`), give the counts of the
  paper's Table 1 *exactly*, per class, for every seed. The categories are assigned
  first, inside each class, by ranking a latent Gaussian score per variable (a Gaussian
  copula) and giving the abnormal level to the top ``k`` (``k`` = the paper's count); raw
  values are then drawn inside each category, never within ``CUTOFF_MARGIN`` of a cut-off.
  The latent scores share factors (clinical risk, liver dysfunction, hepatitis activity,
  cholestasis), so the variables depend on each other as in patients, and these rules
  hold whenever the paper's counts allow them (``DEPENDENCY_RULES``):

  * BCLC C goes to patients with portal vein invasion (ER has 18 C for 17 PVI: one C
    without PVI, e.g. for performance status); PVI goes with BCLC C (NER has 7 PVI for
    6 C: one PVI patient stays A);
  * BCLC B only with multiple tumours; BCLC 0 only with a single tumour of 10-20 mm,
    no PVI and Child-Pugh A;
  * Child-Pugh B only with TB >= 20.5 umol/L; ALB < 40 g/L only with Child-Pugh B;
    cirrhosis preferred with Child-Pugh B; tumour size, PVI, AFP, NLR, AKP, GGT and AST
    rise with the latent clinical risk.
- ``images/<patient_id>/{NC,ART,PV}.nii.gz`` (int16, HU) and ``<phase>_roi.nii.gz``
  (uint8, the tumour's per-slice bounding box filled with 1, in that phase's geometry),
  plus ``roi_boxes.csv`` with the same boxes. A liver-region field of view (liver
  parenchyma with texture and noise, vessels, a fat corner) holds an ellipsoidal tumour
  with a lobulated margin whose largest diameter is ``tumor_size_mm``: hypo-attenuating
  on NC, hyper-enhancing on ART, washing out with an enhancing capsule on PV. Each phase
  has its own breathing offset (anatomy shifted a few mm) and its own z origin, so the
  phases are not registered; spacing 0.6-0.8 mm in-plane, slices 5 or 7 mm thick.
  A patient with ``tumor_number`` > 1 gets extra small nodules 10-14 mm beyond the main
  tumour (outside its ROI); portal vein invasion is not drawn.
- Early recurrence shows in the images through a latent image-risk score per patient,
  ``z_img = image_label_effect * label + clinical_coupling * r_clin + N(0, 1)`` (``r_clin``:
  the patient's latent clinical risk within its class). Five traits follow from ``z_img``
  plus independent noise (``trait_noise``): necrosis fraction, texture heterogeneity,
  margin irregularity, rim (corona) enhancement on ART and satellite nodules. Necrosis
  and heterogeneity lie inside the tumour; the corona (0-3 mm) and the satellites
  (0.5-4 mm) lie just outside its margin, so an ROI-box crop shows them only in part.
- ``ground_truth.csv`` (latent scores, traits and oracle risk scores per patient),
  ``ground_truth.json`` (generator version, settings, counts, annotated slices, oracle
  AUCs) and ``README.md``. The oracles (:func:`oracle_aucs`) are the ceilings of the
  models: risk scores fitted on a large population drawn from this same generative
  process (not on the cohort's labels), from the binarised clinical variables, from
  everything the images show, or from both.

The same seed gives a byte-identical ``clinical.csv`` and identical voxels; every patient
draws from its own ``np.random.SeedSequence(seed)`` child, so the result does not depend
on the number of worker processes.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import uuid
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk
from scipy import ndimage

from hccer_lib import outputs
from hccer_lib.clinical import PAPER_N_ER, PAPER_N_NER, PAPER_TABLE1, binarise
from hccer_lib.cohort import PHASES

logger = logging.getLogger("hccer")

GENERATOR = "hccer_lib.synth"
GENERATOR_VERSION = "1.1"  # 1.1: weaker image signal (0.8, coupling 0.1), population-fitted oracles
REFERENCE_PHASE = "PV"  # annotated slices are counted on this phase

CLINICAL_COLUMNS = (
    "patient_id", "early_recurrence", "sex", "age", "tumor_size_mm", "tumor_number",
    "portal_vein_invasion", "cirrhosis", "hbv", "nlr", "alt", "ast", "akp", "ggt", "alb",
    "tb", "afp", "child_pugh", "bclc",
)  # fmt: skip

# Raw value ranges per level: (range of the first level in PAPER_TABLE1, range of the
# second level); each keeps CUTOFF_MARGIN away from the cut-off (rounding included).
RAW_RANGES: dict[str, tuple[tuple[float, float], tuple[float, float]]] = {
    "age": ((30, 57), (62, 80)),  # years, whole
    "tumor_size_mm": ((10, 46), (54, 130)),  # mm, whole
    "nlr": ((0.8, 2.5), (3.1, 9.0)),
    "alt": ((8, 36), (44, 320)),  # U/L, whole
    "ast": ((12, 45), (55, 320)),
    "akp": ((40, 114), (136, 420)),
    "ggt": ((10, 41), (49, 600)),
    "alb": ((42.0, 52.0), (30.0, 38.0)),  # g/L; the first level is ">=40"
    "tb": ((5.0, 18.5), (22.5, 80.0)),  # umol/L
    "afp": ((0.8, 8.0), (10.0, 20000.0)),  # ug/L
}
CUTOFF_MARGIN: dict[str, float] = {
    "age": 2, "tumor_size_mm": 4, "nlr": 0.3, "alt": 4, "ast": 5, "akp": 11, "ggt": 4,
    "alb": 2, "tb": 2, "afp": 1,
}  # fmt: skip
BCLC0_SIZE_MM = (10, 20)  # BCLC 0: a single tumour <= 2 cm

DEPENDENCY_RULES = (
    "BCLC C -> portal vein invasion, except max(0, n_C - n_PVI) patients per class",
    "portal vein invasion -> BCLC C, except max(0, n_PVI - n_C) patients per class",
    "BCLC B -> multiple tumours (while n_B <= n_multiple)",
    "BCLC 0 -> single tumour of 10-20 mm, no portal vein invasion, Child-Pugh A",
    "Child-Pugh B -> TB >= 20.5 (while n_B <= n_TB_high); ALB < 40 -> Child-Pugh B",
    "tumour size >= 50 mm <-> largest in-plane ROI extent >= 50 mm in the images",
)

# Mean HU per tissue and phase (NC, ART, PV); each patient jitters them by a few HU.
TISSUE_HU: dict[str, tuple[float, float, float]] = {
    "fat": (-95.0, -95.0, -95.0),
    "liver": (55.0, 75.0, 110.0),
    "vessel": (40.0, 140.0, 170.0),
    "tumour": (40.0, 120.0, 86.0),  # hypo on NC, hyper on ART, wash-out on PV
    "capsule": (46.0, 72.0, 150.0),  # enhancing capsule on PV
    "necrosis": (22.0, 26.0, 28.0),
}
# Tissue codes of the in-memory label map (PatientVolumes.tissue); not written to disk.
TISSUE_CODES = {"fat": 0, "liver": 1, "vessel": 2, "corona": 3, "tumour": 4, "necrosis": 5,
                "capsule": 6, "satellite": 7, "nodule": 8}  # fmt: skip
RIM_BY_PHASE = {"NC": 0.0, "ART": 1.0, "PV": 0.25}  # corona enhancement: arterial, fading on PV
TRAITS = ("necrosis_fraction", "heterogeneity_hu", "margin_irregularity", "rim_enhancement_hu", "n_satellites")


@dataclass(frozen=True)
class SynthConfig:
    """Settings of the synthetic cohort; the defaults make the study's default cohort.

    Attributes:
        seed: root seed; everything random derives from ``np.random.SeedSequence(seed)``.
        n_patients: write only the first ``n`` patients (``HCC001`` ...; labels mixed) for
            tests and quick looks; ``None`` writes all 167. Every patient is the same as
            in the full cohort; Table 1 counts are exact for the full cohort only.
        image_label_effect: shift of the latent image score ``z_img`` between ER and NER,
            in units of its within-class noise SD (0 = images carry no label signal).
            The default 0.8 makes the image oracle about as strong as the clinical one
            (population AUCs about 0.75-0.79 each) and their union clearly stronger
            (about 0.83), the paper's pattern (clinical RF 0.75, deep image model 0.72,
            fusion 0.82); 1.0 (generator 1.0) gave images the upper hand.
        clinical_coupling: weight of the latent clinical risk ``r_clin`` (within-class
            SD 1) in ``z_img``; 0 makes the latent image traits and the clinical
            variables independent within a class (the images still show tumour size,
            number and cirrhosis). The default 0.1 keeps the two modalities mostly
            independent, so that fusing them pays.
        trait_noise: SD of the independent noise added to ``z_img`` for each trait.
        satellite_rate: mean number of satellite nodules at a high ``z_img``.
        z_axis_ratio: mean ratio of the tumour's z semi-axis to its in-plane semi-major
            axis; sets the number of tumour-bearing slices (about 765 in all).
        spacing_range_mm: in-plane pixel spacing is drawn uniformly in this range.
        slice_thicknesses_mm: slice thickness (= z spacing) is one of these.
        breathing_mm: largest anatomy shift of a phase along x, y, z (breathing).
        noise_hu: range of the SD of the Gaussian image noise, HU.
    """

    seed: int = 2020
    n_patients: int | None = None
    image_label_effect: float = 0.8
    clinical_coupling: float = 0.1
    trait_noise: float = 0.6
    satellite_rate: float = 2.0
    z_axis_ratio: float = 0.56
    spacing_range_mm: tuple[float, float] = (0.6, 0.8)
    slice_thicknesses_mm: tuple[float, ...] = (5.0, 7.0)
    breathing_mm: tuple[float, float, float] = (3.0, 3.0, 6.0)
    noise_hu: tuple[float, float] = (8.0, 12.0)

    def __post_init__(self):
        if self.n_patients is not None and not 1 <= self.n_patients <= PAPER_N_ER + PAPER_N_NER:
            raise ValueError(f"n_patients must be None or 1..{PAPER_N_ER + PAPER_N_NER}, got {self.n_patients}")
        lo, hi = self.spacing_range_mm
        if not 0 < lo <= hi:
            raise ValueError(f"spacing_range_mm must be 0 < low <= high, got {self.spacing_range_mm}")
        if self.z_axis_ratio <= 0 or self.trait_noise < 0 or self.satellite_rate < 0:
            raise ValueError("z_axis_ratio must be > 0, trait_noise and satellite_rate >= 0")


@dataclass
class CohortPlan:
    """Everything decided at cohort level, before any image is drawn.

    Attributes:
        config: the settings.
        clinical: the ``clinical.csv`` frame (all 167 patients, sorted by ``patient_id``).
        truth: per patient: ``patient_id``, ``label``, ``r_clin``, ``z_img``, the
            ``TRAITS``, and the geometry (``spacing_mm``, ``thickness_mm``, axes in mm).
        seeds: per patient (same order), the ``SeedSequence`` of its images.
    """

    config: SynthConfig
    clinical: pd.DataFrame
    truth: pd.DataFrame
    seeds: list[np.random.SeedSequence] = field(repr=False)


@dataclass
class PatientVolumes:
    """The three phases of one synthetic patient, in memory.

    Attributes:
        patient_id: e.g. ``"HCC007"``.
        images: per phase, a SimpleITK int16 image (HU), array view ``[z, y, x]``.
        rois: per phase, the uint8 ROI label (per-slice tumour box = 1), same geometry.
        tissue: per phase, uint8 ``[z, y, x]`` tissue codes (``TISSUE_CODES``), for tests.
        offsets_mm: per phase, the breathing shift ``(x, y, z)`` of the anatomy, mm.
    """

    patient_id: str
    images: dict[str, sitk.Image]
    rois: dict[str, sitk.Image]
    tissue: dict[str, np.ndarray]
    offsets_mm: dict[str, tuple[float, float, float]]


# %% Clinical table ---------------------------------------------------------------------


def _top_k(score: np.ndarray, k: int, preferred: np.ndarray | None = None) -> np.ndarray:
    """Boolean mask of ``k`` patients along the last axis: the preferred ones first, each
    group by score (``score [..., n]``; leading axes are independent replicate classes)."""
    if preferred is None:
        preferred = np.zeros(score.shape, dtype=bool)
    order = np.lexsort((-score, ~preferred), axis=-1)  # last key first: preferred, then high score
    mask = np.zeros(score.shape, dtype=bool)
    np.put_along_axis(mask, order[..., :k], True, axis=-1)
    return mask


def _class_levels(
    shape: int | tuple[int, int], counts: dict[str, tuple[int, ...]], rng: np.random.Generator
) -> tuple[pd.DataFrame, np.ndarray]:
    """Assign Table 1 levels to the patients of one class.

    Args:
        shape: ``n`` (the class of the cohort) or ``(replicates, n)``: independent copies
            of the class, each with the exact counts (the oracle's population).
        counts: per column, the paper's count of each level (PAPER_TABLE1 order).

    Returns:
        (levels frame with the PAPER_TABLE1 level labels, latent clinical risk), one row
        per patient, replicates one after the other.
    """

    def noise() -> np.ndarray:
        return rng.standard_normal(shape)

    def second(column: str, mask: np.ndarray) -> np.ndarray:
        first_label, second_label = (lvl for lvl, *_ in PAPER_TABLE1[column][0])
        return np.where(mask, second_label, first_label)

    risk, liver, hepatitis, cholestasis = noise(), noise(), noise(), noise()
    liver = 0.3 * risk + 0.95 * liver
    size_score = 0.6 * risk + 0.8 * noise()
    k = {col: c[1] for col, c in counts.items() if col != "bclc"}  # patients in the 2nd level

    large = _top_k(size_score, k["tumor_size_mm"])
    pvi = _top_k(0.5 * risk + 0.5 * size_score + 0.7 * noise(), k["portal_vein_invasion"])
    multiple = _top_k(0.3 * risk + noise(), k["tumor_number"])
    tb_high = _top_k(0.8 * liver + 0.6 * noise(), k["tb"])
    cp_score = liver + 0.5 * noise()
    cp_b = _top_k(cp_score, k["child_pugh"], preferred=tb_high)
    alb_low = _top_k(cp_score + 0.5 * noise(), k["alb"], preferred=cp_b)
    levels = {
        "sex": second("sex", _top_k(noise(), k["sex"])),
        "age": second("age", _top_k(-0.2 * risk + noise(), k["age"])),
        "tumor_size_mm": second("tumor_size_mm", large),
        "tumor_number": second("tumor_number", multiple),
        "portal_vein_invasion": second("portal_vein_invasion", pvi),
        "cirrhosis": second("cirrhosis", _top_k(0.6 * liver + 1.0 * cp_b + noise(), k["cirrhosis"])),
        "hbv": second("hbv", _top_k(0.4 * hepatitis + noise(), k["hbv"])),
        "nlr": second("nlr", _top_k(0.5 * risk + noise(), k["nlr"])),
        "alt": second("alt", _top_k(0.8 * hepatitis + 0.6 * noise(), k["alt"])),
        "ast": second("ast", _top_k(0.7 * hepatitis + 0.3 * size_score + 0.6 * noise(), k["ast"])),
        "akp": second("akp", _top_k(0.6 * cholestasis + 0.3 * size_score + 0.7 * noise(), k["akp"])),
        "ggt": second("ggt", _top_k(0.6 * cholestasis + 0.4 * size_score + 0.7 * noise(), k["ggt"])),
        "alb": second("alb", alb_low),
        "tb": second("tb", tb_high),
        "afp": second("afp", _top_k(0.5 * risk + 0.3 * size_score + 0.8 * noise(), k["afp"])),
        "child_pugh": second("child_pugh", cp_b),
    }
    # BCLC: C from PVI, then B from multiple tumours, then 0 from small single CP-A tumours.
    n0, n_a, n_b, n_c = counts["bclc"]
    bclc = np.full(shape, "A", dtype=object)
    free = np.ones(shape, dtype=bool)
    for stage, count, preferred, score in (
        ("C", n_c, pvi, risk),
        ("B", n_b, multiple, risk),
        ("0", n0, ~multiple & ~large & ~cp_b & ~pvi, -risk - size_score),
    ):
        chosen = _top_k(np.where(free, score, -np.inf), count, preferred & free)
        bclc[chosen] = stage
        free &= ~chosen
    levels["bclc"] = bclc
    return pd.DataFrame({column: values.ravel() for column, values in levels.items()}), risk.ravel()


def _draw_in_range(rng: np.random.Generator, lo: float, hi: float, n: int, a: float, b: float, log: bool) -> np.ndarray:
    """``n`` values in ``[lo, hi]``: Beta(a, b) on a linear or log scale."""
    u = rng.beta(a, b, size=n)
    if log:
        return np.exp(np.log(lo) + u * (np.log(hi) - np.log(lo)))
    return lo + u * (hi - lo)


def _raw_values(levels: pd.DataFrame, label: np.ndarray, rng: np.random.Generator) -> pd.DataFrame:
    """Raw clinical values inside each patient's assigned level (``RAW_RANGES``)."""
    n = len(levels)
    raw = pd.DataFrame(index=levels.index)
    raw["sex"] = np.where(levels["sex"] == "male", "M", "F")
    specs = {  # column: (log scale, (a, b) first level, (a, b) second level, decimals)
        "age": (False, (2.0, 1.5), (1.5, 2.5), 0),
        "nlr": (True, (2.0, 1.5), (1.2, 2.5), 2),
        "alt": (True, (2.0, 1.5), (1.0, 2.5), 0),
        "ast": (True, (2.0, 1.5), (1.0, 2.5), 0),
        "akp": (True, (2.0, 1.5), (1.0, 2.5), 0),
        "ggt": (True, (2.0, 1.5), (1.0, 2.0), 0),
        "alb": (False, (1.8, 1.8), (2.0, 1.5), 1),
        "tb": (True, (2.0, 1.5), (1.0, 2.5), 1),
    }
    for column, (log, first_ab, second_ab, decimals) in specs.items():
        first_label = PAPER_TABLE1[column][0][0][0]
        values = np.empty(n)
        for is_first, ab, value_range in ((True, first_ab, RAW_RANGES[column][0]), (False, second_ab, RAW_RANGES[column][1])):
            rows = (levels[column] == first_label).to_numpy() == is_first
            values[rows] = _draw_in_range(rng, *value_range, int(rows.sum()), *ab, log=log)
        raw[column] = np.round(values, decimals) if decimals else np.round(values).astype(int)
    # AFP: the ER class reaches higher values within ">= 9".
    afp = np.empty(n)
    low = (levels["afp"] == "<9").to_numpy()
    afp[low] = _draw_in_range(rng, *RAW_RANGES["afp"][0], int(low.sum()), 1.5, 1.5, log=True)
    for cls, ab in ((0, (1.0, 3.0)), (1, (1.0, 1.3))):
        rows = ~low & (label == cls)
        afp[rows] = _draw_in_range(rng, *RAW_RANGES["afp"][1], int(rows.sum()), *ab, log=True)
    raw["afp"] = np.round(afp, 1)
    # Tumour size: BCLC 0 at 10-20 mm, other small tumours 18-46 mm, large ones 54-130 mm.
    size = np.empty(n)
    bclc0 = (levels["bclc"] == "0").to_numpy()
    large = (levels["tumor_size_mm"] == ">=50").to_numpy()
    small = ~bclc0 & ~large
    size[bclc0] = rng.uniform(*BCLC0_SIZE_MM, size=int(bclc0.sum()))
    size[small] = _draw_in_range(rng, 18, RAW_RANGES["tumor_size_mm"][0][1], int(small.sum()), 1.6, 1.2, log=False)
    size[large] = _draw_in_range(rng, *RAW_RANGES["tumor_size_mm"][1], int(large.sum()), 1.2, 3.5, log=False)
    raw["tumor_size_mm"] = np.round(size).astype(int)
    multiple = (levels["tumor_number"] == "multiple").to_numpy()
    raw["tumor_number"] = np.where(multiple, rng.choice([2, 2, 3], size=n), 1)
    for column in ("portal_vein_invasion", "cirrhosis", "hbv"):
        raw[column] = (levels[column] == "yes").astype(int)
    raw["child_pugh"] = levels["child_pugh"]
    raw["bclc"] = levels["bclc"]
    return raw


def _clinical_and_risk(config: SynthConfig) -> tuple[pd.DataFrame, np.ndarray]:
    """The full ``clinical.csv`` frame (sorted by id) and the latent clinical risk per row."""
    rng = np.random.default_rng(np.random.SeedSequence(config.seed).spawn(3)[0])
    frames, risks = [], []
    for cls, n in ((0, PAPER_N_NER), (1, PAPER_N_ER)):
        counts = {col: tuple(level[1 + cls] for level in table) for col, (table, _) in PAPER_TABLE1.items()}
        levels, risk = _class_levels(n, counts, rng)
        label = np.full(n, cls)
        raw = _raw_values(levels, label, rng)
        raw.insert(0, "early_recurrence", label)
        frames.append(raw)
        risks.append(risk)
    clinical = pd.concat(frames, ignore_index=True)
    risk = np.concatenate(risks)
    order = rng.permutation(len(clinical))  # shuffle: ids do not follow the label
    clinical, risk = clinical.iloc[order].reset_index(drop=True), risk[order]
    clinical.insert(0, "patient_id", [f"HCC{i + 1:03d}" for i in range(len(clinical))])
    return clinical[list(CLINICAL_COLUMNS)], risk


def sample_population(config: SynthConfig, n_replicates: int, seed: np.random.SeedSequence | int) -> pd.DataFrame:
    """A large population drawn by the generator's own process, without images.

    ``n_replicates`` independent copies of each class (102 NER, 65 ER), each with the
    paper's exact Table 1 counts and the same dependency rules as the cohort, raw values,
    latent clinical risk, ``z_img`` and the ``TRAITS``: ``167 * n_replicates`` patients.
    Used to fit and score the oracles (:func:`oracle_aucs`); it never sees the cohort.

    Returns:
        One row per patient: the raw clinical columns (``CLINICAL_COLUMNS`` without
        ``patient_id``), ``r_clin``, ``z_img`` and ``TRAITS``.
    """
    rng = np.random.default_rng(seed)
    frames = []
    for cls, n in ((0, PAPER_N_NER), (1, PAPER_N_ER)):
        counts = {col: tuple(level[1 + cls] for level in table) for col, (table, _) in PAPER_TABLE1.items()}
        levels, risk = _class_levels((n_replicates, n), counts, rng)
        label = np.full(len(levels), cls)
        raw = _raw_values(levels, label, rng)
        raw.insert(0, "early_recurrence", label)
        raw["r_clin"] = risk
        frames.append(pd.concat([raw, _image_traits(label, risk, config, rng)], axis=1))
    return pd.concat(frames, ignore_index=True)


def synthesize_clinical(config: SynthConfig | None = None) -> pd.DataFrame:
    """The synthetic ``clinical.csv`` table of all 167 patients, without images (fast).

    Binarised with :func:`hccer_lib.clinical.binarise`, it reproduces the paper's Table 1
    counts per class exactly; raw values keep ``CUTOFF_MARGIN`` from every cut-off.

    Returns:
        One row per patient, columns ``CLINICAL_COLUMNS`` (docs/DESIGN.md), sorted by id.
    """
    return _clinical_and_risk(config or SynthConfig())[0]


# %% Cohort plan: latent image risk, traits, geometry -----------------------------------


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _image_traits(label: np.ndarray, r_clin: np.ndarray, config: SynthConfig, rng: np.random.Generator) -> pd.DataFrame:
    """The latent image score ``z_img`` and the ``TRAITS`` of ``n`` patients (see
    :func:`plan_cohort`); columns ``z_img`` then ``TRAITS``, default index."""
    n = len(label)
    z_img = config.image_label_effect * label + config.clinical_coupling * r_clin + rng.standard_normal(n)

    def trait_score() -> np.ndarray:  # centred between the classes
        centre = config.image_label_effect / 2
        return z_img - centre + config.trait_noise * rng.standard_normal(n)

    traits = pd.DataFrame({"z_img": z_img})
    traits["necrosis_fraction"] = 0.30 * _sigmoid(1.5 * trait_score() - 0.5)
    traits["heterogeneity_hu"] = 4.0 + 12.0 * _sigmoid(1.5 * trait_score())
    traits["margin_irregularity"] = 0.02 + 0.23 * _sigmoid(1.5 * trait_score())
    traits["rim_enhancement_hu"] = 45.0 * _sigmoid(1.5 * trait_score() - 0.3)
    satellites = rng.poisson(0.1 + config.satellite_rate * _sigmoid(2.0 * trait_score() - 1.0))
    traits["n_satellites"] = np.minimum(satellites, 5)
    return traits


def plan_cohort(config: SynthConfig | None = None) -> CohortPlan:
    """Decide the clinical table, latent image traits and geometry of every patient.

    The image traits are functions of ``z_img`` plus independent noise ``N(0, trait_noise)``
    (``TRAITS``): necrosis fraction of the tumour volume (0-0.30), texture heterogeneity
    (SD of the tumour texture, 4-16 HU), margin irregularity (inward lobulation depth as a
    fraction of the radius, 0.02-0.25), rim enhancement on ART (0-45 HU over liver) and
    the number of satellite nodules (Poisson, mean up to ``satellite_rate`` + 0.1).
    """
    config = config or SynthConfig()
    clinical, r_clin = _clinical_and_risk(config)
    _, image_seq, patient_seq = np.random.SeedSequence(config.seed).spawn(3)
    rng = np.random.default_rng(image_seq)
    n = len(clinical)
    label = clinical["early_recurrence"].to_numpy()
    truth = pd.DataFrame({"patient_id": clinical["patient_id"], "label": label, "r_clin": r_clin})
    truth = pd.concat([truth, _image_traits(label, r_clin, config, rng)], axis=1)
    # Geometry: spacing, slice thickness, tumour semi-axes (mm).
    size = clinical["tumor_size_mm"].to_numpy(dtype=float)
    thickness = rng.choice(np.asarray(config.slice_thicknesses_mm, dtype=float), size=n)
    truth["spacing_mm"] = np.round(rng.uniform(*config.spacing_range_mm, size=n), 4)
    truth["thickness_mm"] = thickness
    truth["semi_major_mm"] = size / 2
    truth["semi_minor_mm"] = size / 2 * rng.uniform(0.72, 0.95, size=n)
    z_ratio = config.z_axis_ratio * rng.uniform(0.7, 1.3, size=n)
    truth["semi_z_mm"] = np.maximum(z_ratio * size / 2, 0.55 * thickness)  # >= 1 slice
    seeds = patient_seq.spawn(n)
    return CohortPlan(config=config, clinical=clinical, truth=truth, seeds=seeds)


ORACLE_REPLICATES = (150, 60)  # replicate cohorts (167 patients each): fitting, scoring populations
ORACLE_INPUTS = {
    "clinical": "the 17 clinical variables binarised with the paper's cut-offs, one indicator per "
    "non-reference level (what the study's clinical models see)",
    "image": "everything the images show: the five latent image traits (necrosis, heterogeneity, margin "
    "irregularity and rim enhancement on their latent logit scale; number of satellites), the tumour's "
    "size (mm, and >= 50 mm), the number of tumour nodules and cirrhosis (coarser liver texture)",
    "both": "clinical and image together",
}


def oracle_inputs(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """The oracles' inputs (``ORACLE_INPUTS``) of a cohort's patients or of a population.

    Args:
        frame: one row per patient with the raw clinical columns and the ``TRAITS``
            (``plan.clinical`` beside ``plan.truth``, or :func:`sample_population`).

    Returns:
        ``{"clinical": [n, 19], "image": [n, 9], "both": [n, 28]}`` float arrays.
    """
    from hccer_lib.clinical import CLINICAL_VARIABLES

    levels = binarise(frame)
    clinical = np.column_stack(
        [(levels[v.column] == level).to_numpy(dtype=float) for v in CLINICAL_VARIABLES for level in v.levels[1:]]
    )

    def latent(values: pd.Series, low: float, high: float) -> np.ndarray:  # logit of the trait's sigmoid
        fraction = np.clip((values.to_numpy(dtype=float) - low) / (high - low), 1e-9, 1 - 1e-9)
        return np.log(fraction / (1 - fraction))

    size = frame["tumor_size_mm"].to_numpy(dtype=float)
    image = np.column_stack([
        latent(frame["necrosis_fraction"], 0.0, 0.30),
        latent(frame["heterogeneity_hu"], 4.0, 16.0),
        latent(frame["margin_irregularity"], 0.02, 0.25),
        latent(frame["rim_enhancement_hu"], 0.0, 45.0),
        frame["n_satellites"].to_numpy(dtype=float),
        size,
        size >= 50,
        frame["tumor_number"].to_numpy(dtype=float),
        frame["cirrhosis"].to_numpy(dtype=float),
    ])  # fmt: skip
    return {"clinical": clinical, "image": image, "both": np.column_stack([clinical, image])}


#: Names of the columns of ``oracle_inputs(...)["image"]``, in order.
IMAGE_INPUT_NAMES = ("necrosis", "heterogeneity", "margin", "rim", "satellites", "size_mm", "size_50mm", "nodules",
                     "cirrhosis")


def truth_table(cohort_dir: str | os.PathLike, clinical: pd.DataFrame | None = None) -> pd.DataFrame | None:
    """``clinical.csv`` beside ``ground_truth.csv``'s columns (the generator's traits and oracle scores),
    one row per patient in ``clinical.csv``'s order; ``None`` for a cohort without ``ground_truth.csv``.
    ``clinical``: the cohort's ``load_clinical`` frame where the caller has it already (read here otherwise).

    Raises:
        ValueError: ``ground_truth.csv`` does not hold every patient of ``clinical.csv``, naming some.
    """
    from hccer_lib.cohort import load_clinical

    path = Path(cohort_dir) / "ground_truth.csv"
    if not path.is_file():
        return None
    clinical = load_clinical(cohort_dir) if clinical is None else clinical
    truth = pd.read_csv(path, dtype={"patient_id": str})
    missing = sorted(set(clinical["patient_id"].astype(str)) - set(truth["patient_id"]))
    if missing:
        raise ValueError(f"{path}: no row for {len(missing)} patients of clinical.csv, e.g. {missing[:3]}")
    return clinical.merge(truth.drop(columns=["label"], errors="ignore"), on="patient_id", how="left",
                          validate="one_to_one")


def image_input_regression(logit, table: pd.DataFrame, inputs=IMAGE_INPUT_NAMES) -> tuple[dict[str, float], float]:
    """What a patient-level score follows among the generator's image inputs (:func:`oracle_inputs`).

    A least-squares fit of ``logit`` (one value per row of ``table``, a :func:`truth_table`) on the
    ``inputs`` (names of :data:`IMAGE_INPUT_NAMES`), each standardised over the rows: a description of
    the score, fitted and read on the same patients, not a model. Returns ``(coefficients, r2)``:
    input name -> change of ``logit`` per SD of the input with the others held fixed, and the share
    of ``logit``'s variance that the inputs explain.
    """
    logit = np.asarray(logit, dtype=float)
    if logit.shape != (len(table),):
        raise ValueError(f"one score per patient needed: {logit.shape[0] if logit.ndim else 0} for {len(table)}")
    if not standardise(logit).any():  # a constant score follows nothing
        return dict.fromkeys(inputs, 0.0), 0.0
    columns = [IMAGE_INPUT_NAMES.index(name) for name in inputs]
    x = standardise(oracle_inputs(table)["image"][:, columns].astype(float))
    design = np.column_stack([np.ones(len(x)), x])
    solution, *_ = np.linalg.lstsq(design, logit, rcond=None)
    residual = logit - design @ solution
    r2 = 1.0 - float((residual**2).sum()) / float(((logit - logit.mean()) ** 2).sum())
    return {name: float(b) for name, b in zip(inputs, solution[1:], strict=True)}, r2


def standardise(values: np.ndarray) -> np.ndarray:
    """``values`` (or each column) minus its mean, over its SD; 0 where it is constant up to round-off (an SD
    below 1e-12 of its magnitude), where dividing would turn round-off into a signal."""
    mean, spread = values.mean(axis=0), values.std(axis=0)
    flat = spread <= 1e-12 * np.maximum(1.0, np.abs(mean))
    return np.where(flat, 0.0, (values - mean) / np.where(flat, 1.0, spread))


def _oracle_model():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=3000))


@functools.lru_cache(maxsize=4)
def fit_oracles(config: SynthConfig) -> tuple[dict, dict]:
    """Oracle models fitted on a population drawn from ``config``'s generative process
    (never on a cohort), and their AUCs on a second, independent population."""
    from sklearn.metrics import roc_auc_score

    fit_seq, score_seq = np.random.SeedSequence(config.seed).spawn(5)[3:]
    fit_population = sample_population(config, ORACLE_REPLICATES[0], fit_seq)
    score_population = sample_population(config, ORACLE_REPLICATES[1], score_seq)
    x_fit, x_score = oracle_inputs(fit_population), oracle_inputs(score_population)
    y_fit, y_score = fit_population["early_recurrence"].to_numpy(), score_population["early_recurrence"].to_numpy()
    models, population_auc = {}, {}
    for name in ORACLE_INPUTS:
        models[name] = _oracle_model().fit(x_fit[name], y_fit)
        population_auc[name] = float(roc_auc_score(y_score, models[name].predict_proba(x_score[name])[:, 1]))
    population_auc["z_img"] = float(roc_auc_score(y_score, score_population["z_img"]))
    return models, population_auc


def _cohort_frame(plan: CohortPlan) -> pd.DataFrame:
    """The plan's clinical table beside its traits, one row per patient (plan order)."""
    traits = plan.truth[["z_img", *TRAITS]].reset_index(drop=True)
    return pd.concat([plan.clinical.reset_index(drop=True), traits], axis=1)


def oracle_scores(plan: CohortPlan) -> pd.DataFrame:
    """The oracles' risk scores of the plan's patients, from the generator's model alone.

    The oracles are fitted on a population drawn from the generative process
    (:func:`sample_population`), so a patient's score depends on its inputs only, never on
    the cohort's labels.

    Returns:
        Columns ``patient_id`` and one probability of ER per ``ORACLE_INPUTS`` name, in
        plan order.
    """
    models, _ = fit_oracles(plan.config)
    x = oracle_inputs(_cohort_frame(plan))
    scores = pd.DataFrame({"patient_id": plan.clinical["patient_id"].to_numpy()})
    for name, model in models.items():
        scores[name] = model.predict_proba(x[name])[:, 1]
    return scores


def oracle_aucs(plan: CohortPlan, n_folds: int = 10) -> dict:
    """AUCs reachable with perfect knowledge of the generator: the ceiling of every model.

    For each input set of ``ORACLE_INPUTS`` (``clinical``, ``image``, ``both``), a logistic
    regression on inputs that make the log-likelihood ratio close to linear (the traits on
    their latent logit scale) is fitted on a population of ``167 * ORACLE_REPLICATES[0]``
    patients drawn from the generator's own process (exact Table 1 counts per replicate,
    same dependency rules, latent traits; no images), not on the cohort. Keys per input set:

    * ``cohort_auc``: the fitted score's AUC on the cohort's 167 patients (the ceiling to
      read the cohort's models against; a model learned on the cohort can exceed it only
      by chance);
    * ``population_auc``: its AUC on an independent population of
      ``167 * ORACLE_REPLICATES[1]`` patients (the expected ceiling over cohorts);
    * ``cv_auc``, ``in_sample_auc``: a logistic regression (C = 0.1) learned on the
      cohort's own labels from the same inputs, out of fold over ``n_folds`` stratified
      folds and in sample: what 167 patients allow with perfect inputs, not a ceiling.

    ``z_img`` holds the AUC of the latent image score itself (``auc`` on the cohort,
    ``population_auc``). The images hold nothing else about the label (every other drawn
    property is independent noise), so the ``image`` oracle bounds every image model.
    Gradient boosting fitted on the same population did not beat these logistic oracles
    on the scoring population (generator 1.1 defaults: 0.776, 0.757, 0.820 against
    0.779, 0.762, 0.825), so they are close to the Bayes-optimal scores.
    """
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    _, population_auc = fit_oracles(plan.config)
    scores = oracle_scores(plan)
    frame = _cohort_frame(plan)
    y = frame["early_recurrence"].to_numpy()
    x = oracle_inputs(frame)
    folds = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=plan.config.seed)
    result: dict = {}
    for name in ORACLE_INPUTS:
        learned = _oracle_model().set_params(logisticregression__C=0.1)
        cv_prob = cross_val_predict(learned, x[name], y, cv=folds, method="predict_proba")[:, 1]
        fit_prob = learned.fit(x[name], y).predict_proba(x[name])[:, 1]
        result[name] = {
            "cohort_auc": round(float(roc_auc_score(y, scores[name])), 4),
            "population_auc": round(population_auc[name], 4),
            "cv_auc": round(float(roc_auc_score(y, cv_prob)), 4),
            "in_sample_auc": round(float(roc_auc_score(y, fit_prob)), 4),
            "inputs": ORACLE_INPUTS[name],
        }
    result["z_img"] = {"auc": round(float(roc_auc_score(y, frame["z_img"])), 4),
                       "population_auc": round(population_auc["z_img"], 4)}  # fmt: skip
    n_fit, n_score = (167 * r for r in ORACLE_REPLICATES)
    result["primary"] = "cohort_auc"
    result["method"] = (
        f"oracle = logistic regression (C=1, standardised inputs; traits on their latent logit scale) fitted "
        f"on {n_fit} patients drawn from the generator's own process ({ORACLE_REPLICATES[0]} replicate "
        f"cohorts: exact Table 1 counts, same dependency rules, latent image traits; no images), never on "
        f"the cohort's labels; cohort_auc = its AUC on the cohort's patients (the ceiling of the cohort's "
        f"models), population_auc = its AUC on {n_score} further generated patients; cv_auc and "
        f"in_sample_auc = a logistic regression (C=0.1) learned on the cohort's own labels with the same "
        f"inputs ({n_folds}-fold out-of-fold, seed {plan.config.seed}; in sample), a noisy reference, not a "
        f"ceiling; z_img = AUC of the latent image score itself"
    )
    return result


# %% Images -------------------------------------------------------------------------------


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Gaussian-smoothed white noise with unit SD, float32."""
    field_ = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    return field_ / max(float(field_.std()), 1e-6)


def synthesize_patient(plan: CohortPlan, patient_id: str) -> PatientVolumes:
    """Draw the three phases and ROIs of one patient of ``plan`` (in memory, deterministic).

    The anatomy (tumour, capsule, necrosis, corona, satellites, other nodules, vessels, a
    fat corner, texture fields) is defined once, in millimetres around the tumour centre.
    Each phase samples it on its own grid (``spacing_mm`` in-plane, ``thickness_mm``
    between slices; same in-plane origin, its own z origin) after shifting the anatomy by
    the phase's breathing offset (up to ``breathing_mm``), so the tumour sits at different
    voxels and physical positions in NC, ART and PV. Random draws come from the patient's
    own ``SeedSequence`` (``plan.seeds``).

    Raises:
        ValueError: ``patient_id`` is not in the plan.
    """
    row_index = plan.truth.index[plan.truth["patient_id"] == patient_id]
    if len(row_index) != 1:
        raise ValueError(f"unknown patient_id {patient_id!r}")
    i = int(row_index[0])
    truth = plan.truth.loc[i]
    clinical = plan.clinical.loc[i]
    rng = np.random.default_rng(plan.seeds[i])
    config = plan.config

    a, b, c = float(truth["semi_major_mm"]), float(truth["semi_minor_mm"]), float(truth["semi_z_mm"])
    spacing, thickness = float(truth["spacing_mm"]), float(truth["thickness_mm"])
    if rng.random() < 0.5:  # the largest diameter lies along x or along y
        ax, ay = a, b
    else:
        ax, ay = b, a
    major_angle = 0.0 if ax >= ay else np.pi / 2
    # Field of view (mm): tumour plus 30 mm each side in-plane, plus 20 mm above and below.
    half_xy = a + 30.0
    n_xy = int(np.ceil(2 * half_xy / spacing))
    n_z = int(np.ceil((2 * c + 40.0) / thickness))
    centre_shift = rng.uniform(-5, 5, size=2)  # tumour not exactly in the middle
    base_origin = np.array([rng.uniform(-150, -30), rng.uniform(-60, 40), rng.uniform(-80, 80)])
    # Lobulated margin: even harmonics keep the extent along the major axis (size_mm).
    harmonics = np.array([2, 4, 6, 8])
    amplitudes = rng.uniform(0.2, 1.0, size=4)
    amplitudes /= amplitudes.sum()
    irregularity = float(truth["margin_irregularity"]) * (1.0 if a >= 12 else 0.5)
    capsule_mm = min(1.8, 0.2 * b)
    necrosis_radius = float(truth["necrosis_fraction"]) ** (1 / 3)
    # Satellites just outside the margin, other tumour nodules (tumor_number > 1) further out.
    spots = []  # (centre xyz mm, radius mm, tissue)
    for _ in range(int(truth["n_satellites"])):
        angle = rng.uniform(0, 2 * np.pi)
        reach = 1.0 / np.hypot(np.cos(angle) / ax, np.sin(angle) / ay)
        dist = reach + rng.uniform(0.5, 4.0)
        spots.append(((dist * np.cos(angle), dist * np.sin(angle), rng.uniform(-0.5, 0.5) * c), rng.uniform(1.5, 3.5), "satellite"))
    for _ in range(int(clinical["tumor_number"]) - 1):
        angle = rng.uniform(0, 2 * np.pi)
        dist = a + rng.uniform(10, 14)
        spots.append(((dist * np.cos(angle), dist * np.sin(angle), rng.uniform(-0.5, 0.5) * c), rng.uniform(4.0, 7.0), "nodule"))
    # Vessels: tubes running mostly along z, passing beside the tumour.
    vessels = []
    for _ in range(2):
        angle = rng.uniform(0, 2 * np.pi)
        dist = a + rng.uniform(10, 22)
        direction = np.array([rng.uniform(-0.4, 0.4), rng.uniform(-0.4, 0.4), 1.0])
        vessels.append((np.array([dist * np.cos(angle), dist * np.sin(angle), 0.0]), direction / np.linalg.norm(direction), rng.uniform(1.5, 3.5)))
    # Fat beyond a liver edge cutting one corner of the field of view.
    fat_angle = np.pi / 4 + np.pi / 2 * rng.integers(4) + rng.uniform(-0.3, 0.3)
    fat_normal = np.array([np.cos(fat_angle), np.sin(fat_angle)])
    fat_distance = a + rng.uniform(22, 28)
    # Anatomical texture fields on a 2 mm grid covering the field of view and the breathing.
    grid_mm = 2.0
    bx, by, bz = config.breathing_mm
    lo = np.array([-half_xy - 5 - bx, -half_xy - 5 - by, -(c + 20 + thickness + bz + 2)])  # x, y, z
    grid_shape = tuple(int(np.ceil(-2 * v / grid_mm)) + 2 for v in lo[::-1])  # [z, y, x]
    liver_texture = _smooth_field(rng, grid_shape, 1.5)  # sigma in grid cells: 3 mm
    tumour_texture = _smooth_field(rng, grid_shape, 0.9)  # 1.8 mm
    necrosis_texture = _smooth_field(rng, grid_shape, 1.9)  # 3.8 mm
    hu_jitter = {t: rng.normal(0, 4, size=3) for t in TISSUE_HU}
    liver_texture_hu = 4.0 + 4.0 * float(clinical["cirrhosis"])
    noise_hu = rng.uniform(*config.noise_hu)
    rim_hu = float(truth["rim_enhancement_hu"])
    heterogeneity_hu = float(truth["heterogeneity_hu"])
    reach_xy, reach_z = max(ax, ay) + 4.0, c + 4.0  # tumour and corona lie within this box

    images, rois, tissues, offsets = {}, {}, {}, {}
    for p, phase in enumerate(PHASES):
        offset = np.array([rng.uniform(-bx, bx), rng.uniform(-by, by), rng.uniform(-bz, bz)])
        z_jitter = rng.uniform(-0.5, 0.5) * thickness
        # Anatomical coordinates (mm) of the voxel centres along each axis, float32.
        xs = (np.arange(n_xy) * spacing - half_xy + centre_shift[0] - offset[0]).astype(np.float32)
        ys = (np.arange(n_xy) * spacing - half_xy + centre_shift[1] - offset[1]).astype(np.float32)
        zs = (np.arange(n_z) * thickness - (n_z - 1) * thickness / 2 + z_jitter - offset[2]).astype(np.float32)
        z, y, x = zs[:, None, None], ys[None, :, None], xs[None, None, :]
        shape = (n_z, n_xy, n_xy)
        positions = ((zs - lo[2]) / grid_mm, (ys - lo[1]) / grid_mm, (xs - lo[0]) / grid_mm)

        tissue = np.full(shape, TISSUE_CODES["liver"], dtype=np.uint8)
        tissue[np.broadcast_to(x * fat_normal[0] + y * fat_normal[1] > fat_distance, shape)] = TISSUE_CODES["fat"]
        for point, direction, radius in vessels:
            rx, ry, rz = x - point[0], y - point[1], z - point[2]
            along = rx * direction[0] + ry * direction[1] + rz * direction[2]
            tissue[rx**2 + ry**2 + rz**2 - along**2 < radius**2] = TISSUE_CODES["vessel"]
        # The tumour, its capsule, necrosis and corona: computed inside the tumour's box only.
        box = (
            slice(*_index_range(zs, reach_z)),
            slice(*_index_range(ys, reach_xy)),
            slice(*_index_range(xs, reach_xy)),
        )
        tz, ty, tx = z[box[0]], y[:, box[1]], x[:, :, box[2]]
        rho = np.sqrt((tx / ax) ** 2 + (ty / ay) ** 2 + (tz / c) ** 2)
        sin2 = ((tx / ax) ** 2 + (ty / ay) ** 2) / np.maximum(rho**2, 1e-9)
        phi = np.arctan2(ty / ay, tx / ax) - major_angle
        lobes = sum(w * np.cos(h * phi) for w, h in zip(amplitudes, harmonics, strict=True))
        boundary = 1.0 - irregularity * (1.0 - lobes) / 2.0 * sin2  # 1 along the major axis
        radius_mm = np.sqrt(tx**2 + ty**2 + tz**2)
        depth_mm = (boundary - rho) * radius_mm / np.maximum(rho, 1e-6)  # mm inside the margin
        necrosis_tex = _sample_regular(necrosis_texture, [pos[s] for pos, s in zip(positions, box, strict=True)])
        sub = tissue[box]
        sub[(depth_mm < 0) & (depth_mm > -3.0)] = TISSUE_CODES["corona"]
        inside = rho <= boundary
        sub[inside] = TISSUE_CODES["tumour"]
        sub[inside & (rho < necrosis_radius * (1 + 0.3 * necrosis_tex)) & (rho < 0.8)] = TISSUE_CODES["necrosis"]
        # The capsule is a ring of the slice's cross-section (in-plane depth), as read on CT.
        rho_xy = np.sqrt((tx / ax) ** 2 + (ty / ay) ** 2)
        edge_xy = np.sqrt(np.maximum(boundary**2 - (tz / c) ** 2, 0.0))
        depth_xy_mm = (edge_xy - rho_xy) * np.sqrt(tx**2 + ty**2) / np.maximum(rho_xy, 1e-6)
        sub[inside & (depth_xy_mm < capsule_mm)] = TISSUE_CODES["capsule"]
        tumour = np.zeros(shape, dtype=bool)
        tumour[box] = inside
        for centre, radius, kind in spots:
            near = (x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2 < radius**2
            tissue[near & ~tumour] = TISSUE_CODES[kind]

        hu = _tissue_lut(p, hu_jitter, rim_hu * RIM_BY_PHASE[phase])[tissue]
        liverish = np.isin(tissue, (TISSUE_CODES["liver"], TISSUE_CODES["corona"]))
        hu += liverish * (liver_texture_hu * _sample_regular(liver_texture, positions))
        viable = np.isin(tissue, (TISSUE_CODES["tumour"], TISSUE_CODES["satellite"], TISSUE_CODES["nodule"]))
        hu += viable * (heterogeneity_hu * (1.0, 1.0, 0.7)[p] * _sample_regular(tumour_texture, positions))
        hu = ndimage.gaussian_filter(hu, sigma=(0, 0.5, 0.5))  # scanner blur in-plane
        hu += noise_hu * rng.standard_normal(shape, dtype=np.float32)

        origin = base_origin + np.array([0.0, 0.0, z_jitter])
        image = sitk.GetImageFromArray(np.clip(np.round(hu), -1024, 3071).astype(np.int16))
        image.SetSpacing((spacing, spacing, thickness))
        image.SetOrigin(tuple(float(v) for v in origin))
        roi = sitk.GetImageFromArray(_box_label(tumour))
        roi.CopyInformation(image)
        images[phase], rois[phase], tissues[phase] = image, roi, tissue
        offsets[phase] = tuple(float(v) for v in offset)
    return PatientVolumes(patient_id, images, rois, tissues, offsets)


def _index_range(coords: np.ndarray, reach: float) -> tuple[int, int]:
    """First and one-past-last index of the increasing ``coords`` within ``[-reach, reach]``."""
    return int(np.searchsorted(coords, -reach, "left")), int(np.searchsorted(coords, reach, "right"))


def _sample_regular(field_: np.ndarray, positions: list[np.ndarray]) -> np.ndarray:
    """Linear interpolation of ``field_ [z, y, x]`` on the grid ``positions`` (fractional
    indices per axis), one axis at a time; float32 ``[len(pz), len(py), len(px)]``."""
    out = field_
    for axis, pos in enumerate(positions):
        pos = np.clip(np.asarray(pos, dtype=np.float64), 0, field_.shape[axis] - 1.000001)
        i0 = np.floor(pos).astype(int)
        weight = (pos - i0).astype(np.float32)
        view = [None] * 3
        view[axis] = slice(None)
        weight = weight[tuple(view)]
        out = np.take(out, i0, axis=axis) * (1 - weight) + np.take(out, i0 + 1, axis=axis) * weight
    return out


def _tissue_lut(phase_index: int, jitter: dict[str, np.ndarray], rim_hu: float) -> np.ndarray:
    """HU of each tissue code in one phase (float32 lookup table indexed by code)."""
    lut = np.zeros(max(TISSUE_CODES.values()) + 1, dtype=np.float32)
    for name, code in TISSUE_CODES.items():
        source = {"corona": "liver", "satellite": "tumour", "nodule": "tumour"}.get(name, name)
        lut[code] = TISSUE_HU[source][phase_index] + jitter[source][phase_index]
    lut[TISSUE_CODES["corona"]] += rim_hu
    return lut


def _box_label(mask: np.ndarray) -> np.ndarray:
    """uint8 ``[z, y, x]``: on every slice with tumour, its 2-D bounding box filled with 1."""
    label = np.zeros(mask.shape, dtype=np.uint8)
    for k, y0, y1, x0, x1 in _mask_boxes(mask):
        label[k, y0 : y1 + 1, x0 : x1 + 1] = 1
    return label


def _mask_boxes(mask: np.ndarray) -> list[tuple[int, int, int, int, int]]:
    """``(k, y_min, y_max, x_min, x_max)`` (inclusive) for each slice of ``mask [z, y, x]``."""
    boxes = []
    for k in np.flatnonzero(mask.any(axis=(1, 2))):
        ys = np.flatnonzero(mask[k].any(axis=1))
        xs = np.flatnonzero(mask[k].any(axis=0))
        boxes.append((int(k), int(ys[0]), int(ys[-1]), int(xs[0]), int(xs[-1])))
    return boxes


def label_boxes(roi: sitk.Image) -> pd.DataFrame:
    """The per-slice boxes of an ROI label image.

    Returns:
        Columns ``slice, x_min, x_max, y_min, y_max`` (voxel indices, inclusive; ITK order
        x = column, y = row), ``width_mm, height_mm`` (box extent, voxels x spacing) and
        ``centre_x_mm, centre_y_mm, z_mm`` (physical box centre), one row per slice.
    """
    mask = sitk.GetArrayViewFromImage(roi) > 0
    sx, sy, _ = roi.GetSpacing()
    rows = []
    for k, y0, y1, x0, x1 in _mask_boxes(mask):
        cx, cy, cz = roi.TransformContinuousIndexToPhysicalPoint(((x0 + x1) / 2, (y0 + y1) / 2, float(k)))
        rows.append({"slice": k, "x_min": x0, "x_max": x1, "y_min": y0, "y_max": y1,
                     "width_mm": (x1 - x0 + 1) * sx, "height_mm": (y1 - y0 + 1) * sy,
                     "centre_x_mm": cx, "centre_y_mm": cy, "z_mm": cz})  # fmt: skip
    columns = ["slice", "x_min", "x_max", "y_min", "y_max", "width_mm", "height_mm", "centre_x_mm", "centre_y_mm", "z_mm"]
    return pd.DataFrame(rows, columns=columns)


# %% Writing the cohort folder ---------------------------------------------------------


def _write_patient(plan: CohortPlan, patient_id: str, images_dir: str) -> dict:
    """Draw one patient and write its six files; return its slice counts and boxes."""
    volumes = synthesize_patient(plan, patient_id)
    folder = Path(images_dir) / patient_id
    folder.mkdir(parents=True, exist_ok=True)
    summary: dict = {"patient_id": patient_id, "boxes": []}
    for phase in PHASES:
        sitk.WriteImage(volumes.images[phase], str(folder / f"{phase}.nii.gz"), useCompression=True)
        sitk.WriteImage(volumes.rois[phase], str(folder / f"{phase}_roi.nii.gz"), useCompression=True)
        boxes = label_boxes(volumes.rois[phase])
        summary[f"slices_{phase}"] = len(boxes)
        summary[f"max_extent_mm_{phase}"] = float(np.max(np.maximum(boxes["width_mm"], boxes["height_mm"])))
        for ax_name, value in zip("xyz", volumes.offsets_mm[phase], strict=True):
            summary[f"offset_{ax_name}_mm_{phase}"] = round(value, 3)
        for r in boxes.itertuples(index=False):
            summary["boxes"].append((patient_id, phase, r.slice, r.x_min, r.x_max, r.y_min, r.y_max))
    summary["size_voxels_PV"] = "x".join(str(s) for s in volumes.images["PV"].GetSize())
    return summary


_WORKER_PLAN: CohortPlan | None = None


def _init_worker(plan: CohortPlan) -> None:
    global _WORKER_PLAN
    _WORKER_PLAN = plan


def _write_patient_in_worker(args: tuple[str, str]) -> dict:
    return _write_patient(_WORKER_PLAN, *args)


def read_ground_truth(cohort_dir: str | os.PathLike) -> dict | None:
    """``ground_truth.json`` of a synthetic cohort folder, or ``None`` when absent."""
    import json

    path = Path(cohort_dir) / "ground_truth.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def oracle_table(cohort_dir: str | os.PathLike) -> pd.DataFrame | None:
    """The oracle AUCs of a synthetic cohort as a table; ``None`` for a real cohort.

    One row per input set (``clinical``, ``image``, ``both``): ``oracle_auc`` is the AUC on
    this cohort's patients of the near-Bayes-optimal score fitted on a large population drawn
    from the generator (never on the cohort's labels): the ceiling that a model seeing those
    inputs can be read against; ``population_auc`` is the same score on fresh generated
    patients; ``inputs`` says what each set holds.
    """
    truth = read_ground_truth(cohort_dir)
    if truth is None:
        return None
    oracle = truth["oracle_auc"]
    return pd.DataFrame(
        [
            {
                "inputs": name,
                "oracle_auc": oracle[name]["cohort_auc"],
                "population_auc": oracle[name]["population_auc"],
                "what": oracle[name]["inputs"],
            }
            for name in ("clinical", "image", "both")
        ]
    )


def generate_cohort(
    out: str | os.PathLike,
    config: SynthConfig | None = None,
    overwrite: bool = False,
    n_jobs: int | None = None,
    progress: bool = True,
) -> Path:
    """Write the synthetic cohort folder ``out`` (see the module docstring).

    Everything is written to a temporary sibling folder that replaces ``out`` at the end,
    so a failure leaves no partial cohort.

    Args:
        out: cohort folder to create.
        config: generator settings (default :class:`SynthConfig`).
        overwrite: replace ``out`` when it exists and is not empty.
        n_jobs: worker processes (default: up to 2, the CPUs available); the result does
            not depend on it.
        progress: show a tqdm bar over patients.

    Returns:
        The cohort folder.

    Raises:
        FileExistsError: ``out`` exists, is not empty and ``overwrite`` is False.
    """
    from tqdm import tqdm

    config = config or SynthConfig()
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a folder")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty; pass overwrite=True (--overwrite) to replace it")
    n_jobs = n_jobs or min(2, os.cpu_count() or 1)
    say = print if progress else logger.info
    say(f"synth: planning the synthetic cohort (seed {config.seed}, generator {GENERATOR_VERSION})")
    plan = plan_cohort(config)
    ids = list(plan.clinical["patient_id"])[: config.n_patients]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        images_dir = tmp / "images"
        tasks = [(pid, str(images_dir)) for pid in ids]
        bar = tqdm(total=len(ids), desc="synthetic patients", unit="patient", disable=not progress)
        if n_jobs > 1:
            with ProcessPoolExecutor(n_jobs, initializer=_init_worker, initargs=(plan,)) as pool:
                summaries = []
                for summary in pool.map(_write_patient_in_worker, tasks, chunksize=2):
                    summaries.append(summary)
                    bar.update()
        else:
            summaries = []
            for task in tasks:
                summaries.append(_write_patient(plan, *task))
                bar.update()
        bar.close()
        say("synth: writing clinical.csv, roi_boxes.csv, ground truth and oracle AUCs")
        info = _write_tables(tmp, plan, ids, summaries)
        if out.exists():
            old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
            out.rename(old)
            try:
                tmp.rename(out)
            except BaseException:
                old.rename(out)  # put the previous cohort back
                raise
            shutil.rmtree(old)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    say(f"synth: wrote {info['n_patients']} SYNTHETIC patients ({info['n_er']} ER), "
        f"{info['annotated_slices']} annotated {REFERENCE_PHASE} slices, to {out}")
    return out


def _write_tables(folder: Path, plan: CohortPlan, ids: list[str], summaries: list[dict]) -> dict:
    """clinical.csv, roi_boxes.csv, ground_truth.{csv,json} and README.md; returns the json."""
    config = plan.config
    clinical = plan.clinical[plan.clinical["patient_id"].isin(ids)]
    outputs.write_csv(folder / "clinical.csv", clinical)
    boxes = pd.DataFrame([b for s in summaries for b in s["boxes"]],
                         columns=["patient_id", "phase", "slice", "x_min", "x_max", "y_min", "y_max"])  # fmt: skip
    outputs.write_csv(folder / "roi_boxes.csv", boxes)
    per_patient = pd.DataFrame([{k: v for k, v in s.items() if k != "boxes"} for s in summaries])
    truth = plan.truth[plan.truth["patient_id"].isin(ids)].merge(per_patient, on="patient_id")
    scores = oracle_scores(plan).rename(columns={name: f"oracle_{name}" for name in ORACLE_INPUTS})
    truth = truth.merge(scores, on="patient_id").round(4)
    outputs.write_csv(folder / "ground_truth.csv", truth)
    slices = {phase: int(truth[f"slices_{phase}"].sum()) for phase in PHASES}
    oracle = oracle_aucs(plan)
    info = {
        "generator": GENERATOR,
        "generator_version": GENERATOR_VERSION,
        "synthetic": True,
        "seed": config.seed,
        "settings": asdict(config),
        "n_patients": len(ids),
        "n_er": int(clinical["early_recurrence"].sum()),
        "n_ner": int((clinical["early_recurrence"] == 0).sum()),
        "annotated_slices": slices[REFERENCE_PHASE],
        "annotated_slices_reference": f"tumour-bearing slices of the ROI on the {REFERENCE_PHASE} phase",
        "annotated_slices_per_phase": slices,
        "paper_annotated_slices": 765,
        "oracle_auc": oracle,
        "oracle_auc_note": "cohort AUCs computed on all 167 planned patients" if config.n_patients else "",
        "dependency_rules": list(DEPENDENCY_RULES),
        "tissue_hu": TISSUE_HU,
    }
    outputs.write_json(folder / "ground_truth.json", info)
    outputs.write_text(folder / "README.md", _readme(info))
    return info


def _readme(info: dict) -> str:
    oracle = info["oracle_auc"]
    return f"""# SYNTHETIC cohort (not patient data)

Generated by `{GENERATOR}` version {GENERATOR_VERSION} with seed {info["seed"]}
(`python -m hccer_lib synth --out <folder> --seed {info["seed"]}`).

Every patient, value and image in this folder is SYNTHETIC. It stands in for the private
cohort of Wang et al. (IEEE Access 2020): {info["n_patients"]} patients ({info["n_er"]} ER,
{info["n_ner"]} NER) whose binarised clinical variables reproduce the paper's Table 1
counts, and triple-phase CT volumes (NC, ART, PV; int16 HU) with the tumour's per-slice
bounding box as ROI label. Results computed on it are not results about patients.

- `clinical.csv`: raw clinical values (columns as in DESIGN.md).
- `images/<patient_id>/<phase>.nii.gz`, `<phase>_roi.nii.gz`; `roi_boxes.csv`: the same boxes.
- `ground_truth.csv`: the latent scores and image traits the generator used per patient
  (`z_img`, {", ".join(TRAITS)}), slice counts and breathing offsets per phase, and the
  oracles' risk scores (`oracle_clinical`, `oracle_image`, `oracle_both`).
- `ground_truth.json`: settings, counts, annotated slices ({info["annotated_slices"]} on
  {REFERENCE_PHASE}; the paper had 765) and oracle AUCs.

Oracle AUCs: a risk score fitted on a large population drawn from the generator's own
process (never on this cohort's labels), from the binarised clinical variables, from
everything the images show (latent traits, tumour size and number, cirrhosis), or both.
Models trained on this cohort should stay below the cohort values (up to chance).

| inputs | on this cohort | on the population |
|---|---|---|
{"".join(f"| {name} | {oracle[name]['cohort_auc']} | {oracle[name]['population_auc']} |" + chr(10) for name in ("clinical", "image", "both"))}"""
