"""Keras 3's batch normalisation with its training step in one TensorFlow kernel.

In training, Keras 3 normalises with about fifteen small ops per layer and as many again for their
gradient (moments, subtract, multiply, tile, ...). TensorFlow's `FusedBatchNormV3` computes the same
normalisation, with the batch's mean and biased variance, in one kernel, and its gradient in one
more: on the `strided` network at batch 160 (2 cores) that is about 12 % less CPU time per
training step (bench/README.md, "Batch normalisation in one kernel"). The moving statistics are
Keras' too: the kernel returns the unbiased variance, which is scaled back to the biased one Keras
averages. Inference, masks and inputs other than NHWC images take Keras' own path.
tests/training/fused_batch_norm_test.py checks outputs, gradients and moving statistics against
`keras.layers.BatchNormalization`.
"""

from __future__ import annotations

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="triplet_tfx")
class FusedBatchNormalization(keras.layers.BatchNormalization):
    """`keras.layers.BatchNormalization` whose training step on [N, H, W, C] inputs normalised over
    the channels is `FusedBatchNormV3`."""

    def call(self, inputs, training=None, mask=None):
        fused = training and self.trainable and mask is None and len(inputs.shape) == 4 and self.axis in (-1, 3)
        if not fused:
            return super().call(inputs, training=training, mask=mask)
        x = tf.cast(inputs, tf.float32)  # as Keras: statistics in float32 under any dtype policy
        channels = tf.shape(x)[-1]
        y, mean, unbiased_variance, *_ = tf.raw_ops.FusedBatchNormV3(
            x=x,
            scale=tf.cast(self.gamma, tf.float32) if self.scale else tf.ones([channels], tf.float32),
            offset=tf.cast(self.beta, tf.float32) if self.center else tf.zeros([channels], tf.float32),
            mean=tf.zeros([0], tf.float32),
            variance=tf.zeros([0], tf.float32),
            epsilon=self.epsilon,
            data_format="NHWC",
            is_training=True,
        )
        count = tf.cast(tf.size(x) // channels, tf.float32)
        variance = tf.stop_gradient(unbiased_variance) * (count - 1.0) / count
        mean = tf.stop_gradient(mean)
        self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
        self.moving_variance.assign(self.moving_variance * self.momentum + variance * (1.0 - self.momentum))
        return tf.cast(y, self.compute_dtype)
