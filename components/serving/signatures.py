"""The embedding signatures of the serving SavedModel, and how client images become training pixels.

  serving_default  examples tf.string [None] (serialized raw tf.Examples) -> embedding float32 [None, D]
  embed_images     images   tf.string [None] (encoded PNG, JPEG, GIF or BMP) -> embedding
  embed_pixels     pixels   tf.uint8  [None, H, W, C] (the training shape)    -> embedding
  search           images tf.string [None], k tf.int32 [] -> ids tf.string, labels tf.int64,
                   distances float32 [None, k] (`index.py`; added by the ServingModelBuilder)

The three embedding signatures run the same Transform graph and network, so the same picture gives the same embedding
whichever way it is sent. Encoded images are converted as `data_sources.read_image` converts the
training images (Pillow's `convert("L")` / `convert("RGB")`, reproduced exactly in integer arithmetic)
and, when their size differs from the training size, resized by one rule: bilinear with
antialiasing to H x W (the aspect ratio is not kept), rounded to uint8. Training images are
never resized (`check_example` refuses other sizes), so an image of the training size passes
unchanged. Bad input fails with InvalidArgument and a message naming the problem.
"""
from __future__ import annotations

from typing import Callable, Dict, Sequence

import tensorflow as tf

EMBED_IMAGES_SIGNATURE = "embed_images"
EMBED_PIXELS_SIGNATURE = "embed_pixels"
SEARCH_SIGNATURE = "search"
EXAMPLES_INPUT = "examples"
IMAGES_INPUT = "images"
PIXELS_INPUT = "pixels"
K_INPUT = "k"
IDS_OUTPUT = "ids"
LABELS_OUTPUT = "labels"
DISTANCES_OUTPUT = "distances"

# First bytes of the formats tf.io.decode_image reads.
IMAGE_MAGIC = (b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"BM")
_FORMATS = "PNG, JPEG, GIF or BMP"
# Pillow's RGB -> L: (R*19595 + G*38470 + B*7471 + 0x8000) >> 16 (ITU-R 601-2 luma, rounded).
_LUMA_WEIGHTS = (19595, 38470, 7471)
# Every byte value as a one-byte string: uint8 pixels -> the raw bytes tf.Examples carry.
_BYTE_STRINGS = [bytes([value]) for value in range(256)]


def examples_spec() -> tf.TensorSpec:
    return tf.TensorSpec([None], tf.string, name=EXAMPLES_INPUT)


def images_spec() -> tf.TensorSpec:
    return tf.TensorSpec([None], tf.string, name=IMAGES_INPUT)


def pixels_spec(image_shape: Sequence[int]) -> tf.TensorSpec:
    return tf.TensorSpec([None, *image_shape], tf.uint8, name=PIXELS_INPUT)


def assert_not_empty(batch: tf.Tensor, input_name: str) -> tf.Operation:
    return tf.debugging.assert_positive(tf.shape(batch)[0],
                                        message=f"{input_name}: empty batch (send at least one item)")


def to_channels(image: tf.Tensor, channels: int) -> tf.Tensor:
    """uint8 [h, w, 1..4] -> uint8 [h, w, channels] as Pillow converts to L (1) or RGB (3): gray
    (+alpha) keeps its gray value, RGB(A) becomes luma; alpha is dropped, not composited. Image
    folders are read as L or RGB only; a model trained on other channel counts (tfrecord: data)
    takes images with exactly that many channels."""
    if channels not in (1, 3):
        check = tf.debugging.Assert(tf.shape(image)[-1] == channels,
                                    [f"{IMAGES_INPUT}: the model takes images of {channels} channels, got",
                                     tf.shape(image)[-1]])
        with tf.control_dependencies([check]):
            return tf.ensure_shape(tf.identity(image), [None, None, channels])

    def gray():
        if channels == 1:
            return image[..., :1]
        return tf.repeat(image[..., :1], channels, axis=-1)

    def color():
        rgb = image[..., :3]
        if channels == 3:
            return rgb
        luma = tf.reduce_sum(tf.cast(rgb, tf.int32) * tf.constant(_LUMA_WEIGHTS, tf.int32), axis=-1,
                             keepdims=True)
        return tf.cast(tf.bitwise.right_shift(luma + 0x8000, 16), tf.uint8)

    return tf.cond(tf.shape(image)[-1] <= 2, gray, color)


def to_size(image: tf.Tensor, height: int, width: int) -> tf.Tensor:
    """uint8 [h, w, c] -> uint8 [height, width, c]: unchanged at that size, else bilinear with
    antialiasing, rounded."""
    def resize():
        resized = tf.image.resize(tf.cast(image, tf.float32), [height, width], method="bilinear", antialias=True)
        return tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8)

    same = tf.reduce_all(tf.equal(tf.shape(image)[:2], [height, width]))
    return tf.cond(same, lambda: image, resize)


def decode_to_pixels(images: tf.Tensor, image_shape: Sequence[int]) -> tf.Tensor:
    """Encoded images [B] -> uint8 [B, H, W, C] at the training shape."""
    height, width, channels = image_shape

    def one(item):
        encoded, index = item
        magic = tf.strings.substr(encoded, 0, 4)
        known = tf.reduce_any([tf.strings.substr(magic, 0, len(m)) == m for m in IMAGE_MAGIC])
        checks = [
            tf.debugging.Assert(tf.strings.length(encoded) > 0, [f"{IMAGES_INPUT}: empty string (0 bytes) at index",
                                                                  index]),
            tf.debugging.Assert(known, [f"{IMAGES_INPUT}: not a {_FORMATS} image at index", index]),
        ]
        with tf.control_dependencies(checks):
            # Broken and zero-size images fail here, with the decoder's InvalidArgument message
            # ("Invalid PNG...", "Width must be positive"...); GIFs give their first frame.
            image = tf.io.decode_image(encoded, expand_animations=False)
        return to_size(to_channels(image, channels), height, width)

    with tf.control_dependencies([assert_not_empty(images, IMAGES_INPUT)]):
        indices = tf.range(tf.shape(images)[0])
    return tf.map_fn(one, (images, indices), fn_output_signature=tf.TensorSpec([height, width, channels], tf.uint8))


def pixels_to_raw_bytes(pixels: tf.Tensor) -> tf.Tensor:
    """uint8 [B, H, W, C] -> [B] strings of the row-major HWC bytes (the tf.Example `image` feature)."""
    flat = tf.reshape(pixels, [tf.shape(pixels)[0], -1])
    return tf.strings.reduce_join(tf.gather(tf.constant(_BYTE_STRINGS), tf.cast(flat, tf.int32)), axis=-1)


def embedding_functions(embed_image_bytes: Callable[[tf.Tensor], Dict[str, tf.Tensor]],
                        image_shape: Sequence[int]) -> Dict[str, tuple]:
    """{signature name: (function, input spec)} of the image and pixel signatures, both built on
    `embed_image_bytes` (raw pixel bytes [B], the tf.Example `image` feature -> Transform graph ->
    network -> {"embedding": ...}), which `serving_default` uses too."""
    def embed_pixels(pixels):
        with tf.control_dependencies([assert_not_empty(pixels, PIXELS_INPUT)]):
            return embed_image_bytes(pixels_to_raw_bytes(pixels))

    def embed_images(images):
        return embed_pixels(decode_to_pixels(images, image_shape))

    return {
        EMBED_IMAGES_SIGNATURE: (embed_images, images_spec()),
        EMBED_PIXELS_SIGNATURE: (embed_pixels, pixels_spec(image_shape)),
    }
