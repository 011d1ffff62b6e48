"""FusedAdam computes Keras 3's Adam update, in one kernel per variable."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from triplet_tfx.components.config import TrainConfig
from triplet_tfx.components.training import trainer
from triplet_tfx.components.training.fused_adam import FusedAdam
from triplet_tfx.components.training.network import build_model


def _trained_weights(optimizer, steps, learning_rate=1e-3):
    keras.utils.set_random_seed(3)
    train = TrainConfig(batch_size=32, examples_per_class=None, dropout=0.3, margin=1.0)
    model = build_model((28, 28, 1), 16, "float32", train.dropout, train.network)
    model.compile(optimizer=optimizer(learning_rate), loss=trainer.make_loss(train), steps_per_execution=5)
    rng = np.random.default_rng(0)
    images = rng.random((steps * 32, 28, 28, 1), np.float32)
    labels = rng.integers(0, 4, steps * 32)
    model.fit(tf.data.Dataset.from_tensor_slices((images, labels)).batch(32), epochs=1, verbose=0)
    return model.get_weights(), model.optimizer


@pytest.mark.slow
def test_a_training_step_gives_keras_adams_weights():
    # Equal to rounding: the kernel's vectorised arithmetic rounds differently in the last bit.
    expected, _ = _trained_weights(keras.optimizers.Adam, 1)
    fused, optimizer = _trained_weights(FusedAdam, 1)
    assert int(optimizer.iterations.numpy()) == 1
    for want, got in zip(expected, fused):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-7)
    one_more, _ = _trained_weights(keras.optimizers.Adam, 2)
    assert max(np.abs(w - f).max() for w, f in zip(one_more, fused)) > 1e-5


def test_many_steps_of_the_same_gradients_give_keras_adams_state():
    # Fixed gradients, so that rounding cannot feed back through the loss's discrete choice of
    # negatives (which it does when training: a last-bit difference can pick another negative).
    rng = np.random.default_rng(5)
    shapes = [(3, 3, 2, 4), (4,), (17, 5)]
    gradients = [[rng.normal(size=shape).astype(np.float32) * 10.0**-i for shape in shapes] for i in range(10)]
    results = []
    for optimizer in (keras.optimizers.Adam(learning_rate=3e-3), FusedAdam(learning_rate=3e-3)):
        variables = [keras.Variable(np.ones(shape, np.float32)) for shape in shapes]
        for step in gradients:
            optimizer.apply_gradients(zip([tf.constant(g) for g in step], variables))
        results.append([v.numpy() for v in variables])
    for want, got in zip(*results):
        assert np.abs(got - 1.0).max() > 1e-3  # the variables moved
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_amsgrad_is_refused():
    with pytest.raises(ValueError, match="amsgrad"):
        FusedAdam(amsgrad=True)
