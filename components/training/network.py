"""The embedding networks (`train.network`, `--network`).

`tutorial_cnn`: the TensorFlow Addons "TripletSemiHardLoss" tutorial's, unchanged: Conv2D(64, 2)
-> MaxPool -> Dropout(0.3) -> Conv2D(32, 2) -> MaxPool -> Dropout(0.3) -> Flatten -> Dense(256)
-> L2-normalise (the dropout rate and the embedding size are configurable). Each Conv2D -> MaxPool
pair is one layer that pools before the bias and ReLU: the same values, less memory traffic
(pooled_conv.py). Every network's dropout is Keras' with cheaper random masks (dropout16.py).

`strided`: cheaper per step on a CPU. The tutorial's first layer writes 64 channels at full
resolution (28x28x64 per image), so its step is dominated by memory traffic, not arithmetic;
here two 3x3 convolutions of stride 2 halve the resolution as they go (Conv2D(32, 3, /2) -> BN
-> ReLU -> Conv2D(64, 3, /2) -> BN -> ReLU -> Flatten -> Dropout -> Dense(256) -> L2-normalise),
with batch normalisation for fast, stable training at a high learning rate (Keras' batch
normalisation, its training step in one kernel: fused_batch_norm.py).

The backbones (`mobilenet_v3_small`, `mobilenet_v3_large`, `efficientnet_v2_b0`, `resnet50_v2`):
the input scaled to the backbone's range, the Keras Applications model without its top, average
pooled (backbones.py), Dropout, then the same projection head: Dense(embedding_dim) -> L2-normalise.
"""

from __future__ import annotations

import keras

from triplet_tfx.components.config import BACKBONES
from triplet_tfx.components.contract import EMBEDDING_KEY, IMAGE_KEY
from triplet_tfx.components.training import backbones
from triplet_tfx.components.training.dropout16 import Dropout16
from triplet_tfx.components.training.fused_batch_norm import FusedBatchNormalization
from triplet_tfx.components.training.pooled_conv import PooledConv2D


def _tutorial_cnn(x, precision: str, dropout: float):
    # Each Conv2D -> MaxPooling2D pair as one layer, pooled before the bias and ReLU: the same values.
    x = PooledConv2D(64, 2, padding="same", activation="relu", dtype=precision)(x)
    x = Dropout16(dropout, dtype=precision)(x)
    x = PooledConv2D(32, 2, padding="same", activation="relu", dtype=precision)(x)
    x = Dropout16(dropout, dtype=precision)(x)
    return keras.layers.Flatten(dtype=precision)(x)


def _strided(x, precision: str, dropout: float):
    for filters in (32, 64):
        # No bias: batch normalisation's offset replaces it.
        x = keras.layers.Conv2D(filters, 3, strides=2, padding="same", use_bias=False, dtype=precision)(x)
        x = FusedBatchNormalization(dtype=precision)(x)
        x = keras.layers.ReLU(dtype=precision)(x)
    x = keras.layers.Flatten(dtype=precision)(x)
    return Dropout16(dropout, dtype=precision)(x) if dropout else x


def _backbone(name: str):
    def features(x, precision: str, dropout: float, image_shape, backbone_weights: str):
        x = backbones.input_scaling(name, precision)(x)
        x = backbones.build_backbone(name, image_shape, backbone_weights, precision)(x)
        return Dropout16(dropout, dtype=precision)(x) if dropout else x

    return features


# Name -> the layers from the input image to the features that Dense(embedding_dim) projects.
NETWORKS = {"tutorial_cnn": _tutorial_cnn, "strided": _strided, **{name: _backbone(name) for name in BACKBONES}}
# The networks whose output for an image does not depend on the other images of its batch, in
# training too (no batch normalisation): a CPU may train them in parts of the batch (batch_parts.py).
PER_EXAMPLE_NETWORKS = ("tutorial_cnn",)


def build_model(
    image_shape,
    embedding_dim: int,
    precision: str = "float32",
    dropout: float = 0.3,
    network: str = "tutorial_cnn",
    backbone_weights: str = "none",
) -> keras.Model:
    """`precision` is a Keras dtype policy for the layers' arithmetic (weights stay float32);
    the embedding is always float32, so the loss and the metrics see full precision. `dropout`
    acts in training only: the exported network is the same for any rate. `backbone_weights`
    (backbones only): `none` (random: the export's copy, which receives the trained weights),
    `imagenet` or the path of a weights file of the backbone without its top."""
    inputs = keras.Input(shape=tuple(image_shape), name=IMAGE_KEY)
    if network in BACKBONES:
        x = NETWORKS[network](inputs, precision, dropout, image_shape, backbone_weights)
    else:
        x = NETWORKS[network](inputs, precision, dropout)
    x = keras.layers.Dense(embedding_dim, activation=None, dtype=precision)(x)
    outputs = keras.layers.UnitNormalization(axis=1, name=EMBEDDING_KEY, dtype="float32")(x)
    return keras.Model(inputs, outputs, name="triplet_embedding")
