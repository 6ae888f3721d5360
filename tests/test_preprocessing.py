"""Preprocessing on tiny volumes whose answer is known by hand."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from volumes import Box, make_image, two_patient_cohort

from hccer_lib import preprocessing as pp
from hccer_lib.profiles import get_profile

# ---- windowing -------------------------------------------------------------------------------


def test_window_maps_level_to_half_and_clips_outside():
    level, width = 75.0, 350.0
    got = pp.window_hu(np.array([-1000.0, -100.0, 75.0, 250.0, 3000.0]), level, width)
    expected = np.array([0.0, 0.0, 0.5, 1.0, 1.0], dtype=np.float32)
    np.testing.assert_allclose(got, expected, atol=1e-6, err_msg=f"windowed values {got}")
    assert got.dtype == np.float32, f"dtype {got.dtype}"


def test_window_rejects_non_positive_width():
    with pytest.raises(ValueError, match="width"):
        pp.window_hu(np.zeros(3), 0.0, 0.0)


# ---- linear resize ----------------------------------------------------------------------------


@pytest.mark.parametrize("axis", ["x", "y"])
def test_linear_resize_of_a_ramp_is_the_exact_ramp(axis):
    # ramp value = 3 * index + 10 along one axis; spacing 0.5 mm in-plane, origin off zero
    z, y, x = np.mgrid[0:3, 0:40, 0:40].astype(np.float32)
    array = 3 * (x if axis == "x" else y) + 10
    image = make_image(array, spacing=(0.5, 0.5, 5.0), origin=(-7.0, 12.0, 30.0))
    centre_index = 20.0
    centre_mm = (-7.0 + 0.5 * centre_index, 12.0 + 0.5 * centre_index)
    side_mm, size = 4.0, 16
    got = pp.resample_square(image, 1, centre_mm, side_mm, size)
    offsets_index = (-side_mm / 2 + (np.arange(size) + 0.5) * side_mm / size) / 0.5
    ramp = 3 * (centre_index + offsets_index) + 10
    expected = np.tile(ramp, (size, 1)) if axis == "x" else np.tile(ramp[:, None], (1, size))
    np.testing.assert_allclose(got, expected, atol=1e-4, err_msg=f"resampled ramp along {axis}: {got[0]}")


# ---- slice matching ---------------------------------------------------------------------------


def test_slice_matching_5mm_vs_7mm_with_different_origins():
    # reference: 5 mm slices from z = 0; ROI on k = 4..9 -> z 20..45, centre 32.5
    reference_z = [20.0, 25.0, 30.0, 35.0, 40.0, 45.0]
    # other phase: 7 mm slices from z = -3; ROI on k = 5..9 -> z 32, 39, 46, 53, 60, centre 46
    other_z = [32.0, 39.0, 46.0, 53.0, 60.0]
    # wanted = z + 13.5 -> 33.5, 38.5, 43.5, 48.5, 53.5, 58.5 -> nearest positions by hand:
    expected = [0, 1, 2, 2, 3, 4]
    got = pp.match_slices(reference_z, 32.5, other_z, 46.0, tolerance_mm=7.0)
    assert got == expected, f"matched positions {got}, expected {expected}"
    # 43.5 and 48.5 are 2.5 mm from their nearest slice: dropped with a 2 mm tolerance
    got_tight = pp.match_slices(reference_z, 32.5, other_z, 46.0, tolerance_mm=2.0)
    assert got_tight == [0, 1, None, None, 3, 4], f"with 2 mm tolerance got {got_tight}"


def test_process_patient_matches_slices_by_physical_position():
    pv = make_image(np.zeros((12, 10, 10)), spacing=(1.0, 1.0, 5.0), origin=(0.0, 0.0, 0.0))
    art = make_image(np.zeros((12, 10, 10)), spacing=(1.0, 1.0, 7.0), origin=(0.0, 0.0, -3.0))
    nc = make_image(np.zeros((12, 10, 10)), spacing=(1.0, 1.0, 7.0), origin=(0.0, 0.0, -3.0))
    boxes = {
        "PV": [Box(k, 2, 6, 2, 6) for k in range(4, 10)],
        "ART": [Box(k, 2, 6, 2, 6) for k in range(5, 10)],
        "NC": [Box(k, 2, 6, 2, 6) for k in range(5, 10)],
    }
    result = pp.process_patient({"NC": nc, "ART": art, "PV": pv}, boxes, pp.PreprocessSettings(image_size=4))
    got_art = result["phase_slices"][:, 1].tolist()
    assert got_art == [5, 6, 7, 7, 8, 9], f"ART slices used {got_art}"
    assert result["slice"].tolist() == [4, 5, 6, 7, 8, 9], f"reference slices {result['slice']}"
    np.testing.assert_allclose(result["z_mm"], [20, 25, 30, 35, 40, 45], err_msg=f"z_mm {result['z_mm']}")
    assert result["images"].shape == (6, 4, 4, 3), f"shape {result['images'].shape}"


# ---- centre registration ----------------------------------------------------------------------


def test_centre_registration_brings_a_shifted_square_to_the_centre():
    """A 4x4 mm bright square at a different place (and origin) in each phase ends centred in all three."""
    placements = {"NC": (3, 3, (0.0, 0.0, 0.0)), "ART": (12, 10, (-25.0, 40.0, 2.0)), "PV": (8, 14, (5.0, 5.0, -1.0))}
    images, boxes = {}, {}
    for phase, (x0, y0, origin) in placements.items():
        array = np.zeros((3, 20, 20), dtype=np.float32)
        array[1, y0 : y0 + 4, x0 : x0 + 4] = 200.0  # HU
        images[phase] = make_image(array, spacing=(1.0, 1.0, 5.0), origin=origin)
        boxes[phase] = [Box(1, x0, x0 + 3, y0, y0 + 3)]
    settings = pp.PreprocessSettings(image_size=8, margin=0.5)  # side 4 mm * 2 = 8 mm -> 1 mm pixels
    result = pp.process_patient(images, boxes, settings)
    image = result["images"][0]  # [8, 8, 3]
    bright = pp.window_hu(np.array(200.0))
    dark = pp.window_hu(np.array(0.0))
    expected = np.full((8, 8), dark, dtype=np.float32)
    expected[2:6, 2:6] = bright
    for j, phase in enumerate(pp.PHASES):
        np.testing.assert_allclose(
            image[..., j], expected, atol=1e-5, err_msg=f"{phase} channel after registration:\n{image[..., j]}"
        )


def test_a_margin_in_mm_leaves_the_tumour_size_visible():
    """margin_mm adds the same millimetres to every crop: a 4 mm box with 2 mm on each side fills half of
    the 8 mm crop, an 8 mm box 8/12 of its 12 mm crop (a fractional margin gives both the same share)."""
    for box_mm, side_mm in ((4, 8.0), (8, 12.0)):
        array = np.zeros((3, 20, 20), dtype=np.float32)
        array[1, 2 : 2 + box_mm, 2 : 2 + box_mm] = 200.0
        images = {p: make_image(array, spacing=(1.0, 1.0, 5.0)) for p in pp.PHASES}
        boxes = {p: [Box(1, 2, 1 + box_mm, 2, 1 + box_mm)] for p in pp.PHASES}
        result = pp.process_patient(images, boxes, pp.PreprocessSettings(image_size=12, margin_mm=2.0), keep_steps=True)
        assert result["steps"][0]["side_mm"] == pytest.approx(side_mm), result["steps"][0]["side_mm"]
        bright = result["images"][0, :, :, 0] > pp.window_hu(np.array(100.0))
        share = bright.sum(axis=1).max() / 12
        assert share == pytest.approx(box_mm / side_mm, abs=1 / 12), f"{box_mm} mm box: {share:.2f} of the crop's side"
    with pytest.raises(ValueError, match="margin_mm"):
        pp.PreprocessSettings(margin_mm=-1.0)


def test_square_side_is_the_largest_box_extent_of_the_three_phases():
    images = {p: make_image(np.zeros((3, 30, 30))) for p in pp.PHASES}
    boxes = {"NC": [Box(1, 5, 9, 5, 9)], "ART": [Box(1, 5, 20, 5, 9)], "PV": [Box(1, 5, 9, 5, 12)]}
    result = pp.process_patient(images, boxes, pp.PreprocessSettings(image_size=4), keep_steps=True)
    side = result["steps"][0]["side_mm"]
    assert side == pytest.approx(16.0), f"side {side} mm, expected 16 mm (ART box x extent)"
    # the tumour's area in the slice is the reference phase's (PV) box: 5 x 8 voxels of 1 mm
    assert result["roi_area_mm2"].tolist() == pytest.approx([40.0]), result["roi_area_mm2"]


def test_missing_phase_is_a_value_error():
    images = {p: make_image(np.zeros((3, 10, 10))) for p in ("NC", "PV")}
    boxes = {p: [Box(1, 2, 4, 2, 4)] for p in ("NC", "PV")}
    with pytest.raises(ValueError, match="ART"):
        pp.process_patient(images, boxes, pp.PreprocessSettings(image_size=4))


# ---- cache ------------------------------------------------------------------------------------


def test_dataset_key_changes_with_any_setting_and_with_the_cohort():
    base = pp.PreprocessSettings(image_size=32)
    keys = {
        pp.dataset_key(base, "abc"),
        pp.dataset_key(pp.PreprocessSettings(image_size=64), "abc"),
        pp.dataset_key(pp.PreprocessSettings(image_size=32, window_width=400.0), "abc"),
        pp.dataset_key(pp.PreprocessSettings(image_size=32, reference_phase="ART"), "abc"),
        pp.dataset_key(base, "abd"),
    }
    assert len(keys) == 5, f"keys not all distinct: {keys}"
    assert pp.dataset_key(base, "abc") == pp.dataset_key(pp.PreprocessSettings(image_size=32), "abc")


def test_save_and_load_dataset_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    dataset = pp.ProcessedDataset(
        images=rng.random((3, 4, 4, 3)).astype(np.float32),
        patient_id=np.array(["P1", "P1", "P2"]),
        z_mm=np.array([1.0, 6.0, -2.5]),
        slice=np.array([3, 4, 7]),
        y_true=np.array([0, 0, 1]),
        phase_slices=np.array([[3, 3, 3], [4, 4, 4], [7, 6, 7]]),
        roi_area_mm2=np.array([120.0, 310.5, 64.0]),
        key="k123",
        settings={"image_size": 4},
    )
    pp.save_dataset(tmp_path, dataset)
    back = pp.load_dataset(tmp_path, "k123")
    np.testing.assert_allclose(back.images, dataset.images, atol=1e-3, err_msg="images after float16 round trip")
    assert back.patient_id.tolist() == ["P1", "P1", "P2"], f"patient ids {back.patient_id}"
    assert back.slice.tolist() == [3, 4, 7] and back.y_true.tolist() == [0, 0, 1]
    assert back.roi_area_mm2.tolist() == [120.0, 310.5, 64.0], f"areas {back.roi_area_mm2}"
    by_settings = pp.load_dataset(tmp_path, {"image_size": 4})
    assert by_settings.key == "k123", f"looked up by settings: {by_settings.key}"
    leftovers = [p.name for p in (tmp_path / "processed").iterdir() if p.name.startswith(".")]
    assert not leftovers, f"temporary files left: {leftovers}"


def test_build_dataset_reads_its_cache_back_and_rebuilds_when_a_setting_changes(tmp_path, monkeypatch):
    calls = []

    def fake_inputs(folder, patient_id):
        calls.append(patient_id)
        images = {p: make_image(np.full((4, 12, 12), 75.0)) for p in pp.PHASES}
        boxes = {p: [Box(k, 3, 8, 3, 8) for k in (1, 2)] for p in pp.PHASES}
        return images, boxes

    cohort_dir = two_patient_cohort(tmp_path, monkeypatch, fake_inputs)
    work_dir = tmp_path / "work"
    first = pp.build_dataset(cohort_dir, work_dir, 8, n_jobs=1, progress=False)
    assert first.images.shape == (4, 8, 8, 3) and first.patient_id.tolist() == ["P1", "P1", "P2", "P2"], first.table()
    assert first.y_true.tolist() == [0, 0, 1, 1] and np.allclose(first.images, 0.5), first.y_true
    assert calls == ["P1", "P2"], f"patients processed: {calls}"
    again = pp.build_dataset(cohort_dir, work_dir, 8, n_jobs=1, progress=False)
    assert calls == ["P1", "P2"] and again.key == first.key, f"second run reprocessed: {calls}"
    wider = pp.build_dataset(cohort_dir, work_dir, 8, window=(75.0, 500.0), n_jobs=1, progress=False)
    assert wider.key != first.key and calls == ["P1", "P2", "P1", "P2"], f"changed window: calls {calls}"
    (cohort_dir / "clinical.csv").write_text("patient_id,early_recurrence\nP1,0\nP2,0\n")
    changed = pp.build_dataset(cohort_dir, work_dir, 8, n_jobs=1, progress=False)
    assert changed.key not in (first.key, wider.key), "a changed cohort must change the key"


def test_cohort_fingerprint_is_the_content_not_the_place_or_the_file_times(tmp_path):
    """Issue 15: the same cohort in another clone (another folder, other mtimes) keeps its cache keys."""
    import os
    import shutil

    first = tmp_path / "clone_a" / "cohort"
    (first / "images" / "P1").mkdir(parents=True)
    (first / "clinical.csv").write_text("patient_id,early_recurrence\nP1,0\n")
    for phase in pp.PHASES:
        (first / "images" / "P1" / f"{phase}.nii.gz").write_bytes(bytes(range(200)) * 3)
    second = Path(shutil.copytree(first, tmp_path / "clone_b" / "elsewhere" / "cohort", copy_function=shutil.copyfile))
    for path in second.rglob("*"):
        os.utime(path, ns=(1_000_000_000, 1_000_000_000))  # other file times, as in a fresh clone
    assert pp.cohort_fingerprint(first) == pp.cohort_fingerprint(second)
    image = second / "images" / "P1" / "ART.nii.gz"
    image.write_bytes(bytes(range(1, 201)) * 3)  # same size, other content
    os.utime(image, ns=(2_000_000_000, 2_000_000_000))
    assert pp.cohort_fingerprint(first) != pp.cohort_fingerprint(second), "changed image content must change the key"


def test_first_run_and_cached_run_give_identical_images_and_figure(tmp_path, monkeypatch):
    """Issue 15: the run that builds the cache returns the images as stored (float16), so the figure of
    notebook 02 (fig_processed_samples.png) is byte-identical between a first and a later run."""
    from hccer_lib import outputs

    def fake_inputs(folder, patient_id):
        ramp = np.linspace(-100.0, 250.0, 4 * 12 * 12).reshape(4, 12, 12) + (7.3 if patient_id == "P2" else 0.0)
        images = {p: make_image(ramp + 11.1 * i) for i, p in enumerate(pp.PHASES)}
        boxes = {p: [Box(k, 2, 9, 3, 8) for k in (1, 2)] for p in pp.PHASES}
        return images, boxes

    cohort_dir = two_patient_cohort(tmp_path, monkeypatch, fake_inputs)
    work_dir = tmp_path / "work"
    first = pp.build_dataset(cohort_dir, work_dir, 8, n_jobs=1, progress=False)
    cached = pp.build_dataset(cohort_dir, work_dir, 8, n_jobs=1, progress=False)
    assert first.images.dtype == cached.images.dtype == np.float32
    assert np.array_equal(first.images, cached.images), np.max(np.abs(first.images - cached.images))
    assert len(np.unique(first.images)) > 50, "the test images should not be trivially representable"
    pngs = []
    for run, dataset in (("first", first), ("cached", cached)):
        figure = pp.plot_samples(dataset, n_per_class=2, seed=1)
        pngs.append(outputs.save_figure(figure, tmp_path / run / "fig_processed_samples.png").read_bytes())
    assert pngs[0] == pngs[1], "fig_processed_samples.png differs between the first and the cached run"


def test_study_dataset_uses_the_settings_recorded_by_notebook_02(tmp_path, monkeypatch):
    def fake_inputs(folder, patient_id):
        images = {p: make_image(np.full((4, 12, 12), 75.0)) for p in pp.PHASES}
        boxes = {p: [Box(k, 3, 8, 3, 8) for k in (1, 2)] for p in pp.PHASES}
        return images, boxes

    cohort_dir = two_patient_cohort(tmp_path, monkeypatch, fake_inputs)
    work_dir = tmp_path / "work"
    profile = replace(get_profile("quick"), image_size=8, roi_margin=0.0)
    default = pp.study_dataset(cohort_dir, work_dir, profile, n_jobs=1, progress=False)
    assert default.settings == vars(pp.PreprocessSettings(image_size=8)), default.settings
    # nothing recorded: the profile's roi_margin is the study's margin (what a margin does to the
    # crop: test_centre_registration_brings_a_shifted_square_to_the_centre)
    widened = pp.study_dataset(cohort_dir, work_dir, replace(profile, roi_margin=0.5), n_jobs=1, progress=False)
    assert widened.settings == vars(pp.PreprocessSettings(image_size=8, margin=0.5)), widened.settings
    assert widened.key != default.key
    # 75 HU in a window 0..150 HU maps to 0.5; in a window 75..425 HU (level 250) it maps to 0
    chosen = pp.build_dataset(cohort_dir, work_dir, 16, window=(250.0, 350.0), n_jobs=1, progress=False)
    pp.record_study_settings(work_dir, chosen.settings, profile)
    later = pp.study_dataset(cohort_dir, work_dir, profile, n_jobs=1, progress=False)
    assert later.settings["window_level"] == 250.0 and later.images.shape[1] == 8, later.settings
    assert np.allclose(later.images, 0.0), f"window not applied: max {later.images.max()}"
    # recorded for one profile, never read by another
    assert pp.study_dataset(cohort_dir, work_dir, replace(profile, name="smoke"), n_jobs=1, progress=False).key == default.key
    with pytest.raises(ValueError, match="window_width"):
        pp.record_study_settings(work_dir, {**chosen.settings, "window_width": 0.0}, profile)
