"""Encoded tfrecord: (TF-Slim / TFDS / object-detection feature keys) and tfds: sources of images of
varying size, read without decoding."""

import os

import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from example_gen_helpers import features, generate, read_split, run_example_gen
from photo_collection import make_photo_collection

from triplet_tfx.components import contract
from triplet_tfx.components.config import DataConfig

pytestmark = pytest.mark.slow


def _slim_example(content: bytes, label: int) -> bytes:
    return tf.train.Example(
        features=tf.train.Features(
            feature={
                "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[content])),
                "image/format": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"jpeg"])),
                "image/class/label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
            }
        )
    ).SerializeToString()


@pytest.fixture()
def slim_folder(tmp_path):
    photos = make_photo_collection(str(tmp_path / "photos"), classes=("a", "b", "c"), per_class=4)
    for split in ("train", "eval"):
        os.makedirs(tmp_path / "records" / split)
        with tf.io.TFRecordWriter(str(tmp_path / "records" / split / "part-0.tfrecord")) as writer:
            for i, photo in enumerate(photos):
                if (i % 4 == 3) == (split == "eval"):
                    with open(photo.path, "rb") as f:
                        writer.write(_slim_example(f.read(), "abc".index(photo.class_name)))
    return str(tmp_path / "records"), photos


def test_encoded_tfrecord_with_slim_keys_is_rewritten_to_the_contract(tmp_path, slim_folder):
    folder, photos = slim_folder
    data = DataConfig(
        source=f"tfrecord:{folder}",
        num_classes=3,
        tfrecord_encoded=True,
        tfrecord_image_key="image/encoded",
        tfrecord_label_key="image/class/label",
    )
    assert data.encoded_images
    artifact = run_example_gen(data, str(tmp_path / "out"))
    contents = {}
    for photo in photos:
        with open(photo.path, "rb") as f:
            contents[f.read()] = photo
    for split in ("train", "eval"):
        examples = [features(e) for e in read_split(artifact.uri, split)]
        assert len(examples) == (9 if split == "train" else 3)
        for values in examples:
            photo = contents[values["image"]]  # the bytes as stored in the record
            assert values["label"] == "abc".index(photo.class_name)
            assert values["class_name"] == str(values["label"]).encode()
            assert (values["image_width"], values["image_height"]) == (photo.width, photo.height)
            assert values["image_format"] == photo.format.encode() and "id" not in values


def test_encoded_records_read_as_raw_say_to_pass_tfrecord_encoded(tmp_path, slim_folder):
    folder, _ = slim_folder
    data = DataConfig(
        source=f"tfrecord:{folder}",
        num_classes=3,
        tfrecord_image_key="image/encoded",
        tfrecord_label_key="image/class/label",
    )
    with pytest.raises(
        Exception,
        match=r"part-0.tfrecord record 0: feature 'image/encoded' holds an encoded "
        r"(JPEG|PNG) image, not raw pixels: pass --tfrecord-encoded",
    ):
        generate(data, str(tmp_path), "train")


def test_missing_feature_names_the_key_flags(tmp_path, slim_folder):
    folder, _ = slim_folder
    with pytest.raises(
        Exception,
        match=r"record 0: not a tf.Example with a bytes 'image' and an int64 'label'.*"
        r"--tfrecord-image-key and --tfrecord-label-key",
    ):
        generate(DataConfig(source=f"tfrecord:{folder}", num_classes=3, tfrecord_encoded=True), str(tmp_path), "train")


def test_tfds_images_of_varying_size_are_read_without_decoding(tmp_path, monkeypatch):
    """TFDS's own mock of oxford_flowers102 (random PNGs of random sizes, offline; its metadata ships
    with tensorflow_datasets): the mock does not mark the data set prepared, so pretend it is."""
    monkeypatch.setattr(tfds.core.DatasetBuilder, "is_prepared", lambda self: True)
    with tfds.testing.mock_data(num_examples=12):
        names = tfds.builder("oxford_flowers102").info.features["label"].names
        data = DataConfig(
            source="tfds:oxford_flowers102",
            num_classes=102,
            tfds_train_split="train",
            tfds_eval_split="test",
            image_height=32,
            image_width=32,
            channels=3,
        )
        # (not data_sources.check_source: the mock's info lists no splits)
        examples = [features(tf.train.Example.FromString(e)) for e in generate(data, str(tmp_path), "train")]
    assert len(examples) == 12
    assert len({(e["image_width"], e["image_height"]) for e in examples}) > 1  # sizes vary
    order = contract.class_order(names)
    for values in examples:
        decoded = tf.io.decode_image(values["image"])
        assert (decoded.shape[1], decoded.shape[0]) == (values["image_width"], values["image_height"])
        assert values["image_format"] == b"png"
        assert order[values["label"]] == values["class_name"].decode()
        assert values["id"].startswith(b"oxford_flowers102-train")
