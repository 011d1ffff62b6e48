"""The check every encoded image passes before ExampleGen writes it.

1. the header, read by Pillow without decoding: an empty file, a file that is no image, a
   format TensorFlow cannot decode (WebP, TIFF, HEIF...) and a decompression bomb (a header that
   claims more than MAX_PIXELS pixels: Pillow's default limit) are refused;
2. the decode, by TensorFlow (`components/images.decode`), the ground truth, since training and
   serving decode with it: truncated and corrupt files are refused.
Each refusal is one BadImageError naming the image (`where`) and the reason.
"""

from __future__ import annotations

import io
import warnings
from typing import NamedTuple

from triplet_tfx.components.data.errors import BadImageError

# Pillow's default Image.MAX_IMAGE_PIXELS (a 1024 x 1024 x 4 x 3 x 7 image, about 89.5 megapixels).
MAX_PIXELS = 89_478_485
# First bytes -> the `image_format` written: the formats TensorFlow decodes (components/images.py).
FORMATS = (
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpeg"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
    (b"BM", "bmp"),
)
SUPPORTED = "PNG, JPEG, GIF or BMP"


class ImageInfo(NamedTuple):
    width: int
    height: int
    channels: int  # as TensorFlow decodes it: 1 grey, 2 grey+alpha, 3 RGB, 4 RGBA
    format: str  # png, jpeg, gif or bmp


def sniff_format(data: bytes) -> str:
    """png, jpeg, gif or bmp by the first bytes; "" for anything else."""
    return next((name for magic, name in FORMATS if data.startswith(magic)), "")


def _header(data: bytes, where: str):
    """(Pillow's format name, width, height), from the header only."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                return img.format or "", img.size[0], img.size[1]
    except Image.DecompressionBombError as err:  # Pillow refuses more than twice its limit at open
        raise BadImageError(where, f"decompression bomb refused ({err})") from None
    except UnidentifiedImageError:
        known = sniff_format(data)
        if known:
            raise BadImageError(where, f"corrupt {known.upper()}: its header cannot be read") from None
        kind = "text" if data[:64].isascii() else "unknown data"
        raise BadImageError(
            where, f"not an image (Pillow cannot identify it; the file starts with {kind}); use {SUPPORTED}"
        ) from None
    except (OSError, SyntaxError, ValueError) as err:
        raise BadImageError(where, f"unreadable image header ({err})") from None


def check_image(data: bytes, where: str) -> ImageInfo:
    """ImageInfo of one encoded image; BadImageError naming `where` if it cannot be used."""
    if not data:
        raise BadImageError(where, "empty file (0 bytes)")
    pillow_format, width, height = _header(data, where)
    if pillow_format == "WEBP":
        raise BadImageError(
            where,
            "WebP image: TensorFlow cannot decode WebP; convert it to PNG or JPEG "
            "(e.g. `dwebp in.webp -o out.png` or Pillow)",
        )
    image_format = sniff_format(data)
    if not image_format:
        raise BadImageError(
            where, f"{pillow_format or 'unknown'} image: TensorFlow decodes only {SUPPORTED}; convert it"
        )
    if width * height > MAX_PIXELS:
        raise BadImageError(
            where,
            f"decompression bomb refused: the header claims {width}x{height} = "
            f"{width * height} pixels, more than {MAX_PIXELS}",
        )
    if width <= 0 or height <= 0:
        raise BadImageError(where, f"image of size {width}x{height}")
    import tensorflow as tf

    from triplet_tfx.components import images

    try:
        shape = images.decode(tf.constant(data)).shape
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as err:
        message = err.message.split("}}")[-1].split(" [Op:")[0].strip().splitlines()[0]
        raise BadImageError(
            where, f"corrupt or truncated {image_format.upper()}: TensorFlow cannot decode it ({message})"
        ) from None
    return ImageInfo(width=int(shape[1]), height=int(shape[0]), channels=int(shape[2]), format=image_format)
