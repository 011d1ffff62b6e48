"""Transform: raw tf.Example (uint8 pixel bytes, int64 label) -> float image in [0, 1] and label.

`preprocessing_fn` runs in TFX's Transform component and again, as the Transform graph,
inside the served model, so training and serving decode images the same way.
"""
from __future__ import annotations

from typing import Any, Dict

import tensorflow as tf

from triplet_tfx.components.data.data_sources import IMAGE_KEY, LABEL_KEY
from triplet_tfx.pipeline.config import PipelineConfig


def decode_images(image_bytes: tf.Tensor, image_shape) -> tf.Tensor:
    """Raw uint8 pixel strings [B] -> float32 [B, H, W, C] scaled to [0, 1] (the seed's /255)."""
    height, width, channels = image_shape
    expected = height * width * channels
    checks = [tf.debugging.assert_equal(
        tf.strings.length(image_bytes), expected,
        message=f"feature '{IMAGE_KEY}': expected {expected} raw uint8 bytes per image, "
                f"shape {tuple(image_shape)} (data.image_height/width/channels)")]
    with tf.control_dependencies(checks):
        pixels = tf.io.decode_raw(image_bytes, tf.uint8)
    return tf.reshape(tf.cast(pixels, tf.float32) / 255.0, [-1, height, width, channels])


def checked_labels(labels: tf.Tensor, num_classes: int) -> tf.Tensor:
    labels = tf.reshape(tf.cast(labels, tf.int64), [-1])
    checks = [
        tf.debugging.assert_non_negative(labels, message=f"feature '{LABEL_KEY}': negative label"),
        tf.debugging.assert_less(labels, tf.constant(num_classes, tf.int64),
                                 message=f"feature '{LABEL_KEY}': label >= num_classes ({num_classes})"),
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
    return {
        IMAGE_KEY: decode_images(_dense(inputs[IMAGE_KEY]), data.image_shape),
        LABEL_KEY: checked_labels(_dense(inputs[LABEL_KEY]), data.num_classes),
    }
