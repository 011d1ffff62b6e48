"""Dropout16: Keras' dropout (rate, scaling, inference) with masks from 16 random bits per element."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from triplet_tfx.components.training.dropout16 import Dropout16


@pytest.mark.parametrize("rate", [0.3, 0.05])
def test_drops_at_the_rate_and_scales_the_rest_as_keras(rate):
    layer = Dropout16(rate, seed=1)
    ones = tf.ones((1001, 999))  # an odd number of elements: the last 32-bit draw serves one
    out = layer(ones, training=True).numpy()
    kept = out != 0
    # 1,000,000 Bernoulli draws: the dropped share within 5 standard deviations of the rate.
    assert abs((1 - kept.mean()) - rate) < 5 * np.sqrt(rate * (1 - rate) / out.size)
    np.testing.assert_allclose(out[kept], 1 / (1 - rate), rtol=1e-6)
    # Keras' own layer on the same input: the same expected value per element.
    reference = keras.layers.Dropout(rate, seed=1)(ones, training=True).numpy()
    assert abs(out.mean() - reference.mean()) < 10 / np.sqrt(out.size)


def test_masks_are_new_at_each_call_unrelated_across_elements_and_replayed_from_the_seed():
    x = tf.ones((64, 14, 14, 8))
    first, second = Dropout16(0.3, seed=7), Dropout16(0.3, seed=7)
    a, b = first(x, training=True).numpy() != 0, first(x, training=True).numpy() != 0
    assert not np.array_equal(a, b)
    np.testing.assert_array_equal(second(x, training=True).numpy() != 0, a)
    # The two halves of each 32-bit draw are independent: neighbouring elements agree as often as chance.
    pairs = a.reshape(-1)[: a.size // 2 * 2].reshape(-1, 2)
    agree = (pairs[:, 0] == pairs[:, 1]).mean()
    assert abs(agree - (0.7**2 + 0.3**2)) < 5 * np.sqrt(0.58 * 0.42 / len(pairs))


def test_identity_at_inference_and_the_mask_as_gradient():
    x = tf.constant(np.random.default_rng(0).random((8, 5, 5, 3)), tf.float32)
    layer = Dropout16(0.3, seed=3)
    np.testing.assert_array_equal(layer(x, training=False).numpy(), x.numpy())
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=True)
    grad = tape.gradient(y, x).numpy()
    scale = (y.numpy() != 0) / 0.7
    np.testing.assert_allclose(grad, scale, rtol=1e-6)
    np.testing.assert_allclose(y.numpy(), x.numpy() * scale, rtol=1e-6)


def test_bfloat16_inputs_keep_their_dtype():
    out = Dropout16(0.3, seed=0, dtype="mixed_bfloat16")(tf.ones((4, 16)), training=True)
    assert out.dtype == tf.bfloat16
    assert set(np.unique(out.numpy().astype(np.float32))) <= {0.0, np.float32(tf.cast(1 / 0.7, tf.bfloat16).numpy())}
