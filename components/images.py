"""The one image function: encoded image bytes -> uint8 pixels of the training shape.

Transform's `preprocessing_fn` runs it on ExampleGen's examples (so the Trainer and the
evaluator see its output), and the served `embed_images`, `search` and `serving_default`
signatures run the same Transform graph, so a photo is decoded, converted and resized the
same way in training and in serving, by construction.

The rule, in order:
  1. decode with TensorFlow's decoders: PNG (8 and 16 bit, palette expanded), JPEG (grey, RGB,
     CMYK; the accurate integer DCT, as Pillow decodes), GIF (the first frame) and BMP; 16-bit
     values are scaled to 8 bits. WebP and other formats are refused. EXIF orientation is ignored, as
     TensorFlow's decoders ignore it: the pixels are used as stored, in training and serving.
  2. channels (`to_channels`), as Pillow converts to L or RGB: grey (+alpha) keeps its grey
     value, or is copied into R, G and B; RGB(A) to grey is ITU-R 601-2 luma rounded as Pillow
     rounds it; alpha is dropped, not composited.
  3. size (`to_size`): unchanged at the training size; otherwise bilinear with antialiasing,
     rounded to uint8, by `resize`: `stretch` to height x width; `pad`: the largest size with the
     image's aspect ratio that fits (rounded to whole pixels), centred on black (the extra pixel of
     an odd margin goes to the bottom or right); `crop`: the centred largest box with the
     training aspect ratio, then resized.
"""

from __future__ import annotations

from typing import Sequence

import tensorflow as tf

# First bytes of the formats tf.io.decode_image reads.
IMAGE_MAGIC = (b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"BM")
FORMATS = "PNG, JPEG, GIF or BMP"
# Pillow's RGB -> L: (R*19595 + G*38470 + B*7471 + 0x8000) >> 16 (ITU-R 601-2 luma, rounded).
_LUMA_WEIGHTS = (19595, 38470, 7471)


def to_channels(image: tf.Tensor, channels: int, input_name: str = "image") -> tf.Tensor:
    """uint8 [h, w, 1..4] -> uint8 [h, w, channels] (the rule in the module docstring). A model
    trained on another channel count (tfrecord: data) takes images of exactly that many channels."""
    if channels not in (1, 3):
        check = tf.debugging.Assert(
            tf.shape(image)[-1] == channels,
            [f"{input_name}: the model takes images of {channels} channels, got", tf.shape(image)[-1]],
        )
        with tf.control_dependencies([check]):
            return tf.ensure_shape(tf.identity(image), [None, None, channels])

    def grey():
        if channels == 1:
            return image[..., :1]
        return tf.repeat(image[..., :1], channels, axis=-1)

    def colour():
        rgb = image[..., :3]
        if channels == 3:
            return rgb
        luma = tf.reduce_sum(tf.cast(rgb, tf.int32) * tf.constant(_LUMA_WEIGHTS, tf.int32), axis=-1, keepdims=True)
        return tf.cast(tf.bitwise.right_shift(luma + 0x8000, 16), tf.uint8)

    return tf.cond(tf.shape(image)[-1] <= 2, grey, colour)


def _rounded(image: tf.Tensor) -> tf.Tensor:
    return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)


def to_size(image: tf.Tensor, height: int, width: int, resize: str = "stretch") -> tf.Tensor:
    """uint8 [h, w, c] -> uint8 [height, width, c] by the `resize` rule (module docstring)."""
    if resize not in ("stretch", "pad", "crop"):
        raise ValueError(f"resize: unknown rule {resize!r} (stretch, pad or crop)")

    def resized():
        pixels = tf.cast(image, tf.float32)
        if resize == "pad":
            # The largest size of the image's aspect ratio inside height x width, in integers (a
            # float32 size, as tf.image.resize_with_pad computes it, rounds differently traced).
            shape = tf.shape(image, out_type=tf.int64)[:2]
            fits_height = shape[0] * width >= shape[1] * height  # the height is the binding side
            inner = tf.where(
                fits_height,
                tf.stack(
                    [tf.constant(height, tf.int64), tf.maximum((shape[1] * height + shape[0] // 2) // shape[0], 1)]
                ),
                tf.stack([tf.maximum((shape[0] * width + shape[1] // 2) // shape[1], 1), tf.constant(width, tf.int64)]),
            )
            inner = tf.cast(tf.minimum(inner, [height, width]), tf.int32)
            scaled = tf.image.resize(pixels, inner, method="bilinear", antialias=True)
            offset = (tf.constant([height, width]) - inner) // 2
            return _rounded(tf.image.pad_to_bounding_box(scaled, offset[0], offset[1], height, width))
        if resize == "crop":
            shape = tf.cast(tf.shape(image)[:2], tf.float32)
            # The largest centred box of aspect width/height inside the image.
            scale = tf.minimum(shape[0] / height, shape[1] / width)
            box = tf.maximum(tf.cast(tf.round(tf.stack([height * scale, width * scale])), tf.int32), 1)
            offset = (tf.shape(image)[:2] - box) // 2
            pixels = tf.image.crop_to_bounding_box(pixels, offset[0], offset[1], box[0], box[1])
        return _rounded(tf.image.resize(pixels, [height, width], method="bilinear", antialias=True))

    same = tf.reduce_all(tf.equal(tf.shape(image)[:2], [height, width]))
    return tf.ensure_shape(tf.cond(same, lambda: image, resized), [height, width, None])


def decode(encoded: tf.Tensor) -> tf.Tensor:
    """One encoded image (scalar string) -> uint8 [h, w, 1..4]. JPEGs with the accurate integer
    DCT (the pixels Pillow and libjpeg's defaults give; TensorFlow's default fast DCT is up to 8
    levels off). Broken images fail with the decoder's InvalidArgument ("Invalid PNG data"...)."""

    def jpeg():
        return tf.io.decode_jpeg(encoded, dct_method="INTEGER_ACCURATE")

    def other():
        return tf.io.decode_image(encoded, dtype=tf.uint8, expand_animations=False)

    is_jpeg = tf.strings.substr(encoded, 0, 3) == IMAGE_MAGIC[1]
    return tf.ensure_shape(tf.cond(is_jpeg, jpeg, other), [None, None, None])


def is_known_format(encoded: tf.Tensor) -> tf.Tensor:
    """Whether a scalar string starts like one of the formats `decode` reads."""
    return tf.reduce_any([tf.strings.substr(encoded, 0, len(magic)) == magic for magic in IMAGE_MAGIC])


def decode_to_pixels(
    images: tf.Tensor, image_shape: Sequence[int], resize: str = "stretch", input_name: str = "image"
) -> tf.Tensor:
    """Encoded images [B] -> uint8 [B, H, W, C] of the training shape, by the module's rule. An empty
    string or unknown format fails with InvalidArgument naming `input_name` and the index."""
    height, width, channels = image_shape

    def one(item):
        encoded, index = item
        checks = [
            tf.debugging.Assert(
                tf.strings.length(encoded) > 0, [f"{input_name}: empty string (0 bytes) at index", index]
            ),
            tf.debugging.Assert(is_known_format(encoded), [f"{input_name}: not a {FORMATS} image at index", index]),
        ]
        with tf.control_dependencies(checks):
            image = decode(encoded)
        return to_size(to_channels(image, channels, input_name), height, width, resize)

    images = tf.reshape(images, [-1])
    with tf.control_dependencies(
        [
            tf.debugging.assert_positive(
                tf.shape(images)[0], message=f"{input_name}: empty batch (send at least one item)"
            )
        ]
    ):
        indices = tf.range(tf.shape(images)[0])
    return tf.map_fn(one, (images, indices), fn_output_signature=tf.TensorSpec([height, width, channels], tf.uint8))


def to_unit_floats(pixels: tf.Tensor) -> tf.Tensor:
    """uint8 pixels -> float32 in [0, 1] (the tutorial's /255): the network's input."""
    return tf.cast(pixels, tf.float32) / 255.0
