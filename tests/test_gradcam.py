"""Grad-CAM on hand-built networks whose answer is known, and on the study's networks.

The hand-built network sees an 8 x 8 image: a 1 x 1 convolution (the explained feature
map) copies the NC channel to filter 0 and the ART channel to filter 1, and the fused
head's log-odds of early recurrence is the mean of filter 0 only. An image bright in NC
in one region and bright in ART in another must give a heatmap that is 1 in the first
region and 0 in the second.
"""

import keras
import matplotlib
import numpy as np
import pytest

from hccer_lib import gradcam, networks

SIZE = 8
NC_REGION = (slice(0, 2), slice(0, 2))  # rows, columns of the image bright in NC
ART_REGION = (slice(5, 8), slice(4, 8))  # bright in ART, ignored by the head


def known_image() -> np.ndarray:
    """``[1, 8, 8, 3]``: NC = 1 in NC_REGION, ART = 1 in ART_REGION, 0 elsewhere."""
    image = np.zeros((1, SIZE, SIZE, 3), dtype=np.float32)
    image[(0, *NC_REGION, 0)] = 1.0
    image[(0, *ART_REGION, 1)] = 1.0
    return image


def known_model(nested: bool, stride: int = 1) -> keras.Model:
    """Fused log-odds of class 1 = mean over the feature map of its filter 0 (= NC)."""
    conv = keras.layers.Conv2D(2, 1, strides=stride, use_bias=False, activation="relu", name="feature_map")
    pool = keras.layers.GlobalAveragePooling2D(name="pool")
    head = keras.layers.Dense(2, activation="softmax", name="fused")
    image = keras.Input((SIZE, SIZE, 3), name="image")
    if nested:
        inner_input = keras.Input((SIZE, SIZE, 3))
        pathway = keras.Model(inner_input, pool(conv(inner_input)), name="image_pathway")
        features = pathway(image)
    else:
        features = pool(conv(image))
    model = keras.Model({"image": image}, head(features))
    kernel = np.zeros((1, 1, 3, 2), dtype=np.float32)
    kernel[0, 0, 0, 0] = 1.0  # filter 0 <- NC
    kernel[0, 0, 1, 1] = 1.0  # filter 1 <- ART
    conv.set_weights([kernel])
    head.set_weights([np.array([[0.0, 1.0], [0.0, 0.0]], dtype=np.float32), np.zeros(2, dtype=np.float32)])
    return model


@pytest.mark.parametrize("nested", [False, True], ids=["flat", "nested_pathway"])
def test_heatmap_is_the_region_the_score_reads(nested):
    model = known_model(nested)
    heatmap = gradcam.grad_cam(model, {"image": known_image()})
    expected = np.zeros((SIZE, SIZE))
    expected[NC_REGION] = 1.0
    assert heatmap.shape == (1, SIZE, SIZE), heatmap.shape
    assert np.allclose(heatmap[0], expected, atol=1e-6), np.round(heatmap[0], 3)


def test_other_class_gets_an_empty_heatmap():
    """The NC region lowers the log-odds of class 0: no part of the map raises it."""
    heatmap = gradcam.grad_cam(known_model(nested=True), {"image": known_image()}, target_class=0)
    assert np.all(heatmap == 0), heatmap.max()


def test_coarse_map_is_upsampled_over_its_region():
    """A stride-2 map (4 x 4) peaks over the NC region and is 0 over the ART region."""
    heatmap = gradcam.grad_cam(known_model(nested=True, stride=2), {"image": known_image()})[0]
    peak = np.unravel_index(np.argmax(heatmap), heatmap.shape)
    assert peak[0] < 2 and peak[1] < 2, (peak, np.round(heatmap, 2))
    assert heatmap.max() == pytest.approx(1.0), heatmap.max()
    assert np.all(heatmap[ART_REGION] == 0), np.round(heatmap, 2)


def test_nested_pathway_between_other_layers_through_public_keras_only(tmp_path):
    """Scaling before the pathway and a dense layer after it (as in the study's networks) keep the known answer.

    The image is doubled before the pathway and the pooled features pass an identity Dense layer: the head
    still reads filter 0 (NC) only, so the heatmap is the NC region; a second call gives the same maps and
    leaves the model's predictions, and the model saved and read back, as they were.
    """
    image = keras.Input((SIZE, SIZE, 3), name="image")
    inner_input = keras.Input((SIZE, SIZE, 3))
    conv = keras.layers.Conv2D(2, 1, use_bias=False, activation="relu", name="feature_map")
    pathway = keras.Model(inner_input, keras.layers.GlobalAveragePooling2D()(conv(inner_input)), name="image_pathway")
    fc = keras.layers.Dense(2, name="image_fc")
    head = keras.layers.Dense(2, activation="softmax", name="fused")
    model = keras.Model({"image": image}, head(fc(pathway(keras.layers.Rescaling(2.0)(image)))))
    kernel = np.zeros((1, 1, 3, 2), dtype=np.float32)
    kernel[0, 0, 0, 0] = kernel[0, 0, 1, 1] = 1.0
    conv.set_weights([kernel])
    fc.set_weights([np.eye(2, dtype=np.float32), np.zeros(2, dtype=np.float32)])
    head.set_weights([np.array([[0.0, 1.0], [0.0, 0.0]], dtype=np.float32), np.zeros(2, dtype=np.float32)])
    before = model.predict({"image": known_image()}, verbose=0)
    expected = np.zeros((SIZE, SIZE))
    expected[NC_REGION] = 1.0
    first = gradcam.grad_cam(model, {"image": known_image()})
    assert np.allclose(first[0], expected, atol=1e-6), np.round(first[0], 3)
    assert np.array_equal(gradcam.grad_cam(model, {"image": known_image()}), first), "a second call differs"
    assert np.array_equal(model.predict({"image": known_image()}, verbose=0), before)
    model.save(tmp_path / "model.keras")
    reloaded = keras.models.load_model(tmp_path / "model.keras")
    assert np.array_equal(reloaded.predict({"image": known_image()}, verbose=0), before)
    assert np.array_equal(gradcam.grad_cam(reloaded, {"image": known_image()}), first)


def test_pathway_called_twice_is_refused():
    image = keras.Input((SIZE, SIZE, 3), name="image")
    inner_input = keras.Input((SIZE, SIZE, 3))
    pool = keras.layers.GlobalAveragePooling2D()
    pathway = keras.Model(inner_input, pool(keras.layers.Conv2D(2, 1, name="feature_map")(inner_input)), name="twice")
    features = keras.layers.Average()([pathway(image), pathway(keras.layers.Rescaling(0.5)(image))])
    model = keras.Model({"image": image}, keras.layers.Dense(2, activation="softmax", name="fused")(features))
    with pytest.raises(ValueError, match="'twice' is called 2 times; expected once"):
        gradcam.grad_cam(model, {"image": known_image()})


def test_default_layer_is_the_last_feature_map_of_the_pathway():
    config = networks.NetworkConfig(image_size=32, n_clinical=3, resnet_blocks=(1, 1, 1, 1), resnet_width=4, imagenet="none")
    model = networks.build_model("fusion_d_joint", config)
    assert gradcam.last_feature_map(model) == "conv5_block1_out", gradcam.last_feature_map(model)
    assert gradcam.last_feature_map(model, min_side=4) == "conv3_block1_out", gradcam.last_feature_map(model, 4)
    assert gradcam.last_feature_map(known_model(nested=True)) == "feature_map"


def test_study_network_heads():
    """Maps of the joint-loss fusion model: [n, H, W] in [0, 1]; the clinical head never sees the image."""
    keras.utils.set_random_seed(3)
    config = networks.NetworkConfig(image_size=32, n_clinical=3, resnet_blocks=(1, 1, 1, 1), resnet_width=4, imagenet="none")
    model = networks.build_model("fusion_d_joint", config)
    rng = np.random.default_rng(0)
    inputs = {"image": rng.random((2, 32, 32, 3), dtype=np.float32), "clinical": np.array([[1, 0, 1], [0, 1, 0]], np.float32)}
    for head in ("fused", "image"):
        for target in (0, 1):
            heatmap = gradcam.grad_cam(model, inputs, head=head, target_class=target, layer_name="conv3_block1_out")
            assert heatmap.shape == (2, 32, 32) and heatmap.dtype == np.float32, (head, heatmap.shape, heatmap.dtype)
            assert heatmap.min() >= 0 and heatmap.max() <= 1, (head, heatmap.min(), heatmap.max())
            assert np.all(np.isin(heatmap.max(axis=(1, 2)), [0.0, 1.0])), heatmap.max(axis=(1, 2))
    assert np.all(gradcam.grad_cam(model, inputs, head="clinical", layer_name="conv3_block1_out") == 0)
    with pytest.raises(ValueError, match="heads"):
        gradcam.grad_cam(model, inputs, head="radiomics")
    with pytest.raises(ValueError, match="no_such_layer"):
        gradcam.grad_cam(model, inputs, layer_name="no_such_layer")


def test_plot_gradcam_rows_and_columns():
    matplotlib.use("Agg")
    images = np.random.default_rng(0).random((2, 16, 16, 3))
    heatmaps = np.zeros((2, 16, 16))
    fig = gradcam.plot_gradcam(images, heatmaps, titles=["a", "b"])
    panels = [ax for ax in fig.axes if ax.get_title() in ("NC", "ART", "PV") or ax.images]
    assert len(panels) == 6, len(panels)
    assert [ax.get_title() for ax in fig.axes[:3]] == ["NC", "ART", "PV"], [ax.get_title() for ax in fig.axes[:3]]
    with pytest.raises(ValueError, match="do not match"):
        gradcam.plot_gradcam(images, heatmaps[:, :8])
