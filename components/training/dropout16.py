"""Keras' Dropout, its masks drawn from 16 random bits per element instead of a float32 uniform.

TensorFlow's counter-based generator (Philox) yields 128 bits per round; Keras' dropout turns 32 of
them into a float32 in [0, 1) for every element and compares it with the rate. Here each 32-bit
draw serves two elements: an element is dropped when its 16 bits, read as an integer, are below
round(rate * 65536), a probability within 2**-17 of the rate (float32 uniforms are within 2**-24).
The kept elements are scaled by 1 / (1 - rate) as Keras does, in one multiplication by the mask.
In the tutorial network's training step on a CPU the two dropout masks' random numbers were about
a fifth of the op time (bench/README.md, "Training step"). Inference is the identity, as Keras'.
"""

from __future__ import annotations

import keras
import tensorflow as tf

_LEVELS = 1 << 16


class Dropout16(keras.layers.Dropout):
    def call(self, inputs, training=False):
        if not (training and self.rate > 0) or self.noise_shape is not None:
            return super().call(inputs, training=training)
        seed = tf.cast(self.seed_generator.next(), tf.int32)
        size = tf.size(inputs)
        words = tf.random.stateless_uniform([(size + 1) // 2], seed=seed, minval=None, maxval=None, dtype=tf.uint32)
        bits = tf.reshape(tf.bitcast(words, tf.uint16), [-1])[:size]
        threshold = min(round(self.rate * _LEVELS), _LEVELS - 1)
        keep = tf.reshape(bits, tf.shape(inputs)) >= tf.constant(threshold, tf.uint16)
        scale = tf.constant(1 / (1 - self.rate), inputs.dtype)
        return inputs * tf.where(keep, scale, tf.zeros([], inputs.dtype))
