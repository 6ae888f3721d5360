"""The paper profile's ImageNet weights file: where Keras keeps it, and the refusal to start without it.

Kept apart from :mod:`hccer_lib.networks` (which imports Keras, and so TensorFlow) so that ``run_all.sh`` can refuse
the ``paper`` profile before TensorFlow is loaded: on some CPUs TensorFlow writes start-up lines to stderr whatever
its log level, and a refused run is one line.
"""

from __future__ import annotations

import os
from pathlib import Path

from hccer_lib.profiles import Profile

#: The file Keras caches for ``ResNet50(include_top=False, weights="imagenet")``.
IMAGENET_WEIGHTS_FILE = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"


def keras_home() -> Path:
    """Keras's cache folder: ``$KERAS_HOME`` if set (read now), else ``~/.keras``."""
    return Path(os.environ.get("KERAS_HOME") or Path("~/.keras").expanduser())


def imagenet_weights_path(keras_dir: str | os.PathLike | None = None) -> Path | None:
    """The local ResNet50 ImageNet weights file (no top), or ``None`` when it is absent.

    Looks in ``<keras_dir>/models/`` (``keras_dir`` defaults to :func:`keras_home`) for
    ``resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5``, the file Keras itself
    caches. Never downloads.
    """
    path = Path(keras_dir or keras_home()) / "models" / IMAGENET_WEIGHTS_FILE
    return path if path.is_file() else None


def check_imagenet(profile: Profile, imagenet: str = "auto") -> None:
    """Refuse a profile that fine-tunes ImageNet weights when the weights file is missing.

    The ``paper`` profile is the paper's method: ResNet50 pre-trained on ImageNet, then
    fine-tuned. Trained from random weights it is another method, so with
    ``imagenet="auto"`` and no local weights file this raises ``ValueError`` (one line
    saying how to get the file). ``imagenet="none"`` (``run_all.sh --random-init``) asks for
    random initialisation explicitly; a weights file path is checked when the network is built.
    """
    if not profile.imagenet_required or imagenet != "auto" or imagenet_weights_path() is not None:
        return
    wanted = keras_home() / "models" / IMAGENET_WEIGHTS_FILE
    raise ValueError(
        f"profile {profile.name!r} fine-tunes ImageNet weights (the paper's method) but {wanted} does not exist: on a "
        f"machine with internet run python -c \"import keras; keras.applications.ResNet50(include_top=False, "
        f"weights='imagenet')\" and copy {IMAGENET_WEIGHTS_FILE} from ~/.keras/models/ to "
        f"{wanted.parent}/ (or set KERAS_HOME), or train from random weights on purpose with run_all.sh --random-init"
    )
