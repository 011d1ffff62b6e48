"""Test fixture: a small SavedModel with exactly the served model's signature contract.

Not the project's model (that is components/training/export.py): a fixed random projection of
the pixels stands in for the network, so that the client, the stand-in servers and the CLI can
be tested in seconds. The contract (input/output names, dtypes, shapes) is the one in
docs/serving.md, "Signatures of the pushed model":

  serving_default: examples tf.string [None]        -> embedding float32 [None, D]
  embed_images:    images   tf.string [None]        -> embedding
  embed_pixels:    pixels   tf.uint8 [None, H, W, C] -> embedding
  search:          images tf.string [None], k tf.int32 [] -> ids tf.string [None, k],
                   labels tf.int64 [None, k], distances float32 [None, k], class_names tf.string [None, k]
                   (`class_names=False`: a model from before class names, without that output)

`write_contract_model(base_dir)` writes it as `<base_dir>/<version>/`, the layout TF Serving loads.
"""

from __future__ import annotations

import io
import os

import numpy as np
import tensorflow as tf
from PIL import Image

IMAGE_SHAPE = (28, 28, 1)
EMBEDDING_DIM = 8
# The class names by class id of the contract model (not the ids as text, so that tests can tell them apart).
CLASS_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


class ContractModel(tf.Module):
    def __init__(
        self, reference_pixels: np.ndarray, reference_labels: np.ndarray, seed: int = 0, class_names: bool = True
    ):
        super().__init__()
        self.with_class_names = class_names
        self.class_names = tf.Variable(list(CLASS_NAMES))
        rng = np.random.default_rng(seed)
        pixels = int(np.prod(IMAGE_SHAPE))
        self.projection = tf.Variable(rng.normal(size=(pixels, EMBEDDING_DIM)).astype(np.float32))
        self.bias = tf.Variable(rng.normal(size=(EMBEDDING_DIM,)).astype(np.float32))
        self.index = tf.Variable(self._embed(tf.constant(reference_pixels)))
        self.index_ids = tf.Variable([f"train/{i}" for i in range(len(reference_labels))])
        self.index_labels = tf.Variable(reference_labels.astype(np.int64))

    def _embed(self, pixels):
        flat = tf.reshape(tf.cast(pixels, tf.float32) / 255.0, [tf.shape(pixels)[0], -1])
        return tf.math.l2_normalize(tf.matmul(flat, self.projection) + self.bias, axis=1)

    def _decode(self, images):
        tf.debugging.assert_positive(tf.size(images), message="images: empty batch")

        def one(data):
            image = tf.io.decode_image(data, channels=IMAGE_SHAPE[2], expand_animations=False)
            image = tf.image.resize(image, IMAGE_SHAPE[:2])
            return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)

        return tf.map_fn(one, images, fn_output_signature=tf.TensorSpec(IMAGE_SHAPE, tf.uint8))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def serving_default(self, examples):
        parsed = tf.io.parse_example(examples, {"image": tf.io.FixedLenFeature([], tf.string)})
        pixels = tf.reshape(tf.io.decode_raw(parsed["image"], tf.uint8), [-1, *IMAGE_SHAPE])
        return {"embedding": self._embed(pixels)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="images")])
    def embed_images(self, images):
        return {"embedding": self._embed(self._decode(images))}

    @tf.function(input_signature=[tf.TensorSpec([None, *IMAGE_SHAPE], tf.uint8, name="pixels")])
    def embed_pixels(self, pixels):
        return {"embedding": self._embed(pixels)}

    @tf.function(
        input_signature=[tf.TensorSpec([None], tf.string, name="images"), tf.TensorSpec([], tf.int32, name="k")]
    )
    def search(self, images, k):
        size = tf.shape(self.index)[0]
        with tf.control_dependencies(
            [
                tf.debugging.assert_greater_equal(k, 1, message="k must be at least 1"),
                tf.debugging.assert_less_equal(k, size, message="k must be at most the index size"),
            ]
        ):
            queries = self._embed(self._decode(images))
        distances = tf.sqrt(tf.maximum(2.0 - 2.0 * tf.matmul(queries, self.index, transpose_b=True), 0.0))
        negative, indices = tf.math.top_k(-distances, k=k)
        labels = tf.gather(self.index_labels, indices)
        out = {"ids": tf.gather(self.index_ids, indices), "labels": labels, "distances": -negative}
        if self.with_class_names:
            out["class_names"] = tf.gather(self.class_names, labels)
        return out


def random_digits(count: int, seed: int = 0):
    """`count` random uint8 images [count, 28, 28, 1] and labels in [0, 10)."""
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, size=(count, *IMAGE_SHAPE), dtype=np.uint8), rng.integers(0, 10, size=count))


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels[..., 0], mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def write_contract_model(base_dir: str, version: int = 1, num_references: int = 50, class_names: bool = True) -> str:
    """Saves the fixture as <base_dir>/<version>/; returns that path."""
    pixels, labels = random_digits(num_references, seed=version)
    module = ContractModel(pixels, labels, class_names=class_names)
    path = os.path.join(base_dir, str(version))
    tf.saved_model.save(
        module,
        path,
        signatures={
            name: getattr(module, name).get_concrete_function()
            for name in ("serving_default", "embed_images", "embed_pixels", "search")
        },
    )
    return path


def reference_embeddings(version_dir: str, png_paths) -> np.ndarray:
    """What the served model must answer for these PNGs: its own embed_pixels on PIL-decoded pixels."""
    model = tf.saved_model.load(version_dir)
    pixels = np.stack([np.asarray(Image.open(p))[..., None] for p in png_paths])
    return model.signatures["embed_pixels"](pixels=tf.constant(pixels))["embedding"].numpy()


def reference_search(version_dir: str, queries: np.ndarray, k: int):
    """(ids, labels, distances) of a NumPy exact search of the stored index, [N, k] each."""
    model = tf.saved_model.load(version_dir)
    index, labels = model.index.numpy(), model.index_labels.numpy()
    distances = np.sqrt(np.maximum(2 - 2 * queries @ index.T, 0))
    nearest = np.argsort(distances, axis=1, kind="stable")[:, :k]
    return (
        [[f"train/{i}" for i in row] for row in nearest],
        labels[nearest],
        np.take_along_axis(distances, nearest, 1),
    )


def write_pngs(folder: str, count: int, seed: int = 7):
    """`count` random digit PNGs in folder (created); their paths, sorted."""
    os.makedirs(folder, exist_ok=True)
    paths = []
    for i, image in enumerate(random_digits(count, seed=seed)[0]):
        paths.append(os.path.join(folder, f"digit{i}.png"))
        with open(paths[-1], "wb") as f:
            f.write(png_bytes(image))
    return paths
