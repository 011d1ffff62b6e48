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


@pytest.mark.parametrize("steps, atol", [(1, 1e-7), (3, 1e-6)])
def test_the_weights_are_keras_adams(steps, atol):
    # Equal to rounding: the kernel's vectorised arithmetic rounds differently in the last bit, and
    # over many steps such differences grow through the loss's discrete choice of negatives.
    expected, _ = _trained_weights(keras.optimizers.Adam, steps)
    fused, optimizer = _trained_weights(FusedAdam, steps)
    assert int(optimizer.iterations.numpy()) == steps
    for want, got in zip(expected, fused):
        np.testing.assert_allclose(got, want, rtol=0, atol=atol)
    one_more, _ = _trained_weights(keras.optimizers.Adam, steps + 1)
    assert max(np.abs(w - f).max() for w, f in zip(one_more, fused)) > 100 * atol


def test_amsgrad_is_refused():
    with pytest.raises(ValueError, match="amsgrad"):
        FusedAdam(amsgrad=True)
