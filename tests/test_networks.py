"""Architectures of the deep and fusion models, input scaling, joint loss, ImageNet loading."""

import logging
from dataclasses import replace

import keras
import numpy as np
import pytest

from hccer_lib import networks
from hccer_lib.networks import NetworkConfig

TINY = NetworkConfig(image_size=32, resnet_blocks=(1, 1, 1, 1), resnet_width=4, imagenet="none")
TINY_FEATURES = 32 * 4  # pooled image features of the tiny ResNet


def dense_params(n_in: int, n_out: int) -> int:
    return n_in * n_out + n_out


@pytest.fixture(scope="module")
def keras_resnet50():
    return keras.applications.ResNet50(include_top=False, weights=None, pooling="avg", input_shape=(224, 224, 3))


def test_build_resnet_reproduces_keras_resnet50(keras_resnet50):
    ours = networks.build_resnet(224, (3, 4, 6, 3), 64)
    assert ours.count_params() == keras_resnet50.count_params() == 23_587_712, (ours.count_params(), keras_resnet50.count_params())
    assert ours.output.shape[-1] == 2048, ours.output.shape
    ours_layers = [type(layer).__name__ for layer in ours.layers]
    keras_layers = [type(layer).__name__ for layer in keras_resnet50.layers[1:]]
    assert ours_layers[1:] == keras_layers, "layer sequence differs from keras.applications.ResNet50"


def test_resnet50_has_the_papers_49_conv_layers_plus_4_projections(keras_resnet50):
    convs = [layer for layer in keras_resnet50.layers if isinstance(layer, keras.layers.Conv2D)]
    projections = [layer for layer in convs if layer.name.endswith("_0_conv")]
    assert len(convs) == 53, f"keras ResNet50 has {len(convs)} Conv2D layers"
    assert len(projections) == 4, f"{len(projections)} projection shortcuts: {[p.name for p in projections]}"
    assert len(convs) - len(projections) == 49, "the paper's 49 convolutional layers"


def test_paper_deep_model_is_keras_resnet50_plus_one_fc(keras_resnet50):
    model = networks.build_model("deep_resnet50", NetworkConfig(imagenet="none"))
    backbone = model.get_layer("resnet50")
    assert backbone.count_params() == keras_resnet50.count_params()
    assert networks.count_layers(model, keras.layers.Conv2D) == 53
    assert networks.count_layers(model, keras.layers.Dense) == 1
    assert model.count_params() == keras_resnet50.count_params() + dense_params(2048, 2), model.count_params()
    fusion_a = networks.build_model("fusion_a", NetworkConfig(imagenet="none"))
    assert fusion_a.get_layer("concat").output.shape[-1] == 2048 + 9, fusion_a.get_layer("concat").output.shape


def test_small_resnet_scales_with_blocks_and_width():
    small = networks.build_resnet(32, (1, 1, 1, 1), 8)
    deeper = networks.build_resnet(32, (2, 2, 2, 2), 8)
    assert small.output.shape[-1] == 256, small.output.shape
    assert networks.count_layers(small, keras.layers.Conv2D) == 1 + 4 * 4, "stem + 4 blocks of 3 convs + 4 projections"
    assert networks.count_layers(deeper, keras.layers.Conv2D) == 1 + 8 * 3 + 4
    assert deeper.count_params() > small.count_params()


def test_a_stem_without_max_pool_keeps_twice_the_resolution_in_every_stage():
    pooled = networks.build_resnet(48, (1, 1, 1, 1), 4)
    unpooled = networks.build_resnet(48, (1, 1, 1, 1), 4, stem_pool=False)
    last_stage = {model.name: model.get_layer("conv5_block1_out").output.shape[1:3] for model in (pooled, unpooled)}
    # 48 px: the 7x7/2 stem gives 24, the max-pool 12, stages 2-4 halve: 2 with the pool, 3 without.
    assert last_stage == {pooled.name: (2, 2), unpooled.name: (3, 3)}, last_stage
    assert networks.count_layers(unpooled, keras.layers.MaxPooling2D) == 0
    assert unpooled.count_params() == pooled.count_params(), "a max-pool has no weights"
    assert networks.build_model("deep_resnet50", NetworkConfig(48, resnet_blocks=(1, 1, 1, 1), resnet_width=4,
                                                               stem_pool=False)).output.shape[-1] == 2
    with pytest.raises(ValueError, match="stem_pool"):
        NetworkConfig(imagenet="none", stem_pool=False)


def test_the_clinical_gain_is_the_rule_unless_the_config_sets_it():
    vector = np.array([[1.0, 0, 1, 0, 1, 0, 1, 0, 1]], dtype="float32")
    gains = {}
    for model_name, gain in (("fusion_a", None), ("fusion_d", None), ("fusion_d", 3.0), ("fusion_a", 0.5)):
        config = NetworkConfig(32, resnet_blocks=(1, 1, 1, 1), resnet_width=4, imagenet="none", clinical_gain=gain)
        layer = networks.build_model(model_name, config).get_layer("clinical_scaling")
        gains[(model_name, gain)] = float(np.asarray(layer(vector))[0, 0])  # mean 0, scale 1: the bit times the gain
    expected = {("fusion_a", None): networks.clinical_gain(TINY_FEATURES), ("fusion_d", None): 1.0,
                ("fusion_d", 3.0): 3.0, ("fusion_a", 0.5): 0.5}
    assert gains == pytest.approx(expected), gains
    with pytest.raises(ValueError, match="clinical_gain"):
        NetworkConfig(clinical_gain=0.0)


def test_settings_added_later_enter_the_run_key_only_away_from_their_earlier_value():
    defaults = NetworkConfig().as_dict()
    assert {name: defaults[name] for name in networks.KEYED_AT_DEFAULT_SINCE} == networks.KEYED_AT_DEFAULT_SINCE
    key = NetworkConfig().key_dict()
    assert set(defaults) - set(key) == set(networks.KEYED_AT_DEFAULT_SINCE), sorted(key)
    assert NetworkConfig(clinical_gain=3.0).key_dict() == {**key, "clinical_gain": 3.0}
    assert NetworkConfig(48, resnet_blocks=(1, 1, 1, 1), resnet_width=8, stem_pool=False).key_dict()["stem_pool"] is False


@pytest.mark.parametrize(
    ("model_name", "concat_width", "extra_params"),
    [
        ("deep_resnet50", None, dense_params(TINY_FEATURES, 2)),
        ("fusion_a", TINY_FEATURES + 9, dense_params(TINY_FEATURES + 9, 2)),
        ("fusion_b", 64 + 9, dense_params(TINY_FEATURES, 64) + dense_params(64 + 9, 2)),
        ("fusion_c", 64 + 7 * 8, dense_params(TINY_FEATURES, 64) + (3 * 8 + 8) + dense_params(64 + 56, 2)),
        ("fusion_d", 64 + 16, dense_params(TINY_FEATURES, 64) + dense_params(9, 16) + dense_params(64 + 16, 2)),
        (
            "fusion_d_joint",
            64 + 16,
            dense_params(TINY_FEATURES, 64) + dense_params(9, 16) + dense_params(80, 2) + dense_params(64, 2) + dense_params(16, 2),
        ),
    ],
)
def test_fusion_layer_sizes_and_parameter_counts(model_name, concat_width, extra_params):
    backbone_params = networks.build_resnet(32, (1, 1, 1, 1), 4).count_params()
    model = networks.build_model(model_name, TINY)
    scaling = 0 if model_name == "deep_resnet50" else 2 * 9  # ClinicalScaling's mean and scale, not trained
    assert model.count_params() - backbone_params == extra_params + scaling, (model.count_params() - backbone_params, extra_params)
    if scaling:
        assert [w.name for w in model.get_layer("clinical_scaling").trainable_weights] == []
    if concat_width is not None:
        assert model.get_layer("concat").output.shape[-1] == concat_width, model.get_layer("concat").output.shape
    heads = model.output if isinstance(model.output, dict) else {"fused": model.output}
    assert sorted(heads) == (["clinical", "fused", "image"] if model_name.endswith("joint") else ["fused"])
    assert all(head.shape[-1] == 2 for head in heads.values())


def test_fusion_sizes_are_parameters():
    config = NetworkConfig(32, n_clinical=5, resnet_blocks=(1, 1, 1, 1), resnet_width=4, image_units=10, clinical_units=3, imagenet="none")
    model = networks.build_model("fusion_d", config)
    assert model.get_layer("concat").output.shape[-1] == 13
    with pytest.raises(ValueError, match="clinical_kernel"):
        networks.build_model("fusion_c", NetworkConfig(32, n_clinical=2, resnet_blocks=(1, 1, 1, 1), resnet_width=4, imagenet="none"))
    with pytest.raises(ValueError, match="unknown model"):
        networks.build_model("fusion_e", TINY)
    with pytest.raises(ValueError, match="image_size"):
        NetworkConfig(image_size=16)


@pytest.mark.parametrize(("model_name", "n_image"), [("fusion_a", TINY_FEATURES), ("fusion_b", 64), ("fusion_c", 9), ("fusion_d_joint", 9)])
def test_clinical_scaling_standardises_on_given_patients_and_balances_the_blocks(model_name, n_image, tmp_path):
    config = NetworkConfig(32, n_clinical=3, resnet_blocks=(1, 1, 1, 1), resnet_width=4, imagenet="none")
    model = networks.build_model(model_name, config)
    layer = model.get_layer("clinical_scaling")
    assert layer.gain == pytest.approx(np.sqrt(n_image / 9))  # the paper's 9 bits, whatever k; 1 in C and D
    # three training patients: bit 0 is 0, 1, 1 (mean 2/3, SD sqrt(2)/3); bit 1 constant; bit 2 is 0, 0, 3
    train = np.array([[0.0, 1.0, 0.0], [1.0, 1.0, 0.0], [1.0, 1.0, 3.0]])
    networks.set_clinical_scaling(model, train)
    scaled = keras.Model(model.inputs, layer.output)
    new = np.array([[1.0, 1.0, 3.0], [0.0, 0.0, 0.0]], dtype=np.float32)
    got = np.asarray(scaled.predict({"image": np.zeros((2, 32, 32, 3), np.float32), "clinical": new}, verbose=0))
    expected = (new - train.mean(0)) / np.array([np.sqrt(2) / 3, 1.0, np.sqrt(2)]) * np.sqrt(n_image / 9)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    # saved and loaded with the model: a new patient is scaled as in training
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(loaded.get_layer("clinical_scaling").scale.numpy(), layer.scale.numpy())
    np.testing.assert_allclose(loaded.get_layer("clinical_scaling").mean.numpy(), train.mean(0), rtol=1e-6)
    with pytest.raises(ValueError, match="non-empty"):
        networks.set_clinical_scaling(model, np.zeros((0, 3)))


def test_clinical_scaling_is_a_no_op_for_the_deep_model():
    model = networks.build_model("deep_resnet50", TINY)
    before = [w.copy() for w in model.get_weights()]
    networks.set_clinical_scaling(model, np.ones((4, 9)))
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights(), strict=True))


def test_phase_scaling_is_caffe_preprocessing_of_0_255():
    x = np.random.default_rng(0).random((2, 8, 8, 3), dtype=np.float32)
    scaled = keras.ops.convert_to_numpy(networks.PhaseScaling()(x))
    reference = keras.applications.resnet50.preprocess_input(x * 255.0)
    np.testing.assert_allclose(scaled, reference, atol=1e-4)
    # channel 0 of the network input is PV (x[..., 2]) minus the ImageNet blue mean
    np.testing.assert_allclose(scaled[..., 0], x[..., 2] * 255 - 103.939, atol=1e-4)


def test_predictions_are_softmax_probabilities():
    model = networks.build_model("fusion_b", TINY)
    rng = np.random.default_rng(1)
    out = model.predict({"image": rng.random((3, 32, 32, 3), dtype=np.float32), "clinical": np.ones((3, 9), np.float32)}, verbose=0)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)


def test_joint_loss_is_quarter_quarter_half_of_the_head_cross_entropies():
    keras.utils.set_random_seed(3)
    model = networks.compile_model(networks.build_model("fusion_d_joint", TINY), learning_rate=1e-4)
    rng = np.random.default_rng(3)
    x = {"image": rng.random((4, 32, 32, 3), dtype=np.float32), "clinical": rng.integers(0, 2, (4, 9)).astype(np.float32)}
    y = np.array([0, 1, 1, 0])
    heads = model.predict(x, verbose=0)
    # Keras's TensorFlow backend takes the cross entropy from the softmax's logits (exact);
    # the other backends clip the probability to [1e-7, 1 - 1e-7] first. The untrained
    # heads are saturated (probabilities below 1e-7), so the reference follows the backend.
    def by_hand(floor):
        return sum(
            weight * float(np.mean(-np.log(np.maximum(heads[head][np.arange(4), y], floor))))
            for head, weight in {"image": 0.25, "clinical": 0.25, "fused": 0.5}.items()
        )

    exact = by_hand(0.0)
    keras_floor = 0.0 if keras.backend.backend() == "tensorflow" else keras.config.epsilon()
    keras_loss = model.evaluate(x, {head: y for head in heads}, batch_size=4, verbose=0, return_dict=True)["loss"]
    assert keras_loss == pytest.approx(by_hand(keras_floor), rel=1e-4), (keras_loss, by_hand(keras_floor))
    assert networks.joint_loss_value(y, heads) == pytest.approx(exact, rel=1e-5), (networks.joint_loss_value(y, heads), exact)
    single = networks.compile_model(networks.build_model("fusion_d", TINY))
    assert not networks.has_joint_loss(single) and networks.has_joint_loss(model)


def test_imagenet_weights_come_from_the_local_keras_file(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    config = NetworkConfig(image_size=32, imagenet="auto")
    assert networks.imagenet_weights_path() is None
    with caplog.at_level(logging.WARNING, logger="hccer"):
        networks.build_image_pathway(config)
    assert "RANDOM initialisation" in caplog.text, caplog.text

    keras.utils.set_random_seed(7)
    source = keras.applications.ResNet50(include_top=False, weights=None, pooling="avg", input_shape=(32, 32, 3))
    weights_file = tmp_path / "models" / networks.IMAGENET_WEIGHTS_FILE
    weights_file.parent.mkdir()
    keras.saving.save_model(source, tmp_path / "source.h5")  # the legacy HDF5 format of Keras's file
    (tmp_path / "source.h5").rename(weights_file)
    assert networks.imagenet_weights_path() == weights_file

    loaded = networks.build_image_pathway(config)
    for expected, got in zip(source.get_weights(), loaded.get_weights(), strict=True):
        np.testing.assert_array_equal(got, expected)
    fresh = networks.build_image_pathway(NetworkConfig(image_size=32, imagenet="none"))
    assert not np.array_equal(fresh.get_weights()[0], source.get_weights()[0])


def test_bn_momentum_reaches_every_batch_normalisation_and_its_moving_statistics():
    config = NetworkConfig(32, resnet_blocks=(1, 1, 1, 1), resnet_width=4, imagenet="none", bn_momentum=0.6)
    model = networks.build_model("deep_resnet50", config)
    norms = [layer for layer in model.get_layer("resnet_b1111_w4").layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(norms) == 1 + 4 * 3 + 4 and {layer.momentum for layer in norms} == {0.6}
    assert networks.build_model("deep_resnet50", TINY).get_layer("resnet_b1111_w4").get_layer("conv1_bn").momentum == 0.99
    # one training step from moving mean 0: moving mean = (1 - momentum) * the batch mean of the stem's conv output
    networks.compile_model(model, learning_rate=0.0)
    images = np.random.default_rng(0).random((8, 32, 32, 3)).astype(np.float32)
    stem = keras.Model(model.get_layer("resnet_b1111_w4").inputs, model.get_layer("resnet_b1111_w4").get_layer("conv1_conv").output)
    batch_mean = np.asarray(stem.predict(np.asarray(networks.PhaseScaling()(images)), verbose=0)).mean(axis=(0, 1, 2))
    model.train_on_batch({"image": images}, np.array([0, 1] * 4))
    moving_mean = model.get_layer("resnet_b1111_w4").get_layer("conv1_bn").moving_mean.numpy()
    np.testing.assert_allclose(moving_mean, 0.4 * batch_mean, rtol=1e-3, atol=1e-4)
    with pytest.raises(ValueError, match="bn_momentum"):
        NetworkConfig(bn_momentum=1.0)


def _with_and_without_dropout(model_name: str, setting: str, other_model: str):
    """``model_name`` built with ``setting`` (a dropout of the network's configuration) at 0.5 and without it,
    with the same weights; the dropout layer (named as the setting) is in the first only, and not in
    ``other_model`` built with the same setting. Returns the configuration and the two models."""
    config = NetworkConfig(32, resnet_blocks=(1, 1, 1, 1), resnet_width=4, imagenet="none", **{setting: 0.5})
    model, plain = networks.build_model(model_name, config), networks.build_model(model_name, TINY)
    assert model.get_layer(setting).rate == 0.5
    assert setting not in [layer.name for layer in plain.layers]
    assert setting not in [layer.name for layer in networks.build_model(other_model, config).layers]
    for layer in plain.layers:  # the same weights in both
        if layer.weights:
            model.get_layer(layer.name).set_weights(layer.get_weights())
    return config, model, plain


def test_image_dropout_drops_image_features_in_training_only_and_never_the_clinical_pathway():
    _, model, plain = _with_and_without_dropout("fusion_d_joint", "image_dropout", other_model="deep_resnet50")
    rng = np.random.default_rng(0)
    inputs = {"image": rng.random((16, 32, 32, 3), dtype=np.float32), "clinical": rng.integers(0, 2, (16, 9)).astype(np.float32)}
    predicted = {head: np.asarray(v) for head, v in model(inputs, training=False).items()}
    for head, values in plain(inputs, training=False).items():  # predicting: nothing dropped
        np.testing.assert_allclose(predicted[head], np.asarray(values), rtol=1e-6, err_msg=head)
    first, second = model(inputs, training=True), plain(inputs, training=True)
    # training: the image features reaching the heads differ (half of them dropped, the rest doubled),
    # the clinical pathway's head is untouched
    assert not np.allclose(np.asarray(first["image"]), np.asarray(second["image"]), atol=1e-4)
    np.testing.assert_allclose(np.asarray(first["clinical"]), np.asarray(second["clinical"]), rtol=1e-6)
    with pytest.raises(ValueError, match="image_dropout"):
        NetworkConfig(image_dropout=1.0)


def test_head_dropout_drops_the_deep_models_features_in_training_only():
    config, model, plain = _with_and_without_dropout("deep_resnet50", "head_dropout", other_model="fusion_d")
    images = {"image": np.random.default_rng(1).random((16, 32, 32, 3), dtype=np.float32)}
    np.testing.assert_allclose(np.asarray(model(images, training=False)), np.asarray(plain(images, training=False)),
                               rtol=1e-6)  # predicting: nothing dropped
    assert not np.allclose(np.asarray(model(images, training=True)), np.asarray(plain(images, training=True)), atol=1e-4)
    assert "head_dropout" not in TINY.key_dict() and config.key_dict()["head_dropout"] == 0.5
    with pytest.raises(ValueError, match="head_dropout"):
        NetworkConfig(head_dropout=1.0)


def test_zero_fusion_heads_start_at_one_half_and_then_learn():
    """``fusion_head_init="zeros"``: every softmax head of a fusion model starts with kernel and bias 0,
    so its first prediction is exactly 1/2 whatever the image and the clinical vector, and one training
    step moves it. The deep model's head and the default (Keras's Glorot draw) do not start at 1/2."""
    from hccer_lib.training import model_targets

    config = NetworkConfig(32, resnet_blocks=(1, 1, 1, 1), resnet_width=4, imagenet="none", fusion_head_init="zeros")
    rng = np.random.default_rng(0)
    inputs = {"image": rng.random((8, 32, 32, 3), dtype=np.float32), "clinical": rng.integers(0, 2, (8, 9)).astype(np.float32)}
    for name in ("fusion_a", "fusion_d_joint"):  # the vector itself at the fused layer; three heads
        model = networks.build_model(name, config)
        outputs = model(inputs, training=False)
        heads = outputs if isinstance(outputs, dict) else {"fused": outputs}
        for head, probabilities in heads.items():
            np.testing.assert_allclose(np.asarray(probabilities), 0.5, atol=1e-6, err_msg=f"{name}: {head} head")
        networks.compile_model(model, learning_rate=1e-2)
        model.train_on_batch(inputs, model_targets(model, np.array([0, 1] * 4)))
        assert np.abs(model.get_layer("fused").get_weights()[0]).max() > 0, f"{name}: the fused head did not move"
    deep = networks.build_model("deep_resnet50", config)({"image": inputs["image"]}, training=False)
    assert not np.allclose(np.asarray(deep), 0.5), "the deep model's head starts at 1/2"
    glorot = networks.build_model("fusion_b", TINY)(inputs, training=False)
    assert not np.allclose(np.asarray(glorot), 0.5), "the default fusion head starts at 1/2"
    with pytest.raises(ValueError, match="fusion_head_init"):
        NetworkConfig(fusion_head_init="ones")


def test_clinical_warm_start_fits_the_clinical_pathway_like_a_ridge_regression_and_leaves_the_image_rows():
    """``warm_start_clinical`` on vectors whose first three bits carry the label (a logistic model known by
    construction): for every fusion architecture the network then ranks the patients as a ridge logistic
    regression on the same bits does, whatever the image; the fused head's rows of the image branch and
    the image pathway are untouched; bad input is refused."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    n = 160
    vectors = rng.integers(0, 2, (n, 9)).astype(np.float32)
    y = (vectors[:, 0] + vectors[:, 1] - vectors[:, 2] + rng.normal(0, 0.7, n) > 0.5).astype(int)
    regression = LogisticRegression(C=1.0).fit(vectors, y).predict_proba(vectors)[:, 1]
    images = rng.random((n, 32, 32, 3), dtype=np.float32)
    config = NetworkConfig(32, resnet_blocks=(1, 1, 1, 1), resnet_width=4, imagenet="none", fusion_head_init="zeros")
    for name in ("fusion_a", "fusion_b", "fusion_c", "fusion_d", "fusion_d_joint"):
        model = networks.build_model(name, config)
        networks.set_clinical_scaling(model, vectors)
        pathway = next(layer for layer in model.layers if isinstance(layer, keras.Model))  # the image pathway
        image_weights = [w.copy() for w in pathway.get_weights()]
        assert len(image_weights) > 10, f"{name}: {pathway.name} is not the ResNet"
        networks.warm_start_clinical(model, vectors, y, penalty=0.01)
        outputs = model({"image": images, "clinical": vectors}, training=False)
        fused = np.asarray(networks.fused_probability(outputs))[:, 1]
        auc, reference = roc_auc_score(y, fused), roc_auc_score(y, regression)
        assert auc > reference - 0.02 and auc > 0.85, f"{name}: AUC {auc:.3f}, the regression's {reference:.3f}"
        other_images = model({"image": images[::-1].copy(), "clinical": vectors}, training=False)
        np.testing.assert_allclose(np.asarray(networks.fused_probability(other_images)), np.asarray(networks.fused_probability(outputs)),
                                   atol=1e-6, err_msg=f"{name}: the image moves the warm-started prediction")
        kernel = model.get_layer("fused").get_weights()[0]
        image_rows = kernel.shape[0] - {"fusion_a": 9, "fusion_b": 9, "fusion_c": 7 * 8}.get(name, 16)
        assert np.abs(kernel[:image_rows]).max() == 0.0, f"{name}: rows of the image branch changed"
        for before, after in zip(image_weights, pathway.get_weights(), strict=True):
            np.testing.assert_array_equal(before, after, err_msg=f"{name}: the image pathway changed")
        if name == "fusion_d_joint":
            clinical_head = np.asarray(outputs["clinical"])[:, 1]
            assert roc_auc_score(y, clinical_head) > 0.85, "the joint loss's clinical head starts fitted too"
    with pytest.raises(ValueError, match="penalty"):
        networks.warm_start_clinical(model, vectors, y, penalty=0.0)
    with pytest.raises(ValueError, match="must match"):
        networks.warm_start_clinical(model, vectors, y[:-1], penalty=0.01)
    with pytest.raises(ValueError, match="no clinical pathway"):
        networks.warm_start_clinical(networks.build_model("deep_resnet50", config), vectors, y, penalty=0.01)


def test_fusion_a_warm_start_is_the_ridge_logistic_regression_by_hand():
    """For fusion A the warm-started pathway is a logistic regression on the standardised bits: its logit
    coefficients ``gain * (W[:, 1] - W[:, 0])`` and intercept are scikit-learn's ``LogisticRegression(C=1 / (penalty
    * n))`` on the same standardised vectors (a penalty ``penalty * gain**2`` on each softmax column's weights is
    ``penalty / 2`` times the squared coefficients, against ``1 / (2 C n)`` in scikit-learn's mean loss)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(1)
    n = 120
    vectors = rng.integers(0, 2, (n, 9)).astype(np.float32)
    y = (vectors[:, 0] - vectors[:, 1] + rng.normal(0, 0.7, n) > 0.3).astype(int)
    config = NetworkConfig(32, resnet_blocks=(1, 1, 1, 1), resnet_width=4, imagenet="none", fusion_head_init="zeros")
    for penalty in (0.01, 0.1):
        model = networks.build_model("fusion_a", config)
        networks.set_clinical_scaling(model, vectors)
        networks.warm_start_clinical(model, vectors, y, penalty=penalty)
        gain = model.get_layer("clinical_scaling").gain
        kernel, bias = model.get_layer("fused").get_weights()
        reference = LogisticRegression(C=1 / (penalty * n), max_iter=5000).fit(StandardScaler().fit_transform(vectors), y)
        np.testing.assert_allclose(gain * (kernel[-9:, 1] - kernel[-9:, 0]), reference.coef_[0], atol=5e-3,
                                   err_msg=f"penalty {penalty}: coefficients")
        assert bias[1] - bias[0] == pytest.approx(reference.intercept_[0], abs=5e-3), (bias, reference.intercept_)


def test_clinical_activation_makes_c_and_ds_clinical_layer_a_linear_map():
    """``clinical_activation="linear"``: fusion C's Conv1D and fusion D's FC layer map the clinical vector linearly (an
    affine map of the standardised bits keeps every mix of two vectors), where ReLU does not; fusion A and B, which
    have no clinical layer, are built alike either way; the run key holds the setting only when it is not ReLU."""
    rng = np.random.default_rng(3)
    first, second = rng.integers(0, 2, (64, 9)).astype(np.float32), rng.integers(0, 2, (64, 9)).astype(np.float32)
    mix = 0.3 * first + 0.7 * second
    for model_name, layer_name in (("fusion_c", "clinical_flatten"), ("fusion_d_joint", "clinical_fc")):
        for activation in ("linear", "relu"):
            keras.utils.set_random_seed(0)
            model = networks.build_model(model_name, replace(TINY, clinical_activation=activation))
            branch = keras.Model(model.input["clinical"], model.get_layer(layer_name).output)
            mixed = np.asarray(branch(mix))
            between = 0.3 * np.asarray(branch(first)) + 0.7 * np.asarray(branch(second))
            if activation == "linear":
                np.testing.assert_allclose(mixed, between, atol=1e-5, err_msg=model_name)
            else:
                assert (mixed == 0).any() and not np.allclose(mixed, between, atol=1e-3), model_name
    for model_name in ("fusion_a", "fusion_b"):
        plain = networks.build_model(model_name, TINY)
        linear = networks.build_model(model_name, replace(TINY, clinical_activation="linear"))
        assert [layer.name for layer in plain.layers] == [layer.name for layer in linear.layers], model_name
    assert "clinical_activation" not in TINY.key_dict()
    assert replace(TINY, clinical_activation="linear").key_dict()["clinical_activation"] == "linear"
    with pytest.raises(ValueError, match="clinical_activation"):
        NetworkConfig(clinical_activation="tanh")


def test_image_activation_makes_b_c_and_ds_image_fc_layer_a_linear_map():
    """``image_activation="linear"``: fusion B, C and D's FC layer over the pooled image features maps them linearly (a
    mix of two feature vectors goes to the same mix of their outputs), where ReLU does not (some outputs cut at 0);
    fusion A, which has no such layer, is built alike either way; the run key holds the setting only when it is not
    ReLU."""
    rng = np.random.default_rng(4)
    first, second = rng.normal(size=(32, TINY_FEATURES)), rng.normal(size=(32, TINY_FEATURES))
    mix = 0.3 * first + 0.7 * second
    for model_name in ("fusion_b", "fusion_c", "fusion_d", "fusion_d_joint"):
        for activation in ("linear", "relu"):
            keras.utils.set_random_seed(0)
            layer = networks.build_model(model_name, replace(TINY, image_activation=activation)).get_layer("image_fc")
            mixed = np.asarray(layer(mix.astype(np.float32)))
            between = 0.3 * np.asarray(layer(first.astype(np.float32))) + 0.7 * np.asarray(layer(second.astype(np.float32)))
            if activation == "linear":
                np.testing.assert_allclose(mixed, between, atol=1e-5, err_msg=model_name)
            else:
                assert (mixed == 0).any() and not np.allclose(mixed, between, atol=1e-3), model_name
    plain = networks.build_model("fusion_a", TINY)
    linear = networks.build_model("fusion_a", replace(TINY, image_activation="linear"))
    assert [layer.name for layer in plain.layers] == [layer.name for layer in linear.layers]
    assert "image_fc" not in [layer.name for layer in plain.layers]
    assert "image_activation" not in TINY.key_dict()
    assert replace(TINY, image_activation="linear").key_dict()["image_activation"] == "linear"
    with pytest.raises(ValueError, match="image_activation"):
        NetworkConfig(image_activation="tanh")
