"""Running SourceExampleGen in tests: its executor's Do (gzipped TFRecords in a folder, the
artifact's properties) or its Beam graph alone."""

import glob
import os

import apache_beam as beam
import tensorflow as tf
from apache_beam.options.pipeline_options import PipelineOptions
from tfx.dsl.components.base import base_beam_executor
from tfx.types import standard_artifacts
from tfx.utils import proto_utils

from triplet_tfx.components.config import DEFAULT_BEAM_ARGS, DataConfig
from triplet_tfx.components.data import example_gen


def exec_properties(data: DataConfig) -> dict:
    component = example_gen.SourceExampleGen(data)
    return {
        key: proto_utils.proto_to_json(value) if hasattr(value, "DESCRIPTOR") else value
        for key, value in component.exec_properties.items()
    }


def run_example_gen(data: DataConfig, output: str) -> standard_artifacts.Examples:
    """The executor's Do into `output`; returns the Examples artifact."""
    examples = standard_artifacts.Examples()
    examples.uri = output
    os.makedirs(output, exist_ok=True)
    executor = example_gen.SourceExampleGenExecutor(
        base_beam_executor.BaseBeamExecutor.Context(beam_pipeline_args=list(DEFAULT_BEAM_ARGS), tmp_dir=output)
    )
    executor.Do({}, {"examples": [examples]}, exec_properties(data))
    return examples


def read_split(examples_uri: str, split: str) -> list:
    """tf.train.Examples of one split written by run_example_gen."""
    files = sorted(glob.glob(os.path.join(examples_uri, f"Split-{split}", "*")))
    return [
        tf.train.Example.FromString(record.numpy())
        for record in tf.data.TFRecordDataset(files, compression_type="GZIP")
    ]


def generate(data: DataConfig, output: str, split_pattern: str = "all") -> list:
    """The serialized examples of one source split (the Beam transform alone, no TFX split), in order."""
    import json

    prefix = os.path.join(output, f"generated-{split_pattern}")
    with beam.Pipeline(options=PipelineOptions(list(DEFAULT_BEAM_ARGS))) as pipeline:
        _ = (
            pipeline
            | example_gen._SourceToExamples({example_gen.DATA_CONFIG_KEY: json.dumps(data.__dict__)}, split_pattern)
            | beam.io.WriteToTFRecord(prefix)
        )
    return sorted(record.numpy() for record in tf.data.TFRecordDataset(sorted(glob.glob(prefix + "*"))))


def features(example: tf.train.Example) -> dict:
    """{name: the one value} of an example's features."""
    values = {}
    for name, feature in example.features.feature.items():
        kind = feature.WhichOneof("kind")
        values[name] = getattr(feature, kind).value[0]
    return values
