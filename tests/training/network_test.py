"""The network option: `tutorial_cnn` is the tutorial's network, unchanged; `strided` is another one."""

import keras
import numpy as np
import pytest

from triplet_tfx.components.config import NETWORKS, ConfigError, PipelineConfig, TrainConfig
from triplet_tfx.components.training import network


def test_every_configurable_network_is_built():
    assert sorted(network.NETWORKS) == sorted(NETWORKS)
    with pytest.raises(ConfigError, match=r"train.network \(--network\): must be one of tutorial_cnn, strided"):
        PipelineConfig(train=TrainConfig(network="resnet")).validate()


def test_tutorial_cnn_is_the_tutorials_network():
    net = network.build_model((28, 28, 1), 256, network="tutorial_cnn")
    shapes = [tuple(w.shape) for w in net.weights]
    assert shapes == [(2, 2, 1, 64), (64,), (2, 2, 64, 32), (32,), (1568, 256), (256,)]
    # By hand: conv 2x2x1 -> 64 (+64 biases) = 320; conv 2x2x64 -> 32 (+32) = 8,224;
    # two 2x2 poolings leave 7x7x32 = 1,568 features; dense 1,568 -> 256 (+256) = 401,664.
    assert net.count_params() == 410_208


def test_strided_network_shapes_and_parameters():
    net = network.build_model((28, 28, 1), 256, dropout=0.0, network="strided")
    kinds = [type(layer).__name__ for layer in net.layers]
    assert kinds == [
        "InputLayer",
        "Conv2D",
        "FusedBatchNormalization",
        "ReLU",
        "Conv2D",
        "FusedBatchNormalization",
        "ReLU",
        "Flatten",
        "Dense",
        "UnitNormalization",
    ]
    # 3x3x1 -> 32 (no bias) = 288, BN 4x32 = 128; 3x3x32 -> 64 = 18,432, BN 4x64 = 256;
    # two stride-2 convolutions leave 7x7x64 = 3,136 features; dense 3,136 -> 256 (+256) = 803,072.
    assert net.count_params() == 288 + 128 + 18_432 + 256 + 803_072
    with_dropout = network.build_model((28, 28, 1), 256, dropout=0.2, network="strided")
    assert [layer.rate for layer in with_dropout.layers if isinstance(layer, keras.layers.Dropout)] == [0.2]


def test_strided_copy_keeps_batch_norm_statistics():
    """The export builds a fresh network and copies the weights: the moving statistics travel too."""
    rng = np.random.default_rng(0)
    images = rng.random((64, 28, 28, 1), np.float32)
    trained = network.build_model((28, 28, 1), 16, network="strided")
    trained(images, training=True)  # moves the batch-norm statistics away from their start
    for layer in trained.layers:
        if type(layer).__name__ == "BatchNormalization":
            layer.moving_mean.assign(rng.random(layer.moving_mean.shape).astype(np.float32))
    copy = network.build_model((28, 28, 1), 16, network="strided")
    copy.set_weights(trained.get_weights())
    np.testing.assert_allclose(copy(images, training=False), trained(images, training=False), atol=1e-6)
