"""Every image is checked before ExampleGen writes it: each bad one is one line naming the file,
and --on-bad-image skip leaves it out, lists it and counts it."""

import io
import os
import struct
import zlib

import numpy as np
import pytest
from example_gen_helpers import generate, read_split, run_example_gen
from photo_collection import make_photo_collection
from PIL import Image

from triplet_tfx.components import contract
from triplet_tfx.components.config import DataConfig
from triplet_tfx.components.data import data_sources, image_check
from triplet_tfx.pipeline.summary import RunSummary

pytestmark = pytest.mark.slow


def _encoded(fmt: str, size=(60, 80)) -> bytes:
    pixels = (np.random.default_rng(0).random((*size, 3)) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt)
    return buffer.getvalue()


def _png_claiming(width: int, height: int) -> bytes:
    """A small PNG whose header (IHDR, with a valid CRC) claims width x height."""
    png = _encoded("PNG")
    ihdr = struct.pack(">II", width, height) + png[24:29]
    return png[:8] + struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr)) + png[33:]


JPEG, PNG = _encoded("JPEG"), _encoded("PNG")
BAD = {  # file name: (content, the reason in the message)
    "empty.jpg": (b"", r"empty file \(0 bytes\)"),
    "text.png": (b"hello, I am text", r"not an image \(Pillow cannot identify it; the file starts with text\)"),
    "truncated.jpg": (JPEG[: len(JPEG) // 2], r"corrupt or truncated JPEG: TensorFlow cannot decode it"),
    "truncated.png": (PNG[: len(PNG) // 2], r"corrupt or truncated PNG: TensorFlow cannot decode it"),
    "corrupt.jpg": (JPEG.replace(b"\xff\xc0", b"\xff\xc0\x00\x00", 1), r"corrupt JPEG: its header cannot be read"),
    "corrupt.png": (PNG[:40] + b"\0\0\0\0" + PNG[44:], r"corrupt PNG: its header cannot be read"),
    "bomb.png": (
        _png_claiming(10000, 10000),
        r"decompression bomb refused: the header claims 10000x10000 = "
        r"100000000 pixels, more than 89478485",
    ),
    "huge_bomb.png": (_png_claiming(30000, 30000), r"decompression bomb refused"),
    "photo.webp": (_encoded("WEBP"), r"WebP image: TensorFlow cannot decode WebP; convert it to PNG or JPEG"),
    "webp_named.jpg": (_encoded("WEBP"), r"WebP image: TensorFlow cannot decode WebP"),
    "scan.tiff": (_encoded("TIFF"), r"TIFF image: TensorFlow decodes only PNG, JPEG, GIF or BMP; convert it"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_image_is_one_line_naming_it(name):
    content, reason = BAD[name]
    with pytest.raises(data_sources.BadImageError, match=rf"^folder/{name}: {reason}") as raised:
        image_check.check_image(content, f"folder/{name}")
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize("kind", ["grey", "cmyk", "rgba", "exif6", "rgb"])
def test_photos_of_every_kind_pass(tmp_path, kind):
    photo = next(p for p in make_photo_collection(str(tmp_path), per_class=2) if p.kind == kind)
    with open(photo.path, "rb") as f:
        info = image_check.check_image(f.read(), photo.path)
    assert (info.width, info.height, info.format) == (photo.width, photo.height, photo.format)


def test_palette_gif_bmp_and_16_bit_png_pass():
    for fmt, mode in (("GIF", "P"), ("BMP", "RGB"), ("PNG", "I;16"), ("PNG", "P")):
        image = Image.fromarray((np.arange(40 * 50).reshape(40, 50) % 200).astype(np.uint8)).convert(mode)
        buffer = io.BytesIO()
        image.save(buffer, fmt)
        assert image_check.check_image(buffer.getvalue(), "x")[:2] == (50, 40)


def _collection_with_bad_images(root):
    make_photo_collection(str(root), classes=("a", "b"), per_class=6)
    for name in ("empty.jpg", "truncated.jpg", "photo.webp"):
        (root / "a" / name).write_bytes(BAD[name][0])


def test_bad_image_stops_the_run_naming_it(tmp_path):
    _collection_with_bad_images(tmp_path / "photos")
    data = DataConfig(source=f"images:{tmp_path / 'photos'}", num_classes=2)
    data_sources.check_source(data)  # pre-flight decodes nothing
    with pytest.raises(
        Exception,
        match=r"photos/a/(empty.jpg: empty file|truncated.jpg: corrupt or truncated|"
        r"photo.webp: WebP image)",
    ):
        generate(data, str(tmp_path))


def test_skip_mode_lists_and_counts_the_skipped_images(tmp_path):
    _collection_with_bad_images(tmp_path / "photos")
    data = DataConfig(source=f"images:{tmp_path / 'photos'}", num_classes=2, on_bad_image="skip", eval_percent=50)
    artifact = run_example_gen(data, str(tmp_path / "out"))
    assert artifact.get_int_custom_property(contract.SKIPPED_IMAGES_PROPERTY) == 3
    with open(os.path.join(artifact.uri, contract.SKIPPED_IMAGES_FILE)) as f:
        lines = f.read().splitlines()
    folder = tmp_path / "photos" / "a"
    assert lines == [
        f"{folder / 'empty.jpg'}: empty file (0 bytes)",
        f"{folder / 'photo.webp'}: {BAD['photo.webp'][1].split(';')[0]}; convert it to PNG or JPEG "
        "(e.g. `dwebp in.webp -o out.png` or Pillow)",
        lines[2],
    ]
    assert lines[2].startswith(f"{folder / 'truncated.jpg'}: corrupt or truncated JPEG")
    assert not [name for name in os.listdir(artifact.uri) if name.startswith(".skipped")]  # parts merged
    assert sum(len(read_split(artifact.uri, split)) for split in ("train", "eval")) == 12


def test_summary_names_the_skipped_images():
    summary = RunSummary(
        run_id="r",
        executions={},
        metrics={},
        blessed=None,
        blessing_message="",
        pushed_to=None,
        evaluation_dir=None,
        skipped_images="3 image(s) ... listed in /x/skipped_images.txt",
    )
    assert "Skipped images: 3 image(s) ... listed in /x/skipped_images.txt" in summary.format().splitlines()
