"""The synthetic cohort: exact Table 1, raw values away from cut-offs, dependencies,
enhancement physiology per phase, ROI boxes, per-phase geometry, determinism, atomic writing."""

import json
import time

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from hccer_lib.clinical import PAPER_TABLE1, binarise
from hccer_lib.synth import (
    CLINICAL_COLUMNS,
    CUTOFF_MARGIN,
    PHASES,
    TISSUE_CODES,
    TRAITS,
    SynthConfig,
    generate_cohort,
    label_boxes,
    oracle_aucs,
    oracle_inputs,
    oracle_scores,
    plan_cohort,
    sample_population,
    synthesize_clinical,
    synthesize_patient,
)

SEEDS = (2020, 1, 77)
CUTOFFS = {"age": 60, "tumor_size_mm": 50, "nlr": 2.8, "alt": 40, "ast": 50, "akp": 125,
           "ggt": 45, "alb": 40, "tb": 20.5, "afp": 9}  # fmt: skip


@pytest.fixture(scope="module", params=SEEDS)
def clinical(request) -> pd.DataFrame:
    return synthesize_clinical(SynthConfig(seed=request.param))


@pytest.fixture(scope="module")
def plan():
    return plan_cohort(SynthConfig(seed=2020))


def test_table1_counts_are_exact_per_class(clinical):
    levels = binarise(clinical)
    er = clinical["early_recurrence"] == 1
    for column, (table, _) in PAPER_TABLE1.items():
        for level, n_ner, n_er in table:
            got = (int(((levels[column] == level) & ~er).sum()), int(((levels[column] == level) & er).sum()))
            assert got == (n_ner, n_er), f"{column} {level}: (NER, ER) = {got}, paper {(n_ner, n_er)}"


def test_clinical_columns_ids_and_shuffled_labels(clinical):
    assert tuple(clinical.columns) == CLINICAL_COLUMNS, list(clinical.columns)
    assert list(clinical["patient_id"]) == [f"HCC{i:03d}" for i in range(1, 168)]
    labels = clinical["early_recurrence"].to_numpy()
    assert set(labels) == {0, 1} and labels.sum() == 65, labels.sum()
    assert not (np.all(np.diff(labels) >= 0) or np.all(np.diff(labels) <= 0)), "labels sorted, not shuffled"
    assert set(clinical["sex"]) == {"M", "F"} and set(clinical["child_pugh"]) == {"A", "B"}
    assert set(clinical["bclc"]) == {"0", "A", "B", "C"}


def test_raw_values_keep_a_margin_from_every_cutoff(clinical):
    for column, cutoff in CUTOFFS.items():
        distance = (clinical[column].astype(float) - cutoff).abs()
        worst = clinical.loc[distance.idxmin(), column]
        assert distance.min() >= CUTOFF_MARGIN[column], f"{column}: value {worst} within {CUTOFF_MARGIN[column]} of {cutoff}"
    assert clinical[list(CUTOFFS)].gt(0).all().all(), "non-positive raw value"
    assert clinical["tumor_number"].isin([1, 2, 3]).all(), sorted(set(clinical["tumor_number"]))


def test_dependencies_between_variables(clinical):
    for cls in (0, 1):
        rows = clinical[clinical["early_recurrence"] == cls]
        pvi, stage_c = rows["portal_vein_invasion"] == 1, rows["bclc"] == "C"
        n_pvi, n_c = int(pvi.sum()), int(stage_c.sum())
        assert int((stage_c & ~pvi).sum()) == max(0, n_c - n_pvi), f"class {cls}: BCLC C without PVI"
        assert int((pvi & ~stage_c).sum()) == max(0, n_pvi - n_c), f"class {cls}: PVI outside BCLC C"
        stage_b = rows[rows["bclc"] == "B"]
        assert (stage_b["tumor_number"] >= 2).all(), f"class {cls}: BCLC B with a single tumour"
        stage_0 = rows[rows["bclc"] == "0"]
        assert (stage_0["tumor_number"] == 1).all() and stage_0["tumor_size_mm"].between(10, 20).all()
        assert (stage_0["portal_vein_invasion"] == 0).all() and (stage_0["child_pugh"] == "A").all()
        cp_b = rows[rows["child_pugh"] == "B"]
        assert (cp_b["tb"] >= 20.5).all(), f"class {cls}: Child-Pugh B with TB {cp_b['tb'].min()}"
        assert (rows.loc[rows["alb"] < 40, "child_pugh"] == "B").all(), f"class {cls}: ALB < 40 with CP A"


def test_clinical_table_is_deterministic():
    first = synthesize_clinical(SynthConfig(seed=5)).to_csv(index=False)
    assert synthesize_clinical(SynthConfig(seed=5)).to_csv(index=False) == first
    assert synthesize_clinical(SynthConfig(seed=6)).to_csv(index=False) != first


def test_image_traits_follow_the_label(plan):
    truth = plan.truth
    er, ner = truth[truth["label"] == 1], truth[truth["label"] == 0]
    for trait in ("z_img", "necrosis_fraction", "margin_irregularity", "rim_enhancement_hu", "n_satellites"):
        assert er[trait].mean() > ner[trait].mean(), f"{trait}: ER mean {er[trait].mean():.3g} <= NER {ner[trait].mean():.3g}"
    no_signal = plan_cohort(SynthConfig(seed=2020, image_label_effect=0.0)).truth
    gap = no_signal.groupby("label")["z_img"].mean().diff().iloc[-1]
    assert abs(gap) < 0.4, f"image_label_effect=0 still separates z_img by {gap:.2f}"


def test_population_replicates_the_cohort_process():
    population = sample_population(SynthConfig(), n_replicates=3, seed=11)
    assert len(population) == 3 * 167 and population["early_recurrence"].sum() == 3 * 65, len(population)
    levels = binarise(population)
    for cls, n in ((0, 102), (1, 65)):
        rows = np.flatnonzero(population["early_recurrence"].to_numpy() == cls)
        for replicate in range(3):
            block = levels.iloc[rows[replicate * n : (replicate + 1) * n]]
            for column, (table, _) in PAPER_TABLE1.items():
                for level, *paper in table:
                    got = int((block[column] == level).sum())
                    assert got == paper[cls], f"replicate {replicate}, class {cls}, {column} {level}: {got} != {paper[cls]}"
        stage_0 = population.iloc[rows][population.iloc[rows]["bclc"] == "0"]
        assert stage_0["tumor_size_mm"].between(10, 20).all() and (stage_0["tumor_number"] == 1).all()
    er, ner = population[population["early_recurrence"] == 1], population[population["early_recurrence"] == 0]
    assert er["z_img"].mean() - ner["z_img"].mean() > 0.5, "population z_img carries no label signal"


def test_oracle_scores_do_not_use_the_cohort_labels(plan):
    scores = oracle_scores(plan)
    assert list(scores.columns) == ["patient_id", "clinical", "image", "both"], list(scores.columns)
    permuted = plan_cohort(SynthConfig(seed=2020))
    shuffled = np.random.default_rng(0).permutation(permuted.truth["label"].to_numpy())
    permuted.truth["label"] = shuffled
    permuted.clinical["early_recurrence"] = shuffled
    again = oracle_scores(permuted)
    assert np.array_equal(scores.to_numpy(), again.to_numpy()), "permuting the cohort's labels changed the oracle scores"
    no_signal = oracle_scores(plan_cohort(SynthConfig(seed=2020, image_label_effect=0.0)))
    assert not np.allclose(scores["image"], no_signal["image"]), "image oracle ignores the generator's settings"


def test_oracle_aucs_are_ordered_and_honest(plan):
    oracle = oracle_aucs(plan)
    population = {name: oracle[name]["population_auc"] for name in ("clinical", "image", "both")}
    assert population["both"] >= max(population["clinical"], population["image"]), population
    assert all(0.6 < auc < 0.95 for auc in population.values()), population
    for name in ("clinical", "image", "both"):
        keys = {"cohort_auc", "population_auc", "cv_auc", "in_sample_auc", "inputs"}
        assert keys <= set(oracle[name]), sorted(oracle[name])
    # The image oracle sees what the images show, the latent traits alone do not reach it.
    assert oracle["image"]["population_auc"] > oracle["z_img"]["population_auc"], oracle
    x = oracle_inputs(pd.concat([plan.clinical, plan.truth[list(TRAITS)]], axis=1))
    assert {k: v.shape for k, v in x.items()} == {"clinical": (167, 19), "image": (167, 9), "both": (167, 28)}


def test_oracle_without_image_signal_falls_to_the_visible_clinical_part():
    oracle = oracle_aucs(plan_cohort(SynthConfig(seed=2020, image_label_effect=0.0)))
    image, clinical = oracle["image"]["population_auc"], oracle["clinical"]["population_auc"]
    assert 0.55 < image < clinical, f"image oracle {image} without image signal (clinical {clinical})"
    assert abs(oracle["z_img"]["population_auc"] - 0.5) < 0.03, oracle["z_img"]


def _pick(plan, size_mm: float) -> str:
    """The patient whose tumour size is closest to ``size_mm``."""
    sizes = plan.clinical["tumor_size_mm"]
    return str(plan.clinical.loc[(sizes - size_mm).abs().idxmin(), "patient_id"])


@pytest.fixture(scope="module")
def patient(plan):
    return synthesize_patient(plan, _pick(plan, 40))


def test_enhancement_pattern_per_phase(patient):
    means = {}
    for phase in PHASES:
        hu = sitk.GetArrayViewFromImage(patient.images[phase]).astype(float)
        tissue = patient.tissue[phase]
        means[phase] = {name: hu[tissue == TISSUE_CODES[name]].mean() for name in ("liver", "tumour", "capsule")}
    nc, art, pv = means["NC"], means["ART"], means["PV"]
    assert nc["tumour"] < nc["liver"] - 5, f"NC: tumour {nc['tumour']:.0f} HU not darker than liver {nc['liver']:.0f}"
    assert art["tumour"] > art["liver"] + 20, f"ART: tumour {art['tumour']:.0f} not brighter than liver {art['liver']:.0f}"
    assert pv["tumour"] < pv["liver"] - 10, f"PV: tumour {pv['tumour']:.0f} does not wash out (liver {pv['liver']:.0f})"
    assert pv["capsule"] > pv["liver"] + 10, f"PV: capsule {pv['capsule']:.0f} not brighter than liver {pv['liver']:.0f}"
    assert 40 < nc["liver"] < 70 and 60 < art["liver"] < 90 and 95 < pv["liver"] < 125, means


def test_roi_is_the_per_slice_box_of_the_tumour(patient):
    tumour_codes = [TISSUE_CODES[n] for n in ("tumour", "necrosis", "capsule")]
    for phase in PHASES:
        roi = sitk.GetArrayViewFromImage(patient.rois[phase])
        tumour = np.isin(patient.tissue[phase], tumour_codes)
        assert roi.dtype == np.uint8 and set(np.unique(roi)) == {0, 1}
        assert np.all(roi[tumour] == 1), f"{phase}: {int((roi[tumour] == 0).sum())} tumour voxels outside the ROI"
        slices = np.flatnonzero(tumour.any(axis=(1, 2)))
        assert list(np.flatnonzero(roi.any(axis=(1, 2)))) == list(slices), phase
        for k in slices:  # the ROI is exactly the bounding box of the tumour on its slice
            ys, xs = np.nonzero(tumour[k])
            box = roi[k, ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
            assert box.all() and roi[k].sum() == box.size, f"{phase} slice {k}: ROI is not the tumour's box"
        assert patient.rois[phase].GetSize() == patient.images[phase].GetSize()
        assert patient.rois[phase].GetOrigin() == patient.images[phase].GetOrigin()


def test_geometry_spacing_and_per_phase_offsets(patient):
    spacings = {patient.images[p].GetSpacing() for p in PHASES}
    assert len(spacings) == 1, spacings
    sx, sy, sz = spacings.pop()
    assert 0.6 <= sx <= 0.8 and sx == sy and sz in (5.0, 7.0), (sx, sy, sz)
    for phase in PHASES:
        image = patient.images[phase]
        assert image.GetPixelID() == sitk.sitkInt16, image.GetPixelIDTypeAsString()
        hu = sitk.GetArrayViewFromImage(image)
        assert hu.min() < -50 and hu.max() - hu.min() > 200, (phase, hu.min(), hu.max())  # HU with fat
    centres = []
    for phase in PHASES:
        boxes = label_boxes(patient.rois[phase])
        w = (boxes["x_max"] - boxes["x_min"] + 1) * (boxes["y_max"] - boxes["y_min"] + 1)
        centres.append([np.average(boxes[c], weights=w) for c in ("centre_x_mm", "centre_y_mm", "z_mm")])
    centres = np.array(centres)
    gaps = [np.linalg.norm(centres[i] - centres[j]) for i, j in ((0, 1), (0, 2), (1, 2))]
    assert min(gaps) > 0.5, f"tumour centres of the phases (mm) {centres.round(1).tolist()} barely differ"
    offsets = np.array([patient.offsets_mm[p] for p in PHASES])
    assert np.all(np.abs(offsets) <= (3, 3, 6)) and len({tuple(o) for o in offsets}) == 3, offsets


def test_tumour_size_matches_roi_extent(plan):
    sizes = plan.clinical["tumor_size_mm"]
    near = sorted(set(sizes[(sizes - 50).abs() <= 6]))[:2] + sorted(set(sizes[(sizes - 50).abs() <= 6]))[-2:]
    for size in [*near, 15]:
        pid = _pick(plan, size)
        boxes = label_boxes(synthesize_patient(plan, pid).rois["PV"])
        extent = float(np.maximum(boxes["width_mm"], boxes["height_mm"]).max())
        assert (extent >= 50) == (size >= 50), f"{pid}: size {size} mm but largest ROI extent {extent:.1f} mm"
        assert abs(extent - size) < 4, f"{pid}: size {size} mm, ROI extent {extent:.1f} mm"


def test_patient_images_are_deterministic(plan):
    pid = _pick(plan, 25)
    first, again = synthesize_patient(plan, pid), synthesize_patient(plan, pid)
    other = synthesize_patient(plan_cohort(SynthConfig(seed=2021)), pid)
    for phase in PHASES:
        a = sitk.GetArrayFromImage(first.images[phase])
        assert np.array_equal(a, sitk.GetArrayFromImage(again.images[phase])), phase
        b = sitk.GetArrayFromImage(other.images[phase])
        assert a.shape != b.shape or not np.array_equal(a, b), f"{phase}: seed 2021 gives the same image"


def test_generate_cohort_writes_a_small_cohort_atomically(tmp_path):
    config = SynthConfig(seed=3, n_patients=3)
    out = generate_cohort(tmp_path / "cohort", config, n_jobs=1, progress=False)
    clinical = pd.read_csv(out / "clinical.csv", dtype={"patient_id": str, "bclc": str})
    assert list(clinical["patient_id"]) == ["HCC001", "HCC002", "HCC003"]
    for pid in clinical["patient_id"]:
        for phase in PHASES:
            for name in (f"{phase}.nii.gz", f"{phase}_roi.nii.gz"):
                assert (out / "images" / pid / name).is_file(), f"missing {pid}/{name}"
    info = json.loads((out / "ground_truth.json").read_text())
    assert info["seed"] == 3 and info["n_patients"] == 3 and info["generator_version"]
    assert set(info["oracle_auc"]) >= {"clinical", "image", "both"}
    truth = pd.read_csv(out / "ground_truth.csv")
    assert {"oracle_clinical", "oracle_image", "oracle_both"} <= set(truth.columns), list(truth.columns)
    assert info["annotated_slices"] == truth["slices_PV"].sum() > 0
    boxes = pd.read_csv(out / "roi_boxes.csv", dtype={"patient_id": str})
    assert len(boxes[boxes["phase"] == "PV"]) == info["annotated_slices"]
    assert "SYNTHETIC" in (out / "README.md").read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["cohort"], "temporary folder left behind"

    with pytest.raises(FileExistsError, match="overwrite"):
        generate_cohort(out, config, n_jobs=1, progress=False)
    image = out / "images" / "HCC002" / "ART.nii.gz"
    before = sitk.GetArrayFromImage(sitk.ReadImage(str(image)))
    csv_before = (out / "clinical.csv").read_bytes()
    generate_cohort(out, config, overwrite=True, n_jobs=2, progress=False)
    assert (out / "clinical.csv").read_bytes() == csv_before
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(image))), before), "rerun changed voxels"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cohort"]
    (tmp_path / "a_file").write_text("not a folder")
    with pytest.raises(FileExistsError, match="not a folder"):
        generate_cohort(tmp_path / "a_file", config, overwrite=True, n_jobs=1, progress=False)


def test_generate_cohort_leaves_nothing_on_failure(tmp_path, monkeypatch):
    from hccer_lib import synth

    def fail(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(synth, "_write_tables", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        generate_cohort(tmp_path / "cohort", SynthConfig(n_patients=1), n_jobs=1, progress=False)
    assert list(tmp_path.iterdir()) == [], [p.name for p in tmp_path.iterdir()]


def test_small_cohort_passes_validation(tmp_path):
    cohort = pytest.importorskip("hccer_lib.cohort")
    out = generate_cohort(tmp_path / "cohort", SynthConfig(seed=4, n_patients=5), n_jobs=1, progress=False)
    report = cohort.validate_cohort(out, progress=False)
    truth = pd.read_csv(out / "ground_truth.csv")
    assert report.n_patients == 5 and report.n_slices == truth["slices_PV"].sum(), report.summary()


@pytest.mark.slow
def test_default_cohort_budget_and_slices(tmp_path):
    start = time.perf_counter()
    out = generate_cohort(tmp_path / "cohort", SynthConfig(), progress=False)
    seconds = time.perf_counter() - start
    size_mb = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 1e6
    info = json.loads((out / "ground_truth.json").read_text())
    assert info["n_patients"] == 167 and (info["n_er"], info["n_ner"]) == (65, 102)
    assert abs(info["annotated_slices"] - 765) <= 40, info["annotated_slices"]
    assert size_mb < 300, f"cohort takes {size_mb:.0f} MB"
    assert seconds < 180, f"generation took {seconds:.0f} s"  # 60 s budget on 2 idle cores
    clinical = pd.read_csv(out / "clinical.csv", dtype={"patient_id": str, "bclc": str})
    assert clinical.equals(pd.read_csv(out / "clinical.csv", dtype={"patient_id": str, "bclc": str}))
    assert synthesize_clinical(SynthConfig()).to_csv(index=False) == (out / "clinical.csv").read_text()
