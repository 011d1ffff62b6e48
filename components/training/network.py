"""The embedding network.

The TensorFlow Addons "TripletSemiHardLoss" tutorial's: Conv2D(64, 2) -> MaxPool ->
Dropout(0.3) -> Conv2D(32, 2) -> MaxPool -> Dropout(0.3) -> Flatten -> Dense(256) ->
L2-normalise (the dropout rate and the embedding size are configurable).
"""
from __future__ import annotations

import keras

from triplet_tfx.components.data.data_sources import IMAGE_KEY

EMBEDDING_KEY = "embedding"


def build_model(image_shape, embedding_dim: int, precision: str = "float32",
                dropout: float = 0.3) -> keras.Model:
    """`precision` is a Keras dtype policy for the layers' arithmetic (weights stay float32);
    the embedding is always float32, so the loss and the metrics see full precision. `dropout`
    acts in training only: the exported network is the same for any rate."""
    inputs = keras.Input(shape=tuple(image_shape), name=IMAGE_KEY)
    x = keras.layers.Conv2D(64, 2, padding="same", activation="relu", dtype=precision)(inputs)
    x = keras.layers.MaxPooling2D(2, dtype=precision)(x)
    x = keras.layers.Dropout(dropout, dtype=precision)(x)
    x = keras.layers.Conv2D(32, 2, padding="same", activation="relu", dtype=precision)(x)
    x = keras.layers.MaxPooling2D(2, dtype=precision)(x)
    x = keras.layers.Dropout(dropout, dtype=precision)(x)
    x = keras.layers.Flatten(dtype=precision)(x)
    x = keras.layers.Dense(embedding_dim, activation=None, dtype=precision)(x)
    outputs = keras.layers.UnitNormalization(axis=1, name=EMBEDDING_KEY, dtype="float32")(x)
    return keras.Model(inputs, outputs, name="triplet_embedding")
