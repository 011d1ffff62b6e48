"""Keras' Conv2D followed by MaxPooling2D, as one layer that pools before the bias and the activation.

The tutorial network convolves at full resolution, adds the bias, applies ReLU, then max-pools
(2x2: the first layer writes 28x28x64 values per image and keeps a quarter of them). Adding a
per-channel constant and ReLU are non-decreasing, so both commute with a maximum: pooling the
convolution first gives the same values, exactly in floating point. The gradients go to each
window's maximum as Keras' pooling sends them, with one exception: where adding the bias rounds two
values of a window to the same number (bfloat16 or float16 arithmetic, or a bias far larger than
the convolution's outputs), Keras picks the first of the tied values and this layer the
convolution's larger one; both are gradients of the same function. In float32 on the tutorial
network they are the same (tests/training/pooled_conv_test.py). The bias, the activation and their
gradients then run on a quarter of the elements, and the convolution's gradient needs no bias
reduction at full resolution (docs/training.md: about 8 % less CPU per step of the tutorial
recipe). The weights are the Conv2D's (kernel, bias).
"""

from __future__ import annotations

import keras

# Activations that commute with a maximum (non-decreasing): the only ones this order computes alike.
NON_DECREASING_ACTIVATIONS = (None, "linear", "relu")


@keras.saving.register_keras_serializable(package="triplet_tfx")
class PooledConv2D(keras.layers.Conv2D):
    """Conv2D(filters, kernel_size, ...) then MaxPooling2D(pool_size) of its output (square windows
    of stride pool_size, no padding); channels last, activation None, "linear" or "relu"."""

    def __init__(self, filters, kernel_size, pool_size: int = 2, activation=None, **kwargs):
        if activation not in NON_DECREASING_ACTIVATIONS:
            raise ValueError(
                f"PooledConv2D: activation {activation!r} does not commute with max pooling; "
                f"use one of {NON_DECREASING_ACTIVATIONS}"
            )
        if not isinstance(pool_size, int) or pool_size < 1:
            raise ValueError(f"PooledConv2D: pool_size must be a positive int (square windows), got {pool_size!r}")
        super().__init__(filters, kernel_size, activation=activation, **kwargs)
        if self.data_format != "channels_last":
            raise ValueError("PooledConv2D: channels_last only")
        self.pool_size = pool_size

    def call(self, inputs):
        outputs = keras.ops.max_pool(
            self.convolution_op(inputs, self.kernel), self.pool_size, strides=self.pool_size, padding="valid"
        )
        if self.use_bias:
            outputs = keras.ops.add(outputs, self.bias)
        return self.activation(outputs)  # Keras' `linear` when none was given

    def compute_output_shape(self, input_shape):
        batch, height, width, channels = super().compute_output_shape(input_shape)
        pooled = [None if side is None else (side - self.pool_size) // self.pool_size + 1 for side in (height, width)]
        return (batch, *pooled, channels)

    def get_config(self):
        return {**super().get_config(), "pool_size": self.pool_size}
