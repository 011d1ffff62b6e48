"""Data sources: MNIST conversion, tf.Example encoding, image folders, TFRecords, TFDS, bad input."""

import gzip
import os
import pickle

import apache_beam as beam
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from triplet_tfx.components.config import DataConfig
from triplet_tfx.components.data import data_sources, example_gen, image_check, image_items


@pytest.fixture(scope="module")
def raw_pickle():
    with gzip.open(data_sources.mnist_pickle_path(), "rb") as f:
        return pickle.load(f, encoding="latin1")


@pytest.fixture(scope="module")
def mnist():
    return data_sources.load_mnist()


def test_mnist_has_the_original_split_sizes(mnist):
    assert mnist["train"][0].shape == (60000, 28, 28, 1)
    assert mnist["test"][0].shape == (10000, 28, 28, 1)
    assert mnist["train"][0].dtype == np.uint8
    # Well-known facts of MNIST: the first training digit is a 5, the first test digit a 7.
    assert mnist["train"][1][0] == 5 and mnist["test"][1][0] == 7
    assert np.bincount(mnist["test"][1]).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.mark.parametrize(
    "split,index",
    [("train", 0), ("train", 49999), ("train", 50000), ("train", 59999), ("test", 0), ("test", 1234), ("test", 9999)],
)
def test_mnist_pixels_are_exactly_the_uint8_originals(raw_pickle, mnist, split, index):
    train, valid, test = raw_pickle
    if split == "train":
        pixels, label = (
            (train[0][index], train[1][index]) if index < 50000 else (valid[0][index - 50000], valid[1][index - 50000])
        )
    else:
        pixels, label = test[0][index], test[1][index]
    expected = (pixels.astype(np.float64) * 256).astype(np.int64)  # floats are uint8/256 exactly
    assert np.array_equal(pixels.astype(np.float64) * 256, expected)  # the premise: exact
    image, got_label = mnist[split][0][index], mnist[split][1][index]
    assert np.array_equal(image.reshape(-1).astype(np.int64), expected)
    assert got_label == label


def decode(serialized: bytes):
    """(pixel bytes, label) of a serialized tf.Example (bytes differ with map order, content not)."""
    example = tf.train.Example.FromString(serialized)
    return (
        example.features.feature["image"].bytes_list.value[0],
        example.features.feature["label"].int64_list.value[0],
    )


def test_make_example_round_trips():
    image = np.arange(2 * 3 * 1, dtype=np.uint8).reshape(2, 3, 1)
    assert decode(data_sources.make_example(image, 7)) == (bytes([0, 1, 2, 3, 4, 5]), 7)


def test_make_example_bytes_are_those_of_the_example_built_whole():
    """The hash split of `images:` sources hashes these bytes: they must not change with how the
    message is filled."""
    rng = np.random.default_rng(0)
    for label in (0, 9, 123456789):
        image = rng.integers(0, 256, (28, 28, 1), dtype=np.uint8)
        whole = tf.train.Example(
            features=tf.train.Features(
                feature={
                    "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image.tobytes()])),
                    "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
                }
            )
        )
        assert data_sources.make_example(image, label) == whole.SerializeToString(deterministic=True)


def test_a_batch_is_encoded_to_the_examples_of_each_image_alone():
    rng = np.random.default_rng(1)
    for shape in ((28, 28, 1), (5, 3, 3)):
        images = rng.integers(0, 256, (40,) + shape, dtype=np.uint8)
        labels = rng.integers(0, 123456789, 40)
        batch = data_sources.make_examples(images, labels)
        assert [tf.train.Example.FromString(e) for e in batch] == [
            tf.train.Example.FromString(data_sources.make_example(image, label)) for image, label in zip(images, labels)
        ]
    assert data_sources.make_examples(images[:0], labels[:0]) == []


def test_an_mnist_chunk_is_checked_before_it_is_encoded(mnist):
    data = DataConfig(source="mnist")
    chunk = example_gen._mnist_chunk((100, 105), "test", data)
    assert [decode(e)[1] for e in chunk] == mnist["test"][1][100:105].tolist()
    assert decode(chunk[2])[0] == mnist["test"][0][102].tobytes()
    fewer = DataConfig(source="mnist", num_classes=3)
    first = 100 + int(np.flatnonzero(mnist["test"][1][100:200] >= 3)[0])
    label = mnist["test"][1][first]
    with pytest.raises(data_sources.DataSourceError, match=rf"mnist test example {first}: label {label} out of range"):
        example_gen._mnist_chunk((100, 200), "test", fewer)
    smaller = DataConfig(source="mnist", image_height=14, image_width=14)
    with pytest.raises(data_sources.DataSourceError, match=r"mnist train example 7: image has shape \(28, 28, 1\)"):
        example_gen._mnist_chunk((7, 20), "train", smaller)


def first_pixel(serialized: bytes) -> int:
    """The first pixel value of an example's image, raw or encoded (decoded by TensorFlow)."""
    image = tf.train.Example.FromString(serialized).features.feature["image"].bytes_list.value[0]
    if image_check.sniff_format(image):
        return int(tf.io.decode_image(image, expand_animations=False).numpy().reshape(-1)[0])
    return image[0]


def test_check_example_names_the_problem():
    with pytest.raises(data_sources.DataSourceError, match=r"x.png: image has shape \(27, 28, 1\)"):
        data_sources.check_example(np.zeros((27, 28, 1), np.uint8), 1, (28, 28, 1), 10, "x.png")
    with pytest.raises(data_sources.DataSourceError, match=r"rec 3: label 10 out of range \[0, 10\)"):
        data_sources.check_example(np.zeros((28, 28, 1), np.uint8), 10, (28, 28, 1), 10, "rec 3")


def _write_png(path, array):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path)


def test_image_folder_reads_classes_in_sorted_order(tmp_path):
    _write_png(str(tmp_path / "b" / "1.png"), np.full((28, 28), 200, np.uint8))
    _write_png(str(tmp_path / "a" / "1.png"), np.full((28, 28), 100, np.uint8))
    files = data_sources.image_dir_files(str(tmp_path))
    assert [(os.path.basename(os.path.dirname(p)), label) for p, label in files] == [("a", 0), ("b", 1)]


def test_images_of_any_size_are_written_as_read(tmp_path):
    path = str(tmp_path / "a" / "small.png")
    _write_png(path, np.zeros((20, 33), np.uint8))
    examples = list(
        example_gen._image_item(
            image_items.ImageItem(path, "a", "a/small.png", path), {"a": 0}, DataConfig(source=f"images:{tmp_path}")
        )
    )
    feature = tf.train.Example.FromString(examples[0]).features.feature
    with open(path, "rb") as f:
        assert feature["image"].bytes_list.value[0] == f.read()
    assert (feature["image_width"].int64_list.value[0], feature["image_height"].int64_list.value[0]) == (33, 20)


def test_missing_and_empty_folders_are_named(tmp_path):
    with pytest.raises(data_sources.DataSourceError, match="nowhere: image folder not found"):
        data_sources.check_source(DataConfig(source=f"images:{tmp_path / 'nowhere'}"))
    (tmp_path / "train").mkdir()
    with pytest.raises(data_sources.DataSourceError, match=r"train: no TFRecord files"):
        data_sources.check_source(DataConfig(source=f"tfrecord:{tmp_path}"))
    (tmp_path / "train" / "part.gz").write_bytes(b"")
    with pytest.raises(data_sources.DataSourceError, match=r"eval: missing"):
        data_sources.check_source(DataConfig(source=f"tfrecord:{tmp_path}"))


def _write_tfrecords(path, examples, gzip_it=True):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path, options="GZIP" if gzip_it else None) as writer:
        for example in examples:
            writer.write(example)


def test_tfrecord_file_is_read_and_checked(tmp_path):
    examples = [data_sources.make_example(np.full((28, 28, 1), i, np.uint8), i) for i in range(3)]
    path = str(tmp_path / "train" / "part.gz")
    _write_tfrecords(path, examples)
    assert [decode(e) for e in example_gen._tfrecord_file(path, DataConfig())] == [decode(e) for e in examples]


def test_corrupt_tfrecord_names_the_file(tmp_path):
    path = str(tmp_path / "train" / "broken.tfrecord")
    _write_tfrecords(path, [data_sources.make_example(np.zeros((28, 28, 1), np.uint8), 1)], gzip_it=False)
    with open(path, "r+b") as f:  # flip bytes inside the record: its CRC no longer matches
        f.seek(20)
        f.write(b"\xff\xff\xff\xff")
    with pytest.raises(data_sources.DataSourceError, match="broken.tfrecord: unreadable TFRecord"):
        list(example_gen._tfrecord_file(path, DataConfig()))


def test_tfrecord_with_wrong_image_size_names_record_and_feature(tmp_path):
    path = str(tmp_path / "train" / "part.gz")
    _write_tfrecords(
        path,
        [
            data_sources.make_example(np.zeros((28, 28, 1), np.uint8), 1),
            data_sources.make_example(np.zeros((14, 14, 1), np.uint8), 1),
        ],
    )
    with pytest.raises(data_sources.DataSourceError, match=r"part.gz record 1: feature 'image' has 196 bytes"):
        list(example_gen._tfrecord_file(path, DataConfig()))


def test_empty_split_fails_the_example_gen(tmp_path):
    _write_tfrecords(str(tmp_path / "train" / "part.gz"), [])
    data = DataConfig(source=f"tfrecord:{tmp_path}")
    with pytest.raises(Exception, match="no examples \\(empty split\\)"):
        with beam.Pipeline() as pipeline:
            _ = pipeline | example_gen._SourceToExamples(
                {example_gen.DATA_CONFIG_KEY: __import__("json").dumps(data.__dict__)}, "train"
            )


def test_unknown_tfds_name_is_named():
    with pytest.raises(data_sources.DataSourceError, match="unknown TFDS data set 'no_such_dataset_xyz'"):
        data_sources.tfds_builder("no_such_dataset_xyz", None)


def test_unprepared_tfds_is_reported(tmp_path):
    with pytest.raises(data_sources.DataSourceError, match="'mnist' is not prepared"):
        data_sources.tfds_builder("mnist", str(tmp_path))


def test_image_folder_is_split_by_hash_into_train_and_eval(tmp_path):
    from apache_beam.testing.util import assert_that, equal_to
    from tfx.utils import proto_utils

    for i in range(40):
        _write_png(str(tmp_path / f"class{i % 2}" / f"{i}.png"), np.full((28, 28), i, np.uint8))
    component = example_gen.SourceExampleGen(DataConfig(source=f"images:{tmp_path}", num_classes=2, eval_percent=25))
    exec_properties = {
        key: proto_utils.proto_to_json(value) if hasattr(value, "DESCRIPTOR") else value
        for key, value in component.exec_properties.items()
    }
    with beam.Pipeline() as pipeline:
        splits = example_gen.SourceExampleGenExecutor().GenerateExamplesByBeam(pipeline, exec_properties)
        assert sorted(splits) == ["eval", "train"]
        everything = (
            (splits["train"], splits["eval"]) | beam.Flatten() | beam.Map(first_pixel)
        )  # each image's pixel value = its index
        assert_that(everything, equal_to(list(range(40))), label="all_once")
        sizes = [splits[name] | f"Count{name}" >> beam.combiners.Count.Globally() for name in ("train", "eval")]
        assert_that(sizes[1] | beam.Map(lambda n: 0 < n < 40), equal_to([True]), label="eval_nonempty")


def _generate(data: DataConfig) -> None:
    from tfx.utils import proto_utils

    component = example_gen.SourceExampleGen(data)
    exec_properties = {
        key: proto_utils.proto_to_json(value) if hasattr(value, "DESCRIPTOR") else value
        for key, value in component.exec_properties.items()
    }
    with beam.Pipeline() as pipeline:
        example_gen.SourceExampleGenExecutor().GenerateExamplesByBeam(pipeline, exec_properties)


def test_mnist_labels_are_known_without_reading_its_examples(mnist):
    for data, split, source_split, count in (
        (DataConfig(max_examples=7), "train", "train", 7),
        (DataConfig(max_examples=300, train_classes="0-4", eval_classes="5-9"), "eval", "test", 300),
        (DataConfig(), "eval", "test", 10000),
    ):
        written = example_gen._mnist_chunk((0, count), source_split, data)
        read = {decode(e)[1] for e in written} & set(
            data.classes_by_split[split] if data.classes_by_split else range(10)
        )
        assert example_gen._known_labels(data, split) == sorted(read)
    assert example_gen._known_labels(DataConfig(source="tfds:mnist"), "train") is None


@pytest.mark.parametrize(
    "data,problem",
    [
        # Both splits fail (MNIST's first digits: a 5 in train, a 7 in eval), in either order.
        (DataConfig(max_examples=1), r"split '(train|eval)' holds examples of 1 class only \(class (5|7)\)"),
        (DataConfig(max_examples=100, num_classes=11), r"the examples hold 10 of --num-classes 11 classes"),
    ],
    ids=["one-class", "missing-class"],
)
def test_mnist_splits_without_their_classes_are_named(data, problem):
    with pytest.raises(Exception, match=problem):
        _generate(data)


def test_empty_class_folder_and_class_count_mismatch_are_named(tmp_path):
    for name in ("a", "b"):
        _write_png(str(tmp_path / name / "1.png"), np.zeros((28, 28), np.uint8))
    with pytest.raises(
        data_sources.DataSourceError, match=r"2 class folders \(a, b\), but --num-classes is 10 \(data.num_classes\)"
    ):
        data_sources.check_source(DataConfig(source=f"images:{tmp_path}"))
    (tmp_path / "c").mkdir()
    with pytest.raises(data_sources.DataSourceError, match=f"{tmp_path / 'c'}: class folder without image files"):
        data_sources.check_source(DataConfig(source=f"images:{tmp_path}", num_classes=3))


def test_file_that_is_not_an_image_says_so(tmp_path):
    with pytest.raises(data_sources.DataSourceError, match=r"fake.png: not an image \(Pillow cannot identify it"):
        image_check.check_image(b"hello, I am text", "fake.png")


def test_tfrecord_unreadable_from_the_start_says_first_record(tmp_path):
    path = tmp_path / "train" / "garbage.tfrecord"
    path.parent.mkdir()
    path.write_bytes(b"this is no TFRecord framing at all" * 3)
    with pytest.raises(data_sources.DataSourceError, match="garbage.tfrecord: unreadable TFRecord at the first record"):
        list(example_gen._tfrecord_file(str(path), DataConfig()))
