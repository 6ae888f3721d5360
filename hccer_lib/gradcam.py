"""Grad-CAM: where in the three phases a network looks when it predicts early recurrence.

Gradient-weighted class activation mapping (Selvaraju et al., ICCV 2017) of the study's
networks. For an image ``[H, W, 3]`` (channels NC, ART, PV) and a feature map
``A [h, w, K]`` of the image pathway (by default its last one, the input of the global
average pooling), each channel ``k`` is weighted by the mean over ``h x w`` of the
gradient of the class score with respect to ``A_k``; the heatmap is the ReLU of the
weighted sum, upsampled to ``H x W`` by bilinear interpolation and divided by its maximum.

The class score is the pre-softmax log-odds of ``target_class``: the logit of that class
minus the log-sum-exp of the others (``z_1 - z_0`` for the study's two-neuron heads). A
softmax head is shift invariant, so a single logit has no meaning of its own; the log-odds
has, and unlike the probability it does not saturate.

Resolution: the last feature map of a ResNet is the input size / 32 (7 x 7 at the paper's
224 px, 2 x 2 at the quick profile's 48 px, 1 x 1 at the smoke profile's 32 px, where the
heatmap is uniform). ``layer_name`` picks an earlier, finer map (e.g. ``conv4_block1_out``).

Keras 3 has no backend-neutral gradient: :func:`_gradient` holds the two small
backend-specific parts (TensorFlow: ``tf.GradientTape``; JAX: ``jax.vjp``); other backends
raise ``NotImplementedError``.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops
from scipy import ndimage

from hccer_lib.cohort import PHASES

PHASE_NAMES = PHASES  # the cohort's phases (cohort.PHASES), channel order of the processed slices


def grad_cam(
    model: keras.Model,
    inputs: dict,
    head: str = "fused",
    target_class: int = 1,
    layer_name: str | None = None,
) -> np.ndarray:
    """Grad-CAM heatmaps of ``model`` for a batch of inputs.

    Args:
        model: a study network (``networks.build_model``) or any functional Keras model
            with an ``"image"`` input ``[n, H, W, 3]``; the image pathway may be a nested
            ``keras.Model`` (as in the study's networks) or part of the model itself.
        inputs: the model's inputs, e.g. ``{"image": [n, H, W, 3], "clinical": [n, k]}``.
        head: ``"fused"``, or ``"image"`` / ``"clinical"`` for a joint-loss model's
            pathway heads. The clinical head does not see the image: its heatmaps are 0.
        target_class: 1 (early recurrence) or 0.
        layer_name: the feature map to explain; default the last layer with a 4-D output
            of the image pathway.

    Returns:
        float32 ``[n, H, W]`` in ``[0, 1]`` (each map divided by its maximum; all zeros
        where no part of the map raises the class score).
    """
    image = np.asarray(inputs["image"], dtype=np.float32)
    if image.ndim != 4:
        raise ValueError(f'inputs["image"] must be [n, H, W, 3], got shape {image.shape}')
    activation_fn, score_fn = _split_model(model, head, int(target_class), layer_name)
    arrays = {name: np.asarray(value, dtype=np.float32) for name, value in inputs.items()}
    activations, gradients = _gradient(activation_fn, score_fn, arrays)
    weights = gradients.mean(axis=(1, 2), keepdims=True)  # [n, 1, 1, K]
    cams = np.maximum((weights * activations).sum(axis=-1), 0.0)  # [n, h, w]
    heatmaps = np.stack([_upsample(cam, image.shape[1:3]) for cam in cams]).astype(np.float32)
    peak = heatmaps.max(axis=(1, 2), keepdims=True)
    return np.divide(heatmaps, peak, out=np.zeros_like(heatmaps), where=peak > 0)


def image_pathway(model: keras.Model) -> keras.Model:
    """The nested model that holds the image pathway, or ``model`` itself when there is none."""
    nested = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    if len(nested) > 1:
        raise ValueError(f"model {model.name!r} nests several models {[m.name for m in nested]}; pass layer_name")
    return nested[0] if nested else model


def last_feature_map(model: keras.Model, min_side: int = 1) -> str:
    """Name of the last layer of the image pathway with a 4-D output ``[n, h, w, K]``, ``h, w >= min_side``.

    ``min_side=1`` gives the default layer of :func:`grad_cam`; a larger one an earlier,
    finer map when the last one is too coarse to show anything (1 x 1 at 32 px).
    """
    pathway = image_pathway(model)
    names = [
        layer.name
        for layer in pathway.layers
        if not isinstance(layer, keras.layers.InputLayer)
        and len(getattr(layer.output, "shape", ())) == 4
        and min(d or 0 for d in layer.output.shape[1:3]) >= min_side
    ]
    if not names:
        raise ValueError(f"model {model.name!r} has no {min_side}x{min_side} or larger 4-D output in its image pathway")
    return names[-1]


def _split_model(model: keras.Model, head: str, target_class: int, layer_name: str | None):
    """Two functions of the model's inputs: ``activation(inputs) -> A`` and ``score(A, inputs) -> [n]``.

    The score is recomputed from ``A`` so that its gradient with respect to ``A`` can be
    taken functionally (JAX) or on a tape (TensorFlow). A layer inside a nested model
    (the image pathway) is reached through that model's call in the outer graph
    (:func:`_pathway_call`).
    """
    layer_name = layer_name or last_feature_map(model)
    outer_inputs = model.inputs
    input_names = [tensor.name for tensor in outer_inputs]  # keras.Input(name=...): the keys of the inputs dict
    head_layer = _head_layer(model, head)
    head_input = head_layer.input
    if not isinstance(head_layer, keras.layers.Dense):
        raise ValueError(f"the {head!r} head of {model.name!r} is a {type(head_layer).__name__}, expected a Dense layer")

    try:
        inner = model.get_layer(layer_name)
        pathway = None
    except ValueError:
        pathway = image_pathway(model)
        if pathway is model:
            raise ValueError(f"model {model.name!r} has no layer {layer_name!r}") from None
        inner = pathway.get_layer(layer_name)  # ValueError names the layer
    if pathway is None:  # the feature map is in the outer graph
        activation_model = keras.Model(outer_inputs, inner.output)
        rest = _sub_model(inner.output, outer_inputs, head_input)

        def head_features(activation, values):
            return rest([activation, *values])

    else:  # inside the nested pathway, called once in the outer graph
        outer_inputs, pathway_in, pathway_out, head_input = _pathway_call(model, pathway, head_layer)
        input_names = [tensor.name for tensor in outer_inputs]
        front = keras.Model(outer_inputs, pathway_in)
        to_activation = keras.Model(pathway.inputs, inner.output)
        inner_rest = _sub_model(inner.output, pathway.inputs, pathway.output)
        outer_rest = _sub_model(pathway_out, outer_inputs, head_input)

        def activation_model(values, training=False):
            return to_activation(front(values, training=training), training=training)

        def head_features(activation, values):
            features = inner_rest([activation, front(values, training=False)])
            return outer_rest([features, *values])

    def activation_fn(arrays: dict):
        return activation_model([arrays[name] for name in input_names], training=False)

    def score_fn(activation, arrays: dict):
        features = head_features(activation, [arrays[name] for name in input_names])
        logits = ops.matmul(features, head_layer.kernel)
        if head_layer.use_bias:
            logits = logits + head_layer.bias
        others = ops.concatenate([logits[:, :target_class], logits[:, target_class + 1 :]], axis=1)
        return logits[:, target_class] - ops.logsumexp(others, axis=1)

    n_classes = int(head_layer.kernel.shape[-1])
    if not 0 <= target_class < n_classes or n_classes < 2:
        raise ValueError(f"target_class must be in 0..{n_classes - 1}, got {target_class}")
    return activation_fn, score_fn


def _pathway_call(model: keras.Model, pathway: keras.Model, head_layer: keras.layers.Layer):
    """The tensors around the nested ``pathway``'s call in the outer graph, and the head's input.

    Keras's public API gives a nested model's own inputs and outputs, not those of its call
    in the outer graph; so the outer graph is rebuilt (``keras.models.clone_model`` re-calling
    the model's own layers, weights shared) and the calls of ``pathway`` and ``head_layer``
    are recorded on the way.

    Returns:
        ``(outer inputs, pathway input, pathway output, head input)``, symbolic tensors of
        the rebuilt graph.
    """
    calls = {id(pathway): [], id(head_layer): []}

    def call_function(layer, *args, **kwargs):
        outputs = layer(*args, **kwargs)
        if id(layer) in calls:
            calls[id(layer)].append((args[0], outputs))
        return outputs

    rebuilt = keras.models.clone_model(model, clone_function=lambda layer: layer, call_function=call_function)
    if len(calls[id(pathway)]) != 1:
        raise ValueError(f"the image pathway {pathway.name!r} is called {len(calls[id(pathway)])} times; expected once")
    (pathway_in, pathway_out), (head_input, _) = calls[id(pathway)][0], calls[id(head_layer)][0]
    return rebuilt.inputs, pathway_in, pathway_out, head_input


def _sub_model(start, other_inputs: list, end):
    """``f([start_value, *other_values]) -> end`` over the graph between ``start`` and ``end`` (identity when equal)."""
    if end is start:
        return lambda values: values[0]
    sub = keras.Model([start, *other_inputs], end)
    return lambda values: sub(values, training=False)


def _head_layer(model: keras.Model, head: str) -> keras.layers.Layer:
    """The layer whose output is the head ``head`` of ``model``."""
    if isinstance(model.output, dict):
        if head not in model.output:
            raise ValueError(f"model {model.name!r} has heads {sorted(model.output)}, not {head!r}")
        tensor = model.output[head]
    else:
        if head != "fused":
            raise ValueError(f"model {model.name!r} has one head ('fused'), not {head!r}")
        tensor = model.output
    for layer in model.layers:
        if not isinstance(layer, keras.Model) and getattr(layer, "output", None) is tensor:
            return layer
    raise ValueError(f"no layer of {model.name!r} produces its {head!r} output")


def _gradient(activation_fn, score_fn, arrays: dict) -> tuple[np.ndarray, np.ndarray]:
    """The feature map ``A`` and ``d sum(score) / dA``, both ``[n, h, w, K]`` numpy (backend-specific)."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        tensors = {name: tf.convert_to_tensor(value) for name, value in arrays.items()}
        activation = activation_fn(tensors)
        with tf.GradientTape() as tape:
            tape.watch(activation)
            score = tf.reduce_sum(score_fn(activation, tensors))
        gradient = tape.gradient(score, activation)  # None when the head does not use the map
        gradient = np.zeros(activation.shape) if gradient is None else gradient
    elif backend == "jax":
        import jax
        import jax.numpy as jnp

        tensors = {name: jnp.asarray(value) for name, value in arrays.items()}
        activation = activation_fn(tensors)
        gradient = jax.grad(lambda a: jnp.sum(score_fn(a, tensors)))(activation)
    else:
        raise NotImplementedError(f"Grad-CAM needs gradients: implemented for the tensorflow and jax backends, not {backend!r}")
    activation, gradient = np.asarray(activation, dtype=np.float64), np.asarray(gradient, dtype=np.float64)
    if activation.ndim != 4:
        raise ValueError(f"the explained layer must output a 4-D feature map [n, h, w, K], got shape {activation.shape}")
    return activation, gradient


def _upsample(cam: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of ``cam [h, w]`` to ``size``, pixel centres aligned (each cell covers ``size/h`` pixels)."""
    h, w = cam.shape
    rows = (np.arange(size[0]) + 0.5) * h / size[0] - 0.5
    cols = (np.arange(size[1]) + 0.5) * w / size[1] - 0.5
    grid = np.meshgrid(rows, cols, indexing="ij")
    return ndimage.map_coordinates(cam, grid, order=1, mode="nearest")


def plot_gradcam(
    images: np.ndarray,
    heatmaps: np.ndarray,
    titles: list[str] | None = None,
    alpha: float = 0.45,
):
    """One row per image, columns NC, ART, PV, each phase in grey with the heatmap over it.

    Args:
        images: ``[n, H, W, 3]`` in ``[0, 1]``, channels NC, ART, PV.
        heatmaps: ``[n, H, W]`` in ``[0, 1]`` (from :func:`grad_cam`).
        titles: one label per row (e.g. ``"HCC007 slice 12, P(ER) 0.71"``).
    Returns:
        the matplotlib Figure.
    """
    import matplotlib.pyplot as plt

    images, heatmaps = np.asarray(images), np.asarray(heatmaps)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be [n, H, W, 3], got shape {images.shape}")
    if heatmaps.shape != images.shape[:3]:
        raise ValueError(f"heatmaps {heatmaps.shape} do not match images {images.shape[:3]}")
    if titles is not None and len(titles) != len(images):
        raise ValueError(f"{len(titles)} titles for {len(images)} images")
    n = len(images)
    fig, axes = plt.subplots(n, 3, figsize=(6.4, 2.0 * n + 0.6), squeeze=False, layout="constrained")
    for i in range(n):
        for j, phase in enumerate(PHASE_NAMES):
            ax = axes[i, j]
            ax.imshow(images[i, ..., j], cmap="gray", vmin=0, vmax=1)
            overlay = ax.imshow(heatmaps[i], cmap="jet", vmin=0, vmax=1, alpha=alpha)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(phase)
        if titles is not None:
            axes[i, 0].set_ylabel(titles[i], fontsize=8)
    fig.colorbar(overlay, ax=axes, shrink=min(0.8, 0.3 + 0.1 * n), label="Grad-CAM (relative)")
    return fig
