"""The deep model, fusion models A-D and the joint loss (Wang et al. 2020, section III).

Every network takes the 3-channel ROI image ``[n, H, W, 3]`` (channels NC, ART, PV,
HU-windowed and scaled to ``[0, 1]`` by ``hccer_lib.preprocessing``) and, for the fusion
models, the clinical vector ``[n, k]`` of the slice's patient (``k = 9`` for the paper's
vector). Every network ends in 2-neuron softmax heads; the probability of early
recurrence is the second neuron.

| model | image pathway | clinical pathway | head |
|---|---|---|---|
| ``deep_resnet50`` | ResNet, 2048 pooled features | none | FC 2, softmax |
| ``fusion_a`` | ResNet features (2048) | the vector (9), scaled | concat (2057) → FC 2 |
| ``fusion_b`` | ResNet features → FC ``image_units`` (64) | the vector, scaled | concat → FC 2 |
| ``fusion_c`` | as B | Conv1D over the vector as a length-9 sequence (8 filters, kernel 3) | concat → FC 2 |
| ``fusion_d`` | as B | FC ``clinical_units`` (16) | concat → FC 2 |
| ``fusion_d_joint`` | as D, plus a softmax head on each pathway | | loss = 1/4 image + 1/4 clinical + 1/2 fused |

The paper leaves open whether C and D keep B's image FC layer, the sizes of the
added layers and the activations of C and D's clinical layer (``clinical_activation``: ReLU or
none) and of B, C and D's image FC layer (``image_activation``). Here C and D are B plus their
clinical layer (the paper presents A to D as successive changes and argues for B's balancing of
2048 image against 9 clinical features); every size is a :class:`NetworkConfig` field.

**Image pathway.** With ``resnet_blocks=(3, 4, 6, 3)`` and ``resnet_width=64`` (the paper
profile) the image pathway is exactly ``keras.applications.ResNet50(include_top=False,
pooling="avg")``: 53 ``Conv2D`` layers, of which 4 are the projection shortcuts of the
first block of each stage; the other 49 are the paper's "49 convolutional layers", and
the 2-neuron head is its "one fully connected layer". Its ImageNet weights are loaded
from ``$KERAS_HOME/models/resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5`` when
that file exists; nothing is ever downloaded. Smaller profiles use :func:`build_resnet`,
the same bottleneck blocks with configurable blocks per stage and width, randomly
initialised.

**Input scaling.** ImageNet ResNet50 weights are caffe-style: they expect BGR images on
0-255 with the ImageNet channel means subtracted (``keras.applications.resnet50.
preprocess_input``). :class:`PhaseScaling` does exactly that to the ``[0, 1]`` phase
image, treating (NC, ART, PV) as (R, G, B): ``x * 255``, channels reversed to (PV, ART,
NC), minus (103.939, 116.779, 123.68). So the model's first convolution sees the phases
on the range and offset its pretrained filters were trained on, and
``PhaseScaling()(x) == preprocess_input(255 * x)``. The same layer is used for randomly
initialised networks (the batch normalisation after the first convolution absorbs the
scale), so every profile runs the same graph.

**Clinical scaling.** Every fusion model's clinical input first passes
:class:`ClinicalScaling`: each bit standardised with the mean and SD of the fold's training
patients (stored in the model, so a saved network scales a new patient the same way), times
``sqrt(n_image / 9)`` in fusion A and B, where the vector meets ``n_image`` image features in
the fused layer (1 in C and D, whose own clinical layer comes first). Not in
the paper (which does not say how its 0/1 vector is scaled); without it fusion A ignores its
clinical input in a short training (the class docstring gives the measurements).

Backend-neutral: only Keras 3 APIs (``keras.layers``, ``keras.ops``) are used, so the
models run on TensorFlow (the default) and on JAX (``KERAS_BACKEND=jax``).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import keras
import numpy as np
from keras import layers, ops

from hccer_lib import models
from hccer_lib.imagenet import IMAGENET_WEIGHTS_FILE, imagenet_weights_path, keras_home
from hccer_lib.profiles import DEFAULT_LAYER_ACTIVATION, HEAD_INITS, LAYER_ACTIVATIONS

logger = logging.getLogger("hccer")

#: The networks and the fusion architecture of each fusion network: the model registry's (``models.py``).
MODEL_NAMES = models.NETWORK_MODELS
FUSION_KINDS = models.FUSION_KINDS
#: The fusion architectures with a layer of their own over the clinical vector (C's Conv1D, D's FC), the layer whose
#: activation is :attr:`NetworkConfig.clinical_activation`.
CLINICAL_LAYER_KINDS = ("c", "d")
#: The fusion architectures with an FC layer over the pooled image features (B, C, D), the layer whose activation is
#: :attr:`NetworkConfig.image_activation`.
IMAGE_LAYER_KINDS = ("b", "c", "d")
#: Each activation setting of :class:`NetworkConfig`, with the fusion architectures that have the layer it activates.
ACTIVATION_LAYER_KINDS = {"clinical_activation": CLINICAL_LAYER_KINDS, "image_activation": IMAGE_LAYER_KINDS}

RESNET50_BLOCKS = (3, 4, 6, 3)
RESNET50_WIDTH = 64
IMAGENET_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)

# Joint loss of section III.D, equation (4).
JOINT_LOSS_WEIGHTS = {"image": 0.25, "clinical": 0.25, "fused": 0.5}


@dataclass(frozen=True)
class NetworkConfig:
    """Every setting of a network; the defaults are the paper's ResNet50 on 224×224.

    Attributes:
        image_size: side of the square input image, pixels (``[n, image_size, image_size, 3]``).
        n_clinical: length ``k`` of the clinical vector (9 for the paper's vector).
        resnet_blocks: bottleneck blocks per stage; ``(3, 4, 6, 3)`` is ResNet50.
        resnet_width: filters of the stem and of the first stage's bottleneck; 64 is
            ResNet50. The image features have ``32 * resnet_width`` channels (2048).
        image_units: units of the image FC layer of fusion B, C and D (the paper: not stated).
        clinical_filters, clinical_kernel: fusion C's Conv1D over the clinical vector.
        clinical_units: units of fusion D's FC layer over the clinical vector.
        clinical_activation: the activation of fusion C's Conv1D and fusion D's FC layer over the clinical vector:
            ``"relu"`` or ``"linear"`` (none: the layer is a learned linear map of the standardised bits, Keras's
            default for a layer). The paper names neither; the ``paper`` profile keeps ``"relu"``, the ``quick``
            profile's choice is in ``hccer_lib/profiles.py``.
        image_activation: the activation of fusion B, C and D's image FC layer over the pooled image features:
            ``"relu"`` (the networks before it existed) or ``"linear"`` (a learned linear map of the features). The
            paper names none.
        imagenet: ``"auto"`` loads ImageNet weights when the architecture is ResNet50 and
            the weights file exists locally (random initialisation otherwise, logged);
            ``"none"`` always initialises randomly; or the path of a weights file.
        bn_momentum: momentum of every batch normalisation's moving mean and variance
            (the statistics a trained network predicts with); 0.99 is Keras's, as in
            ``keras.applications.ResNet50``. After ``s`` training steps the moving
            statistics still hold ``bn_momentum ** s`` of their initial 0 and 1: 30 % after
            120 steps at 0.99 (the quick recipe's 6 epochs when this was measured; 45 % after
            the 80 steps of its 4 epochs now), so a short training predicts with statistics
            unlike those it was trained with.
        image_dropout: in the fusion models, the share of the image pathway's features
            (after B, C and D's image FC layer) dropped at random in each training step where
            they meet the clinical pathway (``keras.layers.Dropout``; nothing is dropped when
            predicting). 0 is the paper's networks.
        fusion_head_init: initial weights of the fusion models' 2-neuron softmax heads (the fused
            one and, with the joint loss, the image and clinical heads): ``"glorot_uniform"``
            (Keras's default, the paper's networks) or ``"zeros"`` (every head starts at
            probability 1/2 and moves by what the training shows, not from a random draw that
            weighs the clinical bits at random; its bias starts at 0 either way). The deep
            model's head always starts from Keras's draw.
        stem_pool: the stem's 3×3/2 max-pool of the reduced ResNets (:func:`build_resnet`);
            ``False`` drops it, so that every stage works at twice the resolution (at 48 px the
            last stage sees 3×3 instead of 2×2) for 1.7 times the training time. Tried on
            development cohorts and not adopted (docs/cpu_recipe.md, "Tried since"); ResNet50 keeps its pool.
        clinical_gain: the gain of :class:`ClinicalScaling` in every fusion model; ``None``
            is :func:`clinical_gain` of the image features for fusion A and B and 1 for C and D
            (whose own clinical layer comes first).
        head_dropout: in the deep model, the share of its pooled image features dropped at random in
            each training step before its softmax head (``keras.layers.Dropout``; nothing is dropped
            when predicting). 0 is the paper's network. Tried on development cohorts and not adopted
            (docs/cpu_recipe.md, "Tried since").
    """

    image_size: int = 224
    n_clinical: int = 9
    resnet_blocks: tuple[int, ...] = RESNET50_BLOCKS
    resnet_width: int = RESNET50_WIDTH
    image_units: int = 64
    clinical_filters: int = 8
    clinical_kernel: int = 3
    clinical_units: int = 16
    imagenet: str = "auto"
    bn_momentum: float = 0.99
    image_dropout: float = 0.0
    fusion_head_init: str = "glorot_uniform"
    stem_pool: bool = True
    clinical_gain: float | None = None
    head_dropout: float = 0.0
    clinical_activation: str = DEFAULT_LAYER_ACTIVATION
    image_activation: str = DEFAULT_LAYER_ACTIVATION

    def __post_init__(self):
        for field in ACTIVATION_LAYER_KINDS:
            if getattr(self, field) not in LAYER_ACTIVATIONS:
                raise ValueError(f"{field} must be one of {LAYER_ACTIVATIONS}, got {getattr(self, field)!r}")
        if not 0.0 <= self.bn_momentum < 1.0:
            raise ValueError(f"bn_momentum must be in [0, 1), got {self.bn_momentum}")
        if not 0.0 <= self.image_dropout < 1.0:
            raise ValueError(f"image_dropout must be in [0, 1), got {self.image_dropout}")
        if not 0.0 <= self.head_dropout < 1.0:
            raise ValueError(f"head_dropout must be in [0, 1), got {self.head_dropout}")
        if self.fusion_head_init not in HEAD_INITS:
            raise ValueError(f"fusion_head_init must be one of {HEAD_INITS}, got {self.fusion_head_init!r}")
        if not self.stem_pool and self.is_resnet50:
            raise ValueError("stem_pool=False is for the reduced ResNets; ResNet50 keeps its stem's max-pool")
        if self.clinical_gain is not None and not self.clinical_gain > 0:
            raise ValueError(f"clinical_gain must be positive or None, got {self.clinical_gain}")
        if self.image_size < 32:
            raise ValueError(f"image_size must be at least 32 pixels, got {self.image_size}")
        if len(self.resnet_blocks) != 4 or min(self.resnet_blocks) < 1:
            raise ValueError(f"resnet_blocks must be 4 positive counts, got {self.resnet_blocks}")
        if self.resnet_width < 1 or self.n_clinical < 1:
            raise ValueError(f"resnet_width and n_clinical must be positive, got {self.resnet_width}, {self.n_clinical}")
        object.__setattr__(self, "resnet_blocks", tuple(int(b) for b in self.resnet_blocks))

    @property
    def is_resnet50(self) -> bool:
        return self.resnet_blocks == RESNET50_BLOCKS and self.resnet_width == RESNET50_WIDTH

    def as_dict(self) -> dict:
        return asdict(self)

    def key_dict(self) -> dict:
        """:meth:`as_dict` less the settings of :data:`KEYED_AT_DEFAULT_SINCE` at the value every earlier
        network had: what a training's run key hashes, so that adding a setting keeps earlier trainings valid."""
        return {k: v for k, v in asdict(self).items()
                if not (k in KEYED_AT_DEFAULT_SINCE and v == KEYED_AT_DEFAULT_SINCE[k])}


#: Settings added to :class:`NetworkConfig` after trained networks were first keyed by it, each with the
#: value that every network trained before it had. At that value a setting is left out of the run key
#: (:meth:`NetworkConfig.key_dict`), so the trainings saved before it was added are read, not redone.
KEYED_AT_DEFAULT_SINCE: dict[str, object] = {"stem_pool": True, "clinical_gain": None, "head_dropout": 0.0,
                                             "clinical_activation": DEFAULT_LAYER_ACTIVATION,
                                             "image_activation": DEFAULT_LAYER_ACTIVATION}


# %% Input scaling


@keras.saving.register_keras_serializable(package="hccer")
class PhaseScaling(layers.Layer):
    """``[n, H, W, 3]`` phases (NC, ART, PV) in ``[0, 1]`` → caffe-style ImageNet input.

    ``x * 255``, channel order reversed (as ``preprocess_input`` turns RGB into BGR), the
    ImageNet BGR means subtracted: the same as ``resnet50.preprocess_input(255 * x)``.
    """

    def call(self, inputs):
        mean = ops.convert_to_tensor(IMAGENET_CAFFE_MEAN_BGR, dtype=inputs.dtype)
        return ops.flip(inputs, axis=-1) * 255.0 - mean


@keras.saving.register_keras_serializable(package="hccer")
class ClinicalScaling(layers.Layer):
    """``[n, k]`` clinical vector → ``gain * (x - mean) / SD``, standardised on the training patients.

    ``mean`` and ``scale`` (``1 / SD``; 1 where a bit does not vary) are non-trainable
    weights, 0 and 1 when built, set by :func:`set_clinical_scaling` from the vectors of
    the fold's training patients before each fit (never the test fold's) and saved with
    the model, so a saved network scales a new patient as it was trained.

    ``gain`` balances the two blocks that meet in the fused layer in fusion A and B (where the
    vector itself meets the image features): ``sqrt(n_image / 9)``
    for ``n_image`` image features (:func:`clinical_gain`), so that the paper's vector of 9
    standardised bits carries the total variance of ``n_image`` unit-variance image
    features; every bit gets that gain however many bits the selection keeps. Why: Adam
    moves every weight by about the learning rate per step, so an input's share of the
    logit grows with its scale. Measured on the cohorts of ``tests/test_fusion_inputs.py``
    (quick recipe with batch normalisation momentum 0.99, 32 px, 128 image features): where
    only 3 clinical bits carry the label (logistic regression 0.84), fusion A reached 0.54
    with raw bits, 0.66 standardised and 0.78 with this gain (with the quick profile's
    momentum 0.9 since: 0.639 +- 0.185 over 3 seeds, their ensemble 0.782); where only the image
    does (deep model 0.85), fusion A reached 0.87 with gain 1 or 4 but 0.71 when the gain
    grew as ``sqrt(n_image / k)`` for the one or two noise bits kept (about 8-11): too
    large a gain fits the training patients' chance associations of a short vector. The paper's remedy for the same imbalance (2048
    against 9) is fusion B's image FC layer; scaling the input keeps every architecture as
    the paper draws it. Fusion C and D pass the vector through their own clinical layer
    first (Conv1D, FC 16) and get gain 1: with the gain of 2.7 beside 64 image units they
    fell to 0.76 where only the image carries the label (deep model 0.85), with raw bits
    they had matched it.
    """

    def __init__(self, gain: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.gain = float(gain)

    def build(self, input_shape):
        k = int(input_shape[-1])
        self.mean = self.add_weight(shape=(k,), initializer="zeros", trainable=False, name="mean")
        self.scale = self.add_weight(shape=(k,), initializer="ones", trainable=False, name="scale")

    def call(self, inputs):
        return (inputs - ops.cast(self.mean, inputs.dtype)) * ops.cast(self.scale * self.gain, inputs.dtype)

    def get_config(self) -> dict:
        return {**super().get_config(), "gain": self.gain}


#: Length of the paper's clinical vector: the reference of :func:`clinical_gain`.
PAPER_CLINICAL_BITS = 9


def clinical_gain(n_image: int) -> float:
    """``sqrt(n_image / 9)``: the gain of :class:`ClinicalScaling` beside ``n_image`` image features."""
    if n_image < 1:
        raise ValueError(f"n_image must be positive, got {n_image}")
    return float(np.sqrt(n_image / PAPER_CLINICAL_BITS))


def clinical_scaling_values(vectors) -> tuple[np.ndarray, np.ndarray]:
    """``(mean, scale)`` of the rows of ``vectors`` ``[n, k]``: column means and ``1 / SD`` (1 where SD is 0)."""
    vectors = np.asarray(vectors, dtype=np.float64)
    if vectors.ndim != 2 or len(vectors) == 0:
        raise ValueError(f"clinical vectors must be a non-empty [n, k] array, got shape {vectors.shape}")
    sd = vectors.std(axis=0)
    return vectors.mean(axis=0), 1.0 / np.where(sd > 1e-12, sd, 1.0)


def set_clinical_scaling(model: keras.Model, vectors) -> None:
    """Fit ``model``'s :class:`ClinicalScaling` to ``vectors`` ``[n, k]`` (one row per training patient).

    A no-op for a network without a clinical input (``deep_resnet50``).
    """
    try:
        layer = model.get_layer("clinical_scaling")
    except ValueError:
        return
    mean, scale = clinical_scaling_values(vectors)
    layer.mean.assign(mean.astype("float32"))
    layer.scale.assign(scale.astype("float32"))


# %% Image pathway


def _bottleneck_block(x, filters: int, stride: int, projection: bool, name: str):
    """Keras's ResNet v1 bottleneck: 1×1 (stride) → 3×3 → 1×1 (4·filters) + shortcut."""
    if projection:
        shortcut = layers.Conv2D(4 * filters, 1, strides=stride, name=f"{name}_0_conv")(x)
        shortcut = layers.BatchNormalization(epsilon=1.001e-5, name=f"{name}_0_bn")(shortcut)
    else:
        shortcut = x
    x = layers.Conv2D(filters, 1, strides=stride, name=f"{name}_1_conv")(x)
    x = layers.BatchNormalization(epsilon=1.001e-5, name=f"{name}_1_bn")(x)
    x = layers.Activation("relu", name=f"{name}_1_relu")(x)
    x = layers.Conv2D(filters, 3, padding="same", name=f"{name}_2_conv")(x)
    x = layers.BatchNormalization(epsilon=1.001e-5, name=f"{name}_2_bn")(x)
    x = layers.Activation("relu", name=f"{name}_2_relu")(x)
    x = layers.Conv2D(4 * filters, 1, name=f"{name}_3_conv")(x)
    x = layers.BatchNormalization(epsilon=1.001e-5, name=f"{name}_3_bn")(x)
    x = layers.Add(name=f"{name}_add")([shortcut, x])
    return layers.Activation("relu", name=f"{name}_out")(x)


def build_resnet(
    image_size: int,
    blocks: tuple[int, ...] = RESNET50_BLOCKS,
    width: int = RESNET50_WIDTH,
    name: str | None = None,
    stem_pool: bool = True,
) -> keras.Model:
    """A ResNet v1 feature extractor with Keras ResNet50's layers, configurable in size.

    Stem (7×7/2 conv of ``width`` filters, BN, ReLU, 3×3/2 max-pool unless ``stem_pool`` is
    false), then four stages of ``blocks[i]`` bottleneck blocks with ``width · (1, 2, 4, 8)``
    bottleneck filters (the first block of each stage has a projection shortcut; stages 2-4
    halve the size), then global average pooling. ``blocks=(3, 4, 6, 3), width=64`` has the layers and
    parameter count of ``keras.applications.ResNet50(include_top=False, pooling="avg")``.

    Args:
        image_size: input ``[n, image_size, image_size, 3]``, already scaled.
    Returns:
        a model ``[n, H, W, 3] → [n, 32 · width]``.
    """
    inputs = keras.Input((image_size, image_size, 3), name="scaled_image")
    x = layers.ZeroPadding2D(3, name="conv1_pad")(inputs)
    x = layers.Conv2D(width, 7, strides=2, name="conv1_conv")(x)
    x = layers.BatchNormalization(epsilon=1.001e-5, name="conv1_bn")(x)
    x = layers.Activation("relu", name="conv1_relu")(x)
    if stem_pool:
        x = layers.ZeroPadding2D(1, name="pool1_pad")(x)
        x = layers.MaxPooling2D(3, strides=2, name="pool1_pool")(x)
    for stage, n_blocks in enumerate(blocks):
        filters = width * 2**stage
        for block in range(n_blocks):
            stride = 2 if (block == 0 and stage > 0) else 1
            x = _bottleneck_block(x, filters, stride, projection=block == 0, name=f"conv{stage + 2}_block{block + 1}")
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    blocks_label = "".join(str(b) for b in blocks)
    return keras.Model(inputs, x, name=name or f"resnet_b{blocks_label}_w{width}")


def build_image_pathway(config: NetworkConfig) -> keras.Model:
    """The feature extractor of ``config`` with every batch normalisation at ``config.bn_momentum``."""
    pathway = _image_pathway(config)
    for layer in pathway.layers:
        if isinstance(layer, layers.BatchNormalization):
            layer.momentum = float(config.bn_momentum)
    return pathway


def _image_pathway(config: NetworkConfig) -> keras.Model:
    """The feature extractor of ``config``: ``[n, H, W, 3]`` scaled → ``[n, 32·width]``.

    ResNet50 settings give ``keras.applications.ResNet50(include_top=False,
    pooling="avg")``, with ImageNet weights when ``config.imagenet`` allows and the file
    is present; other settings give :func:`build_resnet`, randomly initialised.
    """
    shape = (config.image_size, config.image_size, 3)
    if not config.is_resnet50:
        if config.imagenet not in ("auto", "none"):
            raise ValueError(f"ImageNet weights need the ResNet50 settings, got blocks={config.resnet_blocks}, width={config.resnet_width}")
        logger.debug("image pathway: ResNet blocks=%s width=%d, random initialisation", config.resnet_blocks, config.resnet_width)
        return build_resnet(config.image_size, config.resnet_blocks, config.resnet_width, stem_pool=config.stem_pool)
    if config.imagenet == "none":
        weights = None
    elif config.imagenet == "auto":
        weights = imagenet_weights_path()
    else:
        weights = Path(config.imagenet)
        if not weights.is_file():
            raise ValueError(f"ImageNet weights file not found: {weights}")
    if weights is None:
        logger.warning(
            "image pathway: ResNet50 with RANDOM initialisation (no ImageNet weights file %s in %s)",
            IMAGENET_WEIGHTS_FILE,
            keras_home() / "models",
        )
    else:
        logger.info("image pathway: ResNet50 with ImageNet weights from %s", weights)
    return keras.applications.ResNet50(
        include_top=False, weights=None if weights is None else str(weights), input_shape=shape, pooling="avg"
    )


# %% Models


def build_model(model_name: str, config: NetworkConfig | None = None, joint_loss: bool | None = None) -> keras.Model:
    """The network called ``model_name`` (one of :data:`MODEL_NAMES`), not compiled.

    Inputs are a dict: ``{"image": [n, H, W, 3] in [0, 1]}`` for ``deep_resnet50``, plus
    ``"clinical": [n, k]`` for the fusion models. The output is the fused softmax
    ``[n, 2]``; with the joint loss (``fusion_d_joint``, or ``joint_loss=True`` for any
    fusion model) it is a dict ``{"fused", "image", "clinical"}`` of ``[n, 2]`` softmax
    heads, the fused one being the model's prediction.
    """
    config = config or NetworkConfig()
    if model_name not in MODEL_NAMES:
        raise ValueError(f"unknown model {model_name!r}; choose one of {MODEL_NAMES}")
    if joint_loss is None:
        joint_loss = model_name.endswith("_joint")
    image = keras.Input((config.image_size, config.image_size, 3), name="image")
    features = build_image_pathway(config)(PhaseScaling(name="phase_scaling")(image))

    if model_name == "deep_resnet50":
        if joint_loss:
            raise ValueError("the joint loss needs a clinical pathway; deep_resnet50 has none")
        if config.head_dropout:
            features = layers.Dropout(config.head_dropout, name="head_dropout")(features)
        fused = layers.Dense(2, activation="softmax", name="fused")(features)
        return keras.Model({"image": image}, fused, name=model_name)

    kind = FUSION_KINDS[model_name]
    clinical = keras.Input((config.n_clinical,), name="clinical")
    image_branch = features
    if kind in IMAGE_LAYER_KINDS:
        image_branch = layers.Dense(config.image_units, activation=config.image_activation, name="image_fc")(features)
    if config.image_dropout:
        image_branch = layers.Dropout(config.image_dropout, name="image_dropout")(image_branch)
    # The balancing gain where the vector itself meets the image features (A, B); C and D's own clinical layer comes
    # first. A config's clinical_gain replaces the rule.
    if config.clinical_gain is not None:
        gain = float(config.clinical_gain)
    else:
        gain = clinical_gain(int(image_branch.shape[-1])) if kind in ("a", "b") else 1.0
    scaled = ClinicalScaling(gain, name="clinical_scaling")(clinical)
    clinical_branch = scaled
    if kind == "c":
        if config.clinical_kernel > config.n_clinical:
            raise ValueError(f"clinical_kernel {config.clinical_kernel} is longer than the clinical vector ({config.n_clinical})")
        sequence = layers.Reshape((config.n_clinical, 1), name="clinical_sequence")(scaled)
        conv = layers.Conv1D(config.clinical_filters, config.clinical_kernel, activation=config.clinical_activation,
                             name="clinical_conv")(sequence)
        clinical_branch = layers.Flatten(name="clinical_flatten")(conv)
    elif kind == "d":
        clinical_branch = layers.Dense(config.clinical_units, activation=config.clinical_activation, name="clinical_fc")(scaled)
    merged = layers.Concatenate(name="concat")([image_branch, clinical_branch])

    def softmax_head(name: str, x):
        """A 2-neuron softmax head of the fusion model, its kernel started by ``config.fusion_head_init``."""
        return layers.Dense(2, activation="softmax", kernel_initializer=config.fusion_head_init, name=name)(x)

    fused = softmax_head("fused", merged)
    inputs = {"image": image, "clinical": clinical}
    if not joint_loss:
        return keras.Model(inputs, fused, name=model_name)
    outputs = {"fused": fused, "image": softmax_head("image_head", image_branch),
               "clinical": softmax_head("clinical_head", clinical_branch)}
    return keras.Model(inputs, outputs, name=model_name)


#: The clinical warm start's optimisation (:func:`warm_start_clinical`): full-batch Adam steps and their rate.
WARM_START_STEPS = 300
WARM_START_RATE = 1e-2


def warm_start_clinical(model: keras.Model, vectors, y, penalty: float, steps: int = WARM_START_STEPS,
                        learning_rate: float = WARM_START_RATE) -> None:
    """Start a fusion model's clinical pathway from a penalised fit on the training patients' clinical vectors.

    ``vectors`` ``[n, k]`` one row per training patient (the bits of the clinical vector), ``y`` ``[n]`` 0/1.
    A copy of the clinical pathway (the fitted :class:`ClinicalScaling`, fusion C's Conv1D or D's FC layer),
    ending in a softmax head on the clinical branch alone (and, with the joint loss, the clinical head), is fitted
    by ``steps`` full-batch Adam steps on cross entropy plus ``penalty`` times the squared kernels, the first
    layer's as applied to the standardised bits (times the scaling's gain squared): a ridge logistic regression
    for fusion A and B, its one-hidden-layer counterpart for C and D. Its weights are then put back: the
    pathway's layers, the clinical head, and the fused head's rows of the clinical branch, whose rows of the
    image branch are left as they are (zero with ``fusion_head_init="zeros"``), so the network starts
    predicting what its clinical input shows, and its training moves on from there.

    Why: the study's short recipe (126 Adam steps) fits the clinical pathway about as a weakly penalised
    regression on the slices would, below a penalised regression on the same bits (``clinical_lr``); this
    start gives the network that regression before the image is seen. Tried on development cohorts and not
    adopted (docs/cpu_recipe.md, "Tried since": ``Profile.clinical_warm_start``).
    """
    if penalty <= 0:
        raise ValueError(f"penalty must be positive, got {penalty}")
    vectors = np.asarray(vectors, dtype=np.float32)
    y = np.asarray(y, dtype="int32")
    if vectors.ndim != 2 or len(vectors) != len(y) or len(y) == 0:
        raise ValueError(f"vectors [n, k] and y [n] must match, got shapes {vectors.shape} and {y.shape}")
    names = {layer.name for layer in model.layers}
    if "clinical_scaling" not in names:
        raise ValueError(f"{model.name} has no clinical pathway to start")
    scaling = model.get_layer("clinical_scaling")
    first_penalty = penalty * scaling.gain ** 2

    def penalised_copy(name: str, layer_penalty: float):
        """A new layer of ``model``'s layer ``name``'s configuration, its kernel under an L2 penalty."""
        layer = model.get_layer(name)
        return type(layer).from_config({**layer.get_config(), "kernel_regularizer": keras.regularizers.L2(layer_penalty)})

    clinical = keras.Input((vectors.shape[1],), name="clinical")
    copied = {"clinical_scaling": ClinicalScaling.from_config(scaling.get_config())}
    branch = copied["clinical_scaling"](clinical)
    head_penalty = penalty
    if "clinical_conv" in names:  # fusion C: the stateless reshape and flatten are the model's own layers
        copied["clinical_conv"] = penalised_copy("clinical_conv", first_penalty)
        branch = model.get_layer("clinical_flatten")(copied["clinical_conv"](model.get_layer("clinical_sequence")(branch)))
    elif "clinical_fc" in names:
        copied["clinical_fc"] = penalised_copy("clinical_fc", first_penalty)
        branch = copied["clinical_fc"](branch)
    else:  # fusion A and B: the head itself sees the scaled bits
        head_penalty = first_penalty
    fused_copy = penalised_copy("fused", head_penalty)
    outputs = {"fused": fused_copy(branch)}
    if "clinical_head" in names:
        copied["clinical_head"] = penalised_copy("clinical_head", head_penalty)
        outputs["clinical"] = copied["clinical_head"](branch)
    pathway = keras.Model({"clinical": clinical}, outputs, name=f"{model.name}_clinical_start")
    for name, layer in copied.items():
        layer.set_weights(model.get_layer(name).get_weights())
    fused = model.get_layer("fused")
    kernel, bias = fused.get_weights()
    clinical_rows = slice(kernel.shape[0] - int(branch.shape[-1]), kernel.shape[0])
    fused_copy.set_weights([kernel[clinical_rows], bias])
    # Every step is the whole batch of patients; all of them run in one compiled call (steps_per_execution),
    # several times faster than a call per step on a CPU.
    pathway.compile(optimizer=keras.optimizers.Adam(learning_rate),
                    loss={head: "sparse_categorical_crossentropy" for head in outputs}, steps_per_execution=int(steps))
    repeated = np.tile(vectors, (int(steps), 1))
    pathway.fit({"clinical": repeated}, {head: np.tile(y, int(steps)) for head in outputs}, batch_size=len(y), epochs=1,
                shuffle=False, verbose=0)
    for name, layer in copied.items():
        model.get_layer(name).set_weights(layer.get_weights())
    fitted_kernel, fitted_bias = fused_copy.get_weights()
    kernel[clinical_rows] = fitted_kernel
    fused.set_weights([kernel, fitted_bias])


#: The output of :func:`with_area_head`'s training model that regresses a slice's tumour area.
AREA_HEAD = "area"


def pooled_image_features(model: keras.Model):
    """The symbolic output of ``model``'s image pathway (its pooled image features, ``[n, 32·width]``)."""
    pathways = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    if len(pathways) != 1:
        raise ValueError(f"{model.name} has no single image pathway")
    return pathways[0]._inbound_nodes[0].output_tensors[0]


def with_area_head(model: keras.Model, units: int = 1) -> keras.Model:
    """A training model on ``model``'s layers: its outputs and a linear regression of the slice's tumour area.

    The regression (``AREA_HEAD``, ``units`` linear neurons: the area, and with ``Profile.texture_target`` the crop's
    texture statistics beside it) reads the pooled image features, so that the image
    pathway is also trained to tell the tumour's size from the crop (``Profile.area_target``); ``model`` itself,
    which shares every layer, predicts as before and never uses it; compiled by :func:`compile_model` with its
    ``area_weight``. Outputs: a dict, ``"fused"`` (and a
    joint-loss model's other heads) beside ``AREA_HEAD``.
    """
    if units < 1:
        raise ValueError(f"the area head needs at least one unit, got {units}")
    outputs = dict(model.output) if has_joint_loss(model) else {"fused": model.output}
    outputs[AREA_HEAD] = layers.Dense(int(units), name="area_head")(pooled_image_features(model))
    return keras.Model(model.inputs, outputs, name=f"{model.name}_with_area")


def has_joint_loss(model: keras.Model) -> bool:
    """Whether ``model`` has the three heads of the joint loss."""
    return isinstance(model.output, dict)


def compile_model(model: keras.Model, learning_rate: float = 1e-4, weight_decay: float = 0.0, xla: bool = False,
                  area_weight: float = 0.0) -> keras.Model:
    """Compile with Adam and cross entropy on integer labels (the joint loss when 3 heads).

    ``weight_decay > 0`` uses AdamW (decoupled weight decay of that rate) instead of Adam.
    Labels are ``[n]`` integers 0/1 (sparse cross entropy on the 2-neuron softmax, the
    paper's equation (1)); a joint-loss model gets the same labels for every head and
    the weights of equation (4) in :data:`JOINT_LOSS_WEIGHTS`. A training model with the area regression
    (:func:`with_area_head`) adds ``area_weight`` (> 0) times its mean squared error. On TensorFlow, XLA
    compilation only with ``xla=True``: it costs some 10-20 s per network on a CPU, then
    trains a small ResNet 1.5-2 times faster, so it pays where one compiled network trains
    many folds and seeds (``training.FoldModel``), not for a single fit. Other backends keep
    Keras's default (``"auto"``): on JAX, ``jit_compile=False`` would run every training
    step op by op, several times slower than compiled.
    """
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    if weight_decay:
        optimizer = keras.optimizers.AdamW(learning_rate=learning_rate, weight_decay=weight_decay)
    else:
        optimizer = keras.optimizers.Adam(learning_rate=learning_rate)
    jit_compile = bool(xla) if keras.backend.backend() == "tensorflow" else "auto"
    heads = list(model.output) if isinstance(model.output, dict) else []
    if (AREA_HEAD in heads) != (area_weight > 0):
        raise ValueError(f"area_weight must be > 0 exactly when {model.name} has the area head, got {area_weight}")
    if not heads:
        model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", jit_compile=jit_compile)
        return model
    classes = [head for head in heads if head != AREA_HEAD]
    weights = dict(JOINT_LOSS_WEIGHTS) if len(classes) > 1 else {"fused": 1.0}
    losses = {head: "sparse_categorical_crossentropy" for head in weights}
    if area_weight > 0:
        losses[AREA_HEAD], weights[AREA_HEAD] = "mean_squared_error", float(area_weight)
    model.compile(optimizer=optimizer, loss=losses, loss_weights=weights, jit_compile=jit_compile)
    return model


def joint_loss_value(y_true, heads: dict) -> float:
    """Equation (4) by hand: ``1/4 CE(image) + 1/4 CE(clinical) + 1/2 CE(fused)``.

    ``y_true`` ``[n]`` 0/1; ``heads`` maps ``"image"``, ``"clinical"``, ``"fused"`` to
    ``[n, 2]`` softmax outputs (numpy). Mean cross entropy over the batch per head (no
    1e-7 clipping: Keras's TensorFlow backend computes it from the softmax's logits; its
    JAX backend clips the probabilities to ``[1e-7, 1 - 1e-7]``, so the two differ where a
    head is saturated).
    """
    y_true = np.asarray(y_true, dtype=int)
    rows = np.arange(len(y_true))
    total = 0.0
    for head, weight in JOINT_LOSS_WEIGHTS.items():
        probability = np.clip(np.asarray(heads[head], dtype=np.float64)[rows, y_true], np.finfo(np.float32).tiny, 1.0)
        total += weight * float(np.mean(-np.log(probability)))
    return total


def fused_probability(outputs):
    """The fused head ``[n, 2]`` of a model's outputs (a dict for joint-loss models)."""
    return outputs["fused"] if isinstance(outputs, dict) else outputs


def count_layers(model: keras.Model, layer_type: type) -> int:
    """Layers of ``layer_type`` in ``model``, nested models included."""
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            total += count_layers(layer, layer_type)
        elif isinstance(layer, layer_type):
            total += 1
    return total
