"""Transform's preprocessing: raw pixel bytes and labels -> scaled float images and checked labels."""
import numpy as np
import pytest
import tensorflow as tf

from triplet_tfx.components.data import preprocessing
from triplet_tfx.pipeline.config import DataConfig, PipelineConfig


def _config(**data):
    return {"data": PipelineConfig(data=DataConfig(**data)).to_dict()["data"]}


def test_preprocessing_fn_scales_and_shapes_images():
    pixels = np.array([[0, 51, 255, 102], [255, 255, 0, 0]], np.uint8)  # two 2x2x1 images
    inputs = {"image": tf.constant([[p.tobytes()] for p in pixels]),  # [B, 1], as SchemaGen infers it
              "label": tf.constant([[3], [1]], tf.int64)}
    out = preprocessing.preprocessing_fn(inputs, _config(image_height=2, image_width=2, channels=1, num_classes=4))
    assert out["image"].shape == (2, 2, 2, 1)
    np.testing.assert_allclose(out["image"].numpy().reshape(2, 4), pixels / 255.0, rtol=1e-6)
    assert out["label"].numpy().tolist() == [3, 1]


def test_sparse_inputs_are_accepted():
    image = tf.sparse.from_dense(tf.constant([[bytes([255] * 4)]]))
    label = tf.sparse.from_dense(tf.constant([[2]], tf.int64))
    out = preprocessing.preprocessing_fn({"image": image, "label": label},
                                         _config(image_height=2, image_width=2, channels=1, num_classes=4))
    np.testing.assert_allclose(out["image"].numpy(), np.ones((1, 2, 2, 1)))


def test_wrong_image_size_names_the_feature():
    with pytest.raises(tf.errors.InvalidArgumentError, match="feature 'image': expected 4 raw uint8 bytes"):
        preprocessing.decode_images(tf.constant([bytes(3)]), (2, 2, 1))


@pytest.mark.parametrize("label", [-1, 10])
def test_label_out_of_range_names_the_feature(label):
    with pytest.raises(tf.errors.InvalidArgumentError, match="feature 'label'"):
        preprocessing.checked_labels(tf.constant([1, label], tf.int64), 10)
