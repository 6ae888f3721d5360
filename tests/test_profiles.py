"""The three profiles: paper = the paper's settings; smoke and quick are cheaper."""

import pytest

from hccer_lib.profiles import PROFILES, get_profile


def test_paper_profile_has_the_papers_training_settings():
    paper = get_profile("paper")
    got = (paper.n_folds, paper.image_size, paper.batch_size, paper.epochs, paper.learning_rate)
    assert got == (10, 224, 16, 50, 1e-4), got
    assert paper.resnet_blocks == (3, 4, 6, 3) and paper.resnet_width == 64, "ResNet50"


def test_cheaper_profiles_are_cheaper():
    smoke, quick, paper = (get_profile(n) for n in ("smoke", "quick", "paper"))
    assert smoke.n_folds == 2 and smoke.epochs == 1, (smoke.n_folds, smoke.epochs)
    assert quick.n_folds == 10, "quick runs all ten folds"
    assert smoke.image_size <= quick.image_size <= paper.image_size
    assert smoke.epochs <= quick.epochs <= paper.epochs


def test_the_paper_profile_adds_nothing_to_the_papers_training_and_quick_measures_the_noise():
    paper, quick = get_profile("paper"), get_profile("quick")
    recipe = (paper.validation_fraction, paper.weight_decay, paper.lr_schedule, paper.augment, paper.roi_margin,
              paper.test_symmetries, paper.image_dropout, paper.fusion_head_init, paper.head_refit,
              paper.fusion_head_refit, paper.clinical_activation, paper.image_activation)
    assert recipe == (0.0, 0.0, "constant", False, 0.0, False, 0.0, "glorot_uniform", 0.0, 0.0, "relu", "relu"), recipe
    assert get_profile("quick").clinical_activation == "linear", "chosen on development cohorts (profiles.py)"
    assert get_profile("quick").image_activation == "linear", "chosen on development cohorts (profiles.py)"
    assert (quick.head_refit, quick.fusion_head_refit, quick.fusion_refit_image_scale) == (0.001, 0.01, 0.316), \
        "chosen on development cohorts (profiles.py)"
    assert quick.fusion_refit_clinical_bits and not paper.fusion_refit_clinical_bits, "chosen on development cohorts"
    assert paper.imagenet_required and not quick.imagenet_required
    assert quick.train_seeds >= 3 and paper.train_seeds >= 3, "several training seeds: the training noise"


def test_unknown_profile_is_refused_with_the_valid_names():
    with pytest.raises(ValueError, match="paper.*quick.*smoke"):
        get_profile("fast")
    assert set(PROFILES) == {"smoke", "quick", "paper"}


def test_the_heads_initial_weights_reach_the_network_and_are_checked():
    from dataclasses import replace

    from hccer_lib import training

    assert training.network_config(get_profile("quick")).fusion_head_init == "zeros"
    assert training.network_config(get_profile("paper")).fusion_head_init == "glorot_uniform", "Keras's default: the paper's networks"
    with pytest.raises(ValueError, match="fusion_head_init"):
        replace(get_profile("quick"), fusion_head_init="zero")
