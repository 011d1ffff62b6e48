"""A small, deterministic photo collection, as users have them: for tests of images: and manifest:
sources and the end-to-end test.

    from photo_collection import make_photo_collection   # tests/data is on sys.path in tests/data
    photos = make_photo_collection(str(tmp_path / "photos"))
    # --data images:<folder> --num-classes len(CLASSES)

<folder>/<class>/<class>_<n>.<jpg|png>, classes "zero", "one", "two", "three" (CLASSES), `per_class`
images each; with layout="split": <folder>/train/<class>/... and <folder>/eval/<class>/... (the last
`eval_per_class` of each class in eval). Each class has its own colour and pattern, so that an
embedding tells them apart after a few steps:
    zero: a red disc, one: green horizontal stripes, two: a blue checkerboard,
    three: yellow diagonal stripes (more classes: magenta, cyan... vertical stripes)
on a dark noisy background, with random jitter of colour, phase and position. Sizes are 40 to
160 pixels a side, of different aspect ratios; files alternate between JPEG and PNG (RGB). The
first images of the classes are special (`kind`):
    grey    an 8-bit grey PNG (Pillow mode L)            class zero (CLASSES[0 % n])
    cmyk    a CMYK JPEG                                   class one
    rgba    a PNG with an alpha channel (mode RGBA)       class two
    exif6   a JPEG with EXIF orientation 6 (viewers rotate it 90 degrees clockwise; TensorFlow
            and the pipeline use the pixels as stored)    class three
Same arguments, same files, byte for byte (for one Pillow version): numpy's seeded generator.
"""

from __future__ import annotations

import os
from typing import List, NamedTuple, Sequence

import numpy as np
from PIL import Image

CLASSES = ("zero", "one", "two", "three")
_COLOURS = (
    (220, 40, 40),
    (40, 200, 60),
    (40, 70, 220),
    (230, 210, 40),
    (210, 40, 210),
    (40, 210, 210),
    (240, 140, 30),
    (150, 150, 150),
)
SPECIAL_KINDS = ("grey", "cmyk", "rgba", "exif6")


class Photo(NamedTuple):
    path: str
    class_name: str
    split: str  # "all" (flat layout), "train" or "eval"
    kind: str  # "rgb" or one of SPECIAL_KINDS
    format: str  # "jpeg" or "png"
    width: int
    height: int


def _pattern(class_index: int, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 [height, width, 3]: the class's pattern in its colour on a dark noisy background."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    y, x = y / height, x / width
    phase = rng.uniform(0, 1)
    kind = class_index % 5
    if kind == 0:  # disc
        cy, cx, r = rng.uniform(0.4, 0.6), rng.uniform(0.4, 0.6), rng.uniform(0.25, 0.35)
        mask = (y - cy) ** 2 + (x - cx) ** 2 < r**2
    elif kind == 1:  # horizontal stripes
        mask = np.sin(2 * np.pi * (4 * y + phase)) > 0
    elif kind == 2:  # checkerboard
        mask = (np.floor(4 * x + phase) + np.floor(4 * y + phase)) % 2 == 0
    elif kind == 3:  # diagonal stripes
        mask = np.sin(2 * np.pi * (3 * (x + y) + phase)) > 0
    else:  # vertical stripes, for more classes
        mask = np.sin(2 * np.pi * (4 * x + phase)) > 0
    colour = np.clip(np.array(_COLOURS[class_index % len(_COLOURS)]) + rng.integers(-20, 21, 3), 0, 255)
    image = rng.integers(10, 50, (height, width, 3)).astype(np.float32)
    image[mask] = colour
    image += rng.normal(0, 6, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def _size(rng: np.random.Generator):
    return int(rng.integers(40, 161)), int(rng.integers(40, 161))  # height, width: any aspect ratio


def make_photo_collection(
    folder: str,
    classes: Sequence[str] = CLASSES,
    per_class: int = 8,
    layout: str = "flat",
    eval_per_class: int = 2,
    seed: int = 0,
) -> List[Photo]:
    """Writes the collection below `folder` (module docstring); returns its files in class order."""
    if layout not in ("flat", "split"):
        raise ValueError("layout: flat or split")
    rng = np.random.default_rng(seed)
    photos = []
    for class_index, class_name in enumerate(classes):
        for n in range(per_class):
            split = "all" if layout == "flat" else ("eval" if n >= per_class - eval_per_class else "train")
            kinds = [k for i, k in enumerate(SPECIAL_KINDS) if i % len(classes) == class_index]
            kind = kinds[n] if n < len(kinds) else "rgb"
            height, width = _size(rng)
            pixels = _pattern(class_index, height, width, rng)
            image = Image.fromarray(pixels)
            image_format = {"grey": "png", "cmyk": "jpeg", "rgba": "png", "exif6": "jpeg"}.get(
                kind, "jpeg" if n % 2 == 0 else "png"
            )
            save = {}
            if kind == "grey":
                image = image.convert("L")
            elif kind == "cmyk":
                image = image.convert("CMYK")
            elif kind == "rgba":
                alpha = np.linspace(80, 255, width, dtype=np.float32)[None, :].repeat(height, 0).astype(np.uint8)
                image = Image.fromarray(np.dstack([pixels, alpha]), "RGBA")
            elif kind == "exif6":
                exif = Image.Exif()
                exif[0x0112] = 6  # Orientation: rotate 90 CW to display
                save["exif"] = exif
            if image_format == "jpeg":
                save["quality"] = 90
            parts = [folder] + ([] if split == "all" else [split]) + [class_name]
            path = os.path.join(*parts, f"{class_name}_{n}.{'jpg' if image_format == 'jpeg' else 'png'}")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            image.save(path, "JPEG" if image_format == "jpeg" else "PNG", **save)
            photos.append(Photo(path, class_name, split, kind, image_format, width, height))
    return photos
