"""SourceExampleGen: one ExampleGen for every data source of the configuration.

A thin TFX wrapper around `data_sources`: TFX's own ExampleGen machinery (splits, gzipped
TFRecord output, span/version properties) with a Beam PTransform that reads the source.
Split patterns name the source's own splits (`train`/`test` for MNIST, TFDS split names,
`train`/`eval` sub-folders of a TFRecord folder); `images:` sources are split by hash.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any, Dict, Iterator, Optional, Tuple

import apache_beam as beam
import numpy as np
import tensorflow as tf
from tfx.components.example_gen import base_example_gen_executor, driver
from tfx.dsl.components.base import base_beam_component, executor_spec
from tfx import types
from tfx.proto import example_gen_pb2
from tfx.types import component_spec, standard_artifacts, standard_component_specs

from triplet_tfx.components.data import class_split, data_sources
from triplet_tfx.pipeline.config import DataConfig

DATA_CONFIG_KEY = "data_config"
DATA_FINGERPRINT_KEY = "data_fingerprint"
_CHUNK = 2000  # examples per Beam element when slicing in-memory arrays
logger = logging.getLogger(__name__)


def split_patterns(data: DataConfig) -> Dict[str, str]:
    """{output split: source split pattern}; empty for sources split by hash."""
    return {
        "mnist": {"train": "train", "eval": "test"},
        "tfds": {"train": data.tfds_train_split, "eval": data.tfds_eval_split},
        "tfrecord": {"train": "train", "eval": "eval"},
        "images": {},
    }[data.source_kind]


def _checked(image: np.ndarray, label: int, data: DataConfig, where: str) -> bytes:
    data_sources.check_example(image, label, data.image_shape, data.num_classes, where)
    return data_sources.make_example(image, label)


def _mnist_chunk(bounds: Tuple[int, int], split: str, data: DataConfig) -> Iterator[bytes]:
    images, labels = data_sources.load_mnist()[split]
    for i in range(*bounds):
        yield _checked(images[i], labels[i], data, f"mnist {split} example {i}")


def _tfds_split(split: str, data: DataConfig) -> Iterator[bytes]:
    name = data.source_path
    records = data_sources.read_tfds(name, split, data.tfds_data_dir, data.max_examples_per_split)
    for i, (image, label) in enumerate(records):
        yield _checked(image, label, data, f"tfds:{name} {split} example {i}")


def _image_file(path_label: Tuple[str, int], data: DataConfig) -> Tuple[bytes, bool]:
    """(the checked tf.Example, whether its channels were converted by --convert-channels)."""
    path, label = path_label
    image, converted = data_sources.read_image(path, data.channels, data.convert_channels)
    return _checked(image, label, data, path), converted


def _log_conversions(count: int, data: DataConfig) -> None:
    if count:
        logger.info("%s: converted the channels of %d image(s) to %d by --convert-channels %s",
                    data.source_path, count, data.channels, data.convert_channels)


def _tfrecord_file(path: str, data: DataConfig) -> Iterator[bytes]:
    """Each record of one file, checked: an unreadable file or bad record names the file."""
    with tf.io.gfile.GFile(path, "rb") as f:
        compression = "GZIP" if f.read(2) == b"\x1f\x8b" else ""
    feature_spec = {
        data_sources.IMAGE_KEY: tf.io.FixedLenFeature([], tf.string),
        data_sources.LABEL_KEY: tf.io.FixedLenFeature([], tf.int64),
    }
    expected = int(np.prod(data.image_shape))
    index = -1
    try:
        for index, record in enumerate(tf.data.TFRecordDataset(path, compression_type=compression)):
            try:
                parsed = tf.io.parse_single_example(record, feature_spec)
            except tf.errors.InvalidArgumentError as err:
                raise data_sources.DataSourceError(
                    f"{path} record {index}: not a tf.Example with a bytes '{data_sources.IMAGE_KEY}' "
                    f"and an int64 '{data_sources.LABEL_KEY}' ({err.message.splitlines()[0]})") from None
            pixels = parsed[data_sources.IMAGE_KEY].numpy()
            if len(pixels) != expected:
                raise data_sources.DataSourceError(
                    f"{path} record {index}: feature '{data_sources.IMAGE_KEY}' has {len(pixels)} bytes, "
                    f"expected {expected} raw uint8 pixels of shape {data.image_shape}")
            image = np.frombuffer(pixels, np.uint8).reshape(data.image_shape)
            yield _checked(image, int(parsed[data_sources.LABEL_KEY]), data, f"{path} record {index}")
    except tf.errors.OpError as err:  # DataLossError and friends: corrupt or truncated file
        where = "at the first record" if index < 0 else f"after record {index}"
        raise data_sources.DataSourceError(
            f"{path}: unreadable TFRecord {where} ({type(err).__name__}: {err.message})") from None


def _fail_if_empty(count: int, where: str) -> None:
    if count == 0:
        raise data_sources.DataSourceError(f"{where}: no examples (empty split)")


@beam.ptransform_fn
@beam.typehints.with_input_types(beam.Pipeline)
@beam.typehints.with_output_types(bytes)
def _SourceToExamples(pipeline: beam.Pipeline, exec_properties: Dict[str, Any],
                      split_pattern: str) -> beam.pvalue.PCollection:
    data = DataConfig(**json.loads(exec_properties[DATA_CONFIG_KEY]))
    limit = data.max_examples_per_split
    kind = data.source_kind
    if kind == "mnist":
        count = len(data_sources.load_mnist()[split_pattern][1])
        count = min(count, limit) if limit else count
        chunks = [(s, min(s + _CHUNK, count)) for s in range(0, count, _CHUNK)]
        examples = (pipeline | "Chunks" >> beam.Create(chunks)
                    | "Read" >> beam.FlatMap(_mnist_chunk, split_pattern, data))
        where = f"mnist split {split_pattern!r}"
    elif kind == "tfds":
        examples = (pipeline | "Split" >> beam.Create([split_pattern])
                    | "Read" >> beam.FlatMap(_tfds_split, data) | "Spread" >> beam.Reshuffle())
        where = f"{data.source} split {split_pattern!r}"
    elif kind == "tfrecord":
        files = data_sources.tfrecord_files(data.source_path, split_pattern)
        examples = (pipeline | "Files" >> beam.Create(files)
                    | "Read" >> beam.FlatMap(_tfrecord_file, data))
        if limit:
            examples = examples | "Limit" >> beam.combiners.Sample.FixedSizeGlobally(limit) | beam.FlatMap(lambda x: x)
        where = os.path.join(data.source_path, split_pattern)
    else:  # images, split afterwards by hash
        files = data_sources.image_dir_files(data.source_path, data.num_classes)[:limit]  # [:None] keeps all
        read = pipeline | "Files" >> beam.Create(files) | "Read" >> beam.Map(_image_file, data)
        examples = read | "Examples" >> beam.Map(lambda example_converted: example_converted[0])
        _ = (read | "Converted" >> beam.Map(lambda example_converted: int(example_converted[1]))
             | "CountConverted" >> beam.CombineGlobally(sum) | "LogConverted" >> beam.Map(_log_conversions, data))
        where = data.source_path
    _ = (examples | "Count" >> beam.combiners.Count.Globally()
         | "FailIfEmpty" >> beam.Map(_fail_if_empty, where))
    return examples


def example_label(serialized: bytes) -> int:
    return tf.train.Example.FromString(serialized).features.feature[data_sources.LABEL_KEY].int64_list.value[0]


def _fail_if_no_class_left(count: int, split: str, classes: Tuple[int, ...]) -> None:
    if count == 0:
        raise data_sources.DataSourceError(
            f"split {split!r} has no examples of its classes {class_split.format_classes(classes)} "
            f"(--{split}-classes / --class-split)")


class SourceExampleGenExecutor(base_example_gen_executor.BaseExampleGenExecutor):

    def GetInputSourceToExamplePTransform(self) -> beam.PTransform:
        return _SourceToExamples

    def GenerateExamplesByBeam(self, pipeline: beam.Pipeline,
                               exec_properties: Dict[str, Any]) -> Dict[str, beam.pvalue.PCollection]:
        """TFX's splits, then the class split: each output split keeps only its own classes (after
        the hash split of `images:` sources, so every source is filtered the same way)."""
        splits = super().GenerateExamplesByBeam(pipeline, exec_properties)
        classes = DataConfig(**json.loads(exec_properties[DATA_CONFIG_KEY])).classes_by_split
        if classes is None:
            return splits
        for split, keep in classes.items():
            keep_set = frozenset(keep)
            splits[split] = splits[split] | f"KeepClasses[{split}]" >> beam.Filter(
                lambda example, keep_set=keep_set: example_label(example) in keep_set)
            _ = (splits[split] | f"CountKept[{split}]" >> beam.combiners.Count.Globally()
                 | f"FailIfNoClassLeft[{split}]" >> beam.Map(_fail_if_no_class_left, split, keep))
        return splits


class SourceExampleGenSpec(component_spec.ComponentSpec):
    PARAMETERS = {
        **standard_component_specs.QueryBasedExampleGenSpec.PARAMETERS,
        DATA_CONFIG_KEY: component_spec.ExecutionParameter(type=str),  # DataConfig as JSON
        # Sizes and times of the source files, so that TFX's cache notices changed data.
        DATA_FINGERPRINT_KEY: component_spec.ExecutionParameter(type=str),
    }
    INPUTS = {}
    OUTPUTS = standard_component_specs.QueryBasedExampleGenSpec.OUTPUTS


class SourceExampleGen(base_beam_component.BaseBeamComponent):
    """ExampleGen for `mnist`, `tfds:`, `tfrecord:` and `images:` sources."""

    SPEC_CLASS = SourceExampleGenSpec
    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(SourceExampleGenExecutor)
    DRIVER_CLASS = driver.QueryBasedDriver

    def __init__(self, data: DataConfig, data_fingerprint: Optional[str] = None):
        patterns = split_patterns(data)
        if patterns:
            input_config = example_gen_pb2.Input(splits=[
                example_gen_pb2.Input.Split(name=name, pattern=pattern) for name, pattern in patterns.items()])
            output_config = example_gen_pb2.Output()
        else:
            input_config = example_gen_pb2.Input(splits=[example_gen_pb2.Input.Split(name="all", pattern="*")])
            output_config = example_gen_pb2.Output(split_config=example_gen_pb2.SplitConfig(splits=[
                example_gen_pb2.SplitConfig.Split(name="train", hash_buckets=100 - data.eval_percent),
                example_gen_pb2.SplitConfig.Split(name="eval", hash_buckets=data.eval_percent),
            ]))
        spec = SourceExampleGenSpec(
            input_config=input_config,
            output_config=output_config,
            output_data_format=example_gen_pb2.FORMAT_TF_EXAMPLE,
            output_file_format=example_gen_pb2.FORMAT_TFRECORDS_GZIP,
            data_config=json.dumps(dataclasses.asdict(data), sort_keys=True),
            data_fingerprint=data_fingerprint or "",
            examples=types.Channel(type=standard_artifacts.Examples))
        super().__init__(spec=spec)
