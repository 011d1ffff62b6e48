"""FusedBatchNormalization computes Keras 3's batch normalisation: outputs, gradients, moving statistics."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from triplet_tfx.components.training.fused_batch_norm import FusedBatchNormalization


def _steps(layer_class, inputs, training=True, steps=2, dtype="float32", **kwargs):
    """Outputs and gradients (inputs, gamma, beta) of `steps` calls on the same weights, then the
    moving mean and variance."""
    layer = layer_class(dtype=dtype, **kwargs)
    layer.build(inputs[0].shape)
    channels = inputs[0].shape[-1]
    if layer.scale:
        layer.gamma.assign(np.linspace(0.5, 2.0, channels))
    if layer.center:
        layer.beta.assign(np.linspace(-1.0, 1.0, channels))
    seen = []
    for x in inputs:
        x = tf.constant(x)
        weights = tf.constant(np.random.default_rng(7).normal(size=x.shape), tf.float32)
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=training)
            loss = tf.reduce_sum(tf.cast(y, tf.float32) * weights)
        seen += [y, *tape.gradient(loss, [x, *layer.trainable_variables])]
    return [np.asarray(tf.cast(v, tf.float32)) for v in seen] + [
        np.asarray(layer.moving_mean),
        np.asarray(layer.moving_variance),
    ]


def _images(shape, steps=2):
    rng = np.random.default_rng(0)
    return [(rng.normal(size=shape) * 3.0 + 1.5).astype(np.float32) for _ in range(steps)]


@pytest.mark.parametrize(
    "shape, kwargs",
    [
        ((16, 7, 7, 8), {}),
        ((5, 3, 4, 2), {"momentum": 0.5, "epsilon": 1e-5}),
        ((8, 6, 6, 4), {"center": False}),
        ((8, 6, 6, 4), {"scale": False}),
    ],
)
def test_training_steps_are_keras_batch_normalisation(shape, kwargs):
    want = _steps(keras.layers.BatchNormalization, _images(shape), **kwargs)
    got = _steps(FusedBatchNormalization, _images(shape), **kwargs)
    assert len(got) == len(want)
    for expected, actual in zip(want, got):
        np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=2e-5)
    # The moving variance moved off its initial 1: a wrong variance would show.
    assert np.abs(got[-1] - 1.0).max() > 0.1


def test_the_moving_variance_is_the_biased_one():
    # Two images of one pixel each, per channel: biased variance 1, unbiased 2.
    x = np.array([[[[0.0, 10.0]]], [[[2.0, 12.0]]]], np.float32)
    layer = FusedBatchNormalization(momentum=0.0)
    layer(x, training=True)
    np.testing.assert_allclose(np.asarray(layer.moving_mean), [1.0, 11.0], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(layer.moving_variance), [1.0, 1.0], rtol=1e-6)


def test_training_under_bfloat16_arithmetic_is_keras():
    images = _images((8, 5, 5, 4), steps=1)
    want = _steps(keras.layers.BatchNormalization, images, steps=1, dtype="mixed_bfloat16")
    got = _steps(FusedBatchNormalization, images, steps=1, dtype="mixed_bfloat16")
    for expected, actual in zip(want, got):
        np.testing.assert_allclose(actual, expected, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("shape, training", [((8, 6, 6, 4), False), ((32, 4), True)])
def test_inference_and_other_inputs_take_keras_path(shape, training):
    images = _images(shape, steps=1)
    want = _steps(keras.layers.BatchNormalization, images, training=training, steps=1)
    got = _steps(FusedBatchNormalization, images, training=training, steps=1)
    for expected, actual in zip(want, got):
        np.testing.assert_array_equal(actual, expected)


def test_a_model_with_it_saves_and_loads(tmp_path):
    inputs = keras.Input((4, 4, 2))
    model = keras.Model(inputs, FusedBatchNormalization()(inputs))
    model(np.ones((2, 4, 4, 2), np.float32), training=True)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert isinstance(loaded.layers[-1], FusedBatchNormalization)
    for a, b in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)
