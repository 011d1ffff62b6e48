"""The embedding SavedModel the Trainer exports: the network and the Transform graph behind the three
embedding signatures of `signatures.py` (`serving_default`, `embed_images`, `embed_pixels`).

The evaluator scores this SavedModel; the ServingModelBuilder (`builder.py`) wraps these very
functions with the `search` index for the Pusher. The SavedModel also holds the class names by class
id, one a line, in assets/`contract.CLASS_NAMES_ASSET` (`class_names`; `signatures.read_class_names` reads them): the
Transform vocabulary of `class_name` in `contract.class_order`, or the ids as text "0".."N-1" for
sources without class names.
"""

from __future__ import annotations

from typing import List

import keras
import tensorflow as tf
import tensorflow_transform as tft

from triplet_tfx.components import contract, signatures
from triplet_tfx.components.config import PipelineConfig
from triplet_tfx.components.contract import EMBEDDING_KEY, IMAGE_KEY, SERVING_SIGNATURE
from triplet_tfx.components.training.network import build_model


def image_features(image_bytes: tf.Tensor, spec) -> dict:
    """Raw pixel strings [B] -> the `image` feature as tf.io.parse_example gives it for `spec`."""
    if isinstance(spec, tf.io.FixedLenFeature):
        return {IMAGE_KEY: tf.reshape(image_bytes, [-1, *spec.shape])}
    rows = tf.shape(image_bytes, out_type=tf.int64)[0]
    indices = tf.stack([tf.range(rows), tf.zeros([rows], tf.int64)], axis=1)
    return {IMAGE_KEY: tf.SparseTensor(indices, image_bytes, [rows, 1])}


def class_names(tft_output: tft.TFTransformOutput, num_classes: int) -> List[str]:
    """The class names by class id: `contract.class_order` of Transform's class-name vocabulary
    (ids it lacks, up to num_classes, are named by their id), or the ids as text."""
    try:
        vocabulary = tft_output.vocabulary_by_name(contract.CLASS_NAMES_VOCABULARY)
    except (ValueError, OSError, tf.errors.NotFoundError):
        vocabulary = []
    names = contract.class_order(v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in vocabulary)
    return names + [str(i) for i in range(len(names), num_classes)]


def export_serving_model(
    model: keras.Model, tft_output: tft.TFTransformOutput, config: PipelineConfig, path: str
) -> None:
    """SavedModel with the three embedding signatures, without optimizer state."""
    # A fresh copy of the network holds the weights and nothing else (no Adam slots).
    inference = build_model(config.data.image_shape, config.train.embedding_dim, network=config.train.network)
    inference.set_weights(model.get_weights())
    tft_layer = tft_output.transform_features_layer()
    # The image alone: the image output of the Transform graph depends on nothing else, and clients
    # of serving_default need not send the label, class name or image size features.
    raw_spec = {IMAGE_KEY: tft_output.raw_feature_spec()[IMAGE_KEY]}

    def embed_features(features):
        transformed = tft_layer(features)
        return {EMBEDDING_KEY: inference(transformed[IMAGE_KEY], training=False)}

    def serve(examples):
        return embed_features(tf.io.parse_example(signatures.check_examples(examples, raw_spec), raw_spec))

    def embed_image_bytes(image_bytes):
        return embed_features(image_features(image_bytes, raw_spec[IMAGE_KEY]))

    archive = keras.export.ExportArchive()
    archive.track(inference)
    archive.track(tft_layer)
    archive.add_endpoint(SERVING_SIGNATURE, serve, input_signature=[signatures.examples_spec()])
    for name, (function, spec) in signatures.embedding_functions(
        embed_image_bytes, config.data.image_shape, config.data.resize, encoded=config.data.encoded_images
    ).items():
        archive.add_endpoint(name, function, input_signature=[spec])
    archive.write_out(path, verbose=False)
    signatures.write_class_names(path, class_names(tft_output, config.data.num_classes))
