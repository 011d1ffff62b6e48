"""The serving SavedModel the Trainer exports and the Pusher ships.

`serving_default` takes serialized tf.Examples (the raw form ExampleGen writes) and returns
`embedding`, with the Transform graph inside.
"""
from __future__ import annotations

import keras
import tensorflow as tf
import tensorflow_transform as tft

from triplet_tfx.components.data.data_sources import IMAGE_KEY, LABEL_KEY
from triplet_tfx.components.training.network import EMBEDDING_KEY, build_model
from triplet_tfx.pipeline.config import PipelineConfig

SERVING_SIGNATURE = "serving_default"


def export_serving_model(model: keras.Model, tft_output: tft.TFTransformOutput, config: PipelineConfig,
                         path: str) -> None:
    """SavedModel: serialized raw tf.Example -> `embedding`, without optimizer state."""
    # A fresh copy of the network holds the weights and nothing else (no Adam slots).
    inference = build_model(config.data.image_shape, config.train.embedding_dim, network=config.train.network)
    inference.set_weights(model.get_weights())
    tft_layer = tft_output.transform_features_layer()
    raw_spec = {k: v for k, v in tft_output.raw_feature_spec().items() if k != LABEL_KEY}

    def serve(examples):
        transformed = tft_layer(tf.io.parse_example(examples, raw_spec))
        return {EMBEDDING_KEY: inference(transformed[IMAGE_KEY], training=False)}

    archive = keras.export.ExportArchive()
    archive.track(inference)
    archive.track(tft_layer)
    archive.add_endpoint(SERVING_SIGNATURE, serve,
                         input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    archive.write_out(path, verbose=False)
