"""The artifact contract: what ExampleGen's examples hold and the names the stages agree on.

A leaf module (standard library only), imported by every stage, so that no stage reaches into
another's internals for a name.

tf.Example features written by SourceExampleGen:
  image         bytes: raw uint8 pixels of the training shape (MNIST, raw tfrecord: sources), or
                the encoded image file as read (PNG, JPEG, GIF, BMP: images:, manifest:, tfds:,
                encoded tfrecord: sources; `DataConfig.encoded_images` tells which)
  label         int64 class id
  class_name    bytes, encoded sources only: the class's name (a folder name, a manifest label,
                a TFDS label name, or the id as text)
  image_width, image_height, image_channels   int64, encoded sources only: as stored
  image_format  bytes, encoded sources only: png, jpeg, gif or bmp
  id            bytes, manifest: sources with an `id` column, and encoded sources: the item's id
"""
from __future__ import annotations

import re
from typing import Iterable, List

IMAGE_KEY = "image"
LABEL_KEY = "label"
CLASS_NAME_KEY = "class_name"
IMAGE_WIDTH_KEY = "image_width"
IMAGE_HEIGHT_KEY = "image_height"
IMAGE_CHANNELS_KEY = "image_channels"
IMAGE_FORMAT_KEY = "image_format"
ID_KEY = "id"

# Transform's vocabulary of class names (tft.vocabulary), kept with the Transform graph.
CLASS_NAMES_VOCABULARY = "class_names"
# In the Examples artifact of a run with --on-bad-image skip: one skipped file a line, with why.
SKIPPED_IMAGES_FILE = "skipped_images.txt"
# Custom property of the Examples artifact: how many images were skipped.
SKIPPED_IMAGES_PROPERTY = "skipped_images"
# In an embedding SavedModel: the class names by class id, one a line (an asset).
CLASS_NAMES_ASSET = "class_names.txt"

_INTEGER = re.compile(r"-?[0-9]+")


def class_order(names: Iterable[str]) -> List[str]:
    """Class names in class-id order: numerically when every name is an integer (folders 0..10),
    else by their text. The class id of a name is its position in this list."""
    unique = sorted(set(names))
    if unique and all(_INTEGER.fullmatch(name) for name in unique):
        return sorted(unique, key=int)
    return unique
