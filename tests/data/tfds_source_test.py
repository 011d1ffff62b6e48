"""A real, prepared TFDS data set (built here, offline) read through the TFDS source."""

import json

import apache_beam as beam
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from apache_beam.testing.util import assert_that, equal_to
from data_sources_test import decode, first_pixel

from triplet_tfx.components.config import DataConfig
from triplet_tfx.components.data import data_sources, example_gen

NUM = {"train": 12, "test": 6}


class TinyDigits(tfds.core.GeneratorBasedBuilder):
    """8x8 grey images whose pixels all equal the example's index; label = index % 3."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {"image": tfds.features.Image(shape=(8, 8, 1)), "label": tfds.features.ClassLabel(num_classes=3)}
            ),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager):
        return {split: self._generate_examples(split) for split in NUM}

    def _generate_examples(self, split):
        for i in range(NUM[split]):
            yield i, {"image": np.full((8, 8, 1), i, np.uint8), "label": i % 3}


class TinyDigitsFour(TinyDigits):
    """TinyDigits with label = index % 4 (a class split of 2 + 2 classes)."""

    def _info(self):
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {"image": tfds.features.Image(shape=(8, 8, 1)), "label": tfds.features.ClassLabel(num_classes=4)}
            ),
            supervised_keys=("image", "label"),
        )

    def _generate_examples(self, split):
        for i in range(NUM[split]):
            yield i, {"image": np.full((8, 8, 1), i, np.uint8), "label": i % 4}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("tfds"))
    TinyDigits(data_dir=path).download_and_prepare()
    return path


def test_prepared_tfds_is_read_without_decoding(data_dir):
    records = list(data_sources.read_tfds("tiny_digits", "test", data_dir, limit=None))
    assert all(image.startswith(b"\x89PNG") for image, _, _, _ in records)  # as TFDS stores it
    assert sorted((int(tf.io.decode_png(image)[0, 0, 0]), label, name) for image, label, name, _ in records) == [
        (i, i % 3, str(i % 3)) for i in range(6)
    ]
    assert all(tfds_id.startswith("tiny_digits-test") for _, _, _, tfds_id in records)


def test_tfds_source_through_example_gen(data_dir):
    data = DataConfig(
        source="tfds:tiny_digits", tfds_data_dir=data_dir, image_height=8, image_width=8, num_classes=3, max_examples=10
    )
    data_sources.check_source(data)
    expected = [(i, i % 3) for i in range(NUM["train"])]
    with beam.Pipeline() as pipeline:
        examples = pipeline | example_gen._SourceToExamples(
            {example_gen.DATA_CONFIG_KEY: json.dumps(data.__dict__)}, "train"
        )
        count = examples | beam.combiners.Count.Globally()
        assert_that(count, equal_to([10]), label="limited")
        assert_that(
            examples
            | beam.Map(lambda e: (first_pixel(e), decode(e)[1]) in expected)
            | beam.combiners.Count.PerElement(),
            equal_to([(True, 10)]),
            label="genuine",
        )


def test_tfds_split_that_does_not_exist_is_named(data_dir):
    data = DataConfig(source="tfds:tiny_digits", tfds_data_dir=data_dir, tfds_eval_split="validation")
    with pytest.raises(data_sources.DataSourceError, match="has no split 'validation'"):
        data_sources.check_source(data)
