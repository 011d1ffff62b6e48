"""The embedding signatures: encoded images are converted as the training images are read, every
signature gives the same embedding for the same picture, and bad input fails with InvalidArgument."""

import io

import numpy as np
import pytest
import tensorflow as tf
import tiny_serving_model
from PIL import Image

from triplet_tfx.components import signatures
from triplet_tfx.components.data import data_sources

pytestmark = pytest.mark.slow  # builds and exports served models


def encode(pixels: np.ndarray, fmt: str, mode: str = None) -> bytes:
    image = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels, mode)
    out = io.BytesIO()
    image.save(out, fmt)
    return out.getvalue()


@pytest.fixture(scope="module")
def model():
    return tf.saved_model.load(tiny_serving_model.trained_export())


@pytest.fixture(scope="module")
def eval_images():
    _, _, images, labels = tiny_serving_model.mnist_examples()
    return images[:16], labels[:16]


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize(
    "mode,fmt",
    [("L", "PNG"), ("LA", "PNG"), ("RGB", "PNG"), ("RGBA", "PNG"), ("P", "GIF"), ("RGB", "BMP"), ("L", "BMP")],
)
def test_channels_are_converted_as_read_image_converts_them(mode, fmt, channels, tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (9, 7, len(mode) if mode != "P" else 3), dtype=np.uint8)
    image = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels, None if mode == "P" else mode)
    if mode == "P":
        image = image.quantize(64)
    path = str(tmp_path / f"image.{fmt.lower()}")
    image.save(path, fmt)
    # How Pillow converts (what image folders were read with): L or RGB.
    expected = np.array(Image.open(path).convert("L" if channels == 1 else "RGB")).reshape(9, 7, channels)
    with open(path, "rb") as f:
        got = signatures.decode_to_pixels(tf.constant([f.read()]), (9, 7, channels))[0].numpy()
    np.testing.assert_array_equal(got, expected)


def test_other_channel_counts_must_match_exactly():
    rgba = np.random.default_rng(2).integers(0, 256, (5, 6, 4), dtype=np.uint8)
    got = signatures.decode_to_pixels(tf.constant([encode(rgba, "PNG", "RGBA")]), (5, 6, 4)).numpy()
    np.testing.assert_array_equal(got[0], rgba)
    with pytest.raises(tf.errors.InvalidArgumentError, match="the model takes images of 4 channels, got"):
        signatures.decode_to_pixels(tf.constant([encode(rgba[..., :3], "PNG")]), (5, 6, 4))


def test_other_sizes_are_resized_to_the_training_size():
    pixels = np.full((56, 40, 3), 200, np.uint8)
    got = signatures.decode_to_pixels(tf.constant([encode(pixels, "PNG")]), (28, 28, 1)).numpy()
    assert got.shape == (1, 28, 28, 1)
    np.testing.assert_array_equal(got, 200)  # a uniform image stays uniform, luma of gray is gray


def test_pixels_become_the_raw_bytes_of_tf_examples():
    pixels = np.random.default_rng(1).integers(0, 256, (3, 4, 5, 2), dtype=np.uint8)
    assert signatures.pixels_to_raw_bytes(tf.constant(pixels)).numpy().tolist() == [p.tobytes() for p in pixels]


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "GIF"])  # lossless: the same pixels
def test_every_signature_gives_the_same_embedding(model, eval_images, fmt):
    images, labels = eval_images
    examples = [data_sources.make_example(x, y) for x, y in zip(images, labels)]
    expected = model.signatures["serving_default"](examples=tf.constant(examples))["embedding"].numpy()
    from_images = model.signatures["embed_images"](images=tf.constant([encode(x, fmt) for x in images]))
    from_pixels = model.signatures["embed_pixels"](pixels=tf.constant(images))
    np.testing.assert_allclose(from_images["embedding"].numpy(), expected, atol=1e-6)
    np.testing.assert_allclose(from_pixels["embedding"].numpy(), expected, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(expected, axis=1), 1.0, rtol=1e-5)
    assert expected.dtype == np.float32


def test_jpeg_and_color_images_of_any_size_are_embedded(model, eval_images):
    images, _ = eval_images
    color = np.repeat(images[0], 3, axis=-1)
    big = np.asarray(Image.fromarray(color).resize((64, 50)))
    batch = [encode(images[0], "JPEG"), encode(big, "PNG"), encode(color, "JPEG")]
    embeddings = model.signatures["embed_images"](images=tf.constant(batch))["embedding"].numpy()
    assert embeddings.shape == (3, 32)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, rtol=1e-5)
    reference = model.signatures["embed_pixels"](pixels=tf.constant(images[:1]))["embedding"].numpy()
    assert (embeddings @ reference.T).min() > 0.9  # still close to the original digit


def zero_width_bmp() -> bytes:
    header = b"BM" + (54).to_bytes(4, "little") + bytes(4) + (54).to_bytes(4, "little")
    info = (
        (40).to_bytes(4, "little")
        + (0).to_bytes(4, "little", signed=True)
        + (4).to_bytes(4, "little", signed=True)
        + (1).to_bytes(2, "little")
        + (24).to_bytes(2, "little")
        + bytes(24)
    )
    return header + info


@pytest.mark.parametrize(
    "images,message",
    [
        ([], "images: empty batch"),
        ([b""], "images: empty string"),
        ([b"not an image at all"], "images: not a PNG, JPEG, GIF or BMP image at index] [0]"),
        ([b"\x89PNG\r\n\x1a\n" + bytes(20)], "Invalid PNG"),  # TensorFlow's decoders name these problems
        ([zero_width_bmp()], "Width must be positive"),
    ],
)
def test_bad_images_are_invalid_argument(model, images, message):
    with pytest.raises(tf.errors.InvalidArgumentError, match=message.replace("[", r"\[").replace("]", r"\]")):
        model.signatures["embed_images"](images=tf.constant(images, tf.string))


def test_empty_pixel_batch_is_invalid_argument(model):
    with pytest.raises(tf.errors.InvalidArgumentError, match="pixels: empty batch"):
        model.signatures["embed_pixels"](pixels=tf.zeros([0, 28, 28, 1], tf.uint8))
