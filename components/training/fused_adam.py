"""Keras 3's Adam with each variable's update in one TensorFlow kernel.

Keras 3 writes Adam's update as about a dozen small ops per variable (casts, powers, multiplies,
three assignments); on a CPU each op costs more to schedule than to compute for a network this
small. TensorFlow's `ResourceApplyAdam` kernel computes the same update, in the same order of
operations (m += (g - m)(1 - b1); v += (g^2 - v)(1 - b2); var -= m * alpha / (sqrt(v) + eps), with
alpha = lr * sqrt(1 - b2^t) / (1 - b1^t)), in one kernel: tests/training/fused_adam_test.py checks
that the weights after one and three steps are Keras' Adam's to rounding. On the tutorial recipe
(2 cores) it saves about 6 % of the CPU time of a training step (bench/README.md, "Training step").
"""

from __future__ import annotations

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="triplet_tfx")
class FusedAdam(keras.optimizers.Adam):
    """`keras.optimizers.Adam` (without amsgrad), each variable's update one ResourceApplyAdam.
    For one device: under a distribution strategy use Keras' Adam, whose updates the strategy
    routes to each replica's copies."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.amsgrad:
            raise ValueError("FusedAdam does not implement amsgrad; use keras.optimizers.Adam")

    def update_step(self, gradient, variable, learning_rate):
        dtype = variable.dtype
        local_step = tf.cast(self.iterations + 1, dtype)
        beta_1 = tf.cast(self.beta_1, dtype)
        beta_2 = tf.cast(self.beta_2, dtype)
        index = self._get_variable_index(variable)
        tf.raw_ops.ResourceApplyAdam(
            var=variable.handle,
            m=self._momentums[index].value.handle,
            v=self._velocities[index].value.handle,
            beta1_power=tf.pow(beta_1, local_step),
            beta2_power=tf.pow(beta_2, local_step),
            lr=tf.cast(learning_rate, dtype),
            beta1=beta_1,
            beta2=beta_2,
            epsilon=tf.cast(self.epsilon, dtype),
            grad=tf.cast(gradient, dtype),
        )
