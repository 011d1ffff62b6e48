"""The embedding signatures of the serving SavedModel, and how client images become training pixels.

  serving_default  examples tf.string [None] (serialized tf.Examples, as ExampleGen writes them) -> embedding
                   float32 [None, D]
  embed_images     images   tf.string [None] (encoded PNG, JPEG, GIF or BMP) -> embedding
  embed_pixels     pixels   tf.uint8  [None, H, W, C] (the training shape)    -> embedding
  search           images tf.string [None], k tf.int32 [] -> ids tf.string, labels tf.int64,
                   class_names tf.string, distances float32 [None, k] (`index.py`; added by the
                   ServingModelBuilder)

The three embedding signatures run the same Transform graph and network, so the same picture gives the
same embedding whichever way it is sent. Images are decoded, converted and resized by the one image
function, `components/images.py` (`decode_to_pixels`; its docstring states the rule):
  * encoded-image sources (images:, manifest:, tfds:, encoded tfrecord:): the Transform graph itself
    decodes the tf.Example's `image` file bytes, so `embed_images` hands the files to it unchanged
    and `embed_pixels` encodes its pixels losslessly (PNG) for it: the very graph the Trainer read
    its examples through;
  * raw sources (MNIST, raw tfrecord:): `embed_images` decodes with `images.decode_to_pixels`, then
    the pixels go through the Transform graph as the raw bytes the tf.Examples carry.
Bad input fails with InvalidArgument and a message naming the input and the problem: bytes that are
not a tf.Example (`check_examples`), pixels of any shape but [B, H, W, C] (`check_pixels`), images
that are empty or of an unknown format. The embedding SavedModel also
holds the class names by class id (`contract.CLASS_NAMES_ASSET`, `read_class_names`, written by `write_class_names`).
"""

from __future__ import annotations

import os
from typing import Callable, Dict, List, Optional, Sequence

import tensorflow as tf

from triplet_tfx.components import contract, images
from triplet_tfx.components.contract import (
    EMBED_IMAGES_SIGNATURE,
    EMBED_PIXELS_SIGNATURE,
    EXAMPLES_INPUT,
    IMAGES_INPUT,
    PIXELS_INPUT,
)

# The image rule lives in components/images.py (one definition, run by Transform and by these
# signatures); these names are kept for the modules that import them from here.
IMAGE_MAGIC = images.IMAGE_MAGIC
_FORMATS = images.FORMATS
# Every byte value as a one-byte string: uint8 pixels -> the raw bytes tf.Examples carry.
_BYTE_STRINGS = [bytes([value]) for value in range(256)]


def examples_spec() -> tf.TensorSpec:
    return tf.TensorSpec([None], tf.string, name=EXAMPLES_INPUT)


def images_spec() -> tf.TensorSpec:
    return tf.TensorSpec([None], tf.string, name=IMAGES_INPUT)


def pixels_spec(image_shape: Sequence[int]) -> tf.TensorSpec:
    return tf.TensorSpec([None, *image_shape], tf.uint8, name=PIXELS_INPUT)


def assert_not_empty(batch: tf.Tensor, input_name: str) -> tf.Operation:
    return tf.debugging.assert_positive(
        tf.shape(batch)[0], message=f"{input_name}: empty batch (send at least one item)"
    )


def to_channels(image: tf.Tensor, channels: int) -> tf.Tensor:
    """`images.to_channels`, naming the `images` input in its errors."""
    return images.to_channels(image, channels, IMAGES_INPUT)


def to_size(image: tf.Tensor, height: int, width: int, resize: str = "stretch") -> tf.Tensor:
    """`images.to_size`."""
    return images.to_size(image, height, width, resize)


def decode_to_pixels(encoded: tf.Tensor, image_shape: Sequence[int], resize: str = "stretch") -> tf.Tensor:
    """`images.decode_to_pixels` of the `images` input: encoded images [B] -> uint8 [B, H, W, C]."""
    return images.decode_to_pixels(encoded, image_shape, resize, input_name=IMAGES_INPUT)


def check_encoded(encoded: tf.Tensor, input_name: str = IMAGES_INPUT) -> tf.Tensor:
    """The encoded images [B], after the checks `images.decode_to_pixels` makes (not empty, each a
    known format), so that errors name the signature's input rather than the tf.Example feature."""
    encoded = tf.reshape(encoded, [-1])

    def one(item):
        value, index = item
        checks = [
            tf.debugging.Assert(
                tf.strings.length(value) > 0, [f"{input_name}: empty string (0 bytes) at index", index]
            ),
            tf.debugging.Assert(
                images.is_known_format(value), [f"{input_name}: not a {_FORMATS} image at index", index]
            ),
        ]
        with tf.control_dependencies(checks):
            return tf.identity(value)

    with tf.control_dependencies([assert_not_empty(encoded, input_name)]):
        indices = tf.range(tf.shape(encoded)[0])
    return tf.map_fn(one, (encoded, indices), fn_output_signature=tf.TensorSpec([], tf.string))


def check_pixels(pixels: tf.Tensor, image_shape: Sequence[int]) -> tf.Tensor:
    """The `pixels` input after checking its shape at run time: [B, H, W, C] of the training shape,
    nothing else. A loaded signature does not check the shape it is fed against its input spec, and
    the raw-bytes reshape lets any shape of H*W*C values per item through ([1, 28, 28], [1, 784, 1, 1]).
    The run-time shape is padded to a fixed length before it is compared, so that no check depends on
    the rank known when the graph was built (graph optimisation would fold such a check away)."""
    expected = [int(v) for v in image_shape]
    width = len(expected) + 5
    shape = tf.shape(pixels, out_type=tf.int64)
    dims = tf.concat([shape, tf.fill([width], tf.constant(-1, tf.int64))], axis=0)[1 : 1 + width]
    ok = tf.reduce_all(tf.equal(dims, tf.constant(expected + [-1] * (width - len(expected)), tf.int64)))
    check = tf.debugging.Assert(
        ok,
        [
            f"{PIXELS_INPUT}: expected uint8 pixels of shape [B, "
            f"{', '.join(map(str, expected))}] (the training shape), got shape",
            shape,
        ],
        summarize=width + 1,
    )
    with tf.control_dependencies([check]):
        # Ranks beyond the padding: the op's own check (it names the expected shape too).
        return tf.ensure_shape(pixels, [None, *expected])


def _parsed_size(examples: tf.Tensor, features: dict) -> tf.Tensor:
    """A count computed from the values tf.io.parse_example reads from `examples`: from the values
    themselves, not their shape, which graph optimisation would compute without running the parse."""
    parsed = tf.io.parse_example(examples, features)
    values = [v.values if isinstance(v, tf.SparseTensor) else v for v in parsed.values()]
    return tf.add_n([tf.shape(tf.where(tf.equal(v, v)), out_type=tf.int64)[0] for v in values])


def _plain_dataset_options() -> tf.data.Options:
    """No graph rewriting nor autotuning of the checks' tiny datasets: their cost per request."""
    options = tf.data.Options()
    options.experimental_optimization.apply_default_optimizations = False
    options.autotune.enabled = False
    return options


_PLAIN_DATASET = _plain_dataset_options()


def check_examples(examples: tf.Tensor, features: dict) -> tf.Tensor:
    """The `examples` input [B] after checking that tf.io.parse_example reads every item with
    `features`: a clear InvalidArgument naming the input and the index otherwise. (The parser's own
    error quotes the bytes, which the eager runtime cannot turn into a Python message when they are
    not UTF-8: a UnicodeDecodeError instead of InvalidArgument.) Errors inside tf.data are dropped
    there (ignore_errors): the whole batch is tried first, each item only when it fails."""

    def parses(batch):
        return _parsed_size(batch, features)

    # The whole batch's parsed size, or the -1 after it when the parse failed. get_single_element, not
    # reduce: reduce instantiates its functions at every call, ~8 ms per request against ~0.5 ms.
    whole = tf.data.Dataset.from_tensors(examples).map(parses).ignore_errors()
    failed = tf.data.Dataset.from_tensors(tf.constant(-1, tf.int64))
    ok = whole.concatenate(failed).take(1).with_options(_PLAIN_DATASET).get_single_element() >= 0

    def first_bad() -> tf.Tensor:
        count = tf.size(examples, out_type=tf.int64)
        items = tf.data.Dataset.from_tensor_slices((tf.range(count), tf.reshape(examples, [-1])))
        # The parse's result is used (a size is never negative), or tf.data would optimise the parse away.
        parsed = items.map(lambda i, item: (i, parses(item[None]))).ignore_errors().with_options(_PLAIN_DATASET)

        def step(state, item):
            (position, bad), (i, size) = state, item
            missing = tf.not_equal(i, position) | tf.less(size, 0)
            return position + 1, tf.where((bad < 0) & missing, position, bad)

        position, bad = parsed.reduce((tf.constant(0, tf.int64), tf.constant(-1, tf.int64)), step)
        return tf.where((bad < 0) & (position < count), position, bad)

    bad = tf.cond(ok, lambda: tf.constant(-1, tf.int64), first_bad)
    check = tf.debugging.Assert(
        bad < 0,
        [
            f"{EXAMPLES_INPUT}: not a serialized tf.Example holding the training "
            "data's image feature (as ExampleGen writes it), at index",
            bad,
        ],
    )
    with tf.control_dependencies([check]):
        return tf.identity(examples)


def pixels_to_png(pixels: tf.Tensor) -> tf.Tensor:
    """uint8 [B, H, W, C] -> [B] lossless PNG files (decoded, they give these pixels back)."""
    return tf.map_fn(tf.io.encode_png, pixels, fn_output_signature=tf.TensorSpec([], tf.string))


def pixels_to_raw_bytes(pixels: tf.Tensor) -> tf.Tensor:
    """uint8 [B, H, W, C] -> [B] strings of the row-major HWC bytes (the tf.Example `image` feature)."""
    flat = tf.reshape(pixels, [tf.shape(pixels)[0], -1])
    return tf.strings.reduce_join(tf.gather(tf.constant(_BYTE_STRINGS), tf.cast(flat, tf.int32)), axis=-1)


def embedding_functions(
    embed_image_bytes: Callable[[tf.Tensor], Dict[str, tf.Tensor]],
    image_shape: Sequence[int],
    resize: str = "stretch",
    encoded: bool = False,
) -> Dict[str, tuple]:
    """{signature name: (function, input spec)} of the image and pixel signatures, both built on
    `embed_image_bytes` (the tf.Example `image` feature [B] -> Transform graph -> network ->
    {"embedding": ...}), which `serving_default` uses too.

    `encoded` (an encoded-image source): the `image` feature holds image files and the Transform
    graph decodes and resizes them, so `embed_images` hands the files to it as they are, and
    `embed_pixels` encodes its pixels losslessly as PNG for it. Otherwise (raw pixels of the training
    shape): `embed_images` decodes with the same image function, and pixels go in as raw bytes."""

    def embed_pixels(pixels):
        with tf.control_dependencies([assert_not_empty(pixels, PIXELS_INPUT)]):
            if encoded:
                return embed_image_bytes(pixels_to_png(pixels))
            return embed_image_bytes(pixels_to_raw_bytes(pixels))

    def embed_images(encoded_images):
        if encoded:
            return embed_image_bytes(check_encoded(encoded_images))
        return embed_pixels(decode_to_pixels(encoded_images, image_shape, resize))

    def embed_pixels_input(pixels):
        return embed_pixels(check_pixels(pixels, image_shape))

    return {
        EMBED_IMAGES_SIGNATURE: (embed_images, images_spec()),
        EMBED_PIXELS_SIGNATURE: (embed_pixels_input, pixels_spec(image_shape)),
    }


def write_class_names(path: str, names: List[str]) -> str:
    """Writes the class names (one a line) into the SavedModel folder's assets; returns the file."""
    assets = os.path.join(path, "assets")
    tf.io.gfile.makedirs(assets)
    file = os.path.join(assets, contract.CLASS_NAMES_ASSET)
    with tf.io.gfile.GFile(file, "w") as f:
        f.write("".join(name.replace("\n", " ") + "\n" for name in names))
    return file


def read_class_names(path: str) -> Optional[List[str]]:
    """The class names by class id of an embedding or serving SavedModel; None if it has none
    (a model exported before class names)."""
    file = os.path.join(path, "assets", contract.CLASS_NAMES_ASSET)
    if not tf.io.gfile.exists(file):
        return None
    with tf.io.gfile.GFile(file) as f:
        return f.read().splitlines()
