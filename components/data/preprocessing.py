"""Transform: ExampleGen's tf.Example -> float image in [0, 1] and label.

`preprocessing_fn` runs in TFX's Transform component and again, as the Transform graph,
inside the served model, so training and serving decode images the same way:
  * raw sources (MNIST, raw tfrecord:): `image` holds uint8 pixels of the training shape, scaled /255;
  * encoded sources (`DataConfig.encoded_images`: images:, manifest:, tfds:, encoded tfrecord:):
    `image` holds the image file's bytes, decoded, converted and resized by `images.decode_to_pixels`
    (the one image function) inside this graph, then scaled /255 (`images.to_unit_floats`).
The class id stays ExampleGen's `label`. Examples with a `class_name` feature also get the
vocabulary of class names (`contract.CLASS_NAMES_VOCABULARY`, analysed over train and eval:
pipeline.py's splits_config); the id -> name table is `contract.class_order(vocabulary)`.
"""

from __future__ import annotations

from typing import Any, Dict

import tensorflow as tf

from triplet_tfx.components import contract, images
from triplet_tfx.components.config import PipelineConfig
from triplet_tfx.components.data.data_sources import IMAGE_KEY, LABEL_KEY


def decode_images(image_bytes: tf.Tensor, image_shape) -> tf.Tensor:
    """Raw uint8 pixel strings [B] -> float32 [B, H, W, C] scaled to [0, 1] (the seed's /255)."""
    height, width, channels = image_shape
    expected = height * width * channels
    checks = [
        tf.debugging.assert_equal(
            tf.strings.length(image_bytes),
            expected,
            message=f"feature '{IMAGE_KEY}': expected {expected} raw uint8 bytes per image, "
            f"shape {tuple(image_shape)} (data.image_height/width/channels)",
        )
    ]
    with tf.control_dependencies(checks):
        pixels = tf.io.decode_raw(image_bytes, tf.uint8)
    return tf.reshape(tf.cast(pixels, tf.float32) / 255.0, [-1, height, width, channels])


def decode_encoded_images(image_bytes: tf.Tensor, image_shape, resize: str = "stretch") -> tf.Tensor:
    """Encoded image files [B] -> float32 [B, H, W, C] in [0, 1]: `images.decode_to_pixels`, then /255."""
    return images.to_unit_floats(images.decode_to_pixels(image_bytes, image_shape, resize, input_name=IMAGE_KEY))


def class_names_vocabulary(class_names: tf.Tensor) -> tf.Tensor:
    """The analysis pass's vocabulary of class names (a Transform asset, `contract.CLASS_NAMES_VOCABULARY`);
    returns its file name. Its order is tf.Transform's (by frequency); the id order is `contract.class_order`."""
    import tensorflow_transform as tft

    return tft.vocabulary(class_names, vocab_filename=contract.CLASS_NAMES_VOCABULARY)


def checked_labels(labels: tf.Tensor, num_classes: int) -> tf.Tensor:
    labels = tf.reshape(tf.cast(labels, tf.int64), [-1])
    checks = [
        tf.debugging.assert_non_negative(labels, message=f"feature '{LABEL_KEY}': negative label"),
        tf.debugging.assert_less(
            labels,
            tf.constant(num_classes, tf.int64),
            message=f"feature '{LABEL_KEY}': label >= num_classes ({num_classes})",
        ),
    ]
    with tf.control_dependencies(checks):
        return tf.identity(labels)


def _dense(feature) -> tf.Tensor:
    # SchemaGen(infer_feature_shape=True) gives [B, 1]; a sparse feature (no fixed shape) has one value each.
    if isinstance(feature, tf.SparseTensor):
        feature = tf.sparse.to_dense(feature, default_value="" if feature.dtype == tf.string else 0)
    return tf.reshape(feature, [-1])


def preprocessing_fn(inputs: Dict[str, Any], custom_config: Dict[str, Any]) -> Dict[str, tf.Tensor]:
    data = PipelineConfig.from_dict({"data": custom_config["data"]}).data
    if data.encoded_images:
        image = decode_encoded_images(_dense(inputs[IMAGE_KEY]), data.image_shape, data.resize)
    else:
        image = decode_images(_dense(inputs[IMAGE_KEY]), data.image_shape)
    if contract.CLASS_NAME_KEY in inputs:
        class_names_vocabulary(_dense(inputs[contract.CLASS_NAME_KEY]))
    return {
        IMAGE_KEY: image,
        LABEL_KEY: checked_labels(_dense(inputs[LABEL_KEY]), data.num_classes),
    }
