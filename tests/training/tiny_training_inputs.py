"""Tiny Trainer inputs for the training tests: a real Transform output (the project's
preprocessing_fn through tf.Transform on Beam's FnApiRunner), raw examples written as ExampleGen
writes them (gzipped tf.Examples of uint8 pixel bytes), and the FnArgs fields run_fn and the worker read.

Images are 8x8x1, 4 classes, each class a bright 3x3 square at its own place plus noise.
"""

from __future__ import annotations

import json
import os
import types

import numpy as np
import tensorflow as tf

from triplet_tfx.components.config import DataConfig, PipelineConfig, TrainConfig
from triplet_tfx.components.data.data_sources import IMAGE_KEY, LABEL_KEY, make_example

IMAGE_SHAPE = (8, 8, 1)
CLASSES = 4
DATA = DataConfig(image_height=8, image_width=8, channels=1, num_classes=CLASSES)


def images_and_labels(n: int, seed: int):
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % CLASSES
    rng.shuffle(labels)
    images = rng.integers(0, 60, (n,) + IMAGE_SHAPE).astype(np.uint8)
    for i, label in enumerate(labels):
        r, c = divmod(int(label), 2)
        images[i, 4 * r : 4 * r + 3, 4 * c : 4 * c + 3, 0] = 250
    return images, labels


def write_transform_output(folder: str) -> str:
    import apache_beam as beam
    import tensorflow_transform.beam as tft_beam
    from apache_beam.runners.portability.fn_api_runner import fn_runner
    from tensorflow_transform.tf_metadata import dataset_metadata, metadata_io, schema_utils

    from triplet_tfx.components.data.preprocessing import preprocessing_fn

    images, labels = images_and_labels(8, seed=99)
    raw = [{IMAGE_KEY: img.tobytes(), LABEL_KEY: int(lab)} for img, lab in zip(images, labels)]
    metadata = dataset_metadata.DatasetMetadata(
        schema_utils.schema_from_feature_spec(
            {IMAGE_KEY: tf.io.FixedLenFeature([], tf.string), LABEL_KEY: tf.io.FixedLenFeature([], tf.int64)}
        )
    )
    custom_config = {"data": PipelineConfig(data=DATA).to_dict()["data"]}
    output = os.path.join(folder, "transform_graph")
    with beam.Pipeline(runner=fn_runner.FnApiRunner()) as pipeline:
        with tft_beam.Context(temp_dir=os.path.join(folder, "tft_tmp"), force_tf_compat_v1=False):
            transform_fn = (pipeline | beam.Create(raw), metadata) | tft_beam.AnalyzeDataset(
                lambda inputs: preprocessing_fn(inputs, custom_config)
            )
            _ = transform_fn | tft_beam.WriteTransformFn(output)
    metadata_io.write_metadata(metadata, os.path.join(output, "metadata"))  # the raw schema, as TFX's Transform
    return output


def write_examples(path: str, n: int, seed: int) -> None:
    images, labels = images_and_labels(n, seed)
    with tf.io.TFRecordWriter(path, options="GZIP") as writer:
        for image, label in zip(images, labels):
            writer.write(make_example(image, label))


def make_inputs(folder: str, n_train: int = 256, n_eval: int = 64) -> str:
    """Writes the transform graph and the examples below `folder`; returns the folder."""
    write_transform_output(folder)
    os.makedirs(os.path.join(folder, "examples"))
    write_examples(os.path.join(folder, "examples", "train.gz"), n_train, seed=1)
    write_examples(os.path.join(folder, "examples", "eval.gz"), n_eval, seed=2)
    return folder


def fn_args(inputs: str, root: str, execution: int, **train) -> types.SimpleNamespace:
    """The FnArgs fields of a Trainer execution whose outputs lie as TFX lays them out:
    `<root>/Trainer/{model,model_run}/<execution>`."""
    config = PipelineConfig(data=DATA, train=TrainConfig(**train)).validate().to_dict()
    return types.SimpleNamespace(
        train_files=[os.path.join(inputs, "examples", "train.gz")],
        eval_files=[os.path.join(inputs, "examples", "eval.gz")],
        transform_output=os.path.join(inputs, "transform_graph"),
        serving_model_dir=os.path.join(root, "Trainer", "model", str(execution), "Format-Serving"),
        model_run_dir=os.path.join(root, "Trainer", "model_run", str(execution)),
        custom_config=json.loads(
            json.dumps({"data": config["data"], "train": config["train"], "code_fingerprint": "test"})
        ),
    )
