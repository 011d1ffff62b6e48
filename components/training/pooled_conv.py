"""Keras' Conv2D followed by MaxPooling2D, as one layer that pools before the bias and the activation.

The tutorial network convolves at full resolution, adds the bias, applies ReLU, then max-pools
(2x2: the first layer writes 28x28x64 values per image and keeps a quarter of them). Adding a
per-channel constant and ReLU are monotonic, so both commute with a maximum: pooling the
convolution first gives the same values, exactly in floating point, and the same gradients (each
to its window's maximum; the bias's gradient a sum over the pooled positions instead of all of
them, of the same non-zero terms). The bias, the activation and their gradients then run on a
quarter of the elements, and the convolution's gradient needs no bias reduction at full resolution
(docs/training.md: about 8 % less CPU per step of the tutorial recipe). The weights are the
Conv2D's (kernel, bias).
"""

from __future__ import annotations

import keras


@keras.saving.register_keras_serializable(package="triplet_tfx")
class PooledConv2D(keras.layers.Conv2D):
    """Conv2D(filters, kernel_size, ...) then MaxPooling2D(pool_size) of its output; channels last."""

    def __init__(self, filters, kernel_size, pool_size: int = 2, **kwargs):
        super().__init__(filters, kernel_size, **kwargs)
        if self.data_format != "channels_last":
            raise ValueError("PooledConv2D: channels_last only")
        self.pool_size = pool_size

    def call(self, inputs):
        outputs = keras.ops.max_pool(
            self.convolution_op(inputs, self.kernel), self.pool_size, strides=self.pool_size, padding="valid"
        )
        if self.use_bias:
            outputs = keras.ops.add(outputs, self.bias)
        return outputs if self.activation is None else self.activation(outputs)

    def compute_output_shape(self, input_shape):
        batch, height, width, channels = super().compute_output_shape(input_shape)
        pooled = [None if side is None else (side - self.pool_size) // self.pool_size + 1 for side in (height, width)]
        return (batch, *pooled, channels)

    def get_config(self):
        return {**super().get_config(), "pool_size": self.pool_size}
