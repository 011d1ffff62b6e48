"""PooledConv2D computes Keras' Conv2D followed by MaxPooling2D: outputs and gradients."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from triplet_tfx.components.training.pooled_conv import PooledConv2D


def _outputs_and_gradients(function, variables, images, output_gradients):
    with tf.GradientTape() as tape:
        tape.watch(images)
        outputs = function(images)
    return [outputs, *tape.gradient(outputs, [images, *variables], output_gradients=output_gradients)]


@pytest.mark.parametrize(
    "shape, filters, activation",
    [((4, 28, 28, 1), 64, "relu"), ((4, 14, 14, 64), 32, "relu"), ((3, 7, 9, 3), 5, "relu"), ((2, 6, 6, 2), 3, None)],
)
def test_the_same_values_and_gradients_as_conv2d_then_max_pooling(shape, filters, activation):
    rng = np.random.default_rng(0)
    images = tf.constant(rng.standard_normal(shape), tf.float32)
    conv = keras.layers.Conv2D(filters, 2, padding="same", activation=activation)
    pool = keras.layers.MaxPooling2D(2)
    pooled = PooledConv2D(filters, 2, padding="same", activation=activation)
    conv.build(shape)
    pooled.build(shape)
    # A bias of both signs, so that ReLU cuts some windows' maxima and not others.
    weights = [rng.standard_normal(w.shape).astype(np.float32) * 0.5 for w in conv.get_weights()]
    conv.set_weights(weights)
    pooled.set_weights(weights)
    assert pooled.compute_output_shape(shape) == pool.compute_output_shape(conv.compute_output_shape(shape))
    output_gradients = tf.constant(rng.standard_normal(pooled.compute_output_shape(shape)), tf.float32)

    expected = _outputs_and_gradients(lambda x: pool(conv(x)), conv.trainable_variables, images, output_gradients)
    got = _outputs_and_gradients(pooled, pooled.trainable_variables, images, output_gradients)
    names = ["outputs", "images' gradient", "kernel's gradient", "bias's gradient"]
    for name, want, have in zip(names[:3], expected, got):
        np.testing.assert_allclose(have.numpy(), want.numpy(), rtol=1e-6, atol=1e-6, err_msg=name)
    # The bias's gradient sums the same terms in another order.
    np.testing.assert_allclose(got[3].numpy(), expected[3].numpy(), rtol=1e-5, atol=1e-5, err_msg=names[3])
    if activation:  # ReLU cut some outputs, not all
        assert 0 < np.mean(got[0].numpy() == 0) < 1


def test_its_configuration_round_trips():
    layer = PooledConv2D(8, 2, pool_size=3, padding="same", activation="relu", name="pooled")
    again = PooledConv2D.from_config(layer.get_config())
    assert (again.filters, again.kernel_size, again.pool_size, again.padding) == (8, (2, 2), 3, "same")
    assert again.activation.__name__ == "relu"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(data_format="channels_first"), "channels_last"),
        (dict(activation="gelu"), "does not commute"),  # not monotonic: pooling first would change it
        (dict(pool_size=(2, 2)), "positive int"),
    ],
)
def test_what_it_cannot_compute_alike_is_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PooledConv2D(8, 2, **kwargs)
