"""A tiny trained embedding SavedModel, built in-process for the serving tests: the project's own
preprocessing_fn through tf.Transform (Beam's in-process FnApiRunner), the project's network
trained a few steps with the project's loss on 600 MNIST images, and the Trainer's export."""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import tempfile

import numpy as np
import tensorflow as tf

from triplet_tfx.components.config import DataConfig, PipelineConfig, TrainConfig
from triplet_tfx.components.data import data_sources, preprocessing
from triplet_tfx.components.training import losses
from triplet_tfx.components.training.export import export_serving_model
from triplet_tfx.components.training.network import build_model

NUM_TRAIN, NUM_EVAL = 600, 200
CONFIG = PipelineConfig(data=DataConfig(), train=TrainConfig(embedding_dim=32))


def mnist_examples():
    """(train images, train labels, eval images, eval labels): the first MNIST images of each split."""
    mnist = data_sources.load_mnist()
    (train_x, train_y), (eval_x, eval_y) = mnist["train"], mnist["test"]
    return train_x[:NUM_TRAIN], train_y[:NUM_TRAIN], eval_x[:NUM_EVAL], eval_y[:NUM_EVAL]


def write_transform_graph(folder: str, examples: list) -> str:
    """Transform's output folder for the project's preprocessing_fn, with the schema SchemaGen infers
    (FixedLen [1] features)."""
    import apache_beam as beam
    import tensorflow_transform as tft
    import tensorflow_transform.beam as tft_beam
    from apache_beam.runners.portability.fn_api_runner.fn_runner import FnApiRunner
    from tensorflow_transform.tf_metadata import dataset_metadata, metadata_io, schema_utils

    spec = {
        data_sources.IMAGE_KEY: tf.io.FixedLenFeature([1], tf.string),
        data_sources.LABEL_KEY: tf.io.FixedLenFeature([1], tf.int64),
    }
    metadata = dataset_metadata.DatasetMetadata(schema_utils.schema_from_feature_spec(spec))
    fn = functools.partial(preprocessing.preprocessing_fn, custom_config={"data": CONFIG.to_dict()["data"]})
    records = [{k: v.numpy() for k, v in tf.io.parse_single_example(e, spec).items()} for e in examples]
    output = os.path.join(folder, "transform")
    with beam.Pipeline(runner=FnApiRunner()) as pipeline, tft_beam.Context(temp_dir=os.path.join(folder, "tmp")):
        transform_fn = (pipeline | beam.Create(records), metadata) | tft_beam.AnalyzeDataset(fn)
        _ = transform_fn | tft_beam.WriteTransformFn(output)
    metadata_io.write_metadata(metadata, os.path.join(output, tft.TFTransformOutput.RAW_METADATA_DIR))
    return output


@functools.lru_cache(maxsize=1)
def trained_export() -> str:
    """Path of the Trainer-style export (built once per test session)."""
    import keras
    import tensorflow_transform as tft

    folder = tempfile.mkdtemp(prefix="tiny_serving_model_")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    train_x, train_y, _, _ = mnist_examples()
    tft_output = tft.TFTransformOutput(
        write_transform_graph(folder, [data_sources.make_example(x, y) for x, y in zip(train_x[:8], train_y[:8])])
    )
    keras.utils.set_random_seed(0)
    model = build_model(CONFIG.data.image_shape, CONFIG.train.embedding_dim)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss=losses.TripletSemiHardLoss(margin=0.5))
    model.fit(train_x.astype(np.float32) / 255.0, train_y, batch_size=60, epochs=4, verbose=0)
    path = os.path.join(folder, "model")
    export_serving_model(model, tft_output, CONFIG, path)
    return path
