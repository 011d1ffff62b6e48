"""Bad input to the exported signatures fails with InvalidArgument naming the input: bytes that are
not a tf.Example (not Python's UnicodeDecodeError of an error message quoting them), and pixels of
any shape other than [B, H, W, C] of the training shape."""

import numpy as np
import pytest
import tensorflow as tf
import tiny_serving_model

from triplet_tfx.components.data import data_sources

pytestmark = pytest.mark.slow  # exports served models

H, W, C = tiny_serving_model.CONFIG.data.image_shape
NOT_UTF8 = bytes(range(128, 256))[:50]  # random-looking bytes that are not UTF-8 text


@pytest.fixture(scope="module")
def model():
    return tf.saved_model.load(tiny_serving_model.trained_export())


@pytest.fixture(scope="module")
def digits():
    train_x, train_y, _, _ = tiny_serving_model.mnist_examples()
    return train_x[:2], train_y[:2]


@pytest.mark.parametrize("garbage", [NOT_UTF8, b"\x0a\x02\x0a\x00\xff\xfe", b"\xff" * 7])
def test_serving_default_refuses_bytes_that_are_not_examples(model, digits, garbage):
    serve = model.signatures["serving_default"]
    good = data_sources.make_example(digits[0][0], int(digits[1][0]))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"examples: not a serialized tf\.Example.* index\] \[0\]"):
        serve(examples=tf.constant([garbage]))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"examples: not a serialized tf\.Example.* index\] \[1\]"):
        serve(examples=tf.constant([good, garbage, good]))
    embedding = serve(examples=tf.constant([good]))["embedding"].numpy()
    pixels = model.signatures["embed_pixels"](pixels=tf.constant(digits[0][:1]))["embedding"].numpy()
    np.testing.assert_allclose(embedding, pixels, atol=1e-6)


@pytest.mark.parametrize(
    "shape",
    [
        (1, H, W),
        (1, 1, H, W),
        (1, H * W, 1, 1),
        (1, H, W, C, 1),
        (1, W * H * C),
        (2, H // 2, W * 2, C),
        (1, H, W, C + 2),
    ],
)
def test_embed_pixels_refuses_other_shapes(model, digits, shape):
    pixels = np.zeros(shape, np.uint8)
    with pytest.raises(
        tf.errors.InvalidArgumentError, match=rf"pixels: expected uint8 pixels of shape \[B, {H}, {W}, {C}\]"
    ):
        model.signatures["embed_pixels"](pixels=tf.constant(pixels))


def test_embed_pixels_takes_the_training_shape(model, digits):
    out = model.signatures["embed_pixels"](pixels=tf.constant(digits[0]))["embedding"]
    assert out.shape == (2, tiny_serving_model.CONFIG.train.embedding_dim)


def test_an_encoded_source_export_refuses_the_same(tmp_path):
    """images:/manifest:/tfds: exports: serving_default parses more features' spec and embed_pixels
    encodes its pixels as PNG; the same refusals apply."""
    import encoded_model

    config = encoded_model.encoded_config()
    files = encoded_model.photos()[:2]
    examples = [encoded_model.encoded_example(f, 0, "a", f"photo{i}") for i, f in enumerate(files)]
    transform_output = encoded_model.write_transform_graph(str(tmp_path), examples, config)
    _, path = encoded_model.export_untrained(str(tmp_path), transform_output, config)
    loaded = tf.saved_model.load(path)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"examples: not a serialized tf\.Example.* index\] \[1\]"):
        loaded.signatures["serving_default"](examples=tf.constant([examples[0], NOT_UTF8]))
    assert loaded.signatures["serving_default"](examples=tf.constant(examples))["embedding"].shape[0] == 2
    h, w, c = config.data.image_shape
    with pytest.raises(
        tf.errors.InvalidArgumentError, match=rf"pixels: expected uint8 pixels of shape \[B, {h}, {w}, {c}\]"
    ):
        loaded.signatures["embed_pixels"](pixels=tf.zeros([1, h * w, c], tf.uint8))
    assert loaded.signatures["embed_pixels"](pixels=tf.zeros([3, h, w, c], tf.uint8))["embedding"].shape[0] == 3
