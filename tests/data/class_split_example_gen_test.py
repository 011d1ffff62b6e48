"""ExampleGen under a class split, for every source: the train split holds only train classes,
the eval split only eval classes, and nothing else is dropped."""

import os

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import assert_that, equal_to
from data_sources_test import _write_png, _write_tfrecords, decode, first_pixel
from tfds_source_test import NUM, TinyDigitsFour
from tfx.components.example_gen import base_example_gen_executor
from tfx.proto import example_gen_pb2
from tfx.utils import proto_utils

from triplet_tfx.components.config import DEFAULT_BEAM_ARGS, DataConfig
from triplet_tfx.components.data import data_sources, example_gen, image_check

pytestmark = pytest.mark.slow


def generate(data: DataConfig, expected: dict) -> None:
    """Runs the ExampleGen executor's Beam graph; asserts each split's sorted (pixel, label) pairs."""
    component = example_gen.SourceExampleGen(data)
    exec_properties = {
        key: proto_utils.proto_to_json(value) if hasattr(value, "DESCRIPTOR") else value
        for key, value in component.exec_properties.items()
    }
    with beam.Pipeline(options=PipelineOptions(list(DEFAULT_BEAM_ARGS))) as pipeline:
        splits = example_gen.SourceExampleGenExecutor().GenerateExamplesByBeam(pipeline, exec_properties)
        assert sorted(splits) == ["eval", "train"]
        for name, pairs in expected.items():
            found = splits[name] | f"Decode{name}" >> beam.Map(lambda e: (first_pixel(e), decode(e)[1]))
            assert_that(found, equal_to(pairs), label=f"Check{name}")


def test_mnist_splits_keep_only_their_classes():
    data = DataConfig(max_examples=300, train_classes="0-4", eval_classes="5-9")
    mnist = data_sources.load_mnist()
    expected = {}
    for split, source_split, classes in (("train", "train", range(5)), ("eval", "test", range(5, 10))):
        images, labels = mnist[source_split]
        expected[split] = [(int(images[i].reshape(-1)[0]), int(labels[i])) for i in range(300) if labels[i] in classes]
        assert 0 < len(expected[split]) < 300
    generate(data, expected)


def test_tfds_splits_keep_only_their_classes(tmp_path):
    TinyDigitsFour(data_dir=str(tmp_path)).download_and_prepare()  # label = index % 4, pixels = index
    data = DataConfig(
        source="tfds:tiny_digits_four",
        tfds_data_dir=str(tmp_path),
        image_height=8,
        image_width=8,
        num_classes=4,
        train_classes="0-1",
        eval_classes="2-3",
    )
    generate(
        data,
        {
            "train": [(i, i % 4) for i in range(NUM["train"]) if i % 4 in (0, 1)],
            "eval": [(i, i % 4) for i in range(NUM["test"]) if i % 4 in (2, 3)],
        },
    )


def _tfrecord_source(root, eval_labels=(0, 1, 2, 3)):
    for split, labels in (("train", (0, 1, 2, 3)), ("eval", eval_labels)):
        examples = [
            data_sources.make_example(np.full((28, 28, 1), 10 * label + k, np.uint8), label)
            for label in labels
            for k in range(3)
        ]
        _write_tfrecords(os.path.join(root, split, "part.gz"), examples)


def test_tfrecord_splits_keep_only_their_classes(tmp_path):
    _tfrecord_source(str(tmp_path))
    data = DataConfig(source=f"tfrecord:{tmp_path}", num_classes=4, train_classes="0,2")
    generate(
        data,
        {
            "train": [(10 * label + k, label) for label in (0, 2) for k in range(3)],
            "eval": [(10 * label + k, label) for label in (1, 3) for k in range(3)],
        },
    )


def test_split_without_examples_of_its_classes_is_named(tmp_path):
    _tfrecord_source(str(tmp_path), eval_labels=(0, 1))
    data = DataConfig(source=f"tfrecord:{tmp_path}", num_classes=4, train_classes="0-1", eval_classes="2-3")
    with pytest.raises(Exception, match=r"split 'eval' has no examples of its classes 2-3 \(--eval-classes"):
        generate(data, {})


def test_image_folder_hash_split_then_class_split(tmp_path):
    for i in range(80):
        _write_png(str(tmp_path / f"class{i % 4}" / f"{i}.png"), np.full((28, 28), i, np.uint8))
    # Where TFX's hash split puts each image (its own partition function on the serialized example).
    output_config = proto_utils.json_to_proto(
        example_gen.SourceExampleGen(
            DataConfig(source=f"images:{tmp_path}", num_classes=4, eval_percent=40)
        ).exec_properties["output_config"],
        example_gen_pb2.Output(),
    )

    def split_of(i):
        with open(tmp_path / f"class{i % 4}" / f"{i}.png", "rb") as f:
            content = f.read()
        example = data_sources.make_encoded_example(
            content, i % 4, f"class{i % 4}", image_check.check_image(content, "x"), f"class{i % 4}/{i}.png"
        )
        return ("train", "eval")[
            base_example_gen_executor._PartitionFn(example, 2, [60, 100], output_config.split_config)
        ]

    where = {i: split_of(i) for i in range(80)}
    assert 0 < list(where.values()).count("eval") < 80
    # With one: the same hash split, then each split keeps its own classes (label = index % 4).
    generate(
        DataConfig(source=f"images:{tmp_path}", num_classes=4, eval_percent=40, eval_classes="2-3"),
        {
            split: [(i, i % 4) for i in range(80) if where[i] == split and (i % 4 >= 2) == (split == "eval")]
            for split in ("train", "eval")
        },
    )
