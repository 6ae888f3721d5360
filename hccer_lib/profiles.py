"""Run profiles: one parameter, ``profile``, sets the cost of a run (DESIGN.md, Profiles).

| profile | for | what it runs |
|---|---|---|
| ``smoke`` | CI and tests | tiny images, 2 folds, 1 epoch: proves every notebook runs |
| ``quick`` | default of ``run_all.sh`` on a laptop CPU | 10 folds, every model, reduced image size, network and epochs |
| ``paper`` | a GPU | the paper's settings: ResNet50, 224×224, batch 16, 50 epochs, lr 1e-4 |
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace


@dataclass(frozen=True)
class Profile:
    """Every setting that a profile changes. Notebooks read them, never hard-code them.

    Attributes:
        name: ``smoke``, ``quick`` or ``paper``.
        n_folds: folds of the patient-level stratified cross-validation.
        image_size: side of the square 3-channel ROI image fed to the networks, pixels.
        epochs, batch_size, learning_rate: training of every network (Adam).
        resnet_blocks: residual blocks per stage; ``(3, 4, 6, 3)`` is ResNet50.
        resnet_width: filters of the first stage; 64 is ResNet50 (others scale with it).
        radiomics_mode: ``"2d"`` (features per slice) or ``"3d"`` (per patient volume).
        radiomics_feature_classes: PyRadiomics feature classes extracted.
        n_bootstrap: bootstrap resamples for confidence intervals.
        augment: turn each training image by a random symmetry of the square (flips and
            quarter turns, ``training.dihedral``), drawn anew every epoch. Off in the
            ``paper`` profile: the paper does not augment.
        train_seeds: how many times every network is trained, with different
            initialisation seeds (``training.train_seeds``): the training noise.
        validation_fraction: share of each fold's *training* patients held out to choose
            the epoch whose weights are kept (``training.BestEpoch``); 0: the last epoch.
        weight_decay: AdamW's decoupled weight decay; 0: Adam.
        lr_schedule: ``"constant"`` or ``"cosine"`` (per epoch, towards 0).
        imagenet_required: the profile is the paper's fine-tuning of ImageNet weights: a
            run refuses to start without the weights file unless random initialisation is
            asked for explicitly (``training.check_imagenet``).
    """

    name: str
    n_folds: int
    image_size: int
    epochs: int
    batch_size: int
    learning_rate: float
    resnet_blocks: tuple[int, ...]
    resnet_width: int
    radiomics_mode: str
    radiomics_feature_classes: tuple[str, ...]
    n_bootstrap: int
    augment: bool = False
    train_seeds: int = 1
    validation_fraction: float = 0.0
    weight_decay: float = 0.0
    lr_schedule: str = "constant"
    imagenet_required: bool = False

    def as_dict(self) -> dict:
        return asdict(self)


_ALL_RADIOMICS = ("firstorder", "shape2D", "glcm", "glrlm", "glszm", "gldm", "ngtdm")

PROFILES: dict[str, Profile] = {
    "paper": Profile(
        name="paper",
        n_folds=10,
        image_size=224,
        epochs=50,
        batch_size=16,
        learning_rate=1e-4,
        resnet_blocks=(3, 4, 6, 3),
        resnet_width=64,
        radiomics_mode="2d",
        radiomics_feature_classes=_ALL_RADIOMICS,
        n_bootstrap=2000,
        imagenet_required=True,
    ),
}
PROFILES["quick"] = replace(
    PROFILES["paper"],
    name="quick",
    # Measured on a 2-core CPU (scripts/benchmark_training.py): 48 px, one block per stage,
    # width 8 trains 10-15 s per fold (32 px: 7-10 s, but the deep model's pooled AUC fell
    # from 0.66 to 0.58); randomly initialised (no ImageNet weights for this size), so a
    # higher learning rate than the paper's fine-tuning rate: with 1e-4 the network had
    # not learned after 3 epochs and had memorised the slices after 8.
    image_size=48,
    epochs=5,
    learning_rate=1e-3,
    resnet_blocks=(1, 1, 1, 1),
    resnet_width=8,
    n_bootstrap=1000,
    imagenet_required=False,  # a reduced ResNet: there are no ImageNet weights for it
)
PROFILES["smoke"] = replace(
    PROFILES["quick"],
    name="smoke",
    n_folds=2,
    image_size=32,
    epochs=1,
    resnet_width=4,
    radiomics_feature_classes=("firstorder", "glcm"),
    n_bootstrap=100,
)


def get_profile(name: str) -> Profile:
    """The :class:`Profile` called ``name``; ``ValueError`` names the valid ones."""
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown profile {name!r}; choose one of {sorted(PROFILES)}") from None
