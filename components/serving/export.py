"""The embedding SavedModel the Trainer exports: the network and the Transform graph behind the three
embedding signatures of `signatures.py` (`serving_default`, `embed_images`, `embed_pixels`).

The evaluator scores this SavedModel; the ServingModelBuilder (`builder.py`) wraps these very
functions with the `search` index for the Pusher.
"""
from __future__ import annotations

import keras
import tensorflow as tf
import tensorflow_transform as tft

from triplet_tfx.components.data.data_sources import IMAGE_KEY, LABEL_KEY
from triplet_tfx.components.serving import signatures
from triplet_tfx.components.training.network import EMBEDDING_KEY, build_model
from triplet_tfx.pipeline.config import PipelineConfig

SERVING_SIGNATURE = "serving_default"


def image_features(image_bytes: tf.Tensor, spec) -> dict:
    """Raw pixel strings [B] -> the `image` feature as tf.io.parse_example gives it for `spec`."""
    if isinstance(spec, tf.io.FixedLenFeature):
        return {IMAGE_KEY: tf.reshape(image_bytes, [-1, *spec.shape])}
    rows = tf.shape(image_bytes, out_type=tf.int64)[0]
    indices = tf.stack([tf.range(rows), tf.zeros([rows], tf.int64)], axis=1)
    return {IMAGE_KEY: tf.SparseTensor(indices, image_bytes, [rows, 1])}


def export_serving_model(model: keras.Model, tft_output: tft.TFTransformOutput, config: PipelineConfig,
                         path: str) -> None:
    """SavedModel with the three embedding signatures, without optimizer state."""
    # A fresh copy of the network holds the weights and nothing else (no Adam slots).
    inference = build_model(config.data.image_shape, config.train.embedding_dim)
    inference.set_weights(model.get_weights())
    tft_layer = tft_output.transform_features_layer()
    raw_spec = {k: v for k, v in tft_output.raw_feature_spec().items() if k != LABEL_KEY}

    def embed_features(features):
        transformed = tft_layer(features)
        return {EMBEDDING_KEY: inference(transformed[IMAGE_KEY], training=False)}

    def serve(examples):
        return embed_features(tf.io.parse_example(examples, raw_spec))

    def embed_image_bytes(image_bytes):
        return embed_features(image_features(image_bytes, raw_spec[IMAGE_KEY]))

    archive = keras.export.ExportArchive()
    archive.track(inference)
    archive.track(tft_layer)
    archive.add_endpoint(SERVING_SIGNATURE, serve, input_signature=[signatures.examples_spec()])
    for name, (function, spec) in signatures.embedding_functions(embed_image_bytes,
                                                                 config.data.image_shape).items():
        archive.add_endpoint(name, function, input_signature=[spec])
    archive.write_out(path, verbose=False)
