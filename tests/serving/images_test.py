"""components/images.py, the one image function: channels as Pillow converts them, the pad and crop
geometry, identity at the training size, EXIF orientation ignored. Traced as the Transform graph
and the SavedModel run it (shapes unknown) unless said otherwise."""

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from triplet_tfx.components import images


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **options)
    return out.getvalue()


def decode(data, shape, resize="stretch") -> np.ndarray:
    """decode_to_pixels as the Transform graph runs it: traced, shapes unknown."""
    function = tf.function(
        lambda x: images.decode_to_pixels(x, shape, resize), input_signature=[tf.TensorSpec([None], tf.string)]
    )
    return function(tf.constant(data if isinstance(data, list) else [data])).numpy()


def photo(height=20, width=30, seed=1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (height // 4 + 1, width // 4 + 1, 3)).astype(np.float32)
    big = tf.image.resize(small, [height, width]).numpy()
    return np.clip(np.round(big + rng.normal(0, 6, big.shape)), 0, 255).astype(np.uint8)


def pillow(data: bytes, channels: int) -> np.ndarray:
    converted = np.array(Image.open(io.BytesIO(data)).convert("L" if channels == 1 else "RGB"))
    return converted.reshape(*converted.shape[:2], channels)


LOSSLESS = {
    "grey": lambda im: encode(im.convert("L"), "PNG"),
    "grey_alpha": lambda im: encode(im.convert("LA"), "PNG"),
    "rgb": lambda im: encode(im, "PNG"),
    "rgba": lambda im: encode(im.convert("RGBA"), "PNG"),
    "palette": lambda im: encode(im.convert("P"), "PNG"),
    "palette_gif": lambda im: encode(im.quantize(64), "GIF"),
    "bmp": lambda im: encode(im, "BMP"),
}
JPEG = {
    "rgb_jpeg": lambda im: encode(im, "JPEG", quality=95),
    "grey_jpeg": lambda im: encode(im.convert("L"), "JPEG", quality=95),
    "cmyk_jpeg": lambda im: encode(im.convert("CMYK"), "JPEG", quality=95),
}


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("kind", sorted(LOSSLESS))
def test_channels_as_pillow_converts_them(kind, channels):
    data = LOSSLESS[kind](Image.fromarray(photo()))
    np.testing.assert_array_equal(decode(data, (20, 30, channels))[0], pillow(data, channels))


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("kind", sorted(JPEG))
def test_jpeg_channels_close_to_pillow(kind, channels):
    """TensorFlow's JPEG decoder (fast integer DCT, tf.io.decode_image's default) is a few levels off
    Pillow's (accurate DCT); the channel rule on top is Pillow's (CMYK included)."""
    data = JPEG[kind](Image.fromarray(photo()))
    got = decode(data, (20, 30, channels))[0].astype(int)
    assert np.abs(got - pillow(data, channels)).max() <= 10


@pytest.mark.parametrize("kind", sorted(JPEG))
def test_jpeg_decodes_exactly_as_pillow(kind):
    data = JPEG[kind](Image.fromarray(photo()))
    np.testing.assert_array_equal(decode(data, (20, 30, 3))[0], pillow(data, 3))


def test_16_bit_png_is_scaled_to_8_bits():
    values = np.random.default_rng(0).integers(0, 65536, (20, 30)).astype(np.uint16)
    data = encode(Image.fromarray(values), "PNG")
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    np.testing.assert_array_equal(decode(data, (20, 30, 1))[0, ..., 0], values >> 8)
    np.testing.assert_array_equal(decode(data, (20, 30, 3))[0], np.repeat((values >> 8)[..., None], 3, -1))


@pytest.mark.parametrize("resize", ["stretch", "pad", "crop"])
@pytest.mark.parametrize("fmt,channels", [("PNG", 1), ("PNG", 3), ("BMP", 3)])
def test_identity_at_the_training_size(resize, fmt, channels):
    pixels = np.random.default_rng(3).integers(0, 256, (17, 23, channels), dtype=np.uint8)
    data = encode(Image.fromarray(pixels[..., 0] if channels == 1 else pixels), fmt)
    np.testing.assert_array_equal(decode(data, (17, 23, channels), resize)[0], pixels)


def test_pad_keeps_the_aspect_ratio_centred_on_black():
    white = encode(Image.fromarray(np.full((40, 80), 255, np.uint8)), "PNG")  # 40 high, 80 wide
    got = decode(white, (32, 32, 1), "pad")[0, ..., 0]
    # scale 32/80 = 0.4: 16 x 32, centred: rows 8..23 hold the image, the rest is black.
    np.testing.assert_array_equal(got[8:24], 255)
    np.testing.assert_array_equal(got[:8], 0)
    np.testing.assert_array_equal(got[24:], 0)
    tall = decode(encode(Image.fromarray(np.full((80, 40), 255, np.uint8)), "PNG"), (32, 32, 1), "pad")[0, ..., 0]
    np.testing.assert_array_equal(tall[:, 8:24], 255)
    np.testing.assert_array_equal(tall[:, :8], 0)
    np.testing.assert_array_equal(tall[:, 24:], 0)


def test_crop_takes_the_centred_box_of_the_training_aspect():
    # 40 x 80 into 32 x 32: the centred 40 x 40 box, columns 20..59; outside it, black.
    pixels = np.zeros((40, 80), np.uint8)
    pixels[:, 20:60] = 200
    got = decode(encode(Image.fromarray(pixels), "PNG"), (32, 32, 1), "crop")[0, ..., 0]
    np.testing.assert_array_equal(got, 200)
    # 40 x 80 into 16 x 24 (aspect 1.5): the centred 40 x 60 box, columns 10..69.
    pixels = np.zeros((40, 80), np.uint8)
    pixels[:, 10:70] = 90
    np.testing.assert_array_equal(decode(encode(Image.fromarray(pixels), "PNG"), (16, 24, 1), "crop")[0], 90)


def test_stretch_fills_the_training_size():
    pixels = np.zeros((40, 80), np.uint8)
    pixels[:, :40] = 250
    got = decode(encode(Image.fromarray(pixels), "PNG"), (32, 32, 1), "stretch")[0, ..., 0]
    assert got.shape == (32, 32)
    np.testing.assert_array_equal(got[:, :15], 250)
    np.testing.assert_array_equal(got[:, 17:], 0)


def test_pad_is_the_same_eagerly_and_traced():
    data = encode(Image.fromarray(np.full((40, 80, 3), 255, np.uint8)), "PNG")
    eager = images.decode_to_pixels(tf.constant([data]), (16, 12, 3), "pad").numpy()
    np.testing.assert_array_equal(decode(data, (16, 12, 3), "pad"), eager)


def _orientation(value: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = value
    return exif.tobytes()


@pytest.mark.parametrize("resize", ["stretch", "pad"])
def test_exif_orientation_is_ignored(resize):
    """The pixels as stored: a JPEG tagged 'rotate 90' gives the pixels of the same JPEG untagged,
    at the stored size, both traced (Transform, serving) and eagerly."""
    image = Image.fromarray(photo(24, 36))
    plain = encode(image, "JPEG", quality=95)
    rotated = encode(image, "JPEG", quality=95, exif=_orientation(6))
    assert Image.open(io.BytesIO(rotated)).getexif()[0x0112] == 6
    traced = decode([plain, rotated], (24, 36, 3), resize)
    np.testing.assert_array_equal(traced[0], traced[1])
    eager = images.decode_to_pixels(tf.constant([plain, rotated]), (24, 36, 3), resize).numpy()
    np.testing.assert_array_equal(eager, traced)
    assert np.abs(traced[1].astype(int) - pillow(rotated, 3)).max() <= 10  # Pillow's stored (unrotated) pixels


def test_to_unit_floats():
    np.testing.assert_allclose(images.to_unit_floats(tf.constant([0, 51, 255], tf.uint8)).numpy(), [0, 0.2, 1])


@pytest.mark.parametrize(
    "data,message",
    [(b"", "image: empty string"), (b"RIFF....WEBPVP8 ", "image: not a PNG"), (b"\x89PNG\r\n\x1a\n broken", "PNG")],
)
def test_bad_images_fail_with_invalid_argument(data, message):
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        decode(data, (4, 4, 1))
