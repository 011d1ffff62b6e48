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


# Image file names: what the image sources read, and what the serving client sends.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
# Image formats refused with a message (not silently skipped as other files are).
REFUSED_SUFFIXES = (".webp", ".tif", ".tiff", ".heic", ".heif", ".avif")


def is_image_name(name: str) -> bool:
    """A file name with an image suffix, read or refused (`IMAGE_SUFFIXES`, `REFUSED_SUFFIXES`)."""
    return name.lower().endswith(IMAGE_SUFFIXES + REFUSED_SUFFIXES)


# The embedding SavedModel's signatures (the Trainer's export; the serving model adds `search`).
SERVING_SIGNATURE = "serving_default"
EMBED_IMAGES_SIGNATURE = "embed_images"
EMBED_PIXELS_SIGNATURE = "embed_pixels"
SEARCH_SIGNATURE = "search"
# With an ivf index: `search` with the number of lists to probe per request.
SEARCH_WITH_NPROBE_SIGNATURE = "search_with_nprobe"
# Each image's nearest reference, and whether it is near enough to be a match (the evaluator's
# calibrated threshold, metrics.json's MATCH_THRESHOLD): the outputs of `search` for k = 1, one
# per image, plus MATCHED_OUTPUT.
MATCH_SIGNATURE = "match"
# Their inputs...
EXAMPLES_INPUT = "examples"
IMAGES_INPUT = "images"
PIXELS_INPUT = "pixels"
K_INPUT = "k"
NPROBE_INPUT = "nprobe"
# ...and outputs: the embedding signatures give EMBEDDING_KEY, `search` the others.
EMBEDDING_KEY = "embedding"
IDS_OUTPUT = "ids"
LABELS_OUTPUT = "labels"
DISTANCES_OUTPUT = "distances"
CLASS_NAMES_OUTPUT = "class_names"
MATCHED_OUTPUT = "matched"

# In the ModelEvaluation folder: the metrics, the report and one folder for TensorBoard (the metric
# scalars and the Embedding Projector bundle).
METRICS_FILE = "metrics.json"
MARKDOWN_REPORT_FILE = "report.md"
HTML_REPORT_FILE = "report.html"
TENSORBOARD_DIR = "tensorboard"
# Blessing property: 1 when the candidate passed every check but is the model already in production
# (blessed and pushed by an earlier run), so it is not blessed, and so not pushed, a second time.
ALREADY_PUSHED_KEY = "already_pushed"

# Custom properties of the serving Model artifact (ServingModelBuilder): the search index's size,
# the split it holds, what building it cost, and its bytes in the SavedModel.
INDEX_SIZE = "index_size"
INDEX_SPLIT = "index_split"
INDEX_BUILD_SECONDS = "index_build_seconds"
INDEX_BYTES = "index_bytes"
# ...its kind (exact or ivf), and for ivf its lists, default nprobe and recall@10 against exact search.
INDEX_KIND = "index_kind"
INDEX_LISTS = "index_lists"
INDEX_NPROBE = "index_nprobe"
INDEX_RECALL_AT_10 = "index_recall_at_10"
# ...and for an index items were added to (--index-add), why it should be rebuilt ("": no need).
INDEX_REBUILD_REASONS = "index_rebuild_reasons"
# ...and the `match` signature's distance threshold (absent: the model has no `match` signature).
MATCH_THRESHOLD = "match_threshold"
