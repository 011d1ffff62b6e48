"""Examples and embeddings as the evaluation and serving stages read them: the serialized tf.Examples
of an Examples artifact's split, their labels and pixels, and their embeddings through an embedding
SavedModel's serving signature (as a client of TF Serving would embed them).

Shared by the EmbeddingEvaluator (evaluation/evaluator.py) and the ServingModelBuilder
(serving/builder.py), so that neither stage reaches into the other.
"""

import functools
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Optional, Tuple

import numpy as np
import tensorflow as tf
from tfx.types import artifact_utils
from tfx.types.standard_artifacts import Examples, Model
from tfx.utils import path_utils

from triplet_tfx.components import images as image_function
from triplet_tfx.components.contract import EMBEDDING_KEY, IMAGE_KEY, LABEL_KEY, SERVING_SIGNATURE
from triplet_tfx.components.progress import Progress

_PARSE_BATCH = 1024  # serialized examples parsed per call
# Images per call into a model: small enough that a network's activations stay in the CPU's caches.
# The tutorial network's first layer writes 200 KB per 28x28 image: at 1,024 images per call its
# embedding ran at 7,200 images/s on a 2-core AMD EPYC with AVX2, at 128 at 13,500 (2 calls at once);
# on one with AVX-512 and twice the L2 cache, 128 runs at 0.85x its best size (512). bench/README.md,
# "Images per call into the model".
EMBED_BATCH = 128


def read_split(examples: Examples, split: str) -> list:
    """Serialized tf.Examples of one split of an Examples artifact."""
    files = sorted(tf.io.gfile.glob(os.path.join(artifact_utils.get_split_uri([examples], split), "*")))
    if not files:
        return []
    # One batch of the whole split: ~10x faster than a Python loop over the records.
    whole = tf.data.TFRecordDataset(files, compression_type="GZIP").batch(2**31 - 1)
    try:
        return whole.get_single_element().numpy().tolist()
    except tf.errors.InvalidArgumentError as e:
        if "empty" in e.message:  # no records at all
            return []
        raise


@functools.lru_cache(maxsize=8)
def _image_decoder(image_shape: Tuple[int, int, int], resize: str):
    """images.decode_to_pixels traced with unknown shapes, as the Transform graph runs it (TensorFlow's
    resize_with_pad rounds its sizes differently eagerly, when the shapes are known)."""
    return tf.function(
        lambda encoded: image_function.decode_to_pixels(encoded, image_shape, resize),
        input_signature=[tf.TensorSpec([None], tf.string)],
    )


def decode_images(image_bytes, image_shape, encoded: bool = False, resize: str = "stretch") -> np.ndarray:
    """uint8 [B, H, W, C] of tf.Examples' `image` values: raw pixels of the training shape, or
    (`encoded`) image files decoded by the image function, as Transform decodes them."""
    image_shape = tuple(int(v) for v in image_shape)
    if encoded:
        return _image_decoder(image_shape, resize)(tf.reshape(image_bytes, [-1])).numpy()
    return tf.reshape(tf.io.decode_raw(image_bytes, tf.uint8), [-1, *image_shape]).numpy()


def parse_examples(
    serialized: list, image_shape=None, encoded: bool = False, resize: str = "stretch"
) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """(labels, uint8 images) of serialized tf.Examples; images only if image_shape is given
    (`encoded`: ExampleGen's examples of an encoded-image source, `DataConfig.encoded_images`)."""
    spec = {LABEL_KEY: tf.io.FixedLenFeature([], tf.int64)}
    if image_shape is not None:
        spec[IMAGE_KEY] = tf.io.FixedLenFeature([], tf.string)
    labels, images = [], []
    for start in range(0, len(serialized), _PARSE_BATCH):
        parsed = tf.io.parse_example(tf.constant(serialized[start : start + _PARSE_BATCH]), spec)
        labels.append(parsed[LABEL_KEY].numpy())
        if image_shape is not None:
            images.append(decode_images(parsed[IMAGE_KEY], image_shape, encoded, resize))
    return np.concatenate(labels), np.concatenate(images) if images else None


def model_path(model: Model) -> str:
    """The SavedModel of a Model artifact: a Trainer's or builder's (in its Format-Serving folder), or
    a pushed serving version imported as it is (the folder holding saved_model.pb)."""
    if tf.io.gfile.exists(os.path.join(model.uri, "saved_model.pb")):
        return model.uri
    return path_utils.serving_model_path(model.uri)


def model_label(model: Model) -> str:
    """How messages name a model: the end of its folder (as `Trainer/model/8`), which the run's
    output tree shows; TFX's artifact id appears in no path."""
    return "/".join(model.uri.rstrip("/").split("/")[-3:])


def calls_at_once() -> int:
    """Batches to run through TensorFlow at once: one per inter-op thread when each op runs on one
    thread (as a Trainer that splits its batches sets the process up: training/batch_parts.py), else
    one, whose ops use all the cores."""
    threading = tf.config.threading
    if threading.get_intra_op_parallelism_threads() != 1:
        return 1
    return max(1, threading.get_inter_op_parallelism_threads())


def load_model(path: str):
    """The SavedModel at `path`, loaded once while it is the last one asked for and unchanged: the
    evaluator and the serving builder of a local run embed with the same Trainer model."""
    return _loaded(path, tf.io.gfile.stat(os.path.join(path, "saved_model.pb")).mtime_nsec)


@functools.lru_cache(maxsize=1)
def _loaded(path: str, _written: int):  # _written: part of the cache key only
    return tf.saved_model.load(path)


def embed(model: Model, serialized: list) -> np.ndarray:
    """Embeddings of serialized raw tf.Examples through the model's serving signature."""
    serve = load_model(model_path(model)).signatures[SERVING_SIGNATURE]

    def batch(start: int) -> np.ndarray:
        return serve(examples=tf.constant(serialized[start : start + EMBED_BATCH]))[EMBEDDING_KEY].numpy()

    batches = []
    with (
        Progress(f"Embedding with model {model_label(model)}", len(serialized), "examples") as progress,
        ThreadPoolExecutor(calls_at_once()) as pool,
    ):
        for embeddings in pool.map(batch, range(0, len(serialized), EMBED_BATCH)):
            batches.append(embeddings)
            progress.advance(len(embeddings))
    return np.concatenate(batches)
